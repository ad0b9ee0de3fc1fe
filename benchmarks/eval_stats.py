"""Statistics vs the synthetic cohort's ground truth (issue 8's done-when table).

Usage::

    # real pipeline on the 'stats' preset (6 patients, every dose and radiation type, 1024² images)
    chemozone synth COHORT --preset stats
    chemozone run COHORT --config COHORT/config.yaml --out RUN --workers 2
    python benchmarks/eval_stats.py --run RUN --truth COHORT/truth/cohort.json

    # without the runner: a fabricated run folder (chemozone.testing.fabricate_run) with known truth
    python benchmarks/eval_stats.py --fabricated

Every check is computed twice with the same code: on the pipeline's tables (``estimate``) and on tables
built from the generator's truth cells (truth cell type, receptor flags, ``in_{zone}``) and truth zone masks
(``truth`` column; for ED50 the true ED50). A check that fails in both columns is a property of the
generated data, not a pipeline error.

Metric choices (the zones grow with dose, so the denominator matters)
--------------------------------------------------------------------
1. plateau (Emax AIC < linear AIC by > 2) in the photon arm for each chemokine zone's area fraction;
2. plateau of cognate receptor+ infiltration *amount*: receptor+ cells inside the zone per mm² of tissue,
   per lineage and pooled over the pair's lineages ("NK & CD8 T"). This metric grows with the zone for any
   population, so it is used only for attracted (receptor+) cells, never for specificity;
3. ED50 of the producer fraction (photon arm, Hill model) within 35 % of the true ED50 of each module
   (fabricated run: of the zone area, whose truth is an Emax curve);
4. receptor− cells of each pair: no dose effect, judged on metrics NOT confounded by zone size, from counts
   with area offsets (``stats.dose_rate_test``, quasi-Poisson GLM, patient effects, photon arm + 0 Gy),
   adjusted for the other chemokine zones (``stats.receptor_overlap_counts``: counts per in/out
   combination of the zones):
   (a) log2 enrichment inside/outside the zone (per-sample abundance cancels; the specificity metric),
   (b) density inside the zone (cells per mm² of zone).
   Pass = the simultaneous 95 % CI of the slope (log2 per Gy; Bonferroni over the family of receptor−
   tests, 18 with three pairs) includes 0: at 95 % per test, about one of 18 populations that do not
   respond would be flagged by chance. The per-test 95 % CI is printed too, and the number of per-test
   CIs that contain 0 is summarised below the table. The same tests without the adjustment are
   printed as info rows (4c, 4d): the modules co-localise more as their zones grow with dose, and a
   receptor− cell that carries another module's receptor is drawn into that module's zone, so the
   unadjusted control has a real (truth-column) dose trend;
5. the module weakened after carbon: lowest carbon/photon amplitude ratio at equal effective dose is the
   true weakest module, with its CI below 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from chemozone import stats
from chemozone.spatial import overlap_region_name

RECEPTORS = ("CXCR2", "CXCR3", "CCR5")


def truth_run(truth_json: Path) -> dict:
    """A ``load_run``-like dict built from the generator's truth (cells.parquet + zone/tissue masks)."""
    import tifffile

    root = truth_json.parent
    j = json.loads(truth_json.read_text())
    par = j.get("parameters", j)
    px = float(par["pixel_size_um"])
    modules = list(par["modules"])
    recs = [r for r in RECEPTORS if any(par["modules"][m].get("receptor") == r for m in modules)] or list(RECEPTORS)
    samp, zones, inf, cells, ovl = [], [], [], [], []
    for sid, meta in j["samples"].items():
        d = root / sid
        if not (d / "cells.parquet").is_file():
            continue
        c = pd.read_parquet(d / "cells.parquet")
        tis = tifffile.imread(d / "tissue.tif") > 0
        a_t = tis.sum() * px * px / 1e6
        samp.append({"sample_id": sid, "patient": meta["patient"], "radiation": meta["radiation"],
                     "dose_gy": float(meta["dose_gy"])})
        pop = c["cell_type"].astype(str)
        for r in recs:
            if f"{r}_pos" in c:
                pop = pop + np.where(c[f"{r}_pos"], f" {r}+", "")
        c = c.assign(population=pop)
        cells.append(c[["sample_id", "cell_type"] + [f"{m}_pos" for m in modules if f"{m}_pos" in c]])
        zmasks = {m: (tifffile.imread(d / f"zone_{m}.tif") > 0) & tis for m in modules}
        code = np.zeros(tis.shape, np.int64)
        ccode = np.zeros(len(c), np.int64)
        for i, m in enumerate(modules):
            code |= zmasks[m].astype(np.int64) << i
            ccode |= c[f"in_{m}"].to_numpy(bool).astype(np.int64) << i
        area = np.bincount(code[tis], minlength=1 << len(modules)) * px * px / 1e6
        for k in np.nonzero(area > 0)[0]:
            fl = {f"in_{m}": bool(k >> i & 1) for i, m in enumerate(modules)}
            n = c.loc[ccode == k].groupby("population").size().reindex(pop.unique(), fill_value=0)
            ovl.append(pd.DataFrame({"sample_id": sid, "population_type": "phenotype", "population": n.index,
                                     "region": overlap_region_name([fl[f"in_{m}"] for m in modules], modules),
                                     **fl, "n_cells": n.to_numpy(), "area_mm2": area[k]}))
        for m in modules:
            zm = zmasks[m]
            a_in = zm.sum() * px * px / 1e6
            zones.append({"sample_id": sid, "zone": m, "area_mm2": a_in, "tissue_area_mm2": a_t,
                          "area_fraction": a_in / a_t})
            for reg, area, sel in (("inside", a_in, c[f"in_{m}"]), ("outside", a_t - a_in, ~c[f"in_{m}"])):
                n = c.loc[sel].groupby("population").size().reindex(pop.unique(), fill_value=0)
                inf.append(pd.DataFrame({"sample_id": sid, "population_type": "phenotype", "population": n.index,
                                         "zone": m, "region": reg, "n_cells": n.to_numpy(), "area_mm2": area}))
    samples = pd.DataFrame(samp)
    eff = dict(par.get("effectiveness") or {})
    samples = stats.add_effective_dose(samples, eff, strict=False)
    pairs = [{"zone": m, "receptor": par["modules"][m]["receptor"], "cell_types": ["NK", "CD8 T"]} for m in modules]
    run = {"samples": samples, "zones": pd.DataFrame(zones), "infiltration": pd.concat(inf, ignore_index=True),
           "cells": pd.concat(cells, ignore_index=True), "zone_overlap": pd.concat(ovl, ignore_index=True),
           "effectiveness": eff,
           "run": {"config": {"spatial": {"cognate_pairs": pairs}}, "samples": {}}}
    for k in ("zones", "infiltration", "cells"):
        run[k] = run[k].merge(samples, on="sample_id", how="left")
    return run


def _ci(lo, hi, fmt="{:+.3f}"):
    return f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def evaluate(run: dict, modules: dict, *, pairs, n_bootstrap: int, fabricated: bool,
             ed50_gm: float | None = None) -> pd.DataFrame:
    """Rows: check, metric, estimate, ci, pass (+ numeric ``value`` for joining)."""
    eff = run["effectiveness"]
    rows = []
    raw95: list[tuple[bool, bool]] = []  # (info row, per-test 95 % CI contains 0) of the receptor− tests

    def add(check, metric, estimate, ci, ok, target, shown=None):
        # ok None: an info row (not counted); ``shown`` is then its outcome for the ✓/✗ mark
        rows.append({"check": check, "metric": metric, "estimate": estimate, "CI": ci, "target": target,
                     "pass": None if ok is None else bool(ok), "met": bool(ok if ok is not None else shown)})

    areas = stats.metric_table(run, "zone_area")
    if "effective_dose_gy" not in areas:
        areas = stats.add_effective_dose(areas, eff, strict=False)
    zone_of = {z: f"area_fraction_{z}" for z in modules if f"area_fraction_{z}" in areas}
    # 1. plateau of zone area
    fits = stats.fit_dose_response(areas, metric=list(zone_of.values()), models=("linear", "emax"), n_bootstrap=0)
    for _z, col in zone_of.items():
        r = fits[(fits["metric"] == col) & (fits["group"] == "photon") & (fits["model"] == "emax")].iloc[0]
        add("1 plateau: zone area fraction", col, f"ΔAIC {r['plateau_delta_aic']:.1f}", "", r["plateau_delta_aic"] > 2,
            "ΔAIC(lin−emax) > 2")
    # 2. plateau of cognate receptor+ infiltration amount (per mm² tissue)
    per_t = stats.metric_table(run, "receptor_density", pairs=pairs, per="tissue", pool=True)
    for c in [c for c in per_t.columns if "+ in " in c]:
        f = stats.fit_dose_response(per_t, metric=c, models=("linear", "emax"), n_bootstrap=0)
        r = f[(f["group"] == "photon") & (f["model"] == "emax")].iloc[0]
        add("2 plateau: receptor+ in zone per mm² tissue", c, f"ΔAIC {r['plateau_delta_aic']:.1f}", "",
            r["plateau_delta_aic"] > 2, "ΔAIC(lin−emax) > 2")
    # 4. receptor− no dose effect: enrichment and zone density from counts (not confounded by zone size)
    if pairs:
        plain = stats.receptor_count_table(run, pairs=pairs, pool=True)
        tests = [(plain, False, ("4a no dose effect: receptor− log2 enrichment in/out",
                                 "4b no dose effect: receptor− cells/mm² of zone"))]
        ovl = run.get("zone_overlap")
        if ovl is not None and len(ovl):  # a run folder with zone_overlap.parquet: adjust for the other zones
            adjusted = stats.receptor_overlap_counts(run, pairs=pairs, pool=True)
            tests = [(adjusted, False, ("4a no dose effect: receptor− log2 enrichment in/out, adjusted for other zones",
                                        "4b no dose effect: receptor− cells/mm² of zone, adjusted for other zones")),
                     (plain, True, ("4c (info) receptor− log2 enrichment in/out, unadjusted",
                                    "4d (info) receptor− cells/mm² of zone, unadjusted"))]
        for counts, info, (la, lb) in tests:
            counts = counts[counts["status"] == "neg"]
            k = 2 * counts.groupby(["zone", "receptor", "cell_type"]).ngroups  # both contrasts, photon arm
            for contrast, label in (("enrichment", la), ("density", lb)):
                t = stats.dose_rate_test(counts, contrast=contrast)
                # simultaneous 95 % CIs over the family (Bonferroni): 18 receptor− tests at 95 % each would
                # flag about one population by chance even when none responds to dose
                ts = stats.dose_rate_test(counts, contrast=contrast, alpha=0.05 / max(k, 1))
                t, ts = t[t["arm"] == "photon"], ts[ts["arm"] == "photon"]
                for (_, r), (_, rs) in zip(t.iterrows(), ts.iterrows()):
                    ok = rs["ci_lo"] <= 0 <= rs["ci_hi"]
                    raw_ok = r["ci_lo"] <= 0 <= r["ci_hi"]
                    raw95.append((info, raw_ok))
                    add(label, f"{r['cell_type']} {r['receptor']}- in {r['zone']}",
                        f"{r['estimate']:+.3f} log2/Gy", _ci(r["ci_lo"], r["ci_hi"]) + " | " + _ci(rs["ci_lo"], rs["ci_hi"]),
                        None if info else ok, f"simult. CI ∋ 0 ({k} tests)" + (" (info)" if info else ""), shown=ok)
    # 3. ED50 photon arm
    if fabricated:
        ed_table, ed_metric, model = areas, zone_of, "emax"
    else:
        pf = stats.metric_table(run, "producer_fraction",
                                markers=[m for m in modules if f"{m}_pos" in run["cells"].columns])
        ed_table, ed_metric, model = pf, {m: f"producer_fraction_{m}" for m in modules
                                          if f"producer_fraction_{m}" in pf}, "hill"
    f3 = stats.fit_dose_response(ed_table, metric=list(ed_metric.values()), models=("linear", "emax", "hill"),
                                 n_bootstrap=n_bootstrap, seed=0)
    for m, col in ed_metric.items():
        r = f3[(f3["metric"] == col) & (f3["group"] == "photon") & (f3["model"] == model)].iloc[0]
        t = modules[m]["ed50_gy"]
        # the cohort's own patients scale ED50 (log-normal, SD 0.2): their geometric mean, for reading a miss
        cohort = f" (patients' {t * ed50_gm:.2f})" if ed50_gm is not None else ""
        add(f"3 ED50 within 35% (photon, {model})", col, f"{r['ED50']:.2f} Gy",
            _ci(r["ED50_ci_lo"], r["ED50_ci_hi"], "{:.2f}"), abs(r["ED50"] / t - 1) < 0.35,
            f"{t:g} Gy ± 35%{cohort}")
    # 5. weaker module after carbon (equal effective dose)
    ratios = {}
    src = ed_table if "effective_dose_gy" in ed_table else stats.add_effective_dose(ed_table, eff, strict=False)
    for m, col in ed_metric.items():
        ra = stats.relative_amplitude(src, metric=col, n_bootstrap=n_bootstrap, model="emax").set_index("group")
        if "carbon" in ra.index:
            ratios[m] = ra.loc["carbon"]
            tr = modules[m]["conservation"].get("carbon", 1)
            add("5 carbon/photon amplitude, equal effective dose", col, f"{ra.at['carbon', 'ratio']:.2f}",
                _ci(ra.at["carbon", "ratio_ci_lo"], ra.at["carbon", "ratio_ci_hi"], "{:.2f}"), None, f"{tr:g} (info)",
                shown=True)
    if ratios:
        weakest = min(ratios, key=lambda k: ratios[k]["ratio"])
        true_weak = min(modules, key=lambda k: modules[k]["conservation"].get("carbon", 1.0))
        add("5 weaker module after carbon detected", weakest, f"{ratios[weakest]['ratio']:.2f}",
            _ci(ratios[weakest]["ratio_ci_lo"], ratios[weakest]["ratio_ci_hi"], "{:.2f}"),
            weakest == true_weak and ratios[weakest]["ratio_ci_hi"] < 1, f"{true_weak}, CI < 1")
    out = pd.DataFrame(rows)
    counted = [ok for info, ok in raw95 if not info]
    out.attrs["raw95"] = (sum(counted), len(counted))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="run folder of the stats cohort")
    ap.add_argument("--truth", type=Path, help="COHORT/truth/cohort.json")
    ap.add_argument("--fabricated", action="store_true", help="fabricate a run folder (no runner needed)")
    ap.add_argument("--no-truth-cells", action="store_true", help="skip the truth-cell column (faster)")
    ap.add_argument("--n-bootstrap", type=int, default=100)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    truth_tab = None
    if a.fabricated:
        import tempfile

        from chemozone.testing import EFFECTIVENESS, TRUTH, fabricate_run

        out = Path(tempfile.mkdtemp(prefix="eval-stats-")) / "run"
        fabricate_run(out, n_patients=6, seed=0)
        modules = {z: {"ed50_gy": t["ed50"], "conservation": t["cons"]} for z, t in TRUTH.items()}
        run = stats.load_run(out)
        run["effectiveness"] = run["effectiveness"] or EFFECTIVENESS
        label = "fabricated"
    else:
        if not (a.run and a.truth):
            ap.error("give --run and --truth, or --fabricated")
        tj = json.loads(a.truth.read_text())
        modules = tj.get("parameters", tj)["modules"]
        run = stats.load_run(a.run)
        run["effectiveness"] = run["effectiveness"] or tj.get("parameters", tj).get("effectiveness")
        label = str(a.run)
    pairs = (run["run"]["config"].get("spatial") or {}).get("cognate_pairs") or []
    ed50_gm = None
    if not a.fabricated:
        pats = tj.get("patients") or {}
        mult = [v["ed50_mult"] for v in pats.values() if "ed50_mult" in v]
        ed50_gm = float(np.exp(np.mean(np.log(mult)))) if mult else None
    table = evaluate(run, modules, pairs=pairs, n_bootstrap=a.n_bootstrap, fabricated=a.fabricated, ed50_gm=ed50_gm)
    raw_counts, truth_raw = table.attrs.get("raw95", (0, 0)), None
    if not a.fabricated and not a.no_truth_cells:
        tr = truth_run(a.truth)
        truth_tab = evaluate(tr, modules, pairs=pairs, n_bootstrap=min(a.n_bootstrap, 50), fabricated=False,
                             ed50_gm=ed50_gm)
        truth_raw = truth_tab.attrs.get("raw95")
        truth_tab["truth"] = (truth_tab["estimate"] + " " + truth_tab["CI"]).str.strip() + np.where(
            truth_tab["met"], " ✓", " ✗")
        table = table.merge(truth_tab[["check", "metric", "truth"]], on=["check", "metric"], how="left")
        table["truth"] = table["truth"].fillna("")
    table = table.sort_values("check", kind="stable").reset_index(drop=True)
    counted = table["pass"].notna()
    ok = table["pass"].eq(True)
    table["pass"] = np.where(~counted, np.where(table["met"], "info ✓", "info ✗"), np.where(ok, "PASS", "FAIL"))
    table = table.drop(columns="met")
    with pd.option_context("display.width", 250, "display.max_colwidth", 80, "display.max_rows", 200):
        print(table.to_string(index=False))
    print(f"\n{int(ok.sum())}/{int(counted.sum())} checks pass ({time.perf_counter() - t0:.0f} s, {label}; "
          f"{int((~counted).sum())} info rows not counted)")
    n_ok, n_all = raw_counts
    if n_all:
        print(f"receptor− tests (4a, 4b) whose per-test 95 % CI contains 0: {n_ok}/{n_all} "
              f"(CI column: per-test 95 % | simultaneous 95 %, Bonferroni)"
              + (f"; truth cells: {truth_raw[0]}/{truth_raw[1]}" if truth_raw else ""))
    if truth_tab is not None:
        tc = truth_tab["pass"].notna()
        print(f"same checks on the generator's truth cells: {int(truth_tab['pass'].eq(True).sum())}/{int(tc.sum())} "
              f"pass (truth column: same metric and test on truth cell types, receptor flags and zone masks)")
    return 0 if ok[counted].all() else 1


if __name__ == "__main__":
    sys.exit(main())
