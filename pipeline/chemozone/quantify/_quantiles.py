"""Exact per-cell quantiles (median, p90) over tiles: groups complete in a tile are finished there, cells cut
by tile seams gather their pixel values and are finished at the end."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _grouped_quantiles(keys: np.ndarray, values: np.ndarray, qs: Sequence[float]):
    """Exact per-group quantiles (numpy ``linear`` method).

    Parameters
    ----------
    keys : int64 array (N,)
    values : float64 array (N,)
    qs : quantiles in [0, 1]

    Returns
    -------
    groups : int64 array (G,), sorted unique keys
    out : float64 array (G, len(qs))
    """
    order = np.lexsort((values, keys))
    ks = keys[order]
    vs = values[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]]) if ks.size else np.zeros(0, np.int64)
    groups = ks[starts]
    n = np.diff(np.r_[starts, ks.size])
    out = np.empty((groups.size, len(qs)))
    for j, q in enumerate(qs):
        pos = q * (n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        frac = pos - lo
        a = vs[starts + lo]
        b = vs[starts + hi]
        # numpy's _lerp: a + (b - a) * t, computed from the upper end when t >= 0.5
        diff = b - a
        out[:, j] = np.where(frac >= 0.5, b - diff * (1 - frac), a + diff * frac)
    return groups, out


def _tile_quantiles(parts, idx, img, labels_here, cnt2, totals_lab, totals_cnt, compartments, qs, has_nuc):
    """Exact quantiles of the (label, compartment) groups complete in this tile; stash the others."""
    n_c = img.shape[0]
    fg = idx >= 0
    k = idx[fg]
    cidx = k >> 1
    # which cells are complete in this tile? (both compartment bins reach their totals)
    labs = labels_here
    tot = np.zeros((labs.size, 2), np.int64)
    for flag in (0, 1):
        key2 = labs * 2 + flag
        pos = np.searchsorted(totals_lab, key2)
        pos = np.minimum(pos, max(totals_lab.size - 1, 0))
        hit = totals_lab[pos] == key2 if totals_lab.size else np.zeros(key2.size, bool)
        tot[:, flag] = np.where(hit, totals_cnt[pos], 0)
    complete_cell = np.all(cnt2.astype(np.int64) == tot, axis=1)
    done = complete_cell[cidx]
    vals = np.stack([img[ci][fg] for ci in range(n_c)], axis=1).astype(np.float64)  # (N, C)
    if (~done).any():
        sel = ~done
        parts.q_pending.append((labs[cidx[sel]], (k[sel] & 1).astype(np.int8), vals[sel]))
    if not done.any():
        return
    kd, vd = k[done], vals[done]
    for comp in compartments:
        if comp != "cell" and not has_nuc:
            continue
        if comp == "cell":
            keys = kd >> 1
            m = slice(None)
        else:
            m = (kd & 1) == (1 if comp == "nucleus" else 0)
            keys = kd[m] >> 1
        vv = vd[m]
        if keys.size == 0:
            continue
        res = []
        groups = None
        for ci in range(n_c):
            groups, q = _grouped_quantiles(keys, vv[:, ci], qs)
            res.append(q)
        parts.q_done.setdefault(comp, []).append((labs[groups], np.stack(res, axis=1)))


def _finish_quantiles(parts, labels, n_c, compartments, qs, has_nuc):
    out = {comp: np.full((labels.size, n_c, len(qs)), np.nan) for comp in compartments}
    for comp, items in parts.q_done.items():
        for labs, q in items:
            out[comp][np.searchsorted(labels, labs)] = q
    if parts.q_pending:
        lab = np.concatenate([p[0] for p in parts.q_pending])
        flag = np.concatenate([p[1] for p in parts.q_pending])
        vals = np.concatenate([p[2] for p in parts.q_pending])
        for comp in compartments:
            if comp != "cell" and not has_nuc:
                continue
            m = np.ones(lab.size, bool) if comp == "cell" else flag == (1 if comp == "nucleus" else 0)
            if not m.any():
                continue
            for ci in range(n_c):
                groups, q = _grouped_quantiles(lab[m], vals[m, ci], qs)
                out[comp][np.searchsorted(labels, groups), ci] = q
    return out

