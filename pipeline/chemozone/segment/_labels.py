"""Label-image clean-up: holes, pieces, size filter and deterministic renumbering."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _fill_small_holes(fg: np.ndarray, max_px: float) -> np.ndarray:
    holes = ndi.binary_fill_holes(fg) & ~fg
    if holes.any():
        hl, _ = ndi.label(holes)
        sizes = np.bincount(hl.ravel())
        small = sizes < max_px
        small[0] = False
        fg = fg | small[hl]
    return fg


def _largest_piece(labels: np.ndarray) -> np.ndarray:
    """Keep, for each label, only its largest 4-connected piece."""
    pieces, n = ndi.label(labels > 0)
    if n == 0:
        return labels
    # pieces never span two labels only if labels touch; split pieces by label pairs
    code = pieces.astype(np.int64) * (int(labels.max()) + 1) + labels
    uniq, inv, cnt = np.unique(code.ravel(), return_inverse=True, return_counts=True)
    lab_of = uniq % (int(labels.max()) + 1)
    order = np.lexsort((-cnt, lab_of))
    best = np.zeros(len(uniq), bool)
    first = np.ones(len(order), bool)
    first[1:] = lab_of[order][1:] != lab_of[order][:-1]
    best[order[first]] = True
    best[lab_of == 0] = False
    return np.where(best[inv.reshape(labels.shape)], labels, 0)


def _fill_holes_labels(labels: np.ndarray) -> np.ndarray:
    """Fill background holes that lie entirely inside one label."""
    bg = labels == 0
    holes, n = ndi.label(bg)
    if n <= 1:
        return labels
    # holes touching the border are background; others take the label that surrounds them
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    grown = ndi.grey_dilation(labels, size=(3, 3))
    ring = ndi.binary_dilation(bg) & ~bg
    # label of the ring around each hole: unique only if the hole is enclosed by one nucleus
    hid = ndi.grey_dilation(holes, size=(3, 3))[ring]
    lab = labels[ring]
    out = labels.copy()
    if hid.size == 0:
        return out
    pairs = np.unique(np.stack([hid, lab]), axis=1)
    hole_ids, counts = np.unique(pairs[0], return_counts=True)
    single = set(hole_ids[counts == 1].tolist()) - set(border.tolist()) - {0}
    if not single:
        return out
    lut = np.zeros(n + 1, np.int64)
    for h_id, l_id in pairs.T:
        if int(h_id) in single:
            lut[h_id] = l_id
    fill = lut[holes]
    out[bg & (fill > 0)] = fill[bg & (fill > 0)]
    del grown
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
    ids, first = np.unique(flat, return_index=True)
    if keep is not None:
        sel = keep[ids]
    else:
        sel = ids > 0
    ids, first = ids[sel], first[sel]
    order = np.argsort(first, kind="stable")
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.uint32)
    lut[ids[order]] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels]
