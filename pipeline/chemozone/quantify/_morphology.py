"""Morphology from pixel runs and coordinate moments: eccentricity, axis lengths (as
``skimage.measure.regionprops``) and the lattice solidity of the convex hull of the pixel centres."""

from __future__ import annotations

import numpy as np


def _row_runs(lab: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """(label, global row, first col, last col) of every horizontal run of a nonzero label."""
    h, w = lab.shape
    if lab.size == 0:
        return np.zeros((0, 4), np.int64)
    start = np.ones((h, w), bool)
    start[:, 1:] = lab[:, 1:] != lab[:, :-1]
    end = np.ones((h, w), bool)
    end[:, :-1] = start[:, 1:]
    r, c0 = np.nonzero(start)
    _, c1 = np.nonzero(end)
    lv = lab[r, c0].astype(np.int64)
    keep = lv != 0
    return np.stack([lv[keep], r[keep] + y0, c0[keep] + x0, c1[keep] + x0], axis=1).astype(np.int64)


def _hull_lattice_count(xs: np.ndarray, ys: np.ndarray) -> float:
    """Number of integer points (pixel centres) inside or on the convex hull of integer points."""
    from math import gcd

    from scipy.spatial import ConvexHull, QhullError

    pts = np.stack([xs, ys], 1).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # collinear points: count the lattice points on the segment
        i0 = np.lexsort((ys, xs))
        a, b = i0[0], i0[-1]
        return float(gcd(int(abs(xs[b] - xs[a])), int(abs(ys[b] - ys[a]))) + 1)
    v = pts[hull.vertices]
    p, q = v, np.roll(v, -1, axis=0)
    rows = np.arange(int(ys.min()), int(ys.max()) + 1, dtype=np.float64)[:, None]
    ylo, yhi = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])
    inside = (rows >= ylo) & (rows <= yhi)
    dy = q[:, 1] - p[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(dy != 0, (rows - p[:, 1]) / dy, 0.0)
    x = p[:, 0] + t * (q[:, 0] - p[:, 0])
    # horizontal edges contribute both end points
    xa = np.where(inside, np.where(dy != 0, x, np.minimum(p[:, 0], q[:, 0])), np.inf)
    xb = np.where(inside, np.where(dy != 0, x, np.maximum(p[:, 0], q[:, 0])), -np.inf)
    lo = np.ceil(xa.min(1) - 1e-9)
    hi = np.floor(xb.max(1) + 1e-9)
    return float(np.maximum(hi - lo + 1, 0).sum())


def _solidity(labels_sorted: np.ndarray, runs: np.ndarray, areas_px: np.ndarray) -> np.ndarray:
    """Pixel area / pixel centres inside the convex hull of the pixel centres, per label (NaN when absent)."""
    out = np.full(labels_sorted.size, np.nan)
    if runs.size == 0:
        return out
    # merge runs per (label, row): first col = min, last col = max (only row extremes shape the hull)
    order = np.lexsort((runs[:, 1], runs[:, 0]))
    r = runs[order]
    key_change = np.r_[True, (r[1:, 0] != r[:-1, 0]) | (r[1:, 1] != r[:-1, 1])]
    st = np.flatnonzero(key_change)
    lab = r[st, 0]
    row = r[st, 1]
    c0 = np.minimum.reduceat(r[:, 2], st)
    c1 = np.maximum.reduceat(r[:, 3], st)
    lab_start = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    lab_end = np.r_[lab_start[1:], lab.size]
    pos = np.searchsorted(labels_sorted, lab[lab_start])
    for p, a, b in zip(pos, lab_start, lab_end):
        xs = np.concatenate([c0[a:b], c1[a:b]])
        ys = np.concatenate([row[a:b], row[a:b]])
        out[p] = areas_px[p] / _hull_lattice_count(xs, ys)
    return out


def _morphology(mom, area, labels, runs, px):
    n = area.astype(np.float64)
    my, mx = mom[:, 0] / n, mom[:, 1] / n
    vyy = np.maximum(mom[:, 2] / n - my * my, 0.0)
    vxx = np.maximum(mom[:, 3] / n - mx * mx, 0.0)
    vxy = mom[:, 4] / n - my * mx
    tr = vyy + vxx
    disc = np.sqrt(np.maximum(((vyy - vxx) / 2) ** 2 + vxy ** 2, 0.0))
    l1 = np.maximum(tr / 2 + disc, 0.0)
    l2 = np.maximum(tr / 2 - disc, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0.0, 1.0)), 0.0)
    return {
        "eccentricity": ecc,
        "solidity": _solidity(labels, runs, n),
        "major_axis_length_um": 4 * np.sqrt(l1) * px,
        "minor_axis_length_um": 4 * np.sqrt(l2) * px,
    }
