"""Coverage of the dose-response curve bands of ``chemozone.stats.predict_dose_response`` on simulated cohorts.

Usage::

    python benchmarks/coverage_bands.py             # 200 cohorts, 100 bootstrap draws (one core, several minutes)
    python benchmarks/coverage_bands.py --quick     # 30 cohorts, 60 draws: a smoke run

The cohorts are ``coverage_stats.simulate_cohort``'s (six patients; sham and photon 1, 2, 5, 10, 20 Gy; the
producer fraction of ``Poisson(600)`` tumor cells, ``E0 + u_patient + Emax · D / (ED50 + D) + e_sample``, E0 0.05,
Emax 0.4, ED50 3 Gy). Each is fitted as ``chemozone report`` fits a proportion (Emax, quasi-binomial with the cell
counts, patient bootstrap), and both bands (nominal 95 %) are drawn on 41 doses from 0 to 20 Gy. The truth is the
population curve (patient offset 0).

Printed per band: **whole-curve coverage** (the fraction of cohorts whose band holds the true curve at all 41
doses: what a reader of a curve's shape relies on), the mean per-dose coverage, and the median width at 0, 5 and
20 Gy. Monte-Carlo SE about 1.5 points at 200 cohorts.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage_stats import TRUTH, cohort_arguments, run_cohorts, simulate_cohort  # noqa: E402

from chemozone import stats  # noqa: E402

GRID = np.linspace(0.0, 20.0, 41)
BANDS = ("pointwise", "simultaneous")


def true_curve(doses: np.ndarray) -> np.ndarray:
    return TRUTH["E0"] + TRUTH["Emax"] * doses / (TRUTH["ED50"] + doses)


def one_cohort(rng: np.random.Generator, n_bootstrap: int) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    df = simulate_cohort(rng)
    df = df[df["radiation"] != "carbon"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits, boot = stats.fit_dose_response_with_bootstrap(df, metric="producer_fraction", models=("emax",),
                                                            n_bootstrap=n_bootstrap, seed=0, trials="n_tumor_cells")
    sel = fits[fits["group"] == "photon"]
    if not len(sel):
        return None
    out = {}
    for band in BANDS:
        cur = stats.predict_dose_response(fits, GRID, boot=boot, group="photon", model="emax", band=band)
        if "lo" not in cur:
            return None
        out[band] = (cur["lo"].to_numpy(float), cur["hi"].to_numpy(float))
    return out


def summarise(results: list[dict]) -> pd.DataFrame:
    truth = true_curve(GRID)
    rows = []
    for band in BANDS:
        lo = np.stack([r[band][0] for r in results])
        hi = np.stack([r[band][1] for r in results])
        inside = (lo <= truth) & (truth <= hi)
        width = hi - lo
        rows.append({"band": band, "whole-curve coverage": f"{100 * inside.all(axis=1).mean():.1f} %",
                     "mean per-dose coverage": f"{100 * inside.mean():.1f} %",
                     "median width 0 / 5 / 20 Gy": " / ".join(f"{np.median(width[:, i]):.3f}"
                                                             for i in (0, 10, 40))})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    a = cohort_arguments(__doc__).parse_args(argv)
    results, skipped, seconds = run_cohorts(one_cohort, a)
    print(summarise(results).to_string(index=False))
    print(f"\n{len(results)} cohorts of 6 patients ({skipped} without a fit or band), "
          f"{60 if a.quick else a.n_bootstrap} bootstrap draws each, seed {a.seed}, nominal 95 %, 41 doses 0-20 Gy; "
          f"{seconds:.0f} s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
