"""Per-tile accumulation: the numba-compiled kernels and their numpy twin, which give the same block bit for bit.

A tile's *block* has one row per bin ``2 × cell + is_nucleus`` of the labels present in the tile (compact ids,
in label order) and the columns of :func:`_block_layout`: pixel count, coordinate moments, Σ value and
Σ value² per channel. The compiled path (:func:`_measure_tile_numba`) accumulates 8/16-bit images in int64
(exact, so bands of rows may run in threads) and float64 images in raster order; the numpy fallback
(:func:`_measure_tile_numpy`, ``CHEMOZONE_NO_NUMBA=1``) uses ``np.bincount``.
"""

from __future__ import annotations

import os

import numpy as np

from .._numba import compiled


def _numba_kernels():
    """The compiled kernels below, or None when numba is unavailable or disabled (``CHEMOZONE_NO_NUMBA=1``;
    :func:`chemozone._numba.compiled`)."""
    return compiled("quantify", lambda jit: {"label_range": jit(label_range), "compact_ids": jit(compact_ids),
                                             "measure_tile": jit(measure_tile)})


# ----------------------------------------------------------------- kernels (compiled by _numba_kernels)
def label_range(lab):
    """(lo, hi) of the nonzero labels of a tile; lo > hi when it has none (branch-free, vectorised)."""
    h, w = lab.shape
    one = np.uint64(1)
    mx = np.uint64(0)
    mn_1 = np.uint64(0xFFFFFFFFFFFFFFFF)  # min(label - 1) over all pixels: background wraps to the max
    for i in range(h):
        for j in range(w):
            v = np.uint64(lab[i, j])
            mx = max(mx, v)
            mn_1 = min(mn_1, v - one)
    if mx == 0:
        return np.int64(1), np.int64(0)
    return np.int64(mn_1 + one), np.int64(mx)


def compact_ids(lab, lo, n_range):
    """Lookup ``ids[1 + label - lo]`` = compact id (in label order) of each label present, -1 if absent;
    ``ids[0]`` = number of labels present (the id given to background)."""
    h, w = lab.shape
    ids = np.full(n_range + 1, -1, np.int32)
    for i in range(h):
        for j in range(w):
            lv = np.int64(lab[i, j])
            if lv != 0:
                ids[lv - lo + 1] = 0
    n = 0
    for r in range(1, n_range + 1):
        if ids[r] == 0:
            ids[r] = n
            n += 1
    ids[0] = n
    return ids, n


def measure_tile(lab, nuc, has_nuc, lo, ids, uniq, y0, x0, want_moments, img, want_sq, write_idx, idx,
                 block, acc, accq, row0, row1):
    """Measure one tile: bin ``b = 2 × cell + is_nucleus`` of every pixel (background: the two dump
    bins ``2 n``, ``2 n + 1``).

    Per row: the bins are computed branch-free; counts and coordinate moments are added per run of
    constant bin (closed form); then every pixel adds its C channel values to ``acc[b]`` (C adds
    independent of each other, int64 for integer images: exact; float64 otherwise: the additions,
    in raster order, of ``numpy.bincount``).

    Rows ``row0 .. row1 - 1`` of the tile only (bands measured in parallel threads; the GIL is released).

    block (2n, >= 3): 0 count, 1 Σy, 2 Σx (3 Σy², 4 Σx², 5 Σxy with moments), global pixel coordinates;
    acc, accq (2n + 2, C): Σ value and Σ value² per bin and channel.
    """
    h, w = lab.shape
    n_c = img.shape[0]
    direct = ids.size > 0
    dump = 2 * np.int64(ids[0]) if direct else 2 * np.int64(uniq.size)
    zero = acc[0, 0] * 0
    bins = np.empty(w + 1, np.int64)
    starts = np.empty(w + 1, np.int64)
    fs = np.empty(w, np.int64)
    fe = np.empty(w, np.int64)
    fb = np.empty(w, np.int64)
    for i in range(row0, row1):
        if direct:
            for j in range(w):
                lv = np.int64(lab[i, j])
                t = lv - lo + 1 if lv != 0 else 0
                flag = np.int64(np.int64(nuc[i, j]) == lv) if has_nuc else np.int64(0)
                bins[j] = 2 * np.int64(ids[t]) + flag
        else:
            lprev = np.int64(0)
            cprev = np.int64(uniq.size)
            for j in range(w):
                lv = np.int64(lab[i, j])
                if lv != lprev:
                    cprev = np.int64(np.searchsorted(uniq, lv)) if lv != 0 else np.int64(uniq.size)
                    lprev = lv
                flag = np.int64(np.int64(nuc[i, j]) == lv) if has_nuc else np.int64(0)
                bins[j] = 2 * cprev + flag
        bins[w] = -1
        nr = 0
        prev = np.int64(-2)
        for j in range(w + 1):  # run starts, by conditional increment (no branch)
            b = bins[j]
            starts[nr] = j
            nr += b != prev
            prev = b
        m = 0
        for r in range(nr - 1):  # keep the foreground runs (no branch)
            a = starts[r]
            b = bins[a]
            fs[m] = a
            fe[m] = starts[r + 1]
            fb[m] = b
            m += b < dump
        gy = float(y0 + i)
        for r in range(m):
            b = fb[r]
            a = fs[r]
            n = float(fe[r] - a)
            a0 = float(x0 + a)
            sx = n * a0 + n * (n - 1) / 2
            block[b, 0] += n
            block[b, 1] += n * gy
            block[b, 2] += sx
            if want_moments:
                block[b, 3] += n * gy * gy
                block[b, 4] += n * a0 * a0 + a0 * n * (n - 1) + (n - 1) * n * (2 * n - 1) / 6
                block[b, 5] += gy * sx
        if write_idx:
            for j in range(w):
                b = bins[j]
                idx[i, j] = b if b < dump else -1
        for j in range(w):
            d = acc[bins[j]]
            for ci in range(n_c):
                d[ci] += img[ci, i, j] + zero  # in the accumulator's type (int64 or float64)
        if want_sq:
            for j in range(w):
                d = accq[bins[j]]
                for ci in range(n_c):
                    v = img[ci, i, j] + zero
                    d[ci] += v * v
    return 0


def _n_threads(n_pixels: int) -> int:
    """Threads for one tile: ``CHEMOZONE_QUANT_THREADS`` if set, else the usable cores (at most 4) when called
    from the main thread on a tile of >= 2**20 pixels; 1 inside worker threads (Dask already runs tiles
    and samples in parallel there)."""
    env = os.environ.get("CHEMOZONE_QUANT_THREADS", "")
    if env:
        return max(1, int(env))
    import threading

    if threading.current_thread() is not threading.main_thread() or n_pixels < 2**20:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def _direct_range_ok(n_range: int, n_pixels: int) -> bool:
    """Address a tile's labels through a lookup table of the label range (else a sorted unique list)."""
    return n_range <= n_pixels + 1024


def _block_layout(n_c: int, want_moments: bool, want_sq: bool):
    """(off_s, off_q, n_columns) of a tile block: rows are bins ``2 × cell + is_nucleus``; columns 0 count,
    1 Σy, 2 Σx (3 Σy², 4 Σx², 5 Σxy with moments; global pixel coordinates), ``off_s + c`` Σ channel c,
    ``off_q + c`` Σ channel c² (with std)."""
    off_s = 6 if want_moments else 3
    off_q = off_s + n_c
    return off_s, off_q, off_q + (n_c if want_sq else 0)


def _measure_tile_numpy(lab, nuc, y0, x0, want_moments, img, want_sq, write_idx):
    """numpy twin of the compiled kernel: (labels, idx, block) of one tile (same block, same values)."""
    n_c = img.shape[0]
    fg = lab != 0
    lv = lab[fg].astype(np.int64)
    labels_here, c = np.unique(lv, return_inverse=True)
    n_bins = 2 * labels_here.size
    k = 2 * c.reshape(-1)
    if nuc is not None:
        k += nuc[fg].astype(np.int64) == lv
    off_s, off_q, n_cols = _block_layout(n_c, want_moments, want_sq)
    block = np.zeros((n_bins, n_cols))
    block[:, 0] = np.bincount(k, minlength=n_bins)
    rows, cols = np.nonzero(fg)
    gy = (rows + y0).astype(np.float64)
    gx = (cols + x0).astype(np.float64)
    block[:, 1] = np.bincount(k, weights=gy, minlength=n_bins)
    block[:, 2] = np.bincount(k, weights=gx, minlength=n_bins)
    if want_moments:
        block[:, 3] = np.bincount(k, weights=gy * gy, minlength=n_bins)
        block[:, 4] = np.bincount(k, weights=gx * gx, minlength=n_bins)
        block[:, 5] = np.bincount(k, weights=gy * gx, minlength=n_bins)
    for ci in range(n_c):
        v = img[ci][fg].astype(np.float64)
        block[:, off_s + ci] = np.bincount(k, weights=v, minlength=n_bins)
        if want_sq:
            block[:, off_q + ci] = np.bincount(k, weights=v * v, minlength=n_bins)
    idx = None
    if write_idx:
        idx = np.full(lab.shape, -1, np.int64)
        idx[fg] = k
    return labels_here, idx, block


def _measure_tile_numba(kernels, lab_range, lab, nuc, y0, x0, want_moments, img, want_sq, write_idx):
    """(labels, idx, block) of one tile (with labels in ``lab_range`` = (lo, hi)) through the kernel.

    Sums of 8/16-bit integer images are accumulated in int64 (exact) and converted to float64 once per
    tile (exact below 2**53), so they equal the float64 sums of the numpy twin bit for bit."""
    lo, hi = lab_range
    n_range = int(hi - lo + 1)
    if _direct_range_ok(n_range, lab.size):
        ids, n = kernels["compact_ids"](lab, lo, n_range)
        labels_here = np.flatnonzero(ids[1:] >= 0) + int(lo)
        uniq = np.empty(0, np.int64)
    else:
        uniq = np.unique(lab[lab != 0]).astype(np.int64)
        ids, n, labels_here = np.empty(0, np.int32), uniq.size, uniq
    n_c, h = img.shape[0], lab.shape[0]
    n_bins = 2 * int(n)
    off_s, off_q, n_cols = _block_layout(n_c, want_moments, want_sq)
    exact_int = img.dtype.kind in "iu" and img.dtype.itemsize <= 2
    acc_dtype = np.int64 if exact_int else np.float64
    idx = np.empty(lab.shape if write_idx else (1, 1), np.int64)
    has_nuc = nuc is not None
    nuc_arg = nuc if has_nuc else np.zeros((1, 1), np.uint32)
    # integer sums are exact in any order, so bands of rows may run in parallel threads; float sums stay
    # in one raster-order pass (bit-identical to numpy.bincount)
    n_bands = _n_threads(lab.size) if exact_int else 1
    bounds = np.linspace(0, h, n_bands + 1).astype(int)

    def band(k):
        blk = np.zeros((n_bins, n_cols))
        acc = np.zeros((n_bins + 2, n_c), acc_dtype)  # + the two background bins
        accq = np.zeros((n_bins + 2, n_c) if want_sq else (1, 1), acc_dtype)
        kernels["measure_tile"](lab, nuc_arg, has_nuc, lo, ids, uniq, y0, x0, want_moments, img, want_sq,
                                write_idx, idx, blk, acc, accq, bounds[k], bounds[k + 1])
        blk[:, off_s:off_q] = acc[:n_bins]
        del acc
        if want_sq:
            blk[:, off_q:] = accq[:n_bins]
        return blk

    if n_bands == 1:
        block = band(0)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n_bands) as pool:
            futures = [pool.submit(band, k) for k in range(n_bands)]
            block = futures[0].result()
            for f in futures[1:]:
                block += f.result()  # integer-valued float64: exact
    ids = None  # free the lookup before returning (band() above has finished with it)
    return labels_here.astype(np.int64, copy=False), (idx if write_idx else None), block

