"""Active learning: which cells to label next (uncertain, spread over samples, no near-duplicates)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._model import CellClassifier
from ._predict import _features_for

SUGGESTION_COLUMNS = ["sample_id", "cell_id", "uncertainty", "rank"]


def uncertainty(proba: np.ndarray) -> np.ndarray:
    """1 - (largest - second largest probability): 1 at a tie, 0 when one class is certain.

    For two classes this is ``1 - |2p - 1|`` (1 at p = 0.5).

    Parameters
    ----------
    proba : ndarray, shape (n_cells, n_classes)

    Returns
    -------
    float64 ndarray, shape (n_cells,)

    Examples
    --------
    >>> uncertainty(np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])).round(2).tolist()
    [1.0, 0.2, 0.4]
    """
    p = np.sort(np.asarray(proba, dtype=float), axis=1)
    return 1.0 - (p[:, -1] - p[:, -2])


def _robust_z(features: pd.DataFrame) -> np.ndarray:
    """Features centred on their median and scaled by their IQR over all cells (NaN -> 0)."""
    x = features.to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        med = np.nanmedian(x, axis=0)
        iqr = np.nanpercentile(x, 75, axis=0) - np.nanpercentile(x, 25, axis=0)
        z = (x - med) / np.where(iqr > 0, iqr, 1.0)
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def _labelled_mask(cells: pd.DataFrame, labelled: pd.DataFrame | None) -> np.ndarray:
    if labelled is None or len(labelled) == 0:
        return np.zeros(len(cells), dtype=bool)
    have = set(zip(labelled["sample_id"].astype(str), labelled["cell_id"].astype(np.int64)))
    return np.fromiter((k in have for k in zip(_sample_ids(cells), cells["cell_id"].astype(np.int64))),
                       dtype=bool, count=len(cells))


def _sample_ids(cells: pd.DataFrame) -> np.ndarray:
    if "sample_id" in cells.columns:
        return cells["sample_id"].astype(str).to_numpy()
    return np.full(len(cells), "", dtype=object)


def _ranked_per_sample(sid: np.ndarray, u: np.ndarray, free: np.ndarray, rng) -> dict[str, list[int]]:
    """Each sample's unlabelled rows, most uncertain first (ties in a seeded random order)."""
    tie = rng.permutation(len(u))
    order = np.lexsort((tie, -u))
    out: dict[str, list[int]] = {}
    for i in order[free[order]]:
        out.setdefault(str(sid[i]), []).append(int(i))
    return out


def _duplicate_radius(z: np.ndarray, rows: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of the nonzero pairwise feature distances among the candidate rows (0 when none)."""
    from scipy.spatial.distance import pdist

    d = pdist(z[rows]) if len(rows) >= 2 and quantile > 0 else np.zeros(0)
    d = d[d > 0]
    return float(np.quantile(d, quantile)) if len(d) else 0.0


def _next_of_sample(q: list[int], pos: int, z: np.ndarray, radius: float, ref: list[int],
                    skipped: list[int]) -> tuple[int | None, int]:
    """A sample's next candidate that is not within ``radius`` of ``ref`` (skipped ones are remembered); when
    none is left, its most uncertain skipped candidate."""
    while pos < len(q):
        i = q[pos]
        pos += 1
        if radius <= 0 or not ref or np.min(np.linalg.norm(z[ref] - z[i], axis=1)) >= radius:
            return i, pos
        skipped.append(i)
    return (skipped.pop(0) if skipped else None), pos


def _round_robin(queues: dict[str, list[int]], order: list[str], k: int, z: np.ndarray, radius: float,
                 taken: list[int]) -> list[int]:
    """Samples take turns giving their next candidate that is not a near-duplicate of a cell already taken."""
    chosen: list[int] = []
    pos = dict.fromkeys(order, 0)
    skipped: dict[str, list[int]] = {s: [] for s in order}
    active = [s for s in order if queues.get(s)]
    while len(chosen) < k and active:
        for s in list(active):
            i, pos[s] = _next_of_sample(queues[s], pos[s], z, radius, taken + chosen, skipped[s])
            if i is None:
                active.remove(s)
                continue
            chosen.append(i)
            if len(chosen) >= k:
                break
    return chosen


def suggest_cells(cells: pd.DataFrame, classifier: CellClassifier | None = None, *, k: int = 20,
                  labelled: pd.DataFrame | None = None, features: pd.DataFrame | None = None, seed: int = 0,
                  pool_factor: int = 5, duplicate_quantile: float = 0.1) -> pd.DataFrame:
    """The next ``k`` cells to label: the most uncertain, spread across samples, without near-duplicates.

    1. Uncertainty of every unlabelled cell (:func:`uncertainty` of the classifier's calibrated
       probabilities; all equal without a classifier, i.e. a cold start picks cells at random).
    2. Each sample's cells are ranked by uncertainty (ties in an order drawn from ``seed``); samples take
       turns (in an order drawn from ``seed``) giving their next cell, so every sample contributes.
    3. A cell closer than a radius to a cell already suggested or labelled (Euclidean distance of the
       features, each centred on its median and scaled by its IQR over all cells) is a near-duplicate and
       skipped; the radius is the ``duplicate_quantile`` of the nonzero pairwise distances among the
       ``pool_factor * k`` most uncertain cells. A sample without a candidate left that is not a
       near-duplicate gives its most uncertain skipped cell instead (so the samples stay balanced).

    Deterministic: the same inputs and ``seed`` give the same suggestions.

    Parameters
    ----------
    cells : DataFrame, shape (n_cells, ...)
        ``sample_id``, ``cell_id`` and the columns of the features.
    classifier : CellClassifier, optional
        The current classifier (None = cold start).
    k : int
        Number of cells to suggest (fewer when fewer are unlabelled).
    labelled : DataFrame, optional
        Cells already labelled (``sample_id``, ``cell_id``; e.g. :meth:`LabelStore.labels`): never suggested.
    features : DataFrame, optional
        Precomputed :func:`cell_features` of ``cells``.
    seed : int
    pool_factor : int
        How many of the most uncertain cells, per suggested cell, set the duplicate radius.
    duplicate_quantile : float
        0 = no diversity filter.

    Returns
    -------
    DataFrame, shape (<= k, 4)
        ``sample_id``, ``cell_id``, ``uncertainty``, ``rank`` (0 = first to label), index = rows of ``cells``.

    Examples
    --------
    >>> cells = pd.DataFrame({"sample_id": ["a"] * 3 + ["b"] * 3, "cell_id": [1, 2, 3] * 2,
    ...                       "x_um": np.arange(6.0), "y_um": 0.0, "CD3_cell": [1.0, 2, 3, 4, 5, 6]})
    >>> s = suggest_cells(cells, k=4, seed=0)
    >>> sorted(s["sample_id"].value_counts().tolist())
    [2, 2]
    """
    from ._features import cell_features

    rng = np.random.default_rng(seed)
    sid = _sample_ids(cells)
    if classifier is not None:
        feats = features if features is not None else _features_for(cells, classifier, {})
        u = uncertainty(classifier.predict_proba(feats))
        feats = feats[classifier.features]
    else:
        feats = features if features is not None else cell_features(cells, k_neighbors=0)
        u = np.ones(len(cells))
    z = _robust_z(feats)
    free = ~_labelled_mask(cells, labelled)
    queues = _ranked_per_sample(sid, u, free, rng)
    order = [s for s in np.asarray(sorted(queues), dtype=object)[rng.permutation(len(queues))]]
    pool = np.concatenate([q[: max(1, pool_factor * k // max(1, len(queues)))] for q in queues.values()]) \
        if queues else np.zeros(0, int)
    radius = _duplicate_radius(z, pool.astype(int), duplicate_quantile)
    taken = list(np.flatnonzero(~free)) if radius > 0 else []
    chosen = _round_robin(queues, order, k, z, radius, taken)
    idx = np.asarray(chosen, dtype=int)
    out = pd.DataFrame({"sample_id": sid[idx], "cell_id": cells["cell_id"].to_numpy()[idx], "uncertainty": u[idx],
                        "rank": np.arange(len(idx))}, index=cells.index[idx])
    return out
