"""Label-image clean-up: holes, pieces, size filter and deterministic renumbering.

Every step is a linear-time pass (``bincount``, ``ufunc.at``, sparse counting) rather than a sort
of the whole image, so it stays cheap on 2048² tiles with thousands of objects.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _fill_small_holes(fg: np.ndarray, max_px: float) -> np.ndarray:
    """``fg`` with its holes (background not 4-connected to the border) smaller than ``max_px`` filled.

    The holes of ``ndi.binary_fill_holes`` (default structure) are the 4-connected background components
    that do not touch the border: one labelling finds them and their sizes (no iterated dilation).
    """
    bg, n = ndi.label(~fg)
    if n == 0:
        return fg
    edge = np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])
    sizes = np.bincount(bg.ravel(), minlength=n + 1)
    small = sizes < max_px
    small[edge] = False
    small[0] = False
    return fg | small[bg] if small.any() else fg


def _distance_capped(fg: np.ndarray, cap: float | None = None) -> np.ndarray:
    """``ndi.distance_transform_edt(fg).astype(np.float32)``, optionally ``np.minimum(.., cap)``: the same
    values, from the feature transform with integer squared distances (no float64 (2, Y, X) temporaries).

    float32(sqrt64(k)) == sqrt32(k) for integers k < 2**24 (double rounding is innocuous for sqrt), so the
    squared distance is clipped just above ``cap**2`` (and must stay below 2**24 without a cap).
    """
    h, w = fg.shape
    if not fg.any():
        return np.zeros(fg.shape, np.float32)
    if fg.all():  # no background: scipy's transform has no feature to measure from
        out = ndi.distance_transform_edt(fg).astype(np.float32)
        return out if cap is None else np.minimum(out, cap)
    ft = ndi.distance_transform_edt(fg, return_distances=False, return_indices=True)
    dy = ft[0] - np.arange(h, dtype=ft.dtype)[:, None]
    d2 = dy * dy
    dx = ft[1] - np.arange(w, dtype=ft.dtype)[None, :]
    d2 += dx * dx
    del ft, dy, dx
    limit = 2**24 - 1 if cap is None else min(2**24 - 1, int(np.ceil(float(cap) ** 2)) + 1)
    if cap is None and int(d2.max()) > limit:
        return np.sqrt(d2.astype(np.float64)).astype(np.float32)
    np.minimum(d2, limit, out=d2)
    dist = np.sqrt(d2.astype(np.float32))
    return dist if cap is None else np.minimum(dist, cap)


def _pair_counts(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct pairs ``(a, b)`` with their counts, sorted by ``a`` then ``b`` (a sparse histogram, no sort)."""
    from scipy import sparse

    m = sparse.coo_matrix((np.ones(a.size, np.int64), (a, b)), shape=(n_a, n_b)).tocsr()
    m.sum_duplicates()
    m.sort_indices()
    rows = np.repeat(np.arange(n_a), np.diff(m.indptr))
    return rows, m.indices.astype(np.int64), m.data


def _largest_piece(labels: np.ndarray) -> np.ndarray:
    """Keep, for each label, only its largest piece.

    A piece is a label's part of a 4-connected component of the foreground (so two parts of a label
    joined through a touching label count as one piece); ties go to the piece found first in raster
    order.
    """
    pieces, n = ndi.label(labels > 0)
    if n == 0:
        return labels
    m = pieces > 0
    n_lab = int(labels.max()) + 1
    piece, lab, cnt = _pair_counts(pieces[m], labels[m].astype(np.int64), n + 1, n_lab)
    # per label, the pair with the most pixels; ties: the lowest piece id (the pairs are in piece order)
    order = np.lexsort((-cnt, lab))
    first = np.ones(len(order), bool)
    first[1:] = lab[order][1:] != lab[order][:-1]
    best_piece = np.zeros(n_lab, pieces.dtype)
    best_piece[lab[order[first]]] = piece[order[first]]
    return np.where(m & (best_piece[labels] == pieces), labels, 0)


def _fill_holes_labels(labels: np.ndarray) -> np.ndarray:
    """Fill background holes that lie entirely inside one label."""
    bg = labels == 0
    holes, n = ndi.label(bg)
    if n <= 1:
        return labels
    # holes touching the border are background; others take the label that surrounds them
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    ring = ndi.binary_dilation(bg) & ~bg
    # label of the ring around each hole: unique only if the hole is enclosed by one nucleus
    hid = ndi.grey_dilation(holes, size=(3, 3))[ring]
    out = labels.copy()
    if hid.size == 0:
        return out
    hole, lab, _ = _pair_counts(hid.astype(np.int64), labels[ring].astype(np.int64), n + 1, int(labels.max()) + 1)
    n_labels_around = np.bincount(hole, minlength=n + 1)
    single = n_labels_around == 1
    single[border] = False
    single[0] = False
    if not single.any():
        return out
    lut = np.zeros(n + 1, np.int64)
    sel = single[hole]
    lut[hole[sel]] = lab[sel]
    fill = lut[holes]
    put = bg & (fill > 0)
    out[put] = fill[put]
    return out


def _size_filter(labels: np.ndarray, min_px: float, max_px: float) -> np.ndarray:
    """Drop objects outside ``[min_px, max_px]`` and renumber 1..n (raster order of first pixel)."""
    sizes = np.bincount(labels.ravel())
    keep = (sizes >= min_px) & (sizes <= max_px)
    keep[0] = False
    return _relabel(labels, keep)


def _relabel(labels: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Renumber kept labels 1..n in raster order of their first pixel (deterministic)."""
    flat = labels.ravel()
    n_lab = int(flat.max()) + 1 if flat.size else 1
    first = np.full(n_lab, flat.size, np.int64)
    np.minimum.at(first, flat, np.arange(flat.size, dtype=np.int64))
    ids = np.flatnonzero(first < flat.size)  # the labels present
    sel = keep[ids] if keep is not None else ids > 0
    ids = ids[sel]
    order = np.argsort(first[ids], kind="stable")
    lut = np.zeros(n_lab, np.uint32)
    lut[ids[order]] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels]
