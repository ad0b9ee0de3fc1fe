"""Issue 17's synthetic "Done when", measured: the cell classifier trained from at most 200 labels per receptor,
chosen by the suggestions (``chemozone.classify.suggest_cells``) and labelled from the truth, against every
automatic gate on dim, spillover-contaminated receptor stains; then cognate enrichment from its soft calls.

Cohort and run: exactly those of ``benchmarks/eval_dim_receptors.py`` (``chemozone synth --preset
dim_receptors``, ``chemozone run`` with the user config ``benchmarks/configs/synth_user.yaml``: README defaults,
nothing from the generator; quantification at its defaults: nucleus / cytoplasm / cell means), segmented cells
matched to truth cells (mutual nearest centroids within 4 µm), the gate F1 table of ``bench_gating.methods()``.

Classifier, as a user runs it in napari (everything at the library defaults):

- features: ``cell_features(cells)`` on **all** the run's cells (every channel's compartment means, the mean
  of the 6 nearest cells and the own/neighbour contrast per channel, areas);
- labelling loop per receptor (:func:`oracle_labelling`): the cold-start suggestions
  ``suggest_cells(cells, None, k=--start)`` (random, spread over samples), then after every
  ``train_marker_classifier`` the next ``suggest_cells(cells, clf, k=--batch)`` (most uncertain, spread over
  samples, no near-duplicates), until ``--budget`` labels; the oracle (the user) labels a suggested cell with its
  truth receptor flag when the cell is matched to a truth **immune** cell; any other suggestion (a segment with
  no truth cell, or a truth tumour / stroma cell) is *skipped*: not labelled, not counted in the budget, never
  suggested again (reported as ``skipped``). ``--pool immune`` offers only the cells the run's own rule table
  called an immune type (no truth) instead of all cells;
- prediction: ``predict_cells`` on all cells (``{receptor}_prob``, calibrated; ``{receptor}_pos`` = prob >= 0.5).

Scores per labelling seed (``--seeds``, mean ± SD printed):

1. Receptor F1 of ``{receptor}_pos`` on the matched truth immune cells **that seed did not label**, beside every
   gate method's F1 **on the same cells**; "best gate" = the method with the highest F1 there (chosen with the
   truth: an upper bound for gating); ``oracle thr`` = the best single threshold on the gated column chosen with
   the truth. Pass = F1 >= 0.9 and >= best gate + 0.05 (issue 17).
2. Cognate receptor+ vs receptor− log2 specificity (:func:`chemozone.stats.compare_cognate_calls`, irradiated
   samples, patient bootstrap, soft = Bernoulli call resampling) from truth calls, the best gate (chosen over all
   immune cells, as ``eval_dim_receptors.py``), the run's default gate, the classifier's hard calls and its soft
   calls; ``abs_error`` = distance to the truth estimate.
3. What limits it: the classifier's cross-validated F1 when every matched immune cell is labelled (ceiling of
   the features), and the best single-feature thresholds chosen with the truth.

Measured (cohort seed 0, labelling seeds 0 1 2, 2 shared cores; 1024 px: 5,679 run cells, 5,400 matched, 2,205
truth immune; 711 s after the run): held-out F1 0.977 ± 0.009 / 0.976 ± 0.008 / 0.963 ± 0.014 (CXCR2 / CXCR3 /
CCR5) vs best gate on the same cells 0.877 / 0.884 / 0.878 (margin +0.100 / +0.092 / +0.085; oracle threshold
0.879 / 0.890 / 0.879); on all unlabelled cells 0.983 / 0.984 / 0.972 vs 0.893 / 0.910 / 0.887. 200 labels cost
about 590-650 skipped suggestions (non-immune or unmatched cells, ``--pool all``). The CV F1 printed at training
(0.82-0.86) is lower than the held-out F1: it scores the most uncertain cells, which the suggestions picked.
Cognate specificity, mean |error| vs truth over 6 pairs x lineages: classifier soft 0.142 ± 0.019, classifier
hard 0.126 ± 0.050, best gate 0.589, default gate 0.521; soft closer than the best gate in 5/6, 6/6, 5/6 rows.
``--size 2048`` (19,165 run cells, 18,233 matched, 7,532 truth immune; generate 46 s + run 111 s + 747 s):
held-out F1 0.964 ± 0.005 / 0.975 ± 0.002 / 0.972 ± 0.002 vs best gate 0.874 (P-otsu) / 0.889 (S-otsu) / 0.867
(S-otsu) (margin +0.090 / +0.086 / +0.105); cognate mean |error| soft 0.114 ± 0.067, hard 0.144 ± 0.029, best
gate 0.756, default gate 0.953; soft closer than the best gate in 6/6 rows for every seed. With every matched
immune cell labelled the classifier's CV F1 is 0.98-0.99 (both sizes); the best single feature is the receptor's
nucleus mean (truth-chosen threshold F1 0.88-0.92), less touched by a neighbour's membrane spillover than the
cell mean the gates use. ``--pool immune`` (1024 px, suggestions only among the run's immune calls): held-out
F1 0.958 / 0.969 / 0.958, 43-50 skipped suggestions per 200 labels, cognate mean |error| soft 0.112 ± 0.004.

``--write-probs`` saves seed 0's ``sample_id, cell_id, {receptor}_prob`` for all cells (the ``--probs`` input of
``eval_dim_receptors.py``).

    python benchmarks/eval_classifier_dim.py --work /tmp/dimeval/w1024                 # 1024 px, seeds 0 1 2
    python benchmarks/eval_classifier_dim.py --work /tmp/dimeval/w2048 --size 2048
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "pipeline"))

from bench_gating import f1_score, methods, oracle_f1  # noqa: E402
from eval_dim_receptors import CONFIG, contrast, gate_f1, make_and_run  # noqa: E402
from eval_user_config import IMMUNE, load_matched  # noqa: E402


def oracle_labelling(cells: pd.DataFrame, features: pd.DataFrame, truth: pd.Series, *, marker: str, seed: int,
                     start: int = 20, batch: int = 20, budget: int = 200, gbm_params: dict | None = None):
    """Active learning with the truth as the user: cold-start suggestions, then train / suggest / label rounds.

    Parameters
    ----------
    cells : DataFrame, shape (n_cells, ...)
        The cells the suggestions are drawn from (``sample_id``, ``cell_id``).
    features : DataFrame, shape (n_cells, n_features)
        :func:`chemozone.classify.cell_features` rows of ``cells`` (same index).
    truth : Series of object, shape (n_cells,)
        Index of ``cells``: True / False where the oracle can label the cell, None (or NaN) where it cannot
        (such a suggestion is skipped: not labelled, not counted, not suggested again).
    marker : str
    seed : int
        Seed of the suggestions and of the training folds.
    start, batch : int
        Cold-start suggestions, then suggestions per round (a cold-start round is repeated until both
        classes have ``MIN_LABELS_PER_CLASS`` labels).
    budget : int
        Most labels (never exceeded).
    gbm_params : dict, optional
        Overrides of ``chemozone.classify.GBM_PARAMS`` (default: none, as the widget trains).

    Returns
    -------
    classifier : CellClassifier
        Trained on every label (the last round).
    labels : Series of bool
        Labelled cells (index of ``cells``), in labelling order.
    log : DataFrame
        One row per training: ``n_labels``, ``n_pos``, ``n_skipped``, ``cv_f1``.
    """
    from chemozone.classify import MIN_LABELS_PER_CLASS, suggest_cells, train_marker_classifier

    if not truth.index.equals(cells.index) or not features.index.equals(cells.index):
        raise ValueError("oracle_labelling: cells, features and truth need the same index")
    labels: dict = {}
    skipped: list = []
    clf, log = None, []
    while len(labels) < budget:
        done = cells.loc[list(labels) + skipped, ["sample_id", "cell_id"]]
        k = min(start if clf is None else batch, budget - len(labels))
        s = suggest_cells(cells, clf, k=k, labelled=done, features=features, seed=seed)
        if s.empty:
            break
        for i in s.index:
            t = truth.loc[i]
            if t is None or (isinstance(t, float) and np.isnan(t)):
                skipped.append(i)
            else:
                labels[i] = bool(t)
        n_pos = sum(labels.values())
        if min(n_pos, len(labels) - n_pos) < MIN_LABELS_PER_CLASS:
            continue  # not trainable yet: more cold-start suggestions
        y = pd.Series(labels)
        clf = train_marker_classifier(features.loc[y.index], y.to_numpy(), marker=marker, seed=seed, verbose=False,
                                      gbm_params=gbm_params)
        log.append({"n_labels": len(y), "n_pos": int(y.sum()), "n_skipped": len(skipped), "cv_f1": clf.metrics["f1"]})
    if clf is None:
        raise ValueError(f"oracle_labelling: '{marker}' never had {MIN_LABELS_PER_CLASS} labels of each class")
    return clf, pd.Series(labels, dtype=bool), pd.DataFrame(log)


def _rows_of(cells: pd.DataFrame, matched: pd.DataFrame) -> np.ndarray:
    """Row position in ``cells`` of every matched cell."""
    idx = pd.MultiIndex.from_arrays([cells["sample_id"].astype(str), cells["cell_id"].astype(np.int64)])
    want = pd.MultiIndex.from_arrays([matched["sample_id"].astype(str), matched["cell_id"].astype(np.int64)])
    pos = pd.Series(np.arange(len(cells)), index=idx).reindex(want)
    if pos.isna().any():
        raise SystemExit("matched cells missing from cells.parquet; rerun without --reuse")
    return pos.to_numpy(int)


def _f1_row(matched: pd.DataFrame, called: np.ndarray, mask: np.ndarray, r: str) -> dict:
    """Classifier (``called``, aligned to ``matched``), oracle threshold, run default and every gate method's F1 on
    the ``mask`` cells, and the best gate there."""
    y = matched[f"truth_{r}_pos"].astype(bool).to_numpy()[mask]
    row = {"n_eval": int(mask.sum()), "classifier": f1_score(called[mask], y),
           "oracle thr": oracle_f1(matched.loc[mask, f"{r}_cell"].to_numpy(float), y),
           "run default": f1_score(matched.loc[mask, f"{r}_pos"].astype(bool).to_numpy(), y)}
    row.update({m: f1_score(matched.loc[mask, f"{r}_{m}"].to_numpy(bool), y) for m in methods()})
    row["best gate name"] = max(methods(), key=lambda m: row[m])
    row["best gate"] = row[row["best gate name"]]
    return row


def score_seed(cells, feats, matched, rows, receptors, *, seed, pool, holdout, start, batch, budget):
    """One labelling seed: a classifier per receptor; F1 rows (classifier vs gates) on the cells it did not
    label and on the held-out cells (never offered); probabilities of all cells."""
    from chemozone.classify import predict_cells

    imm = matched["truth_cell_type"].isin(IMMUNE).to_numpy()
    held = np.zeros(len(matched), bool)
    pick = np.flatnonzero(imm)
    held[np.random.default_rng(10_000 + seed).choice(pick, size=int(round(holdout * pick.size)), replace=False)] = True
    offer_mask = pool.copy()
    offer_mask[rows[held]] = False
    offer = cells.index[offer_mask]
    out_rows, probs = [], {}
    for r in receptors:
        truth = pd.Series(None, index=cells.index, dtype=object)
        truth.iloc[rows[imm]] = matched.loc[imm, f"truth_{r}_pos"].astype(bool).to_numpy()
        clf, labels, log = oracle_labelling(cells.loc[offer], feats.loc[offer], truth.loc[offer], marker=r, seed=seed,
                                            start=start, batch=batch, budget=budget)
        pred = predict_cells(cells, clf, features=feats)
        probs[r] = pred[f"{r}_prob"].to_numpy()
        called = pred[f"{r}_pos"].to_numpy()[rows]
        unl = imm & ~np.isin(rows, cells.index.get_indexer(labels.index))
        base = {"seed": seed, "receptor": r, "labels": len(labels), "labels_pos": int(labels.sum()),
                "skipped": int(log["n_skipped"].iloc[-1]), "rounds": len(log), "cv_f1": clf.metrics["f1"]}
        for name, mask in (("unlabelled", unl), ("held out", held)):
            if mask.any():
                out_rows.append({**base, "cells": name, **_f1_row(matched, called, mask, r)})
    return pd.DataFrame(out_rows), probs


def _msd(v: pd.Series, fmt: str = ".3f") -> str:
    return f"{v.mean():{fmt}} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def f1_summary(res: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SD over seeds per evaluation set and receptor: classifier, best gate on the same cells, margin, pass."""
    out = []
    for (cells_set, r), d in res.groupby(["cells", "receptor"], sort=False):
        margin = d["classifier"] - d["best gate"]
        out.append({"cells": cells_set, "receptor": r, "n_eval": int(d["n_eval"].mean()),
                    "labels (pos)": f"{d['labels'].mean():.0f} ({d['labels_pos'].mean():.0f})",
                    "skipped": round(d["skipped"].mean(), 1), "rounds": round(d["rounds"].mean(), 1),
                    "CV F1": _msd(d["cv_f1"]), "classifier F1": _msd(d["classifier"]),
                    "best gate F1": f"{d['best gate'].mean():.3f} ({'/'.join(sorted(set(d['best gate name'])))})",
                    "oracle thr": round(d["oracle thr"].mean(), 3), "run default": round(d["run default"].mean(), 3),
                    "margin": _msd(margin, "+.3f"),
                    "pass": bool((d["classifier"] >= 0.9).all() and (margin >= 0.05).all())})
    return pd.DataFrame(out).set_index(["cells", "receptor"])


def cognate(matched, inf, cfg, probs_by_seed, *, n_bootstrap, seed0):
    """compare_cognate_calls per labelling seed: the full table of the first seed, mean |error| of every seed."""
    from chemozone import stats

    tables = []
    for s, probs in probs_by_seed.items():
        m = matched.copy()
        for r, p in probs.items():
            m[f"{r}_prob"], m[f"{r}_clf"] = p, p >= 0.5
        sources = {"truth": ("hard", "truth_{receptor}_pos"), "best gate": ("hard", "{receptor}_bestgate"),
                   "default gate": ("hard", "{receptor}_pos"), "classifier hard": ("hard", "{receptor}_clf"),
                   "classifier soft": ("soft", "{receptor}_prob")}
        res = stats.compare_cognate_calls(m, inf, pairs=cfg.spatial.cognate_pairs, sources=sources,
                                          n_bootstrap=n_bootstrap, seed=seed0,
                                          edge_exclusion_um=cfg.spatial.edge_exclusion_um)
        tables.append(res.assign(label_seed=s))
    return pd.concat(tables, ignore_index=True)


def ceiling(feats, rows, matched, receptors, seed) -> pd.DataFrame:
    """CV F1 with every matched immune cell labelled, and the best single-feature thresholds (truth-chosen)."""
    from chemozone.classify import train_marker_classifier

    imm = matched["truth_cell_type"].isin(IMMUNE).to_numpy()
    out = []
    for r in receptors:
        y = matched.loc[imm, f"truth_{r}_pos"].astype(bool).to_numpy()
        f = feats.iloc[rows[imm]]
        clf = train_marker_classifier(f, y, marker=r, seed=seed, verbose=False)
        single = {c: max(oracle_f1(f[c].to_numpy(), y), oracle_f1(-f[c].to_numpy(), y))
                  for c in f.columns if f[c].notna().all()}
        top = sorted(single.items(), key=lambda kv: -kv[1])[:4]
        out.append({"receptor": r, "all labels": int(imm.sum()), "CV F1 (all labels)": round(clf.metrics["f1"], 3),
                    "best single features (truth-chosen threshold F1)": ", ".join(f"{c} {v:.3f}" for c, v in top)})
    return pd.DataFrame(out)


def _pool(cells: pd.DataFrame, pool: str) -> np.ndarray:
    """Cells offered to the suggestions: all, or those the run's rule table called an immune type."""
    return np.ones(len(cells), bool) if pool == "all" else cells["cell_type"].isin(IMMUNE).to_numpy()


def print_cognate(matched, run: Path, cfg, probs_by_seed, args) -> None:
    """The cognate table of the first labelling seed and every seed's distance to the truth estimate."""
    inf = pd.read_parquet(run / "infiltration.parquet")
    inf = inf[inf["dose_gy"].astype(float) > 0]
    cog = cognate(matched, inf, cfg, probs_by_seed, n_bootstrap=args.bootstrap, seed0=args.seed)
    first = cog[cog["label_seed"] == args.seeds[0]]
    show = ["source", "zone", "receptor", "cell_type", "n_pos", "estimate", "ci_lo", "ci_hi", "abs_error"]
    print(f"\nCognate log2 specificity, labelling seed {args.seeds[0]} (irradiated samples; patient bootstrap "
          f"{args.bootstrap}; soft: Bernoulli call resampling):")
    print(first[show].round(3).to_string(index=False))
    per = cog.groupby(["label_seed", "source"], sort=False)["abs_error"].mean().unstack(0)
    summ = pd.DataFrame({"mean |error| per seed": per.round(3).astype(str).agg(" / ".join, axis=1),
                         "mean": per.mean(axis=1).round(3), "sd": per.std(axis=1, ddof=1).round(3)})
    print(f"\nDistance to the truth estimate, mean over the {first.shape[0] // 5} pairs x lineages (seeds {args.seeds}):")
    print(summ.to_string())
    piv = cog.pivot_table(index=["label_seed", "zone", "cell_type"], columns="source", values="abs_error")
    closer = (piv["classifier soft"] < piv["best gate"]).groupby(level=0).sum()
    print("rows where soft calls are closer to the truth than the best gate: "
          + ", ".join(f"seed {s}: {n}/{len(piv.loc[s])}" for s, n in closer.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the cohort and the run")
    ap.add_argument("--reuse", action="store_true", help="reuse a cohort / run already in --work")
    ap.add_argument("--seed", type=int, default=0, help="cohort seed")
    ap.add_argument("--size", type=int, default=None, help="override the preset's image side (1024 px)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="labelling seeds")
    ap.add_argument("--pool", choices=["all", "immune"], default="all",
                    help="cells offered to the suggestions: all (default) or the run's immune calls")
    ap.add_argument("--start", type=int, default=20, help="cold-start suggestions")
    ap.add_argument("--batch", type=int, default=20, help="suggestions per round")
    ap.add_argument("--budget", type=int, default=200, help="most labels per receptor")
    ap.add_argument("--holdout", type=float, default=0.5,
                    help="fraction of matched truth immune cells never offered to the suggestions (unbiased F1)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--write-probs", action="store_true", help="save seed 0's probabilities to WORK/probs.parquet")
    args = ap.parse_args(argv)
    from chemozone.classify import cell_features
    from chemozone.config import load_config

    t0 = time.perf_counter()
    cohort, run = make_and_run(args.work, seed=args.seed, patients=None, size=args.size, reuse=args.reuse)
    cfg = load_config(CONFIG)
    receptors = list(cfg.phenotypes.receptors)
    cells = pd.read_parquet(run / "cells.parquet")
    matched = load_matched(cohort, run)
    rows = _rows_of(cells, matched)
    pd.set_option("display.width", 250, "display.max_columns", 40)
    imm = matched["truth_cell_type"].isin(IMMUNE)
    print(f"\n{len(cells)} run cells, {len(matched)} matched, {int(imm.sum())} matched truth immune; config {CONFIG}")
    print(contrast(matched, receptors).round(2).to_string(index=False))
    _, best_all = gate_f1(run, matched, cfg, receptors)
    for r, m in best_all.items():
        matched[f"{r}_bestgate"] = matched[f"{r}_{m}"]
    feats = cell_features(cells)
    print(f"features: {feats.shape[1]} columns of cell_features(cells) on all {len(cells)} cells; pool '{args.pool}': "
          f"{int(_pool(cells, args.pool).sum())} cells offered to the suggestions")
    per_seed, probs_by_seed = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for s in args.seeds:
            res, probs_by_seed[s] = score_seed(cells, feats, matched, rows, receptors, seed=s,
                                               pool=_pool(cells, args.pool), holdout=args.holdout, start=args.start,
                                               batch=args.batch, budget=args.budget)
            per_seed.append(res)
            print(f"  labelling seed {s}: " + ", ".join(f"{r} {c} F1 {v:.3f}" for r, c, v in zip(res["receptor"], res["cells"],
                                                                                     res["classifier"]))
                  + f" [{time.perf_counter() - t0:.0f} s]")
    res = pd.concat(per_seed, ignore_index=True)
    print(f"\nReceptor F1 (prob >= 0.5) on matched truth immune cells: 'unlabelled' = every one the seed did not label, "
          f"'held out' = the random {args.holdout:.0%} never offered to the suggestions (suggested labels, budget "
          f"{args.budget}, start {args.start}, batch {args.batch}, pool {args.pool}; seeds {args.seeds}; mean ± SD):")
    print(f1_summary(res).to_string())
    cols = ["classifier", "oracle thr", "run default", *methods()]
    print("\nF1 per method on the same cells (mean over seeds):")
    print(res.groupby(["cells", "receptor"], sort=False)[cols].mean().T.round(3).to_string())
    if args.write_probs:
        s0 = args.seeds[0]
        out = cells[["sample_id", "cell_id"]].assign(**{f"{r}_prob": p for r, p in probs_by_seed[s0].items()})
        out.to_parquet(args.work / "probs.parquet")
        print(f"probabilities of labelling seed {s0}: {args.work / 'probs.parquet'}")
    for r, p in list(probs_by_seed.items()):
        probs_by_seed[r] = {k: v[rows] for k, v in p.items()}
    print_cognate(matched, run, cfg, probs_by_seed, args)
    print("\nWhat limits it (features of the run's default quantification):")
    print(ceiling(feats, rows, matched, receptors, args.seeds[0]).to_string(index=False))
    print(f"\n[{time.perf_counter() - t0:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
