"""Zone accuracy of every zone mode a user can pick, on finished runs of two generators, side by side.

For each cohort (``chemozone synth`` and the independent ``python -m chemozone.stress``) and its run folder
(``chemozone run`` with a config written from the README, e.g. by ``benchmarks/eval_user_config.py --work DIR``),
this script rebuilds each chemokine zone with chemozone's own functions (``zone_signal``, ``signal_summary``,
``compute_zone_thresholds``, ``threshold_zone_signal``, ``producer_zone``), using the run's tissue masks and
phenotypes, for every mode below and several smoothing scales, and scores it against the truth zones:

* ``reference q0.99``: 99th percentile of the same patient's sham tissue pixels (README's recommendation so far);
* ``background a0.001``: robust background model of the same patient's sham (median + z * lower-half SD,
  sigma-clipped), expected 0.1 % of background pixels above it;
* ``halfmax f0.5``: the same patient's sham median + half the signal of one producer cell (the run's gates for the
  chemokine; median over the cohort's irradiated producers, neighbours' share taken out);
* ``pooled otsu`` / ``pooled triangle``: one threshold over the cohort's pooled tissue pixels;
* ``producers r15`` / ``r20``: tissue within r µm of a cell the run gated positive for the chemokine;
  ``producers r20 n2`` ...: producer milieus, tissue with at least n such cells within r µm (Hoch et al. 2022).
* ``hull l20 n3 m10`` ...: Hoch et al.'s milieus as imcRtools defines them (``milieu: hull``): producers closer than
  l µm form a patch, patches of at least n cells keep their convex hull widened by m µm.

Nothing comes from a generator: thresholds are computed from the images by the library; the truth is used
only to score. Criteria of issue 15 (irradiated samples): median IoU >= 0.8, minimum >= 0.7; sham zone fraction
within 2 percentage points of the truth; Spearman(zone fraction, dose) >= 0.9 over sham + photon doses (worst
zone; ``spearman_truth`` is the same statistic on the truth zones: patients differ, so the truth itself can miss it).

    python benchmarks/eval_zones_user.py --work /tmp/evaluser          # after eval_user_config.py --work /tmp/evaluser
    python benchmarks/eval_zones_user.py --work H --seed 2 --smooth 10 # eval_user_config.py --work H --seed 2, plus
        # python -m chemozone.stress H/sz --preset zones --seed 2 and chemozone run H/sz --config
        # benchmarks/configs/stress_user.yaml --out H/szrun (the README's seed-2 rows)
    python benchmarks/eval_zones_user.py --cohort synth=COHORT,RUN --cohort stress=COHORT,RUN --smooth 4 10

Measured: see README, "How good are the zones".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))

from chemozone._zone_compartments import offset_rows, sample_tumor_lattice, tumor_fraction_at  # noqa: E402
from chemozone._zone_halfmax import signal_at_cells  # noqa: E402
from chemozone.config import ThresholdConfig, ZoneConfig  # noqa: E402
from chemozone.grid import block_mean, grid_factor  # noqa: E402
from chemozone.io import labels_pixel_size_um, read_image, read_labels_zarr, resolve_channels  # noqa: E402
from chemozone.layout import RunLayout  # noqa: E402
from chemozone.phenotype import marker_column  # noqa: E402
from chemozone.zones import (  # noqa: E402
    compute_zone_thresholds,
    producer_zone,
    signal_summary,
    threshold_zone_signal,
    zone_signal,
)

CHEMOKINES = ["CXCL8", "CXCL10", "CCL5"]
MODES = {
    "reference q0.99": {"mode": "reference", "quantile": 0.99},
    "background a0.001": {"mode": "background", "error_rate": 0.001},
    "halfmax f0.5": {"mode": "halfmax", "fraction": 0.5},
    "pooled otsu": {"mode": "pooled", "method": "otsu"},
    "pooled triangle": {"mode": "pooled", "method": "triangle"},
}
PRODUCER_MILIEUS = [(15.0, 1), (20.0, 1), (20.0, 2), (20.0, 3), (30.0, 3)]
"""Producer zones: (radius_um, min_producers); min_producers > 1 is a producer milieu (Hoch et al. 2022)."""
BOUND_FACTORS = np.linspace(0.5, 1.5, 41)
"""``--bound``: each irradiated sample's threshold times these factors; the best IoU is the sample's bound."""
HULL_MILIEUS = [(20.0, 1, 10.0), (20.0, 3, 10.0), (20.0, 3, 20.0)]
"""Hoch et al.'s milieus (``milieu: hull``): (link_um, min_producers, margin_um = radius_um), convex hulls."""


def load_cohort(cohort: Path, run: Path, smooths: list[float]) -> tuple[pd.DataFrame, dict]:
    """Per sample: tissue (run), truth zones on the grid, smoothed signals per chemokine and smoothing, cells."""
    samples = pd.read_csv(cohort / "samples.csv")
    lay = RunLayout(run)
    markers = json.loads(lay.run_json.read_text())["config"]["phenotypes"]["markers"]
    data = {}
    for s in samples.itertuples():
        img = read_image(cohort / s.image)
        chems = [c for c in CHEMOKINES if (cohort / "truth" / s.sample_id / f"zone_{c}.tif").is_file()]
        g = labels_pixel_size_um(lay.masks(s.sample_id), "tissue")
        tissue = read_labels_zarr(lay.masks(s.sample_id), "tissue").astype(bool)
        f = grid_factor(img.pixel_size_um, g)
        idx = resolve_channels(img.channels, chems, source=img.path)
        d = {"tissue": tissue, "grid_um": g, "cells": pd.read_parquet(lay.cells(s.sample_id)), "chems": chems,
             "compartments": {c: markers[c]["compartment"] for c in chems if c in markers}}
        d["tumor_lattice"] = run_tumor_lattice(d["cells"], run)
        for c, ci in zip(chems, idx):
            truth = tifffile.imread(cohort / "truth" / s.sample_id / f"zone_{c}.tif") > 0
            d[("truth", c)] = (block_mean(truth, f) >= 0.5) & tissue
            for sm in smooths:
                d[("signal", c, sm)] = zone_signal(img.data, channel_indices=[ci], pixel_size_um=img.pixel_size_um,
                                                   grid_um=g, smooth_um=sm, background_quantile=0.05, tissue=tissue)
        data[s.sample_id] = d
    return samples, data


def run_tumor_lattice(cells: pd.DataFrame, run: Path):
    """The tumor-fraction lattice of a sample as the run's cohort step and step B build it (its tumor zone's marker
    gate, :mod:`chemozone._zone_compartments`), or None when the run's config has no gated tumor marker."""
    zones = [ZoneConfig(**z) for z in json.loads(RunLayout(run).run_json.read_text())["config"]["zones"]]
    return sample_tumor_lattice(cells, zones)


def _offset(lattice, offsets: tuple[float, float], grid_um: float, n_cols: int):
    """``threshold_zone_signal``'s offset map of one channel (as step B builds it), or None without offsets."""
    if lattice is None or not any(offsets):
        return None
    return lambda rows: offset_rows(*lattice, *offsets, grid_um=grid_um, rows=rows, n_cols=n_cols)[None]


def _scores(rows: list[dict]) -> dict:
    r = pd.DataFrame(rows)
    irr, sham = r[r.dose_gy > 0], r[r.dose_gy == 0]
    arm = r[r.radiation.isin(["sham", "photon"])].groupby("zone")
    rho = [spearmanr(g.dose_gy, g.fraction)[0] for _, g in arm]
    rho_truth = [spearmanr(g.dose_gy, g.truth_fraction)[0] for _, g in arm]  # the same statistic on the truth zones
    return {"median_iou": irr.iou.median(), "min_iou": irr.iou.min(),
            "sham_error_pp": 100 * (sham.fraction - sham.truth_fraction).abs().max(),
            "spearman_dose": float(np.nanmin(rho)) if rho else float("nan"),
            "spearman_truth": float(np.nanmin(rho_truth)) if rho_truth else float("nan"),
            "area_ratio": (irr.fraction / irr.truth_fraction.where(irr.truth_fraction > 0)).median()}


def _row(s, c: str, mask: np.ndarray, d: dict) -> dict:
    truth, tis = d[("truth", c)], d["tissue"]
    union = (mask | truth).sum()
    return {"sample_id": s.sample_id, "zone": c, "dose_gy": s.dose_gy, "radiation": s.radiation,
            "iou": (mask & truth).sum() / union if union else 1.0,
            "fraction": mask.sum() / tis.sum(), "truth_fraction": truth.sum() / tis.sum()}


def pixel_mode_rows(samples: pd.DataFrame, data: dict, mode: dict, sm: float, bound: bool = False) -> list[dict]:
    zones = [ZoneConfig(name=c, channels=[c], smooth_um=sm, threshold=ThresholdConfig(**mode))
             for c in data[samples.sample_id[0]]["chems"]]
    summ = pd.concat([signal_summary(data[s][("signal", z.name, sm)], data[s]["tissue"], sample_id=s, zone=z.name,
                                     channels=[z.name]) for s in samples.sample_id for z in zones])
    at = None
    if mode["mode"] == "halfmax":  # the run's own producer calls (its gates), as chemozone run's cohort step makes them
        frames = []
        for s in samples.sample_id:
            c, lat = data[s]["cells"], data[s].get("tumor_lattice")
            tf = (tumor_fraction_at(*lat, c["x_um"].to_numpy(float), c["y_um"].to_numpy(float)) if lat is not None
                  else np.full(len(c), np.nan))
            for z in zones:
                frames.append(signal_at_cells(data[s][("signal", z.name, sm)], c, grid_um=data[s]["grid_um"],
                                              sample_id=s, zone=z.name, channels=[z.name]).assign(
                    producer=c[f"{z.name}_pos"].to_numpy(bool),
                    intensity=c[marker_column(c, z.name, data[s]["compartments"][z.name])].to_numpy(float),
                    tumor_fraction=tf))
        at = pd.concat(frames)
    thr = compute_zone_thresholds(summ, samples, zones=zones, cell_signals=at).set_index(["sample_id", "zone"])
    rows = []
    for s in samples.itertuples():
        d = data[s.sample_id]
        for z in zones:
            t = thr.loc[(s.sample_id, z.name)]
            off = _offset(d.get("tumor_lattice"), (float(t["tumor_offset"]), float(t["stroma_offset"])), d["grid_um"],
                          d["tissue"].shape[1])
            m = threshold_zone_signal(d[("signal", z.name, sm)], [float(t["threshold"])], d["tissue"],
                                      grid_um=d["grid_um"], min_area_um2=z.min_area_um2, fill_holes=z.fill_holes,
                                      offset=off)
            row = _row(s, z.name, m, d)
            if bound and s.dose_gy > 0:  # the sample's best single threshold, picked with the truth: not a mode
                row["iou"] = max(_row(s, z.name, threshold_zone_signal(
                    d[("signal", z.name, sm)], [float(t["threshold"]) * f], d["tissue"], grid_um=d["grid_um"],
                    min_area_um2=z.min_area_um2, fill_holes=z.fill_holes, offset=off), d)["iou"]
                    for f in BOUND_FACTORS)
            rows.append(row)
    return rows


def producer_rows(samples: pd.DataFrame, data: dict, radius_um: float, min_producers: int = 1, **milieu) -> list[dict]:
    rows = []
    for s in samples.itertuples():
        d = data[s.sample_id]
        for c in d["chems"]:
            m = producer_zone(d["cells"], d["tissue"], grid_um=d["grid_um"], producer_marker=c, radius_um=radius_um,
                              min_producers=min_producers, **milieu)
            rows.append(_row(s, c, m, d))
    return rows


def evaluate(name: str, cohort: Path, run: Path, smooths: list[float], bound: bool = False) -> pd.DataFrame:
    samples, data = load_cohort(cohort, run, smooths)
    out = []
    for label, mode in MODES.items():
        for sm in smooths:
            out.append({"generator": name, "mode": label, "smooth_um": sm, **_scores(pixel_mode_rows(samples, data, mode, sm))})
    if bound:
        for sm in smooths:
            out.append({"generator": name, "mode": "bound (halfmax, truth-picked)", "smooth_um": sm,
                        **_scores(pixel_mode_rows(samples, data, MODES["halfmax f0.5"], sm, bound=True))})
    for r, n in PRODUCER_MILIEUS:
        out.append({"generator": name, "mode": f"producers r{r:g}" + (f" n{n}" if n > 1 else ""),
                    "smooth_um": float("nan"), **_scores(producer_rows(samples, data, r, n))})
    for link, n, margin in HULL_MILIEUS:
        out.append({"generator": name, "mode": f"hull l{link:g} n{n} m{margin:g}", "smooth_um": float("nan"),
                    **_scores(producer_rows(samples, data, margin, n, milieu="hull", link_um=link))})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="folder of eval_user_config.py --work (synth-full-sS, stress-full-sS, runs; "
                    "plus sz/ and szrun/ when present: the stress zones preset and its run)")
    ap.add_argument("--seed", type=int, default=0, help="the --seed of eval_user_config.py (folder names; default 0)")
    ap.add_argument("--cohort", action="append", default=[], help="NAME=COHORT,RUN (repeatable)")
    ap.add_argument("--smooth", type=float, nargs="+", default=[4.0, 6.0, 10.0])
    ap.add_argument("--bound", action="store_true", help="add a row per smoothing with each irradiated sample's best "
                    "single halfmax threshold (its own threshold x 0.5-1.5, picked with the truth): what no threshold "
                    "rule can beat on that signal; not a mode")
    a = ap.parse_args(argv)
    sets = [(c.split("=")[0], *map(Path, c.split("=")[1].split(","))) for c in a.cohort]
    if a.work:
        for gen, cfg in (("synth", "synth_user"), ("stress", "stress_user")):
            sets.append((gen, a.work / f"{gen}-full-s{a.seed}", a.work / f"run-{gen}-full-s{a.seed}-{cfg}"))
        if (a.work / "sz" / "samples.csv").is_file() and (a.work / "szrun" / "run.json").is_file():
            sets.append(("stress_zones", a.work / "sz", a.work / "szrun"))
    if not sets:
        ap.error("give --work or --cohort")
    table = pd.concat([evaluate(*s, a.smooth, a.bound) for s in sets], ignore_index=True)
    ok = (table.median_iou >= 0.8) & (table.min_iou >= 0.7) & (table.sham_error_pp <= 2) & (table.spearman_dose >= 0.9)
    table["meets_issue_15"] = np.where(ok, "yes", "no")
    table.loc[table["mode"].str.startswith("bound"), "meets_issue_15"] = "-"  # uses the truth
    with pd.option_context("display.width", 200):
        print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
