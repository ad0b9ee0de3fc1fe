"""Cell-type classifier learning curve on a real inForm table: random vs suggested labels, and gating.

Data: ``../shared/data/vectra_phenoptr/sample_cell_seg_data.csv`` (6,072 cells of one inForm image; inForm's
phenotypes CK+, CD8+, CD68+, FoxP3+, other), read by chemozone's importer (:func:`chemozone.io.read_cell_table`,
format auto-detected). inForm's phenotype of each cell is the truth and the labelling oracle.

Classifier (everything at its defaults, as the napari widget calls it): features
``chemozone.classify.cell_features(cells)`` (inForm's compartment means of the 8 components, the neighbour
means and membrane/neighbour contrasts over the 6 nearest cells, cell and nucleus areas), then
``train_cell_type_classifier(features[labelled], inform_phenotype[labelled], seed=seed)``; prediction = the
most probable class (``predict_cells``' ``classifier_cell_type``).

- **random**: the first n cells of a random permutation (drawn from ``seed``) are labelled.
- **suggested**: ``--start`` random cells, then batches of ``--batch`` cells from
  ``suggest_cells(cells, current classifier, k=batch, labelled=..., seed=seed)``, each labelled by the oracle
  (inForm's call), retraining after every batch.

Score: balanced accuracy (mean recall over the 5 inForm phenotypes) on the held-out cells (every cell never
labelled by that strategy at that size), mean ± SD over the seeds.

Gating (no labels): the four lineage markers gated through ``compute_gates`` / ``phenotype_cells`` (the code
path of ``chemozone run``) with the README's defaults (``transform: arcsinh``, cofactor from the data,
``gate.method: pooled`` GMM), one row per gate method and per compartment choice (``cell`` = the default;
``usual`` = CK/CD8/CD68 cytoplasm, FoxP3 nucleus: a gate compartment is nucleus, cytoplasm or cell); rules
``CK+``, ``CD8+``, ``CD68+``, ``FoxP3+``
(first match wins, in that order) else ``other``; scored on all cells. The best gating row is chosen
after the fact (which flatters gating).

    python benchmarks/bench_classifier_vectra.py                       # seeds 0 1 2, sizes 100 300 500
    python benchmarks/bench_classifier_vectra.py --seeds 0 --sizes 100 300
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))

from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from chemozone import classify  # noqa: E402
from chemozone.io import read_cell_table  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "vectra_phenoptr" / "sample_cell_seg_data.csv"
LINEAGE = ["CK", "CD8", "CD68", "FoxP3"]
USUAL_COMPARTMENT = {"CK": "cytoplasm", "CD8": "cytoplasm", "CD68": "cytoplasm", "FoxP3": "nucleus"}


def _train_score(cells, feats, truth, labelled: np.ndarray, seed: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rare classes with < 3 labels are left out (counted as misses)
        clf = classify.train_cell_type_classifier(feats.iloc[labelled], truth[labelled], seed=seed, verbose=False)
    pred = classify.predict_cells(cells, clf, features=feats)["classifier_cell_type"].to_numpy()
    held = np.ones(len(cells), bool)
    held[labelled] = False
    return clf, float(balanced_accuracy_score(truth[held], pred[held]))


def random_curve(cells, feats, truth, sizes, seed: int) -> dict[int, float]:
    order = np.random.default_rng(seed).permutation(len(cells))
    return {n: _train_score(cells, feats, truth, order[:n], seed)[1] for n in sizes}


def suggested_curve(cells, feats, truth, sizes, seed: int, *, start: int, batch: int) -> dict[int, float]:
    labelled = list(np.random.default_rng(seed).permutation(len(cells))[:start])
    out: dict[int, float] = {}
    while len(labelled) < max(sizes) or max(sizes) not in out:
        idx = np.asarray(labelled)
        clf, score = _train_score(cells, feats, truth, idx, seed)
        if len(idx) in sizes:
            out[len(idx)] = score
        if len(idx) >= max(sizes):
            break
        step = min(batch, min(n for n in sizes + [max(sizes)] if n > len(idx)) - len(idx))
        lab = cells.iloc[idx][["sample_id", "cell_id"]]
        s = classify.suggest_cells(cells, clf, k=step, labelled=lab, features=feats, seed=seed)
        labelled += [cells.index.get_loc(i) for i in s.index]
    return out


def gating_rows(cells, truth) -> list[dict]:
    from chemozone.config import GateConfig, MarkerConfig, RuleConfig
    from chemozone.phenotype import compute_gates, phenotype_cells

    rules = [RuleConfig(cell_type=f"{m}+", pos=[m]) for m in LINEAGE]
    rows = []
    for comp_name in ("cell", "usual"):
        for method in ("pooled", "gmm", "otsu", "valley", "multiotsu"):
            markers = {m: MarkerConfig(compartment=comp_name if comp_name == "cell" else USUAL_COMPARTMENT[m],
                                       gate=GateConfig(method=method)) for m in LINEAGE}
            g = compute_gates(cells, None, markers=markers)
            pred = phenotype_cells(cells, g, markers=markers, rules=rules, default_cell_type="other")["cell_type"]
            rows.append({"method": f"gating {method} ({comp_name})",
                         "balanced_accuracy": float(balanced_accuracy_score(truth, pred.to_numpy()))})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 500])
    ap.add_argument("--start", type=int, default=50, help="random cells labelled before the first suggestions")
    ap.add_argument("--batch", type=int, default=50, help="cells labelled per round of suggestions")
    args = ap.parse_args(argv)
    if not DATA.is_file():
        print(f"{DATA} not found (needs ../shared/data)")
        return 1
    t0 = time.perf_counter()
    cells = read_cell_table(DATA).cells
    truth = cells["vendor_phenotype"].astype(str).to_numpy()
    feats = classify.cell_features(cells)
    print(f"{len(cells)} cells, {feats.shape[1]} features; inForm phenotypes "
          f"{cells['vendor_phenotype'].value_counts().to_dict()}")
    res: dict[tuple[str, int], list[float]] = {}
    for seed in args.seeds:
        for n, v in random_curve(cells, feats, truth, args.sizes, seed).items():
            res.setdefault(("random", n), []).append(v)
        for n, v in suggested_curve(cells, feats, truth, args.sizes, seed, start=args.start, batch=args.batch).items():
            res.setdefault(("suggested", n), []).append(v)
        print(f"  seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nbalanced accuracy vs inForm on held-out cells (mean ± SD over seeds {args.seeds}; start {args.start}, "
          f"batch {args.batch})")
    print(f"{'labels':>7} | {'random':>15} | {'suggested':>15}")
    for n in args.sizes:
        cellstr = []
        for strat in ("random", "suggested"):
            v = np.asarray(res[(strat, n)])
            cellstr.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        print(f"{n:>7} | {cellstr[0]:>15} | {cellstr[1]:>15}")
    gates = pd.DataFrame(gating_rows(cells, truth)).sort_values("balanced_accuracy", ascending=False)
    print("\nautomatic gating (no labels), balanced accuracy vs inForm on all cells")
    print(gates.to_string(index=False, float_format="%.3f"))
    best = gates.iloc[0]
    top = np.asarray(res[("suggested", max(args.sizes))])
    print(f"\nbest gating: {best['method']} {best['balanced_accuracy']:.3f}; suggested {max(args.sizes)} labels: "
          f"{top.mean():.3f} (min over seeds {top.min():.3f}); target >= 0.85: {'PASS' if top.min() >= 0.85 else 'FAIL'}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
