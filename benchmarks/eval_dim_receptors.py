"""Dim receptor stains: how well automatic gates call receptors, and cognate enrichment from truth, gates and
soft calls on the same cells (issue 17).

Writes the ``dim_receptors`` synthetic cohort (``chemozone synth OUT --preset dim_receptors``: receptor positives
about 1.5-2.5x negatives, tumour cells spilling nonspecific signal into touching cells), runs ``chemozone run`` on
it with the user config ``benchmarks/configs/synth_user.yaml`` (written from README.md and configs/example.yaml:
gates at their defaults, README zone mode; nothing from the generator), matches segmented cells to truth cells
(mutual nearest centroids within 4 µm) and prints:

1. **Stain contrast**: per receptor, the median measured ``{receptor}_cell`` of truth-positive and truth-negative
   immune cells and their ratio (the preset's target: 1.5-2.5).
2. **Gate F1 per receptor and method**: every automatic method of ``benchmarks/bench_gating.py`` (``methods()``),
   each applied through :func:`chemozone.phenotype.compute_gates` / ``apply_gates`` to the run's cells with the
   user config's marker entry (only ``gate`` replaced), scored as the F1 of the receptor+ call over truth immune
   cells (as ``eval_user_config.py``). ``oracle`` = the best single cohort-wide threshold chosen with the truth
   (no gate can beat it). The best method per receptor (chosen with the truth: an upper bound for gates) is
   the "best gate" a classifier must beat by 0.05.
3. **Cognate receptor+ vs receptor− log2 specificity** (:func:`chemozone.stats.compare_cognate_calls`) from truth
   calls, the best gate, the run's default gate and soft calls, on the same matched cells, zones and lineages,
   with patient-bootstrap CIs (soft: Bernoulli call resampling); ``abs_error`` = distance to the truth estimate.
   Irradiated samples only (``--all-samples``: also the sham ones, whose zones are specks).

Soft calls: ``--probs FILE`` (a parquet/CSV with ``sample_id, cell_id, {receptor}_prob``, e.g. from the cell
classifier), else a **STAND-IN**: a logistic regression of the truth flag on ``log({receptor}_cell)`` fitted on
``--labels`` randomly chosen truth immune cells per receptor (not the classifier of issue 17; it only shows the
comparison runs; ``benchmarks/eval_classifier_dim.py`` runs the real classifier from suggested labels). F1 of
the soft calls (p > 0.5) is scored on the immune cells that were not labelled.

Measured (seed 0, 2 cores; ``--size 2048``: 9 samples, 18,233 matched cells, 7,532 truth immune cells; generate
301 s + run 382 s): contrast pos/neg 1.82 / 2.06 / 1.95 (CXCR2 / CXCR3 / CCR5); receptor F1 of the run's default
gate (pooled GMM) 0.753 / 0.784 / 0.803, best gate 0.869 (P-otsu) / 0.889 (S-otsu) / 0.866 (S-otsu), oracle
threshold 0.882 / 0.887 / 0.864. Cognate specificity, mean |error| vs truth over 6 pairs x lineages: best gate
2.32, default gate 1.03, logistic STAND-IN soft calls 0.67 (closer in the 4 CXCR3/CCR5 rows; the CXCL8 rows have
CIs wider than ±5 for every source). At 1024 px (default size): best gate F1 0.867 / 0.890 / 0.874, mean |error|
best gate 0.90, default gate 0.82, stand-in 0.32.

    python benchmarks/eval_dim_receptors.py --work /tmp/dim            # 3 patients x (0, 5, 20 Gy), 1024 px
    python benchmarks/eval_dim_receptors.py --work /tmp/dim2k --size 2048
    python benchmarks/eval_dim_receptors.py --work /tmp/dim --reuse --probs /tmp/dim/probs.parquet
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "pipeline"))

from bench_gating import f1_score, methods, oracle_f1  # noqa: E402
from eval_user_config import IMMUNE, _call, load_matched  # noqa: E402

CONFIG = HERE / "configs" / "synth_user.yaml"


def make_and_run(work: Path, *, seed: int, patients: int | None, size: int | None, reuse: bool) -> tuple[Path, Path]:
    """The cohort (``work/cohort``) and its run folder (``work/run``) with the user config."""
    cohort, run = work / "cohort", work / "run"
    if not (reuse and (cohort / "samples.csv").is_file()):
        args = ["-m", "chemozone.cli", "synth", str(cohort), "--preset", "dim_receptors", "--seed", str(seed)]
        args += (["--patients", str(patients)] if patients else []) + (["--size", str(size)] if size else [])
        rc, out = _call(args, "generate the dim_receptors cohort")
        if rc:
            raise SystemExit(out[-2000:])
    if not (reuse and (run / "cells.parquet").is_file()):
        rc, out = _call(["-m", "chemozone.cli", "run", str(cohort), "--config", str(CONFIG), "--out", str(run),
                         "--workers", "1", "--no-report"], f"chemozone run --config {CONFIG.name}")
        if rc:
            raise SystemExit(out[-2000:])
    return cohort, run


def contrast(matched: pd.DataFrame, receptors: list[str]) -> pd.DataFrame:
    """Median ``{receptor}_cell`` of truth-positive / truth-negative immune cells and their ratio."""
    imm = matched["truth_cell_type"].isin(IMMUNE)
    rows = []
    for r in receptors:
        x, y = matched.loc[imm, f"{r}_cell"], matched.loc[imm, f"truth_{r}_pos"].astype(bool)
        rows.append({"receptor": r, "n_immune": int(imm.sum()), "truth_pos": int(y.sum()),
                     "median_pos": float(x[y].median()), "median_neg": float(x[~y].median()),
                     "ratio": float(x[y].median() / x[~y].median())})
    return pd.DataFrame(rows)


def gate_f1(run: Path, matched: pd.DataFrame, cfg, receptors: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """F1 per receptor (rows) and gate method (columns); adds ``{r}_{method}`` call columns to ``matched``."""
    from chemozone.config import GateConfig
    from chemozone.phenotype import apply_gates, compute_gates, marker_column

    cells = pd.read_parquet(run / "cells.parquet")
    sheet = pd.read_parquet(run / "samples.parquet")
    key = matched["sample_id"].astype(str) + "/" + matched["cell_id"].astype(str)
    imm = matched["truth_cell_type"].isin(IMMUNE).to_numpy()
    rows, best = [], {}
    for r in receptors:
        truth = matched[f"truth_{r}_pos"].astype(bool).to_numpy()
        col = marker_column(matched, r, cfg.phenotypes.markers[r].compartment)
        row = {"receptor": r, "oracle": oracle_f1(matched.loc[imm, col].to_numpy(float), truth[imm]),
               "run default": f1_score(matched.loc[imm, f"{r}_pos"].astype(bool).to_numpy(), truth[imm])}
        for name, g in methods().items():
            mc = {r: cfg.phenotypes.markers[r].model_copy(update={"gate": GateConfig(**g)})}
            gates = compute_gates(cells, sheet, markers=mc, seed=0)
            called = apply_gates(cells, gates, markers=mc)[f"{r}_pos"].astype(bool)
            calls = pd.Series(called.to_numpy(), index=cells["sample_id"].astype(str) + "/" + cells["cell_id"].astype(str))
            matched[f"{r}_{name}"] = calls.reindex(key).fillna(False).to_numpy(bool)
            row[name] = f1_score(matched.loc[imm, f"{r}_{name}"].to_numpy(), truth[imm])
        rows.append(row)
        best[r] = max(methods(), key=lambda m: row[m])
    return pd.DataFrame(rows), best


def stand_in_probs(matched: pd.DataFrame, receptors: list[str], *, n_labels: int, seed: int) -> pd.DataFrame:
    """STAND-IN soft calls: logistic regression on ``log({r}_cell)`` from ``n_labels`` truth immune cells."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    imm = np.flatnonzero(matched["truth_cell_type"].isin(IMMUNE).to_numpy())
    for r in receptors:
        lab = rng.choice(imm, size=min(n_labels, imm.size), replace=False)
        x = np.log(np.maximum(matched[f"{r}_cell"].to_numpy(float), 1.0))[:, None]
        y = matched[f"truth_{r}_pos"].astype(bool).to_numpy()
        model = LogisticRegression().fit(x[lab], y[lab])
        matched[f"{r}_prob"] = model.predict_proba(x)[:, 1]
        matched[f"{r}_labelled"] = np.isin(np.arange(len(matched)), lab)
    return matched


def read_probs(path: Path, matched: pd.DataFrame, receptors: list[str]) -> pd.DataFrame:
    """Merge ``{r}_prob`` columns of a classifier's table (``sample_id, cell_id``) into the matched cells."""
    p = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    need = ["sample_id", "cell_id"] + [f"{r}_prob" for r in receptors]
    miss = [c for c in need if c not in p.columns]
    if miss:
        raise SystemExit(f"{path}: columns {miss} missing; write sample_id, cell_id and one {{receptor}}_prob per receptor")
    p = p[need].astype({"sample_id": str, "cell_id": matched["cell_id"].dtype})
    out = matched.drop(columns=[c for c in need[2:] if c in matched.columns]).assign(
        sample_id=matched["sample_id"].astype(str)).merge(p, on=["sample_id", "cell_id"], how="left")
    if out[need[2:]].isna().any().any():
        raise SystemExit(f"{path}: some matched cells have no probability; predict every cell of the run")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the cohort and the run")
    ap.add_argument("--reuse", action="store_true", help="reuse a cohort / run already in --work")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patients", type=int, default=None, help="override the preset (3)")
    ap.add_argument("--size", type=int, default=None, help="override the preset's image side (1024 px)")
    ap.add_argument("--probs", type=Path, default=None, help="classifier probabilities (else the logistic stand-in)")
    ap.add_argument("--labels", type=int, default=200, help="stand-in: labelled cells per receptor")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--all-samples", action="store_true", help="enrichment over every sample (default: dose > 0)")
    args = ap.parse_args(argv)
    from chemozone import stats
    from chemozone.config import load_config

    t0 = time.perf_counter()
    cohort, run = make_and_run(args.work, seed=args.seed, patients=args.patients, size=args.size, reuse=args.reuse)
    cfg = load_config(CONFIG)
    receptors = list(cfg.phenotypes.receptors)
    matched = load_matched(cohort, run)
    pd.set_option("display.width", 250, "display.max_columns", 40)
    print(f"\n{len(matched)} matched cells in {matched['sample_id'].nunique()} samples; config {CONFIG}\n")
    print("Stain contrast (median measured {receptor}_cell, truth immune cells):")
    print(contrast(matched, receptors).round(2).to_string(index=False))
    table, best = gate_f1(run, matched, cfg, receptors)
    print("\nReceptor F1 over truth immune cells, per gate method (oracle = best threshold chosen with the truth):")
    print(table.set_index("receptor").T.round(3).to_string())
    print("best gate per receptor: " + ", ".join(f"{r}: {m} ({table.set_index('receptor').loc[r, m]:.3f})"
                                                 for r, m in best.items()))
    for r, m in best.items():
        matched[f"{r}_bestgate"] = matched[f"{r}_{m}"]
    if args.probs is not None:
        matched, soft_name = read_probs(args.probs, matched, receptors), f"soft ({args.probs.name})"
    else:
        matched, soft_name = stand_in_probs(matched, receptors, n_labels=args.labels, seed=args.seed), \
            f"soft (STAND-IN logistic, {args.labels} labels)"
    imm = matched["truth_cell_type"].isin(IMMUNE).to_numpy()
    f1s = {}
    for r in receptors:
        unl = imm & ~matched.get(f"{r}_labelled", pd.Series(False, index=matched.index)).to_numpy(bool)
        f1s[r] = f1_score(matched.loc[unl, f"{r}_prob"].to_numpy() > 0.5,
                          matched.loc[unl, f"truth_{r}_pos"].astype(bool).to_numpy())
    print(f"\n{soft_name}: F1 (p > 0.5) on unlabelled truth immune cells: "
          + ", ".join(f"{r} {v:.3f}" for r, v in f1s.items()))
    sources = {"truth": ("hard", "truth_{receptor}_pos"), "best gate": ("hard", "{receptor}_bestgate"),
               "default gate": ("hard", "{receptor}_pos"), soft_name: ("soft", "{receptor}_prob")}
    inf = pd.read_parquet(run / "infiltration.parquet")
    if not args.all_samples:  # zones exist in irradiated samples; a sham zone is a few producers' specks
        inf = inf[inf["dose_gy"].astype(float) > 0]
    res = stats.compare_cognate_calls(matched, inf, pairs=cfg.spatial.cognate_pairs, sources=sources,
                                      n_bootstrap=args.bootstrap, seed=args.seed,
                                      edge_exclusion_um=cfg.spatial.edge_exclusion_um)
    cols = ["source", "zone", "receptor", "cell_type", "n_pos", "estimate", "ci_lo", "ci_hi", "abs_error"]
    print("\nCognate log2 specificity (receptor+ minus receptor− log2 enrichment in the zone; mean over samples, "
          f"patient bootstrap {args.bootstrap} draws, soft: Bernoulli call resampling):")
    print(res[cols].round(3).to_string(index=False))
    summ = res.groupby("source", sort=False)["abs_error"].agg(["mean", "max"]).round(3)
    print("\nDistance to the truth estimate over the pairs x lineages:\n" + summ.to_string())
    print(f"\n[{time.perf_counter() - t0:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
