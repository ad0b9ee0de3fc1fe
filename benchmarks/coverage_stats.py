"""Coverage of chemozone.stats' 95 % intervals on simulated cohorts of six patients with a known truth.

Usage::

    python benchmarks/coverage_stats.py                 # 200 cohorts, 100 bootstrap draws (one core, ~20 min)
    python benchmarks/coverage_stats.py --quick         # 30 cohorts, 60 draws (~2 min): a smoke run

Each cohort (its own simulator, not ``chemozone.synth``): 6 patients, a 0 Gy control and photon 1, 2, 5, 10,
20 Gy plus carbon 1, 2, 5, 10 Gy (effectiveness 2.5) per patient, ``n ~ Poisson(600)`` tumor cells per
sample of which ``Binomial(n, p)`` are producers::

    p = E0 + u_patient + c_radiation · Emax · De / (ED50 + De) + e_sample
    E0 0.05, Emax 0.4, ED50 3 Gy, c_photon 1, c_carbon 0.6, u ~ N(0, 0.02), e ~ N(0, 0.015)

(``De`` effective dose; ``e_sample`` makes the counts over-dispersed, as real samples are) and a per-sample
log density ``y = 1 + u_patient + 0.05 · D + e`` (u ~ N(0, 0.3), e ~ N(0, 0.15)) for the dose slope.

Intervals (nominal 95 %), old method beside the new one, same cohorts:

* ED50 (photon): Gaussian least squares + percentile patient bootstrap (old) vs quasi-binomial fit weighted
  by the cell counts + BCa (``ci_method="bca"``) and + the default ``student-t`` interval (log scale,
  ``t_{n-1} · sqrt(n/(n-1))`` × bootstrap SD);
* dose slope (``mixed_model`` slope[photon]): Wald z (old) vs t with n_patients − 1 df (new);
* carbon − photon at equal effective dose (``compare_radiation(scale="effective")``, pooled over dose
  levels; truth the mean of ``(c_carbon − 1) · Emax · De / (ED50 + De)`` over carbon's levels): residuals
  from a fixed reference curve with a mixed-model z interval (old) vs the joint patient bootstrap with the
  reference curve refitted (new);
* carbon/photon amplitude ratio (``relative_amplitude``, truth 0.6): percentile (old) vs BCa and the
  default ``student-t`` (log scale).

Coverage is the fraction of cohorts whose interval contains the truth (Monte-Carlo SE about 1.5 points
at 200 cohorts); ``width`` is the median interval width; ``no CI`` counts cohorts without an interval.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import pandas as pd

from chemozone import stats

TRUTH = {"E0": 0.05, "Emax": 0.4, "ED50": 3.0, "carbon": 0.6, "rbe_carbon": 2.5, "sd_patient": 0.02,
         "sd_sample": 0.015, "slope": 0.05, "sd_patient_slope": 0.3, "sd_sample_slope": 0.15}
PHOTON = (1.0, 2.0, 5.0, 10.0, 20.0)
CARBON = (1.0, 2.0, 5.0, 10.0)


def simulate_cohort(rng: np.random.Generator, n_patients: int = 6) -> pd.DataFrame:
    """One cohort: one row per sample with ``producer_fraction, n_tumor_cells, log_density`` and the design."""
    t = TRUTH
    rows = []
    for p in range(n_patients):
        u, v = rng.normal(0, t["sd_patient"]), rng.normal(0, t["sd_patient_slope"])
        design = [("sham", 0.0, 1.0)] + [("photon", d, 1.0) for d in PHOTON] + \
            [("carbon", d, t["rbe_carbon"]) for d in CARBON]
        for rad, d, rbe in design:
            de = d * rbe
            cons = t["carbon"] if rad == "carbon" else 1.0
            pr = t["E0"] + u + cons * t["Emax"] * de / (t["ED50"] + de) + rng.normal(0, t["sd_sample"])
            n = int(rng.poisson(600))
            rows.append({"patient": f"P{p}", "radiation": rad, "dose_gy": d, "effective_dose_gy": de,
                         "n_tumor_cells": n, "producer_fraction": rng.binomial(n, float(np.clip(pr, 0, 1))) / n,
                         "log_density": 1 + v + t["slope"] * d + rng.normal(0, t["sd_sample_slope"])})
    return pd.DataFrame(rows)


def contrast_truth() -> float:
    """The pooled carbon − photon difference at equal effective dose that compare_radiation estimates."""
    t = TRUTH
    de = np.array(CARBON) * t["rbe_carbon"]
    return float(np.mean((t["carbon"] - 1) * t["Emax"] * de / (t["ED50"] + de)))


def old_effective_contrast(df: pd.DataFrame) -> tuple[float, float, float]:
    """The former compare_radiation(scale="effective") pooled row: fixed reference curve, mixed z interval."""
    import statsmodels.formula.api as smf

    ref = df[(df["dose_gy"] == 0) | (df["radiation"] == "photon")]
    fits = stats.fit_dose_response(ref.assign(radiation="photon"), metric="producer_fraction",
                                   dose="effective_dose_gy", models=("emax",), n_bootstrap=0)
    r = fits.iloc[0]
    pats = sorted(ref["patient"].unique())
    # patient offsets of the reference fit: mean residual per patient from the population curve
    curve = r["E0"] + r["Emax"] * ref["effective_dose_gy"] / (r["ED50"] + ref["effective_dose_gy"])
    off = (ref["producer_fraction"] - curve).groupby(ref["patient"]).mean()
    off = off - off[pats[0]]
    sub = df[df["radiation"] == "carbon"].copy()
    sub["resid"] = sub["producer_fraction"] - (r["E0"] + r["Emax"] * sub["effective_dose_gy"]
                                               / (r["ED50"] + sub["effective_dose_gy"])) - sub["patient"].map(off)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = smf.mixedlm("resid ~ 1", sub, groups=sub["patient"]).fit(reml=True)
    est, se = float(res.fe_params["Intercept"]), float(res.bse_fe["Intercept"])
    return est, est - 1.96 * se, est + 1.96 * se


def _ed50(df: pd.DataFrame, n_bootstrap: int, **kw) -> tuple[float, float, int]:
    f = stats.fit_dose_response(df[df["radiation"] != "carbon"], metric="producer_fraction", models=("emax",),
                                n_bootstrap=n_bootstrap, seed=0, **kw)
    r = f[(f["group"] == "photon")].iloc[0]
    return float(r["ED50_ci_lo"]), float(r["ED50_ci_hi"]), int(r["n_bootstrap_failed"])


def one_cohort(rng: np.random.Generator, n_bootstrap: int) -> dict[str, tuple[float, float]]:
    """Every interval of one simulated cohort: ``{name: (lo, hi)}`` plus failed-refit counts."""
    df = simulate_cohort(rng)
    out: dict[str, tuple[float, float]] = {}
    fails = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failed refits are counted in the table, not printed per cohort
        *out["ED50 old"], fails["ED50 old"] = _ed50(df, n_bootstrap, ci_method="percentile")
        *out["ED50 bca"], fails["ED50 bca"] = _ed50(df, n_bootstrap, trials="n_tumor_cells", ci_method="bca")
        *out["ED50 new"], fails["ED50 new"] = _ed50(df, n_bootstrap, trials="n_tumor_cells", ci_method="student-t")
        mm = stats.mixed_model(df, metric="log_density").set_index("term").loc["slope[photon]"]
        out["slope old"] = (mm["estimate"] - 1.96 * mm["se"], mm["estimate"] + 1.96 * mm["se"])
        out["slope new"] = (mm["ci_lo"], mm["ci_hi"])
        out["contrast old"] = old_effective_contrast(df)[1:]
        eff = {"photon": 1.0, "carbon": TRUTH["rbe_carbon"]}
        cr = stats.compare_radiation(df, metric="producer_fraction", scale="effective", effectiveness=eff,
                                     n_bootstrap=n_bootstrap, seed=0)
        pooled = cr[cr["dose_gy"].isna()].iloc[0]
        out["contrast new"], fails["contrast new"] = (pooled["ci_lo"], pooled["ci_hi"]), int(pooled["n_bootstrap_failed"])
        for key, method in (("ratio old", "percentile"), ("ratio bca", "bca"), ("ratio new", "student-t")):
            ra = stats.relative_amplitude(df, metric="producer_fraction", n_bootstrap=n_bootstrap, seed=0,
                                          ci_method=method).set_index("group").loc["carbon"]
            out[key], fails[key] = (ra["ratio_ci_lo"], ra["ratio_ci_hi"]), int(ra["n_bootstrap_failed"])
    out["_fails"] = fails
    return out


ROWS = [  # quantity, truth, old key, old label, new key, new label
    ("ED50 photon (Gy)", TRUTH["ED50"], "ED50 old", "LS + percentile", "ED50 bca", "quasi-binomial + BCa"),
    ("ED50 photon (Gy)", TRUTH["ED50"], "ED50 old", "LS + percentile", "ED50 new",
     "quasi-binomial + student-t (default)"),
    ("dose slope (mixed model, /Gy)", TRUTH["slope"], "slope old", "Wald z", "slope new", "t, n_patients−1 df"),
    ("carbon − photon, equal eff. dose", contrast_truth(), "contrast old", "fixed reference curve, z",
     "contrast new", "joint patient bootstrap"),
    ("carbon/photon amplitude ratio", TRUTH["carbon"], "ratio old", "percentile", "ratio bca", "BCa"),
    ("carbon/photon amplitude ratio", TRUTH["carbon"], "ratio old", "percentile", "ratio new", "student-t (default)"),
]


def summarise(results: list[dict]) -> pd.DataFrame:
    def stat(key, truth):
        iv = np.array([r[key] for r in results], float)
        ok = np.all(np.isfinite(iv), axis=1)
        cover = (iv[ok, 0] <= truth) & (truth <= iv[ok, 1])
        fails = sum(r["_fails"].get(key, 0) for r in results)
        return cover.mean() if ok.any() else np.nan, np.median(iv[ok, 1] - iv[ok, 0]), int((~ok).sum()), fails

    rows = []
    for q, truth, ko, lo_, kn, ln in ROWS:
        co, wo, no, _ = stat(ko, truth)
        cn, wn, nn, fn = stat(kn, truth)
        rows.append({"quantity": q, "truth": round(truth, 4), "old method": lo_, "old cover": f"{co:.1%}",
                     "old width": f"{wo:.3g}", "new method": ln, "new cover": f"{cn:.1%}", "new width": f"{wn:.3g}",
                     "no CI (old/new)": f"{no}/{nn}", "failed refits (new)": fn,
                     "new ≥ 90 %": "yes" if cn >= 0.9 else "NO"})
    return pd.DataFrame(rows)


def cohort_arguments(description: str) -> argparse.ArgumentParser:
    """The command line shared by the coverage benchmarks (cohorts, bootstrap draws, seed, --quick)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-cohorts", type=int, default=200)
    ap.add_argument("--n-bootstrap", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="30 cohorts, 60 bootstrap draws")
    return ap


def run_cohorts(one, a: argparse.Namespace) -> tuple[list, int, float]:
    """``one(rng, n_bootstrap)`` for every simulated cohort, with progress on stderr.

    Returns the results that are not None, the number of None results and the seconds taken.
    """
    n_coh, n_boot = (30, 60) if a.quick else (a.n_cohorts, a.n_bootstrap)
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    results, skipped = [], 0
    for i in range(n_coh):
        r = one(rng, n_boot)
        if r is None:
            skipped += 1
        else:
            results.append(r)
        if (i + 1) % max(n_coh // 10, 1) == 0:
            print(f"  {i + 1}/{n_coh} cohorts ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return results, skipped, time.perf_counter() - t0


def main(argv=None) -> int:
    a = cohort_arguments(__doc__).parse_args(argv)
    results, _, seconds = run_cohorts(one_cohort, a)
    table = summarise(results)
    with pd.option_context("display.width", 250, "display.max_colwidth", 40):
        print(table.to_string(index=False))
    print(f"\n{len(results)} cohorts of 6 patients, {60 if a.quick else a.n_bootstrap} bootstrap draws each, "
          f"seed {a.seed}, nominal 95 %; {seconds:.0f} s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
