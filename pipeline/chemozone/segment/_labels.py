"""Label-image clean-up: holes, pieces, size filter and deterministic renumbering.

Every step is a linear-time pass (``bincount``, ``ufunc.at``, sparse counting) rather than a sort
of the whole image, so it stays cheap on 2048² tiles with thousands of objects.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..grid import nearest_feature


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
    if cap is not None and cap <= _SEPARABLE_MAX_CAP:
        return _distance_capped_separable(fg, float(cap))
    ft = nearest_feature(~fg)  # scipy's feature transform of ``fg``, compiled
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


_SEPARABLE_MAX_CAP = 32.0  # 2300² window: 0.24 s at cap 32, as much as scipy's feature transform alone (0.04 s at 4.5)


def _distance_capped_separable(fg: np.ndarray, cap: float) -> np.ndarray:
    """:func:`_distance_capped` for a small ``cap`` (``fg`` has background): the exact squared distance,
    clipped at ``limit = ceil(cap**2) + 1``, by the separable transform restricted to ``|dy|, |dx| <= r``
    (``r**2 < limit``; farther pixels cannot be nearer than the clip) in small unsigned integers.

    Column pass: the distance to the nearest background pixel in the same column, capped at ``r + 1``
    (``r + 1`` one-pixel propagation steps each way). Row pass: ``d2(y, x) = min_k g(y, x + k)**2 + k**2``
    over ``|k| <= r``, which is the Euclidean squared distance exactly (it separates over the axes). Pixels
    outside the image are not background, as for scipy's transform. About 8x faster than the feature
    transform on a 2300² window with a 9 px cap, with the same float32 values.
    """
    limit = int(np.ceil(cap**2)) + 1
    r = math.isqrt(limit - 1)
    top = limit + r * r
    dt = np.uint8 if top <= 255 else (np.uint16 if top <= 65535 else np.uint32)
    one = dt(1)
    g = np.where(fg, dt(r + 1), dt(0))
    for _ in range(r):
        np.minimum(g[1:], g[:-1] + one, out=g[1:])
    for _ in range(r):
        np.minimum(g[:-1], g[1:] + one, out=g[:-1])
    g2 = g * g
    np.minimum(g2, dt(limit), out=g2)
    d2 = g2.copy()
    for k in range(1, r + 1):
        kk = dt(k * k)
        np.minimum(d2[:, k:], g2[:, :-k] + kk, out=d2[:, k:])
        np.minimum(d2[:, :-k], g2[:, k:] + kk, out=d2[:, :-k])
    return np.minimum(np.sqrt(d2.astype(np.float32)), np.float32(cap))


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
    order. Only the labels found in two or more pieces (per-label lowest and highest piece id differ)
    are counted; ``labels`` itself is returned when there are none.
    """
    pieces, n = ndi.label(labels > 0)
    if n == 0:
        return labels
    idx = np.flatnonzero(pieces)
    lab = labels.ravel()[idx].astype(np.int64)
    pc = pieces.ravel()[idx]
    n_lab = int(lab.max()) + 1
    lo = np.full(n_lab, n + 1, pieces.dtype)
    np.minimum.at(lo, lab, pc)
    hi = np.zeros(n_lab, pieces.dtype)
    np.maximum.at(hi, lab, pc)
    multi = hi > lo  # (absent labels: lo = n + 1 > hi = 0)
    if not multi.any():
        return labels
    sel = multi[lab]
    piece, plab, cnt = _pair_counts(pc[sel], lab[sel], n + 1, n_lab)
    # per label, the pair with the most pixels; ties: the lowest piece id (the pairs are in piece order)
    order = np.lexsort((-cnt, plab))
    first = np.ones(len(order), bool)
    first[1:] = plab[order][1:] != plab[order][:-1]
    best_piece = np.zeros(n_lab, pieces.dtype)
    best_piece[plab[order[first]]] = piece[order[first]]
    drop = sel & (best_piece[lab] != pc)
    out = labels.copy()
    out.ravel()[idx[drop]] = 0
    return out


def _open3(fg: np.ndarray) -> np.ndarray:
    """``ndi.binary_opening(fg, structure=np.ones((3, 3), bool))`` by shifted logical operations (the 3 x 3
    square separates into rows and columns; outside the image is False for both steps, as in scipy)."""
    return _dilate_axis(_dilate_axis(_erode_axis(_erode_axis(fg, 1), 0), 1), 0)


def _erode_axis(a: np.ndarray, axis: int) -> np.ndarray:
    out = np.zeros_like(a)
    a, o = np.moveaxis(a, axis, 0), np.moveaxis(out, axis, 0)
    o[1:-1] = a[:-2] & a[1:-1] & a[2:]
    return out


def _dilate_axis(a: np.ndarray, axis: int) -> np.ndarray:
    out = a.copy()
    a, o = np.moveaxis(a, axis, 0), np.moveaxis(out, axis, 0)
    o[1:] |= a[:-1]
    o[:-1] |= a[1:]
    return out


def _dilate_cross(a: np.ndarray) -> np.ndarray:
    """``ndi.binary_dilation(a)`` (the 4-connected cross, outside False) by shifted ORs."""
    out = a.copy()
    out[1:] |= a[:-1]
    out[:-1] |= a[1:]
    out[:, 1:] |= a[:, :-1]
    out[:, :-1] |= a[:, 1:]
    return out


def _fill_holes_labels(labels: np.ndarray) -> np.ndarray:
    """Fill background holes that lie entirely inside one label.

    A hole is a 4-connected background component that does not touch the border; it takes the label of
    the labelled pixels 4-adjacent to the background whose 3 x 3 neighbourhood's highest background
    component is that hole (``ndi.grey_dilation(holes, size=(3, 3))`` at those pixels), when they all
    carry one label. Only the pixels next to a hole are looked at.
    """
    bg = labels == 0
    holes, n = ndi.label(bg)
    if n <= 1:
        return labels
    interior = np.ones(n + 1, bool)
    interior[0] = False
    interior[np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])] = False
    out = labels.copy()
    if not interior.any():
        return out
    ring = _dilate_cross(bg) & ~bg & _dilate_axis(_dilate_axis(interior[holes], 0), 1)
    idx = np.flatnonzero(ring)
    if idx.size == 0:
        return out
    h, w = labels.shape
    padded = np.pad(holes, 1).ravel()  # 0 outside: the highest id of a window is that of its part inside
    pidx = idx + (idx // w) * 2 + (w + 3)  # the same pixel in the padded image
    hid = padded[pidx]
    for off in (-w - 3, -w - 2, -w - 1, -1, 1, w + 1, w + 2, w + 3):
        np.maximum(hid, padded[pidx + off], out=hid)
    on = interior[hid]
    hole, lab, _ = _pair_counts(hid[on].astype(np.int64), labels.ravel()[idx[on]].astype(np.int64), n + 1,
                                int(labels.max()) + 1)
    n_labels_around = np.bincount(hole, minlength=n + 1)
    single = n_labels_around == 1
    single[0] = False
    if not single.any():
        return out
    lut = np.zeros(n + 1, labels.dtype)
    sel = single[hole]
    lut[hole[sel]] = lab[sel]
    put = single[holes]
    out[put] = lut[holes[put]]
    return out


def _size_filter(labels: np.ndarray, min_px: float, max_px: float) -> np.ndarray:
    """Drop objects outside ``[min_px, max_px]`` and renumber 1..n (raster order of first pixel)."""
    idx, v = _nonzero(labels)
    sizes = np.bincount(v, minlength=1)  # (no object at all: only the background's entry)
    keep = (sizes >= min_px) & (sizes <= max_px)
    keep[0] = False
    return _relabel(labels, keep, nonzero=(idx, v))[0]


def _nonzero(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the labelled pixels (raster order) and their labels."""
    idx = np.flatnonzero(labels)
    return idx, labels.ravel()[idx]


def _relabel(labels: np.ndarray, keep: np.ndarray | None = None, *,
             nonzero: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Renumber kept labels 1..n in raster order of their first pixel (deterministic); 0 stays 0.

    ``keep``: bool per label id (``keep[0]`` is ignored); ``nonzero``: :func:`_nonzero` of ``labels`` when
    the caller has it. Returns the uint32 labels and the lookup table old id -> new id (0 = dropped).
    """
    idx, v = _nonzero(labels) if nonzero is None else nonzero
    n_lab = int(v.max()) + 1 if v.size else 1
    first = np.full(n_lab, labels.size, np.int64)
    np.minimum.at(first, v, idx)
    ids = np.flatnonzero(first < labels.size)  # the labels present (never 0)
    if keep is not None:
        ids = ids[keep[ids]]
    order = np.argsort(first[ids], kind="stable")
    lut = np.zeros(n_lab, np.uint32)
    lut[ids[order]] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels], lut
