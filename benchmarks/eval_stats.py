"""Statistics vs the synthetic cohort's ground truth (issues 8 and 15): checks that can fail.

Usage::

    # real pipeline on the 'stats' preset (6 patients, every dose and radiation type, 1024² images)
    chemozone synth COHORT --preset stats
    chemozone run COHORT --config COHORT/config.yaml --out RUN --workers 2
    python benchmarks/eval_stats.py --run RUN --truth COHORT/truth/cohort.json

    # the same checks on the generator's truth cells and zone masks only (no run folder needed)
    python benchmarks/eval_stats.py --truth COHORT/truth/cohort.json --truth-only

    # without the runner: a fabricated run folder (chemozone.testing.fabricate_run) with known truth
    python benchmarks/eval_stats.py --fabricated

    # the independent stress generator (co-localised modules), with the config a user writes
    python -m chemozone.stress COHORT --preset stats
    chemozone run COHORT --config benchmarks/configs/stress_user.yaml --out RUN --workers 1
    python benchmarks/eval_stats.py --run RUN --truth COHORT/truth/cohort.json
    python benchmarks/eval_stats.py --truth COHORT/truth/cohort.json --truth-only

The generator is read from ``truth/cohort.json`` (``"generator": "chemozone.stress"``). The stress truth is
mapped to the same checks (:func:`truth_parameters`): the cognate receptors are ``chemozone.stress.MODULES``
(CXCL10 → CXCR3, CCL5 → CCR5), the true ED50 is the producer fraction's (``modules.*.ed50_gy``, 4 Gy; the
zone area saturates earlier, about 3.5 Gy, and is not what check 3 compares with), effectiveness and
conservation come from its ``radiation`` table (carbon 2.5; CXCL10 0.5, CCL5 1.0). One definition differs,
beside the synth one rather than instead of it: receptor− in check 4 means negative for **every** receptor
of the run, because that generator recruits into each zone cells that carry its receptor and gives them the
other receptor by lineage, so with co-localised zones a CCR5+ CXCR3− cell drawn into a CCL5 zone sits in the
CXCL10 zone too (a real dose trend of "CXCR3−" cells; the cognate-only definition is kept as info rows).
A run whose ``stats.effectiveness`` names only some of its radiation types (``stress_user.yaml``: photon)
gets the package default for the others (:func:`complete_effectiveness`, carbon 2.5), never the generator's.

Every check is computed twice with the same code: on the pipeline's tables (``estimate``) and on tables
built from the generator's truth cells (truth cell type, receptor flags, ``in_{zone}``) and truth zone masks
(``truth`` column; for ED50 the true ED50). A check that fails in both columns is a property of the
generated data, not a pipeline error. Each check has a ``kind`` and the summary counts them per kind.

Criteria, fixed before looking at the results (module constants below)
---------------------------------------------------------------------
1. [plateau] photon arm, each chemokine zone's area fraction: the Emax curve beats both the straight line
   and the concave log-linear curve without plateau ``a + b·log(1 + D)`` by ΔAIC > 2 (``PLATEAU_DELTA_AIC``);
   beating the line alone is near-certain for any concave response on 0–20 Gy with ED50 ~3–4 Gy;
2. [plateau] the same for cognate receptor+ infiltration *amount*: receptor+ cells inside the zone per mm²
   of tissue, per lineage and pooled over the pair's lineages ("NK & CD8 T"). This metric grows with the
   zone for any population, so it is used only for attracted (receptor+) cells, never for specificity;
3. [estimation] ED50 of the producer fraction (photon arm, Hill model, quasi-binomial fit weighted by the
   tumor cell counts; student-t bootstrap CI) within 35 % of the true ED50 of each module (fabricated run: of the zone
   area, whose truth is an Emax curve);
4. [equivalence] receptor− cells of each pair show no dose effect, on metrics NOT confounded by zone size,
   from counts with area offsets (``stats.dose_rate_test``, quasi-Poisson GLM, patient effects, photon
   arm + 0 Gy), adjusted for the other chemokine zones (``stats.receptor_overlap_counts``):
   (a) log2 enrichment inside/outside the zone, (b) density inside the zone (cells per mm² of zone).
   Pass = TOST equivalence at 5 %: the 90 % CI of the slope lies inside ± ``EQUIVALENCE_MARGIN_LOG2_PER_GY``
   = log2(1.5)/20 log2 per Gy, i.e. less than a 1.5-fold change over 0–20 Gy. A wide (noisy) CI now fails;
   the power to show equivalence at a true slope of 0 is printed. Each equivalence claim is its own
   test (intersection-union: no multiplicity correction is needed to claim all of them). The same tests
   without the adjustment are info rows (4c, 4d): co-localised modules give a receptor− cell that carries
   another module's receptor a real (truth-column) dose trend there. When the overlap table also holds a
   compartment (the run's ``spatial.overlap_zones`` names ``tumor_intraepithelial``; the truth's tumor mask),
   4a-4d are computed without it and rows 4e, 4f (kind ``equivalence, compartment-adjusted``, added in a later
   session beside the declared rows, same margin) with it: producers are tumor cells, so zones grow from the
   nests into the stroma with dose;
5. [discrimination] the module weakened after carbon: lowest carbon/photon amplitude ratio at equal
   effective dose is the true weakest module, with its CI (student-t, log scale) below 1;
6. [effect direction] cognate receptor+ cells are more enriched in their zone than receptor− cells of the
   same lineage in irradiated samples (``stats.cognate_test``: CI > 0, BH q < 0.05).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sst

from chemozone import stats
from chemozone.spatial import overlap_region_name

RECEPTORS = ("CXCR2", "CXCR3", "CCR5")
PLATEAU_DELTA_AIC = 2.0  # Emax must beat the line and the log-linear curve by this much
EQUIVALENCE_MARGIN_LOG2_PER_GY = float(np.log2(1.5) / 20)  # receptor−: < 1.5-fold change over 0-20 Gy


def is_stress_truth(truth: dict) -> bool:
    """True for a ``truth/cohort.json`` written by :mod:`chemozone.stress` (else :mod:`chemozone.synth`)."""
    return truth.get("generator") == "chemozone.stress"


def truth_parameters(truth: dict) -> dict:
    """The truth parameters of either generator in the synth layout.

    ``modules`` {chemokine: {receptor, ed50_gy, conservation {radiation: factor}, ...}}, ``effectiveness``
    {radiation: factor}, ``pixel_size_um``. The synth truth is returned unchanged. The stress truth keeps
    effectiveness and conservation per radiation (``radiation`` {name: {effectiveness, conservation
    {chemokine: factor}}}) and does not record the cognate receptors (they are :data:`chemozone.stress.MODULES`):
    both are mapped here, so every check reads the same keys.
    """
    par = truth.get("parameters", truth)
    if not is_stress_truth(truth):
        return par
    from chemozone.stress import MODULES as STRESS_RECEPTOR  # chemokine -> cognate receptor

    rad = par["radiation"]
    modules = {m: {**spec, "receptor": STRESS_RECEPTOR[m],
                   "conservation": {"sham": 1.0, **{r: float(v["conservation"][m]) for r, v in rad.items()}}}
               for m, spec in par["modules"].items()}
    eff = {"sham": 1.0, **{r: float(v["effectiveness"]) for r, v in rad.items()}}
    return {**par, "modules": modules, "effectiveness": eff}


def truth_run(truth_json: Path) -> dict:
    """A ``load_run``-like dict built from the generator's truth (cells.parquet + zone/tissue masks).

    Reads the truth of :mod:`chemozone.synth` and of :mod:`chemozone.stress` (both write
    ``truth/{sample_id}/cells.parquet`` with ``cell_type``, ``{marker}_pos``, ``in_{chemokine}``, and
    ``tissue.tif``, ``zone_{chemokine}.tif``); their parameters are read by :func:`truth_parameters`.
    """
    import tifffile

    root = truth_json.parent
    j = json.loads(truth_json.read_text())
    par = truth_parameters(j)
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
        ov_masks, ov_cells = dict(zmasks), {m: c[f"in_{m}"].to_numpy(bool) for m in modules}
        if (d / "tumor.tif").is_file() and "in_tumor" in c:  # the tumor compartment: an adjustment, not a zone
            ov_masks["tumor"] = (tifffile.imread(d / "tumor.tif") > 0) & tis
            ov_cells["tumor"] = c["in_tumor"].to_numpy(bool)
        names = list(ov_masks)
        code = np.zeros(tis.shape, np.int64)
        ccode = np.zeros(len(c), np.int64)
        for i, m in enumerate(names):
            code |= ov_masks[m].astype(np.int64) << i
            ccode |= ov_cells[m].astype(np.int64) << i
        area = np.bincount(code[tis], minlength=1 << len(names)) * px * px / 1e6
        for k in np.nonzero(area > 0)[0]:
            fl = {f"in_{m}": bool(k >> i & 1) for i, m in enumerate(names)}
            n = c.loc[ccode == k].groupby("population").size().reindex(pop.unique(), fill_value=0)
            ovl.append(pd.DataFrame({"sample_id": sid, "population_type": "phenotype", "population": n.index,
                                     "region": overlap_region_name([fl[f"in_{m}"] for m in names], names),
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


def complete_effectiveness(run: dict) -> list[str]:
    """Give irradiated radiation types without a factor in the run's ``stats.effectiveness`` the package default.

    A config that names only ``photon`` (as ``benchmarks/configs/stress_user.yaml``) leaves the carbon samples
    without an effective dose. The factor filled in is :class:`chemozone.config.StatsConfig`'s default (the
    one ``configs/example.yaml`` documents: proton 1.1, carbon 2.5), never the generator's; every table's
    ``effective_dose_gy`` is recomputed. Returns ``["carbon 2.5", ...]`` (empty when nothing was missing).
    """
    from chemozone.config import StatsConfig

    eff = dict(run.get("effectiveness") or {})
    s = run["samples"]
    irradiated = set(s.loc[s["dose_gy"].astype(float) > 0, "radiation"].astype(str))
    default = StatsConfig().effectiveness
    filled = [r for r in sorted(irradiated - set(eff)) if r in default]
    if not filled:
        return []
    eff.update({r: default[r] for r in filled})
    run["effectiveness"] = eff
    for k, t in run.items():
        if isinstance(t, pd.DataFrame) and {"dose_gy", "radiation"} <= set(t.columns):
            run[k] = stats.add_effective_dose(t.drop(columns="effective_dose_gy", errors="ignore"), eff, strict=False)
    return [f"{r} {default[r]:g}" for r in filled]


def _ci(lo, hi, fmt="{:+.3f}"):
    return f"[{fmt.format(lo)}, {fmt.format(hi)}]"


class _Checks:
    """Rows of the checks table: check, kind, metric, estimate, CI, target, pass (None = info row), met."""

    def __init__(self):
        self.rows: list[dict] = []
        self.raw95: list[tuple[bool, bool]] = []  # (info row, per-test 95 % CI contains 0) of the receptor− tests

    def add(self, check, kind, metric, estimate, ci, ok, target, shown=None):
        # ok None: an info row (not counted); ``shown`` is then its outcome for the ✓/✗ mark
        self.rows.append({"check": check, "kind": kind, "metric": metric, "estimate": estimate, "CI": ci,
                          "target": target, "pass": None if ok is None else bool(ok),
                          "met": bool(ok if ok is not None else shown)})


def _plateau_checks(chk: _Checks, run: dict, areas: pd.DataFrame, zone_of: dict, pairs) -> None:
    """Checks 1 and 2: Emax beats the straight line AND the concave log-linear curve (ΔAIC > 2 each)."""
    models = ("linear", "loglinear", "emax")
    target = f"ΔAIC lin−emax > {PLATEAU_DELTA_AIC:g} and loglin−emax > {PLATEAU_DELTA_AIC:g}"

    def add(label, metric, r):
        d_lin, d_ll = r["plateau_delta_aic"], r["plateau_vs_loglinear_delta_aic"]
        chk.add(label, "plateau", metric, f"ΔAIC lin {d_lin:.1f} | loglin {d_ll:.1f}", "",
                d_lin > PLATEAU_DELTA_AIC and d_ll > PLATEAU_DELTA_AIC, target)

    fits = stats.fit_dose_response(areas, metric=list(zone_of.values()), models=models, n_bootstrap=0)
    for col in zone_of.values():
        add("1 plateau: zone area fraction", col,
            fits[(fits["metric"] == col) & (fits["group"] == "photon") & (fits["model"] == "emax")].iloc[0])
    per_t = stats.metric_table(run, "receptor_density", pairs=pairs, per="tissue", pool=True)
    for c in [c for c in per_t.columns if "+ in " in c]:
        f = stats.fit_dose_response(per_t, metric=c, models=models, n_bootstrap=0)
        add("2 plateau: receptor+ in zone per mm² tissue", c, f[(f["group"] == "photon") & (f["model"] == "emax")].iloc[0])


def _without_other_receptors(run: dict, receptor: str) -> dict:
    """A shallow copy of ``run`` whose phenotype populations carrying any receptor but ``receptor`` are removed.

    The count tables then hold only cells negative for every other receptor of the run, so their ``neg``
    status is "negative for every receptor" (and ``pos`` "carries only ``receptor``"). Areas are unchanged:
    every region keeps its receptor-free populations (tumor, stroma, ...).
    """
    inf = run["infiltration"]
    ph = inf.loc[inf["population_type"] == "phenotype", "population"].unique()
    flags = {f for p in ph for f in stats.split_phenotype(p)[1]}
    others = {f for f in flags if f.endswith("+") and f != f"{receptor}+"}
    out = dict(run)
    for key in ("infiltration", "zone_overlap"):
        t = run.get(key)
        if t is None or not len(t):
            continue
        carries = t["population"].map(lambda p: bool(stats.split_phenotype(p)[1] & others))
        out[key] = t[~(carries & (t["population_type"] == "phenotype"))]
    return out


def _every_negative_counts(run: dict, pairs, adjusted: bool) -> pd.DataFrame:
    """Count tables of each pair in which ``neg`` = negative for EVERY receptor (:func:`_without_other_receptors`)."""
    parts = []
    for pair in pairs:
        sub = _without_other_receptors(run, pair["receptor"] if isinstance(pair, dict) else pair[1])
        parts.append(stats.receptor_overlap_counts(sub, pairs=[pair], pool=True) if adjusted
                     else stats.receptor_count_table(sub, pairs=[pair], pool=True))
    return pd.concat(parts, ignore_index=True)


def _compartments(run: dict, pairs) -> list[str]:
    """Overlap flags of the run that are not a cognate pair's zone (e.g. ``tumor_intraepithelial`` when the config's
    ``spatial.overlap_zones`` names it; ``tumor`` in a truth run): compartments the receptor− tests can adjust for."""
    ov = run.get("zone_overlap")
    if ov is None or not len(ov):
        return []
    zones = {p["zone"] if isinstance(p, dict) else p[0] for p in pairs}
    return [c[3:] for c in ov.columns if c.startswith("in_") and c[3:] not in zones]


def _without_overlap_flags(run: dict, drop: list[str]) -> dict:
    """A shallow copy of ``run`` whose ``zone_overlap`` regions are merged over the ``drop`` flags (cells and areas
    summed), i.e. the table the run would have written without those overlap zones."""
    ov = run["zone_overlap"]
    keep = [c for c in ov.columns if c.startswith("in_") and c[3:] not in drop]
    names = [c[3:] for c in keep]
    areas = (ov.drop_duplicates(["sample_id", "region"]).groupby(["sample_id"] + keep, as_index=False)["area_mm2"].sum())
    counts = ov.groupby(["sample_id", "population_type", "population"] + keep, as_index=False)["n_cells"].sum()
    out = counts.merge(areas, on=["sample_id"] + keep, how="left")
    out["region"] = [overlap_region_name(list(f), names) for f in out[keep].itertuples(index=False)]
    meta = [c for c in ov.columns if c not in out.columns and not c.startswith("in_")]
    if meta:  # sample metadata merged by load_run
        out = out.merge(ov.drop_duplicates("sample_id")[["sample_id"] + meta], on="sample_id", how="left")
    return {**run, "zone_overlap": out}


def _equivalence_checks(chk: _Checks, run: dict, pairs, every_receptor: bool = False) -> None:
    """Check 4: receptor− cells show no dose effect — TOST with the declared margin, power reported.

    ``every_receptor`` (the stress generator): receptor− = negative for every receptor of the run. That
    generator recruits into each zone cells that carry the zone's receptor, and gives them the other receptor
    with their lineage's probability; with co-localised zones a CCL5-recruited CXCR3− CCR5+ cell sits in the
    CXCL10 zone too, so "CXCR3−" cells have a real dose trend there (counted rows 4a, 4b use the stricter
    definition; the cognate-only definition is shown as info rows 4c, 4d).

    When the run's overlap table also holds a compartment (``spatial.overlap_zones`` with ``tumor_intraepithelial``;
    the truth's tumor mask), rows 4a-4d are computed without it, as before, and rows 4e, 4f (kind ``equivalence,
    compartment-adjusted``) with it: producers are tumor cells, so a zone grows from tumor nests into stroma with
    dose, and a receptor− population that is denser in stroma gains density "in the zone" without being attracted.
    """
    adjust = run.get("zone_overlap") is not None and len(run["zone_overlap"]) > 0
    comp = _compartments(run, pairs) if adjust else []
    full = run
    if comp:
        run = _without_overlap_flags(run, comp)
    if every_receptor:
        cognate = (stats.receptor_overlap_counts(run, pairs=pairs, pool=True) if adjust
                   else stats.receptor_count_table(run, pairs=pairs, pool=True))
        how = ", adjusted for other zones" if adjust else ""
        tests = [(_every_negative_counts(run, pairs, adjust), False,
                  (f"4a no dose effect: receptor− (every receptor) log2 enrichment in/out{how}",
                   f"4b no dose effect: receptor− (every receptor) cells/mm² of zone{how}")),
                 (cognate, True, (f"4c (info) cognate-receptor− only log2 enrichment in/out{how}",
                                  f"4d (info) cognate-receptor− only cells/mm² of zone{how}"))]
    else:
        plain = stats.receptor_count_table(run, pairs=pairs, pool=True)
        tests = [(plain, False, ("4a no dose effect: receptor− log2 enrichment in/out",
                                 "4b no dose effect: receptor− cells/mm² of zone"))]
        if adjust:  # a run folder with zone_overlap.parquet: adjust for the other zones
            adjusted = stats.receptor_overlap_counts(run, pairs=pairs, pool=True)
            tests = [(adjusted, False, ("4a no dose effect: receptor− log2 enrichment in/out, adjusted for other zones",
                                        "4b no dose effect: receptor− cells/mm² of zone, adjusted for other zones")),
                     (plain, True, ("4c (info) receptor− log2 enrichment in/out, unadjusted",
                                    "4d (info) receptor− cells/mm² of zone, unadjusted"))]
    tests = [(*t, "equivalence") for t in tests]
    if comp:
        how = f"adjusted for other zones and the {', '.join(comp)} compartment"
        counts = (_every_negative_counts(full, pairs, True) if every_receptor
                  else stats.receptor_overlap_counts(full, pairs=pairs, pool=True))
        who = "receptor− (every receptor)" if every_receptor else "receptor−"
        tests.append((counts, False, (f"4e no dose effect: {who} log2 enrichment in/out, {how}",
                                      f"4f no dose effect: {who} cells/mm² of zone, {how}"),
                      "equivalence, compartment-adjusted"))
    target = f"TOST |β| < {EQUIVALENCE_MARGIN_LOG2_PER_GY:.4f} log2/Gy, p < 0.05"
    for counts, info, (la, lb), kind in tests:
        counts = counts[counts["status"] == "neg"]
        for contrast, label in (("enrichment", la), ("density", lb)):
            t = stats.dose_rate_test(counts, contrast=contrast, equivalence_margin=EQUIVALENCE_MARGIN_LOG2_PER_GY)
            for _, r in t[t["arm"] == "photon"].iterrows():
                chk.raw95.append((info, bool(r["ci_lo"] <= 0 <= r["ci_hi"])))
                q = float(np.nan_to_num(r["se"]) * sst.t.ppf(0.95, r["df"])) if np.isfinite(r["df"]) else np.nan
                chk.add(label, kind, f"{r['cell_type']} {r['receptor']}- in {r['zone']}",
                        f"{r['estimate']:+.3f} log2/Gy, p_TOST {r['tost_p']:.3f}, power {r['tost_power']:.2f}",
                        _ci(r["estimate"] - q, r["estimate"] + q) + " (90 %)", None if info else r["equivalent"],
                        target + (" (info)" if info else ""), shown=r["equivalent"])


def _direction_checks(chk: _Checks, run: dict, pairs) -> None:
    """Check 6: cognate receptor+ cells are more enriched in their zone than receptor− cells (irradiated samples)."""
    res = stats.cognate_test(run["infiltration"], pairs=pairs, min_dose_gy=1e-6)
    for _, r in res.iterrows():
        chk.add("6 direction: receptor+ more enriched than receptor− (irradiated)", "effect direction",
                f"{r['cell_type']} {r['receptor']}± in {r['zone']}", f"{r['estimate']:+.2f} log2",
                _ci(r["ci_lo"], r["ci_hi"], "{:+.2f}"), bool(r["ci_lo"] > 0 and r["significant"]),
                "CI > 0 (t, n_patients−1 df), BH q < 0.05")


def _ed50_and_carbon_checks(chk: _Checks, run: dict, modules: dict, areas: pd.DataFrame, zone_of: dict, *,
                            n_bootstrap: int, fabricated: bool, ed50_gm: float | None) -> None:
    """Check 3 (ED50 of the photon arm within 35 %) and 5 (the module weakened after carbon)."""
    eff = run["effectiveness"]
    if fabricated:
        ed_table, ed_metric, model, trials = areas, zone_of, "emax", None
    else:
        pf = stats.metric_table(run, "producer_fraction",
                                markers=[m for m in modules if f"{m}_pos" in run["cells"].columns])
        ed_table, ed_metric, model = pf, {m: f"producer_fraction_{m}" for m in modules
                                          if f"producer_fraction_{m}" in pf}, "hill"
        trials = "n_tumor_cells"  # a proportion of counted tumor cells: quasi-binomial
    f3 = stats.fit_dose_response(ed_table, metric=list(ed_metric.values()), models=("linear", "emax", "hill"),
                                 n_bootstrap=n_bootstrap, seed=0, trials=trials)
    for m, col in ed_metric.items():
        r = f3[(f3["metric"] == col) & (f3["group"] == "photon") & (f3["model"] == model)].iloc[0]
        t = modules[m]["ed50_gy"]
        # the cohort's own patients scale ED50 (log-normal, SD 0.2): their geometric mean, for reading a miss
        cohort = f" (patients' {t * ed50_gm:.2f})" if ed50_gm is not None else ""
        failed = f", {int(r['n_bootstrap_failed'])} failed refits" if r["n_bootstrap_failed"] else ""
        chk.add(f"3 ED50 within 35% (photon, {model}{', quasi-binomial' if trials else ''})", "estimation", col,
                f"{r['ED50']:.2f} Gy", _ci(r["ED50_ci_lo"], r["ED50_ci_hi"], "{:.2f}") + f" {r['ci_method']}{failed}",
                abs(r["ED50"] / t - 1) < 0.35, f"{t:g} Gy ± 35%{cohort}")
    ratios = {}
    src = ed_table if "effective_dose_gy" in ed_table else stats.add_effective_dose(ed_table, eff, strict=False)
    for m, col in ed_metric.items():
        ra = stats.relative_amplitude(src, metric=col, n_bootstrap=n_bootstrap, model="emax").set_index("group")
        if "carbon" in ra.index:
            ratios[m] = ra.loc["carbon"]
            tr = modules[m]["conservation"].get("carbon", 1)
            chk.add("5 carbon/photon amplitude, equal effective dose", "info", col, f"{ra.at['carbon', 'ratio']:.2f}",
                    _ci(ra.at["carbon", "ratio_ci_lo"], ra.at["carbon", "ratio_ci_hi"], "{:.2f}"), None,
                    f"{tr:g} (info)", shown=True)
    if ratios:
        weakest = min(ratios, key=lambda k: ratios[k]["ratio"])
        true_weak = min(modules, key=lambda k: modules[k]["conservation"].get("carbon", 1.0))
        chk.add("5 weaker module after carbon detected", "discrimination", weakest, f"{ratios[weakest]['ratio']:.2f}",
                _ci(ratios[weakest]["ratio_ci_lo"], ratios[weakest]["ratio_ci_hi"], "{:.2f}"),
                weakest == true_weak and ratios[weakest]["ratio_ci_hi"] < 1, f"{true_weak}, CI < 1")


def evaluate(run: dict, modules: dict, *, pairs, n_bootstrap: int, fabricated: bool,
             ed50_gm: float | None = None, every_receptor: bool = False) -> pd.DataFrame:
    """Rows: check, kind, metric, estimate, CI, target, pass, met.

    ``every_receptor``: receptor− means negative for every receptor (the stress generator, see
    :func:`_equivalence_checks`).
    """
    chk = _Checks()
    areas = stats.metric_table(run, "zone_area")
    if "effective_dose_gy" not in areas:
        areas = stats.add_effective_dose(areas, run["effectiveness"], strict=False)
    zone_of = {z: f"area_fraction_{z}" for z in modules if f"area_fraction_{z}" in areas}
    _plateau_checks(chk, run, areas, zone_of, pairs)
    if pairs:
        _equivalence_checks(chk, run, pairs, every_receptor=every_receptor)
        _direction_checks(chk, run, pairs)
    _ed50_and_carbon_checks(chk, run, modules, areas, zone_of, n_bootstrap=n_bootstrap, fabricated=fabricated,
                            ed50_gm=ed50_gm)
    out = pd.DataFrame(chk.rows)
    counted = [ok for info, ok in chk.raw95 if not info]
    out.attrs["raw95"] = (sum(counted), len(counted))
    return out


def _load(a, ap) -> tuple[dict, dict, str, dict | None]:
    """The run (pipeline folder, truth cells or fabricated), the true module parameters, a label, the truth json."""
    if a.fabricated:
        import tempfile

        from chemozone.testing import EFFECTIVENESS, TRUTH, fabricate_run

        out = Path(tempfile.mkdtemp(prefix="eval-stats-")) / "run"
        fabricate_run(out, n_patients=6, seed=0)
        modules = {z: {"ed50_gy": t["ed50"], "conservation": t["cons"]} for z, t in TRUTH.items()}
        run = stats.load_run(out)
        run["effectiveness"] = run["effectiveness"] or EFFECTIVENESS
        return run, modules, "fabricated", None
    if a.truth_only:
        if not a.truth:
            ap.error("--truth-only needs --truth COHORT/truth/cohort.json")
        tj = json.loads(a.truth.read_text())
        return truth_run(a.truth), truth_parameters(tj)["modules"], f"truth cells of {a.truth}", tj
    if not (a.run and a.truth):
        ap.error("give --run and --truth, --truth with --truth-only, or --fabricated")
    tj = json.loads(a.truth.read_text())
    run = stats.load_run(a.run)
    run["effectiveness"] = run["effectiveness"] or truth_parameters(tj).get("effectiveness")
    filled = complete_effectiveness(run)
    if filled:
        print("stats.effectiveness of the run has no factor for " + ", ".join(filled)
              + ": the package default (configs/example.yaml) is used, not the generator's value")
    return run, truth_parameters(tj)["modules"], str(a.run), tj


def _kinds(tab: pd.DataFrame) -> str:
    """``plateau 2/8, estimation 2/2, ...``: passes / counted checks of each kind (info rows left out)."""
    c = tab[tab["pass"].notna() & ~tab["pass"].astype(str).str.startswith("info")]
    ok = c["pass"].isin([True, "PASS"])
    return ", ".join(f"{k} {int(ok[g.index].sum())}/{len(g)}" for k, g in c.groupby("kind", sort=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="run folder of the stats cohort")
    ap.add_argument("--truth", type=Path, help="COHORT/truth/cohort.json of chemozone.synth or chemozone.stress "
                                               "(detected from the file)")
    ap.add_argument("--fabricated", action="store_true", help="fabricate a run folder (no runner needed)")
    ap.add_argument("--no-truth-cells", action="store_true", help="skip the truth-cell column (faster)")
    ap.add_argument("--truth-only", action="store_true",
                    help="evaluate on the generator's truth cells and zone masks only (needs --truth, no --run)")
    ap.add_argument("--n-bootstrap", type=int, default=100)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    truth_tab = None
    run, modules, label, tj = _load(a, ap)
    stress = tj is not None and is_stress_truth(tj)
    if stress:
        print(f"stress generator truth ({tj.get('preset')} preset): receptor− = negative for every receptor")
    pairs = (run["run"]["config"].get("spatial") or {}).get("cognate_pairs") or []
    ed50_gm = None
    if tj is not None:
        mult = [v["ed50_mult"] for v in (tj.get("patients") or {}).values() if "ed50_mult" in v]
        ed50_gm = float(np.exp(np.mean(np.log(mult)))) if mult else None
    table = evaluate(run, modules, pairs=pairs, n_bootstrap=a.n_bootstrap, fabricated=a.fabricated, ed50_gm=ed50_gm,
                     every_receptor=stress)
    raw_counts, truth_raw = table.attrs.get("raw95", (0, 0)), None
    if not a.fabricated and not a.no_truth_cells and not a.truth_only:
        tr = truth_run(a.truth)
        truth_tab = evaluate(tr, modules, pairs=pairs, n_bootstrap=min(a.n_bootstrap, 50), fabricated=False,
                             ed50_gm=ed50_gm, every_receptor=stress)
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
    print("checks by kind (pass/count): " + _kinds(table))
    n_ok, n_all = raw_counts
    if n_all:
        print("receptor− tests (4a, 4b; 4e, 4f when present) whose per-test 95 % CI contains 0 "
              "(the former criterion, for comparison): "
              f"{n_ok}/{n_all}" + (f"; truth cells: {truth_raw[0]}/{truth_raw[1]}" if truth_raw else ""))
    if truth_tab is not None:
        tc = truth_tab["pass"].notna()
        print(f"same checks on the generator's truth cells: {int(truth_tab['pass'].eq(True).sum())}/{int(tc.sum())} "
              f"pass (truth column: same metric and test on truth cell types, receptor flags and zone masks); "
              f"by kind: {_kinds(truth_tab)}")
    return 0 if ok[counted].all() else 1


if __name__ == "__main__":
    sys.exit(main())
