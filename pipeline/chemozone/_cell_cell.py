"""Cell–cell metrics: nearest-neighbour distances, counts within a radius, neighbourhood enrichment.

Re-exported by :mod:`chemozone.spatial`. Every metric is computed within each sample (``sample_id``
column; one sample when absent), on the cell centroids ``x_um, y_um``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .errors import MissingStepError

__all__ = ["nearest_distances", "count_within", "neighbourhood_enrichment"]


def _xy(cells: pd.DataFrame) -> np.ndarray:
    for c in ("x_um", "y_um"):
        if c not in cells.columns:
            raise MissingStepError(f"cells table has no '{c}' column; run quantification (quantify_cells) first")
    return np.column_stack([cells["x_um"].to_numpy(np.float64), cells["y_um"].to_numpy(np.float64)])


def _labels(cells: pd.DataFrame, population: str) -> tuple[np.ndarray, list[str]]:
    if population not in cells.columns:
        raise MissingStepError(
            f"cells table has no '{population}' column; run phenotyping (phenotype_cells) first, or pass an existing column"
        )
    cat = pd.Categorical(cells[population].astype(str))
    return cat.codes.astype(np.int64), [str(c) for c in cat.categories]


def _sample_groups(cells: pd.DataFrame) -> list[np.ndarray]:
    if "sample_id" not in cells.columns:
        return [np.arange(len(cells))]
    codes = pd.factorize(cells["sample_id"])[0]
    order = np.argsort(codes, kind="stable")
    splits = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, splits)


def _locality_order(pts: np.ndarray) -> np.ndarray:
    """Order points in horizontal bands a few cell spacings high (boustrophedon), for cache-friendly queries."""
    n = len(pts)
    if n < 2:
        return np.arange(n)
    span = np.ptp(pts, axis=0)
    h = max(float(np.sqrt(max(span[0] * span[1], 1e-12) / n)) * 4.0, 1e-9)
    band = np.floor((pts[:, 1] - pts[:, 1].min()) / h).astype(np.int64)
    x = np.where(band % 2 == 0, pts[:, 0], -pts[:, 0])
    return np.lexsort((x, band))


def nearest_distances(cells: pd.DataFrame, *, population: str = "cell_type", workers: int = 1) -> pd.DataFrame:
    """Distance from every cell to the nearest *other* cell of each population (within its sample).

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um``, the ``population`` column (and ``sample_id`` when several samples)
    population : str
        Column whose values define the populations.
    workers : int
        Threads for the KD-tree queries (1 = one core).

    Returns
    -------
    DataFrame
        Same index as ``cells``, one column ``dist_nearest_{value}_um`` per population value (NaN when the
        sample has no other cell of that population), and ``nearest_{value}_cell_id`` when ``cell_id``
        exists (-1 when none).
    """
    xy = _xy(cells)
    codes, names = _labels(cells, population)
    n = len(cells)
    dist = np.full((n, len(names)), np.nan)
    nn = np.full((n, len(names)), -1, dtype=np.int64)
    for idx in _sample_groups(cells):
        idx = idx[_locality_order(xy[idx])]  # queries in spatial order are ~3x faster (cache locality)
        pts = xy[idx]
        cod = codes[idx]
        for k in range(len(names)):
            members = np.flatnonzero(cod == k)
            if members.size == 0:
                continue
            tree = cKDTree(pts[members])
            d, j = tree.query(pts, k=1, workers=workers)
            j = members[j]
            if members.size > 1:
                # members whose nearest is themselves: take the first neighbour that is not the cell
                self_hit = np.flatnonzero(j[members] == members)
                if self_hit.size:
                    q = members[self_hit]
                    d2, j2 = tree.query(pts[q], k=2, workers=workers)
                    j2 = members[j2]
                    pick = np.where(j2[:, 0] == q, 1, 0)
                    d[q] = d2[np.arange(q.size), pick]
                    j[q] = j2[np.arange(q.size), pick]
            else:
                d[members] = np.nan
                j[members] = -1
            dist[idx, k] = d
            nn[idx, k] = np.where(j >= 0, idx[np.maximum(j, 0)], -1)
    out = pd.DataFrame(dist, index=cells.index, columns=[f"dist_nearest_{v}_um" for v in names])
    if "cell_id" in cells.columns:
        ids = cells["cell_id"].to_numpy()
        for k, v in enumerate(names):
            out[f"nearest_{v}_cell_id"] = np.where(nn[:, k] >= 0, ids[np.maximum(nn[:, k], 0)], -1)
    return out


def count_within(cells: pd.DataFrame, *, population: str, source: str, target: str, radius_um: float) -> pd.DataFrame:
    """Target cells within ``radius_um`` of each source cell (phenoptr's ``count_within``).

    For each source cell, ``within`` = number of target cells (other than itself) at distance ≤
    ``radius_um``.

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um``, ``population`` (and ``sample_id`` for several samples)
    population : str
        Column holding the labels.
    source, target : str
        Label values (phenoptr's ``from`` and ``to``).
    radius_um : float

    Returns
    -------
    DataFrame
        One row per sample (a single row without ``sample_id``): ``sample_id, radius_um, source, target,
        from_count, to_count, from_with`` (source cells with at least one target within the radius),
        ``within_mean`` (mean of ``within`` over all source cells).

    Examples
    --------
    >>> cells = pd.DataFrame({"x_um": [0.0, 10.0, 30.0, 100.0], "y_um": 0.0, "ph": ["CD68+", "CK+", "CK+", "CD68+"]})
    >>> r = count_within(cells, population="ph", source="CD68+", target="CK+", radius_um=25)
    >>> r[["from_count", "to_count", "from_with", "within_mean"]].values.tolist()
    [[2.0, 2.0, 1.0, 0.5]]
    """
    xy = _xy(cells)
    if population not in cells.columns:
        raise MissingStepError(f"cells table has no '{population}' column; run phenotyping first")
    lab = cells[population].astype(str).to_numpy()
    sids = cells["sample_id"].astype(str).to_numpy() if "sample_id" in cells.columns else None
    rows = []
    for idx in _sample_groups(cells):
        s = np.flatnonzero(lab[idx] == source)
        t = np.flatnonzero(lab[idx] == target)
        within = np.zeros(s.size, dtype=np.int64)
        if s.size and t.size:
            tree_t = cKDTree(xy[idx][t])
            within = np.asarray(tree_t.query_ball_point(xy[idx][s], r=radius_um, return_length=True), dtype=np.int64)
            if source == target:
                within -= 1  # the cell itself
        rows.append(
            dict(sample_id=sids[idx[0]] if sids is not None and idx.size else None, radius_um=float(radius_um),
                 source=source, target=target, from_count=int(s.size), to_count=int(t.size),
                 from_with=int((within > 0).sum()), within_mean=float(within.mean()) if s.size else float("nan"))
        )
    return pd.DataFrame(rows)


def _graph_edges(cells: pd.DataFrame, radius_um: float | None, n_neighbors: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (i, j) of the spatial graph, within samples (i != j)."""
    xy = _xy(cells)
    rows, cols = [], []
    for idx in _sample_groups(cells):
        pts = xy[idx]
        tree = cKDTree(pts)
        if n_neighbors is not None:
            k = min(int(n_neighbors) + 1, len(idx))
            _, j = tree.query(pts, k=k)
            j = np.atleast_2d(j)[:, 1:] if k > 1 else np.empty((len(idx), 0), int)
            i = np.repeat(np.arange(len(idx)), j.shape[1])
            rows.append(idx[i])
            cols.append(idx[j.ravel()])
        else:
            pairs = tree.query_pairs(float(radius_um), output_type="ndarray")
            rows += [idx[pairs[:, 0]], idx[pairs[:, 1]]]
            cols += [idx[pairs[:, 1]], idx[pairs[:, 0]]]
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def neighbourhood_enrichment(
    cells: pd.DataFrame,
    *,
    population: str,
    radius_um: float | None = None,
    n_neighbors: int | None = None,
    n_permutations: int = 200,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Neighbourhood enrichment z-scores by seeded permutation of the labels (as squidpy's ``nhood_enrichment``).

    The graph joins cells within ``radius_um`` (symmetric) or each cell to its ``n_neighbors`` nearest
    cells (directed), within each sample. ``count[a, b]`` = number of directed edges from a cell of
    population ``a`` to one of ``b``. Labels are permuted within samples ``n_permutations`` times
    (``numpy.random.default_rng(seed)``) and ``z = (count - mean_perm) / std_perm``.

    Returns
    -------
    zscore, counts : DataFrame (populations × populations)
    """
    if (radius_um is None) == (n_neighbors is None):
        raise ValueError("give exactly one of radius_um or n_neighbors")
    codes, names = _labels(cells, population)
    k = len(names)
    i, j = _graph_edges(cells, radius_um, n_neighbors)
    count = np.bincount(codes[i] * k + codes[j], minlength=k * k).reshape(k, k).astype(np.float64)
    rng = np.random.default_rng(seed)
    groups = _sample_groups(cells)
    perm_counts = np.empty((int(n_permutations), k, k))
    lab = codes.copy()
    for p in range(int(n_permutations)):
        for idx in groups:
            lab[idx] = codes[idx][rng.permutation(idx.size)]
        perm_counts[p] = np.bincount(lab[i] * k + lab[j], minlength=k * k).reshape(k, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (count - perm_counts.mean(axis=0)) / perm_counts.std(axis=0)
    return pd.DataFrame(z, index=names, columns=names), pd.DataFrame(count.astype(np.int64), index=names, columns=names)
