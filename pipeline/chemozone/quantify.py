"""Per-cell, per-compartment measurement: exact, vectorised, out-of-core.

:func:`quantify_cells` turns a ``(C, Y, X)`` image and ``(Y, X)`` label images into the per-cell table that
every later stage reads. The image is visited tile by tile (``tile_size_px``); per tile, the labels present
get compact ids, every pixel a bin (cell × compartment) and each run of equal bins its count and coordinate
moments in closed form; every pixel then adds its C channel values to its bin in one streaming pass — a
compiled kernel when ``numba`` is importable (int64 sums for 8/16-bit images: exact, so row bands of a tile
may run in threads, ``CHEMOZONE_QUANT_THREADS``; float64 in raster order otherwise), ``np.bincount`` in
the numpy fallback (``CHEMOZONE_NO_NUMBA=1``), which gives the same table bit for bit. Each tile keeps only
one row per (label present, compartment); at the end one column at a time is gathered in label order and
summed over the tiles that share a label, so a cell split across tiles is measured exactly once and exactly,
and no second copy of the partial sums is made. Peak memory ~ one tile of image and labels plus the
per-cell table (dask / zarr-backed inputs are read one tile at a time).

Definitions (documented contract)
---------------------------------
- ``cell k`` = pixels where ``cells == k``.
- ``nucleus`` compartment of cell ``k`` = pixels where ``cells == k`` **and** ``nuclei == k`` (nuclei keep
  their cell's label; nucleus pixels outside their own cell are not counted).
- ``cytoplasm`` = cell minus nucleus. So ``cell = nucleus ⊔ cytoplasm`` exactly.
- Centroid: pixel ``(row, col)`` covers ``[col, col + 1) × [row, row + 1)`` in pixel units, so
  ``x_um = (mean(col) + 0.5) * pixel_size_um`` and ``y_um = (mean(row) + 0.5) * pixel_size_um``;
  the cell's centroid therefore falls in pixel ``(int(y_um / px), int(x_um / px))`` of a convex cell.
- Intensities are raw (never rescaled), accumulated in float64. ``std`` is the population standard
  deviation (``ddof=0``); ``median`` and ``p90`` are exact quantiles with numpy's default ``linear``
  interpolation (cells cut by tile seams gather their pixels, so they are exact too); ``total`` is the sum.
- ``background`` (``{channel: constant}``) is subtracted from every pixel of that channel before measuring
  (not clipped): means, medians and p90 shift by the constant, totals by ``n × constant``, std unchanged.
- A compartment without pixels gives NaN (``nucleus_area_um2`` is 0 then; NaN when ``nuclei`` is None,
  in which case ``nucleus`` and ``cytoplasm`` columns are NaN as well).
- Morphology (``morphology=True``): ``eccentricity``, ``major_axis_length_um`` and ``minor_axis_length_um``
  from the second central moments of the pixel centres (as ``skimage.measure.regionprops``), and
  ``solidity`` = pixel area / number of pixel centres inside (or on) the convex hull of the cell's pixel
  centres, so every digitally convex cell (a filled rectangle, a digitised disk) has solidity exactly 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ChannelError, ConfigError, ImageError
from .progress import notify_progress

__all__ = ["quantify_cells", "COMPARTMENTS", "STATISTICS"]

COMPARTMENTS = ("nucleus", "cytoplasm", "cell")
STATISTICS = ("mean", "total", "std", "median", "p90")
_QUANTILES = {"median": 0.5, "p90": 0.9}


# ------------------------------------------------------------------------------------ compiled kernels
def _numba_kernels():
    """The compiled kernels, or None when numba is unavailable or disabled (``CHEMOZONE_NO_NUMBA=1``)."""
    if os.environ.get("CHEMOZONE_NO_NUMBA", "") not in ("", "0"):
        return None
    global _KERNELS
    if _KERNELS is None:
        try:
            _KERNELS = _build_kernels()
        except ImportError:  # pragma: no cover - numba is a dependency; fallback kept for robustness
            _KERNELS = False
    return _KERNELS or None


_KERNELS: Any = None


def _build_kernels():
    import numba

    @numba.njit(cache=True, nogil=True)
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

    @numba.njit(cache=True, nogil=True)
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

    @numba.njit(cache=True, nogil=True)
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

    return {"label_range": label_range, "compact_ids": compact_ids, "measure_tile": measure_tile}


# ------------------------------------------------------------------------------------------ helpers
def _is_dask(a) -> bool:
    return type(a).__module__.startswith("dask")


def _read(a, key) -> np.ndarray:
    """Materialise one block of a numpy, dask or zarr array (dask on the calling thread)."""
    block = a[key]
    if _is_dask(block):
        block = block.compute(scheduler="synchronous")
    return np.asarray(block)


def _validate(image_cyx, cells, nuclei, channels, pixel_size_um, compartments, statistics, background,
              tile_size_px):
    if len(getattr(image_cyx, "shape", ())) != 3:
        raise ImageError(
            f"quantify_cells: image_cyx must be (C, Y, X); got shape {getattr(image_cyx, 'shape', None)}; "
            "pass a channel-first 3-D array"
        )
    c, y, x = (int(s) for s in image_cyx.shape)
    for name, lab in (("cells", cells), ("nuclei", nuclei)):
        if lab is None:
            continue
        shape = tuple(int(s) for s in getattr(lab, "shape", ()))
        if shape != (y, x):
            raise ImageError(
                f"quantify_cells: {name} labels have shape {shape} but the image is (C, Y, X) = {(c, y, x)}; "
                "labels must match the image's (Y, X)"
            )
        dt = np.dtype(lab.dtype)
        if dt.kind not in "ui":
            raise ImageError(
                f"quantify_cells: {name} labels have dtype {dt}; labels must be integers (uint32, "
                "0 = background)"
            )
    channels = [str(ch) for ch in channels]
    if len(channels) != c:
        raise ImageError(
            f"quantify_cells: {len(channels)} channel names for an image with {c} channels; "
            "give one name per image channel, in order"
        )
    if len(set(channels)) != len(channels):
        raise ImageError(f"quantify_cells: duplicate channel names in {channels}; channel names must be unique")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ImageError(f"quantify_cells: pixel_size_um must be a positive number; got {pixel_size_um}")
    bad = [k for k in compartments if k not in COMPARTMENTS]
    if bad:
        raise ConfigError(
            f"quantification.compartments: unknown compartment(s) {bad}; choose from {list(COMPARTMENTS)}"
        )
    bad = [s for s in statistics if s not in STATISTICS]
    if bad:
        raise ConfigError(f"quantification.statistics: unknown statistic(s) {bad}; choose from {list(STATISTICS)}")
    for ch in (background or {}):
        if ch not in channels:
            raise ChannelError(
                f"quantification.background: channel '{ch}' is not among the measured channels {channels}; "
                "fix the name or remove the entry"
            )
    if int(tile_size_px) < 1:
        raise ConfigError(f"quantify_cells: tile_size_px must be >= 1; got {tile_size_px}")
    return channels


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
    del ids
    return labels_here.astype(np.int64, copy=False), (idx if write_idx else None), block


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


# ------------------------------------------------------------------------------------- accumulators
@dataclass
class _Parts:
    """Per-tile partial results (compact: one row per label present in the tile), merged by label at the end."""

    labels: list = field(default_factory=list)     # (n,) int64 label values of each tile
    blocks: list = field(default_factory=list)     # (2n, G) float64 sums per bin of each tile (see measure_tile)
    runs: list = field(default_factory=list)       # (m, 4) label, row, first col, last col
    q_done: dict = field(default_factory=dict)     # compartment -> list of (labels, (n, C, Q))
    q_pending: list = field(default_factory=list)  # (label, nucflag, values (m, C)) of cells cut by tiles


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

    from scipy.spatial import ConvexHull
    from scipy.spatial import QhullError

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


# ------------------------------------------------------------------------------------------- public
def quantify_cells(
    image_cyx,
    cells,
    *,
    nuclei=None,
    channels: Sequence[str],
    pixel_size_um: float,
    compartments: Sequence[str] = ("nucleus", "cytoplasm", "cell"),
    statistics: Sequence[str] = ("mean",),
    morphology: bool = False,
    background: Mapping[str, float] | None = None,
    tile_size_px: int = 2048,
) -> pd.DataFrame:
    """Measure every cell's compartments in every channel, exactly and tile by tile.

    Parameters
    ----------
    image_cyx : numpy or dask array, shape (C, Y, X)
        Raw intensities (any integer or float dtype; never rescaled).
    cells : numpy, dask or zarr array, shape (Y, X), integer (uint32)
        Cell labels, 0 = background, value = ``cell_id``.
    nuclei : numpy, dask or zarr array, shape (Y, X), integer, optional
        Nucleus labels carrying their cell's id. Without it, ``nucleus`` / ``cytoplasm`` columns and
        ``nucleus_area_um2`` are NaN.
    channels : sequence of str, length C
        Marker name of each image channel (column prefix).
    pixel_size_um : float
        Pixel size in µm.
    compartments : sequence of {"nucleus", "cytoplasm", "cell"}
    statistics : sequence of {"mean", "total", "std", "median", "p90"}
        ``mean`` gives ``{marker}_{compartment}``; the others ``{marker}_{compartment}_{stat}``.
    morphology : bool
        Add ``eccentricity``, ``solidity``, ``major_axis_length_um``, ``minor_axis_length_um``.
    background : dict {channel: float}, optional
        Constant subtracted from every pixel of that channel (not clipped).
    tile_size_px : int
        Side of the square tiles read at a time (peak memory ~ C × tile² × itemsize + a few label tiles).

    Returns
    -------
    pandas.DataFrame
        One row per label present in ``cells`` (sorted): ``cell_id`` (uint32), ``x_um``, ``y_um``,
        ``area_um2``, ``nucleus_area_um2``, then per marker and compartment the requested statistics,
        then morphology columns. See the module docstring for exact definitions.

    Raises
    ------
    ImageError
        Image not (C, Y, X), labels of another shape or not integer, wrong number of channel names.
    ConfigError
        Unknown compartment or statistic, ``tile_size_px`` < 1.
    ChannelError
        A ``background`` channel that is not measured.

    Examples
    --------
    >>> img = np.arange(25, dtype=np.uint16).reshape(1, 5, 5)
    >>> cells = np.zeros((5, 5), np.uint32); cells[1:4, 1:4] = 7
    >>> nuclei = np.zeros((5, 5), np.uint32); nuclei[2, 2] = 7
    >>> df = quantify_cells(img, cells, nuclei=nuclei, channels=["DAPI"], pixel_size_um=0.5)
    >>> df[["cell_id", "x_um", "y_um", "area_um2", "DAPI_nucleus", "DAPI_cytoplasm", "DAPI_cell"]].values.tolist()
    [[7.0, 1.25, 1.25, 2.25, 12.0, 12.0, 12.0]]
    """
    compartments = tuple(compartments)
    statistics = tuple(statistics)
    channels = _validate(image_cyx, cells, nuclei, channels, pixel_size_um, compartments, statistics,
                         background, tile_size_px)
    n_c, height, width = (int(s) for s in image_cyx.shape)
    px = float(pixel_size_um)
    ts = int(tile_size_px)
    has_nuc = nuclei is not None
    want_sq = "std" in statistics
    qstats = [s for s in statistics if s in _QUANTILES]
    qs = [_QUANTILES[s] for s in qstats]
    kernels = _numba_kernels()
    tiles = [(y0, x0) for y0 in range(0, height, ts) for x0 in range(0, width, ts)]

    # pre-pass (only for exact quantiles): total pixels per (label, nucleus flag)
    totals_lab = totals_cnt = None
    if qs:
        tl, tc = [], []
        for y0, x0 in tiles:
            key = (slice(y0, y0 + ts), slice(x0, x0 + ts))
            lab = _read(cells, key)
            if not lab.any():
                continue
            k = lab.astype(np.int64) * 2
            if has_nuc:
                k += (_read(nuclei, key).astype(np.int64) == lab) & (lab != 0)
            k = k[lab != 0]
            u, cnt = np.unique(k, return_counts=True)
            tl.append(u)
            tc.append(cnt)
        if tl:
            u, inv = np.unique(np.concatenate(tl), return_inverse=True)
            totals_lab, totals_cnt = u, np.bincount(inv, weights=np.concatenate(tc)).astype(np.int64)
        else:
            totals_lab, totals_cnt = np.zeros(0, np.int64), np.zeros(0, np.int64)

    parts = _Parts()
    for t_done, (y0, x0) in enumerate(tiles, 1):
        if len(tiles) > 1:
            notify_progress("tiles: quantify", t_done, len(tiles))
        key = (slice(y0, y0 + ts), slice(x0, x0 + ts))
        lab = _read(cells, key)
        if kernels is not None:
            lab_range = kernels["label_range"](lab)
            if lab_range[1] < lab_range[0]:
                continue
        elif not lab.any():
            continue
        nuc = _read(nuclei, key) if has_nuc else None
        img = _read(image_cyx, (slice(None),) + key)
        if kernels is not None:
            labels_here, idx, block = _measure_tile_numba(kernels, lab_range, lab, nuc, y0, x0, morphology, img,
                                                          want_sq, bool(qs))
        else:
            labels_here, idx, block = _measure_tile_numpy(lab, nuc, y0, x0, morphology, img, want_sq, bool(qs))
        del nuc
        parts.labels.append(labels_here)
        parts.blocks.append(block)
        if morphology:
            parts.runs.append(_row_runs(lab, y0, x0))
        del lab
        if qs:
            _tile_quantiles(parts, idx, img, labels_here, block[:, 0].reshape(-1, 2), totals_lab, totals_cnt, compartments,
                            qs, has_nuc)
        del idx, img, block

    return _assemble(parts, channels, n_c, px, compartments, statistics, qstats, qs, morphology,
                     has_nuc, background or {})


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


class _Merged:
    """Per-label sums over all tiles, one column at a time (a cell cut by tile seams is summed once).

    The tiles' blocks are kept as they are (two rows per label present in the tile); a column of the merged
    table is gathered in label order and summed over the rows of the same label, so no second copy of
    all partial sums is ever made.
    """

    def __init__(self, labels_list, blocks):
        all_labels = np.concatenate(labels_list)
        self.order = np.argsort(all_labels, kind="stable")
        sl = all_labels[self.order]
        del all_labels
        self.starts = np.flatnonzero(np.r_[True, sl[1:] != sl[:-1]])
        self.labels = sl[self.starts]
        self.unique = self.starts.size == sl.size
        del sl
        self.blocks = blocks

    def __call__(self, f: int, flag: int) -> np.ndarray:
        """Column ``f`` of the bins ``2 × cell + flag`` (flag 1 = nucleus), summed per label, in label order."""
        col = np.concatenate([b[flag::2, f] for b in self.blocks])[self.order]
        return col if self.unique else np.add.reduceat(col, self.starts)

    def cell(self, f: int) -> np.ndarray:
        """Column ``f`` summed over both compartments of each cell."""
        return self(f, 0) + self(f, 1)


def _assemble(parts, channels, n_c, px, compartments, statistics, qstats, qs, morphology, has_nuc,
              background):
    a_um2 = px * px
    if not parts.labels:
        cols = ["cell_id", "x_um", "y_um", "area_um2", "nucleus_area_um2"]
        cols += _intensity_columns(channels, compartments, statistics)
        if morphology:
            cols += ["eccentricity", "solidity", "major_axis_length_um", "minor_axis_length_um"]
        df = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in cols})
        df["cell_id"] = df["cell_id"].astype(np.uint32)
        return df
    merged = _Merged(parts.labels, parts.blocks)
    parts.labels = []
    labels = merged.labels
    n = labels.size
    off_s, off_q, _ = _block_layout(n_c, morphology, "std" in statistics)
    n_cyto, n_nuc = merged(0, 0), merged(0, 1)
    area = n_cyto + n_nuc
    names = ["x_um", "y_um", "area_um2", "nucleus_area_um2"] + _intensity_columns(channels, compartments,
                                                                                 statistics)
    if morphology:
        names += ["eccentricity", "solidity", "major_axis_length_um", "minor_axis_length_um"]
    # one float block, column-major so that every column is written contiguously; the DataFrame wraps it
    # without a copy
    table = np.empty((len(names), n)).T
    col_of = {nm_: i for i, nm_ in enumerate(names)}
    cols = _ColumnWriter(table, col_of)
    cols.update({
        "x_um": (merged.cell(2) / area + 0.5) * px,
        "y_um": (merged.cell(1) / area + 0.5) * px,
        "area_um2": area * a_um2,
        "nucleus_area_um2": n_nuc * a_um2 if has_nuc else np.full(n, np.nan),
    })
    bg = np.array([float(background.get(ch, 0.0)) for ch in channels])
    comp_n = {"nucleus": n_nuc, "cytoplasm": n_cyto, "cell": area}
    want_sq = "std" in statistics
    qres = _finish_quantiles(parts, labels, n_c, compartments, qs, has_nuc) if qs else {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for ci, ch in enumerate(channels):
            s_cyto, s_nuc = merged(off_s + ci, 0), merged(off_s + ci, 1)
            comp_s = {"nucleus": s_nuc, "cytoplasm": s_cyto, "cell": s_nuc + s_cyto}
            if want_sq:
                q_cyto, q_nuc = merged(off_q + ci, 0), merged(off_q + ci, 1)
                comp_s2 = {"nucleus": q_nuc, "cytoplasm": q_cyto, "cell": q_nuc + q_cyto}
            for comp in compartments:
                defined = has_nuc or comp == "cell"
                nn = comp_n[comp]
                empty = (nn == 0) | (not defined)
                s = comp_s[comp]
                for stat in statistics:
                    name = f"{ch}_{comp}" if stat == "mean" else f"{ch}_{comp}_{stat}"
                    if stat == "mean":
                        v = s / nn - bg[ci]
                    elif stat == "total":
                        v = s - nn * bg[ci]
                    elif stat == "std":
                        s2 = comp_s2[comp]
                        var = (s2 - s * s / nn) / nn
                        v = np.sqrt(np.maximum(var, 0.0))
                    else:
                        v = qres[comp][:, ci, qstats.index(stat)] - bg[ci]
                    cols[name] = np.where(empty, np.nan, v)
    if morphology:
        # moments in the order of _morphology: Σy, Σx, Σy², Σx², Σxy
        mom = np.stack([merged.cell(1 + i) for i in range(5)], axis=1)
        cols.update(_morphology(mom, area, labels, np.concatenate(parts.runs), px))
    del merged
    parts.blocks.clear()
    df = pd.DataFrame(table, columns=names, copy=False)
    df.insert(0, "cell_id", labels.astype(np.uint32))
    return df


class _ColumnWriter:
    """dict-like writer of float columns into a preallocated (n, k) block."""

    def __init__(self, table, col_of):
        self.table, self.col_of = table, col_of

    def __setitem__(self, name, values):
        self.table[:, self.col_of[name]] = values

    def update(self, mapping):
        for k, v in mapping.items():
            self[k] = v


def _intensity_columns(channels, compartments, statistics):
    return [f"{ch}_{comp}" if stat == "mean" else f"{ch}_{comp}_{stat}"
            for ch in channels for comp in compartments for stat in statistics]


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
