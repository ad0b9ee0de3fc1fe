"""Phenotyping accuracy on the synthetic cohort: segment → quantify → gate → rules, matched to truth cells.

Prints the lineage confusion matrix (truth rows, predicted columns), lineage balanced accuracy (tumor, CD8 T,
CD4 T, NK, macrophage, other) and receptor-flag accuracy (immune cells of the flagged lineages).

    python benchmarks/eval_phenotype.py                  # small: 2 patients x (0, 10 Gy), 512 px
    python benchmarks/eval_phenotype.py --full           # the demo preset design, 1024 px
    python benchmarks/eval_phenotype.py --default-gates  # the generator's config without its gate sections:
                                                         # every marker gets the README default gate

Targets (issue 5): lineage balanced accuracy >= 0.95, receptor-flag accuracy >= 0.90.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

LINEAGES = ["Tumor", "CD8 T", "CD4 T", "NK", "Macrophage", "Other"]
_TRUTH_TO_LINEAGE = {"Tumor": "Tumor", "CD8 T": "CD8 T", "CD4 T": "CD4 T", "NK": "NK", "Macrophage": "Macrophage",
                     "Stroma": "Other", "Other immune": "Other"}
FLAGGED = ["CD8 T", "CD4 T", "NK", "Macrophage", "Other immune"]


def lineage(cell_type: pd.Series) -> pd.Series:
    """Collapse cell types into the evaluated lineages (stroma, other immune and unassigned → Other)."""
    return cell_type.map(_TRUTH_TO_LINEAGE).fillna("Other")


def segment_and_quantify(sample: dict[str, Any], cfg) -> pd.DataFrame:
    """Run the pipeline's segmentation and quantification on one in-memory synthetic sample."""
    from chemozone.quantify import quantify_cells

    image, channels, px = sample["image"], sample["channels"], sample["pixel_size_um"]
    seg = cfg.segmentation
    try:
        from chemozone.segment import segment_image
    except ImportError:
        segment_image = None
    if segment_image is not None:
        from chemozone.options import segmentation_options

        nuclei, cells = segment_image(image, channels=channels, pixel_size_um=px, **segmentation_options(cfg),
                                      nuclear_channel=cfg.panel.nuclear_channel)
    else:  # the stage-level API before segment_image exists
        from chemozone.segment import segment_cells, segment_nuclei

        nuclei = segment_nuclei(image[channels.index(cfg.panel.nuclear_channel)], pixel_size_um=px,
                                nucleus_diameter_um=seg.nucleus_diameter_um)
        cells = segment_cells(nuclei, pixel_size_um=px, expand_um=seg.expand_um)
    return quantify_cells(np.asarray(image), np.asarray(cells), nuclei=np.asarray(nuclei), channels=channels,
                          pixel_size_um=px)


def match_to_truth(pred: pd.DataFrame, truth: pd.DataFrame, *, max_dist_um: float = 4.0) -> pd.DataFrame:
    """One-to-one matches: mutual nearest centroids within ``max_dist_um``. Returns pred rows + truth columns."""
    from scipy.spatial import cKDTree

    pxy = pred[["x_um", "y_um"]].to_numpy()
    txy = truth[["x_um", "y_um"]].to_numpy()
    d_pt, i_pt = cKDTree(txy).query(pxy)
    _, i_tp = cKDTree(pxy).query(txy)
    ok = (d_pt <= max_dist_um) & (i_tp[i_pt] == np.arange(len(pxy)))
    t = truth.iloc[i_pt[ok]].reset_index(drop=True).add_prefix("truth_")
    return pd.concat([pred[ok].reset_index(drop=True), t], axis=1)


def evaluate(matched: pd.DataFrame, receptors: list[str]) -> dict[str, Any]:
    """Confusion matrix, balanced accuracy and receptor-flag accuracy of matched cells."""
    t = lineage(matched["truth_cell_type"])
    p = lineage(matched["cell_type"])
    cm = pd.crosstab(pd.Categorical(t, LINEAGES), pd.Categorical(p, LINEAGES), dropna=False,
                     rownames=["truth"], colnames=["predicted"])
    recall = {k: cm.loc[k, k] / cm.loc[k].sum() for k in LINEAGES if cm.loc[k].sum() > 0}
    imm = matched["truth_cell_type"].isin(FLAGGED).to_numpy()
    per_rec = {}
    hits = total = 0
    for r in receptors:
        if f"truth_{r}_pos" not in matched or f"{r}_pos" not in matched:
            continue
        eq = matched.loc[imm, f"{r}_pos"].to_numpy() == matched.loc[imm, f"truth_{r}_pos"].to_numpy()
        per_rec[r] = float(eq.mean()) if eq.size else float("nan")
        hits += int(eq.sum())
        total += int(eq.size)
    return {"confusion": cm, "recall": recall, "balanced_accuracy": float(np.mean(list(recall.values()))),
            "receptor_accuracy": hits / total if total else float("nan"), "receptor_per_marker": per_rec,
            "n_immune": int(imm.sum())}


def rule_options(cfg) -> dict[str, Any]:
    """The ``phenotypes`` section as the keywords of ``phenotype_cells`` / ``validate_phenotypes``."""
    p = cfg.phenotypes
    return {"markers": p.markers, "rules": p.rules, "receptors": p.receptors,
            "receptor_cell_types": p.receptor_cell_types, "default_cell_type": p.default_cell_type}


def without_gates(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The config with every ``phenotypes.markers.<m>.gate`` section removed (the defaults apply)."""
    import copy

    out = copy.deepcopy(cfg_dict)
    for mc in out.get("phenotypes", {}).get("markers", {}).values():
        mc.pop("gate", None)
    return out


def run(design: list[tuple[str, float]], *, patients: int, size_px: int, seed: int = 0,
        verbose: bool = True, default_gates: bool = False) -> dict[str, Any]:
    """Generate, segment, quantify and phenotype a cohort in memory; return :func:`evaluate`'s dict.

    ``default_gates``: gate every marker with the README default (the generator's gate sections removed).
    """
    from chemozone.config import config_from_dict
    from chemozone.phenotype import compute_gates, phenotype_cells, validate_phenotypes
    from chemozone.synth import cohort_config, generate_sample, patient_effects

    tables, truths, sheet = [], [], []
    cfg = None
    for pi in range(patients):
        pe = patient_effects(pi, seed=seed)
        for radiation, dose in design:
            sid = f"P{pi + 1:02d}_{radiation}_{dose:g}Gy"
            t0 = time.perf_counter()
            s = generate_sample(size_px=size_px, dose_gy=dose, radiation=radiation, patient_effects=pe,
                                seed=seed * 1000 + pi * 100 + len(sheet), sample_id=sid)
            if cfg is None:
                raw_cfg = cohort_config(s["channels"])
                cfg = config_from_dict(without_gates(raw_cfg) if default_gates else raw_cfg, source="cohort_config")
                validate_phenotypes(s["channels"], **rule_options(cfg))
            q = segment_and_quantify(s, cfg)
            q.insert(0, "sample_id", sid)
            tables.append(q)
            truths.append(s["truth"])
            sheet.append({"sample_id": sid, "patient": f"P{pi + 1:02d}", "radiation": radiation, "dose_gy": dose})
            if verbose:
                print(f"{sid}: {len(q)} cells segmented, {len(s['truth'])} true, {time.perf_counter() - t0:.1f} s",
                      flush=True)
    cells = pd.concat(tables, ignore_index=True)
    gates = compute_gates(cells, pd.DataFrame(sheet), markers=cfg.phenotypes.markers,
                          gates_file=cfg.phenotypes.gates_file)
    pheno = phenotype_cells(cells, gates, **rule_options(cfg))
    matched = pd.concat(
        [match_to_truth(pheno[pheno.sample_id == sid].reset_index(drop=True), tr) for sid, tr in
         zip([r["sample_id"] for r in sheet], truths)],
        ignore_index=True,
    )
    res = evaluate(matched, cfg.phenotypes.receptors)
    res.update(n_pred=len(cells), n_truth=int(sum(len(t) for t in truths)), n_matched=len(matched), gates=gates)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the demo preset design at 1024 px (slow)")
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--default-gates", action="store_true",
                    help="remove the generator config's gate sections: every marker gets the default gate")
    args = ap.parse_args(argv)
    from chemozone.synth import PRESETS

    if args.full:
        design, patients, size = PRESETS["demo"]["design"], PRESETS["demo"]["patients"], PRESETS["demo"]["size_px"]
    else:
        design, patients, size = [("sham", 0.0), ("photon", 10.0)], 2, 512
    patients = args.patients or patients
    size = args.size or size
    t0 = time.perf_counter()
    res = run(design, patients=patients, size_px=size, seed=args.seed, default_gates=args.default_gates)
    print("gates: " + ("README defaults (generator's gate sections removed)" if args.default_gates
                       else "the generator's config (chemozone.synth.cohort_config)"))
    print(f"\nmatched {res['n_matched']} of {res['n_pred']} segmented / {res['n_truth']} true cells")
    print("\nlineage confusion matrix (rows truth, columns predicted):")
    print(res["confusion"].to_string())
    print("\nrecall per lineage: " + ", ".join(f"{k} {v:.3f}" for k, v in res["recall"].items()))
    print(f"lineage balanced accuracy: {res['balanced_accuracy']:.3f}  (target >= 0.95)")
    print(f"receptor-flag accuracy ({res['n_immune']} immune cells): {res['receptor_accuracy']:.3f}  (target >= 0.90); "
          + ", ".join(f"{k} {v:.3f}" for k, v in res["receptor_per_marker"].items()))
    warn = res["gates"][res["gates"]["warning"] != ""]
    if len(warn):
        print("\ngate warnings:\n" + warn[["sample_id", "marker", "warning"]].drop_duplicates("marker").to_string())
    print(f"\n{time.perf_counter() - t0:.0f} s")
    ok = res["balanced_accuracy"] >= 0.95 and res["receptor_accuracy"] >= 0.90
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
