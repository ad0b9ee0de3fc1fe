"""Statistics vs the synthetic cohort's ground truth (issue 8's done-when table).

Usage::

    # real pipeline on the 'stats' preset (6 patients, every dose and radiation type, 512² images)
    chemozone synth COHORT --preset stats
    chemozone run COHORT --config COHORT/config.yaml --out RUN --workers 2
    python benchmarks/eval_stats.py --run RUN --truth COHORT/truth/cohort.json

    # without the runner: a fabricated run folder (tests/conftest_stats.py) with known truth
    python benchmarks/eval_stats.py --fabricated

Checks (printed as a table, PASS/FAIL):
1. plateau (Emax AIC < linear AIC by > 2) in the photon arm for each chemokine zone's area fraction;
2. plateau for cognate receptor+ infiltration (cells of the cognate pair inside the zone, per mm² tissue);
3. ED50 of the producer fraction (photon arm, Hill model) within 35 % of the true ED50 of each module
   (fabricated run: of the zone area, whose truth is an Emax curve);
4. receptor− cells of each pair: no dose effect (95 % CI of the photon slope in a mixed model on
   density inside the zone, cells/mm² per Gy, includes 0);
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


def evaluate(run_dir: Path, truth: dict, *, n_bootstrap: int, fabricated: bool) -> pd.DataFrame:
    run = stats.load_run(run_dir)
    eff = run["effectiveness"] or truth.get("effectiveness")
    pairs = (run["run"]["config"].get("spatial") or {}).get("cognate_pairs") or []
    modules = truth["modules"] if not fabricated else {
        z: {"ed50_gy": t["ed50"], "conservation": t["cons"]} for z, t in truth["modules"].items()}
    rows = []

    def add(check, metric, value, target, ok):
        rows.append({"check": check, "metric": metric, "value": value, "target": target, "pass": bool(ok)})

    areas = stats.metric_table(run, "zone_area")
    if "effective_dose_gy" not in areas:
        areas = stats.add_effective_dose(areas, eff, strict=False)
    zone_of = {z: f"area_fraction_{z}" for z in modules if f"area_fraction_{z}" in areas}
    # 1. plateau of zone area
    fits = stats.fit_dose_response(areas, metric=list(zone_of.values()), n_bootstrap=n_bootstrap, seed=0)
    for z, col in zone_of.items():
        r = fits[(fits["metric"] == col) & (fits["group"] == "photon") & (fits["model"] == "emax")].iloc[0]
        add("plateau: zone area (photon)", col, f"ΔAIC lin−emax {r['plateau_delta_aic']:.1f}", "> 2",
            r["plateau_delta_aic"] > 2)
    # 2. plateau of cognate receptor+ infiltration, 4. receptor− flat
    per_t = stats.metric_table(run, "receptor_density", pairs=pairs, per="tissue")
    per_z = stats.metric_table(run, "receptor_density", pairs=pairs, per="zone")
    for c in [c for c in per_t.columns if "+ in " in c]:
        f = stats.fit_dose_response(per_t, metric=c, models=("linear", "emax"), n_bootstrap=0)
        r = f[(f["group"] == "photon") & (f["model"] == "emax")].iloc[0]
        add("plateau: receptor+ in zone, per mm² tissue (photon)", c,
            f"ΔAIC lin−emax {r['plateau_delta_aic']:.1f}", "> 2", r["plateau_delta_aic"] > 2)
    for c in [c for c in per_z.columns if "- in " in c]:
        mm = stats.mixed_model(per_z, metric=c).set_index("term").loc["slope[photon]"]
        add("no dose effect: receptor− cells/mm² in zone (photon slope)", c,
            f"{mm['estimate']:+.2f} [{mm['ci_lo']:+.2f}, {mm['ci_hi']:+.2f}]", "CI ∋ 0",
            mm["ci_lo"] <= 0 <= mm["ci_hi"])
    # 3. ED50 photon arm
    if fabricated:
        ed_table, ed_metric, model = areas, zone_of, "emax"
    else:
        pf = stats.metric_table(run, "producer_fraction", markers=[m for m in modules
                                                                   if f"{m}_pos" in run["cells"].columns])
        ed_table, ed_metric, model = pf, {m: f"producer_fraction_{m}" for m in modules
                                          if f"producer_fraction_{m}" in pf}, "hill"
    f3 = stats.fit_dose_response(ed_table, metric=list(ed_metric.values()), n_bootstrap=n_bootstrap, seed=0)
    for m, col in ed_metric.items():
        r = f3[(f3["metric"] == col) & (f3["group"] == "photon") & (f3["model"] == model)].iloc[0]
        t = modules[m]["ed50_gy"]
        add(f"ED50 within 35% (photon, {model})", col,
            f"{r['ED50']:.2f} Gy [{r['ED50_ci_lo']:.2f}, {r['ED50_ci_hi']:.2f}] vs truth {t:g}",
            "|err| < 35%", abs(r["ED50"] / t - 1) < 0.35)
    # 5. weaker module after carbon (equal effective dose)
    ratios = {}
    src = ed_table if not fabricated else areas
    if "effective_dose_gy" not in src:
        src = stats.add_effective_dose(src, eff, strict=False)
    for m, col in ed_metric.items():
        ra = stats.relative_amplitude(src, metric=col, n_bootstrap=n_bootstrap, model="emax").set_index("group")
        if "carbon" in ra.index:
            ratios[m] = ra.loc["carbon"]
            add("carbon/photon amplitude at equal effective dose", col,
                f"{ra.at['carbon', 'ratio']:.2f} [{ra.at['carbon', 'ratio_ci_lo']:.2f}, "
                f"{ra.at['carbon', 'ratio_ci_hi']:.2f}] (truth {modules[m]['conservation'].get('carbon', 1):g})",
                "—", True)
    if ratios:
        weakest = min(ratios, key=lambda k: ratios[k]["ratio"])
        true_weak = min(modules, key=lambda k: modules[k]["conservation"].get("carbon", 1.0))
        add("weaker module after carbon detected", weakest, f"CI hi {ratios[weakest]['ratio_ci_hi']:.2f}",
            f"= {true_weak}, CI < 1", weakest == true_weak and ratios[weakest]["ratio_ci_hi"] < 1)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="run folder of the stats cohort")
    ap.add_argument("--truth", type=Path, help="COHORT/truth/cohort.json")
    ap.add_argument("--fabricated", action="store_true", help="fabricate a run folder (no runner needed)")
    ap.add_argument("--n-bootstrap", type=int, default=100)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.fabricated:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import tempfile

        from conftest_stats import EFFECTIVENESS, TRUTH, fabricate_run

        out = Path(tempfile.mkdtemp(prefix="eval-stats-")) / "run"
        fabricate_run(out, n_patients=6, seed=0)
        truth = {"modules": TRUTH, "effectiveness": EFFECTIVENESS}
        run_dir = out
    else:
        if not (a.run and a.truth):
            ap.error("give --run and --truth, or --fabricated")
        run_dir = a.run
        truth = json.loads(a.truth.read_text())
        truth = truth.get("parameters", truth)
    table = evaluate(run_dir, truth, n_bootstrap=a.n_bootstrap, fabricated=a.fabricated)
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table.to_string(index=False))
    print(f"\n{int(table['pass'].sum())}/{len(table)} checks pass ({time.perf_counter() - t0:.0f} s, "
          f"{'fabricated' if a.fabricated else str(run_dir)})")
    return 0 if table["pass"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
