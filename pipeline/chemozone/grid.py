"""The analysis grid: the coarse raster on which tissue, zones and every distance are computed.

Nuclei and cells live at the image's full resolution; the tissue mask, the zone masks and all distance
transforms live on a coarser **analysis grid** whose target pixel size is the config key
``analysis_grid.pixel_size_um`` (2 µm by default). This module is the one place that defines it:

- ``factor = max(1, round(grid_um / pixel_size_um))`` image pixels per grid pixel (per side),
- the grid pixel size is ``factor * pixel_size_um`` (the image's own pixel size when that is coarser),
- the grid shape is ``(ceil(Y / factor), ceil(X / factor))``; a grid pixel is the mean of its block
  (partial blocks at the bottom and right edge average only the pixels they contain),
- a cell at ``(x_um, y_um)`` falls in grid pixel ``(floor(y_um / grid_um), floor(x_um / grid_um))``,
- a polygon (region annotation, pixel coordinates of the full-resolution image) covers a grid pixel when it
  contains the pixel's **centre**: the centre of the pixel's block clipped to the image
  (:func:`grid_pixel_centres_px`),
- signed distances to a mask are pixel-centre Euclidean distances minus half a grid pixel, negative inside.

It imports nothing else from chemozone, so every stage (tissue, segment, zones, spatial, synth) and the
napari plugin can use it.

Examples
--------
>>> f = grid_factor(0.5, 2.0)
>>> f, grid_pixel_um(0.5, 2.0), grid_shape((10, 9), f)
(4, 2.0, (3, 3))
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = [
    "grid_factor",
    "grid_pixel_um",
    "grid_shape",
    "block_mean",
    "iter_channel_means",
    "cell_grid_index",
    "grid_pixel_centres_px",
    "grid_pixel_centres_um",
    "signed_distance",
    "iter_signed_distance",
    "nearest_feature",
]


def grid_factor(pixel_size_um: float, grid_um: float) -> int:
    """Image pixels per analysis-grid pixel (per side): ``max(1, round(grid_um / pixel_size_um))``.

    Parameters
    ----------
    pixel_size_um : float
        The image's pixel size, µm.
    grid_um : float
        Target pixel size of the analysis grid, µm.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> grid_factor(0.5, 2.0), grid_factor(0.497, 2.0), grid_factor(4.0, 2.0)
    (4, 4, 1)
    """
    if not (pixel_size_um > 0 and grid_um > 0):
        raise ValueError(f"pixel_size_um and grid_um must be > 0, got {pixel_size_um} and {grid_um}")
    return max(1, int(round(float(grid_um) / float(pixel_size_um))))


def grid_pixel_um(pixel_size_um: float, grid_um: float) -> float:
    """Actual pixel size of the analysis grid, µm: ``grid_factor(pixel_size_um, grid_um) * pixel_size_um``.

    Examples
    --------
    >>> grid_pixel_um(0.5, 2.0), grid_pixel_um(0.65, 2.0), grid_pixel_um(3.0, 2.0)
    (2.0, 1.9500000000000002, 3.0)
    """
    return grid_factor(pixel_size_um, grid_um) * float(pixel_size_um)


def grid_shape(shape_yx: Sequence[int], factor: int) -> tuple[int, int]:
    """Grid shape ``(ceil(Y / factor), ceil(X / factor))`` of an image of shape ``(Y, X)``.

    Examples
    --------
    >>> grid_shape((10, 9), 4)
    (3, 3)
    """
    return (math.ceil(shape_yx[0] / factor), math.ceil(shape_yx[1] / factor))


def block_mean(image: Any, factor: int, *, channel_indices: Sequence[int] | None = None,
               dtype: Any = np.float64) -> np.ndarray:
    """Mean of each ``factor × factor`` block; partial blocks at the edges average the pixels they hold.

    Sums are accumulated in float64 (exact for integer images); a lazy (dask) or zarr input is reduced
    chunk by chunk, so the full-resolution image is never held in memory as floats.

    Parameters
    ----------
    image : numpy, zarr or dask array, shape (Y, X) or (C, Y, X)
    factor : int
        Block size in image pixels (:func:`grid_factor`).
    channel_indices : sequence of int, optional
        (C, Y, X) input only: the channels to reduce (default all).
    dtype : numpy dtype
        Dtype of the result (default float64).

    Returns
    -------
    ndarray, shape (ceil(Y / factor), ceil(X / factor)) or (C', ceil(Y / factor), ceil(X / factor))

    Examples
    --------
    >>> block_mean(np.arange(9).reshape(3, 3), 2).tolist()
    [[2.0, 3.5], [6.5, 8.0]]
    >>> block_mean(np.arange(18.0).reshape(2, 3, 3), 2, channel_indices=[1]).shape
    (1, 2, 2)
    """
    ndim = getattr(image, "ndim", None)
    if ndim not in (2, 3):
        raise ValueError(f"block_mean expects a (Y, X) or (C, Y, X) array, got shape {getattr(image, 'shape', None)}")
    if ndim == 2:
        if channel_indices is not None:
            raise ValueError("channel_indices needs a (C, Y, X) image")
        return block_mean(image[None], factor, dtype=dtype)[0]
    factor = int(factor)
    idx = list(range(image.shape[0])) if channel_indices is None else [int(i) for i in channel_indices]
    _, h, w = image.shape
    gh, gw = grid_shape((h, w), factor)
    if factor == 1:
        return np.stack([np.asarray(image[i]) for i in idx]).astype(dtype) if idx else np.zeros((0, h, w), dtype)
    if isinstance(image, np.ndarray):
        sub = image[idx].astype(np.float64)
        if gh * factor - h or gw * factor - w:
            sub = np.pad(sub, ((0, 0), (0, gh * factor - h), (0, gw * factor - w)), mode="constant")
        sums = sub.reshape(len(idx), gh, factor, gw, factor).sum(axis=(2, 4))
        return _divide_by_counts(sums, factor, (h, w), 0, 0, dtype)
    return _PendingMeans(_lazy_sums(image, factor, idx), factor, (h, w), dtype).result()


def iter_channel_means(image: Any, factor: int, channel_indices: Sequence[int] | None = None, *,
                       dtype: Any = np.float64, client: Any = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(channel index, block means)`` of one channel at a time, as :func:`block_mean` gives them.

    Only one channel's means are held at a time. Given a Dask distributed ``client`` and a lazy image, the next
    channels' block sums (:data:`_CHANNELS_AHEAD`) are computed on its workers (and kept there) while the caller
    works on this one's, so the workers do not wait for the caller between channels.

    Parameters
    ----------
    image : numpy, zarr or dask array, shape (C, Y, X)
    factor : int
        Block size in image pixels (:func:`grid_factor`).
    channel_indices : sequence of int, optional
        The channels, in this order (default all).
    dtype : numpy dtype
        Dtype of each result (default float64).
    client : distributed.Client, optional
        The client of the active scheduler (:func:`chemozone.progress.active_client`); None: each channel is
        computed when asked, on the active scheduler.

    Yields
    ------
    (int, ndarray of shape (ceil(Y / factor), ceil(X / factor)))

    Examples
    --------
    >>> [(i, m.tolist()) for i, m in iter_channel_means(np.arange(18.0).reshape(2, 3, 3), 2, [1])]
    [(1, [[11.0, 12.5], [15.5, 17.0]])]
    """
    idx = list(range(image.shape[0])) if channel_indices is None else [int(i) for i in channel_indices]
    if client is None or isinstance(image, np.ndarray) or int(factor) == 1:
        for i in idx:
            yield i, block_mean(image, factor, channel_indices=[i], dtype=dtype)[0]
        return
    h, w = image.shape[1:]

    def pending(k: int) -> _PendingMeans:
        return _PendingMeans(_lazy_sums(image, int(factor), [idx[k]]), int(factor), (h, w), dtype, client=client,
                             priority=-k)

    queued = [pending(k) for k in range(min(_CHANNELS_AHEAD, len(idx)))]
    for k, i in enumerate(idx):
        if k + _CHANNELS_AHEAD < len(idx):  # queued behind the channels already on the workers
            queued.append(pending(k + _CHANNELS_AHEAD))
        cur = queued.pop(0)
        yield i, cur.result()[0]
        del cur


_CHANNELS_AHEAD = 2
"""Channels whose block sums :func:`iter_channel_means` keeps queued on the workers besides the one being gathered.
With one, the workers waited whenever the caller's work on a channel (gathering and dividing the sums, the tissue
signal, the overview) outlasted theirs on the next: on the 16k² mosaic they idled ~0.5-1.8 s every second channel
(``distributed.get_task_stream``), 26 of the tissue pass's 37 s busy."""


def _lazy_sums(image: Any, factor: int, idx: list[int]):
    """Lazy exact block sums ``(C', gh, gw)`` of channels ``idx`` of a zarr or dask image (edges zero-padded)."""
    import dask.array as da  # noqa: PLC0415

    _, h, w = image.shape
    gh, gw = grid_shape((h, w), factor)
    pad = ((0, 0), (0, gh * factor - h), (0, gw * factor - w))
    arr = image if isinstance(image, da.Array) else da.from_array(image, chunks=(1, factor * 512, factor * 512))
    sub = arr[idx]
    if pad[1][1] or pad[2][1]:
        sub = da.pad(sub, pad, mode="constant")
    if not all(c % factor == 0 for ax in sub.chunks[1:] for c in ax):  # blocks must not straddle chunks
        step = factor * max(1, 1024 // factor)
        sub = sub.rechunk((1, _aligned_rows(sub.chunks[1][0], factor, step), step))
    # Tasks return exact block sums in the smallest accumulator that holds them (uint32 for 16-bit pixels: half
    # the bytes of float64 means to move from a worker); the caller divides by the pixel counts, as before.
    integer = np.issubdtype(sub.dtype, np.integer)
    acc = (_row_accumulator(sub.dtype, factor) if sub.dtype.itemsize < 8 else np.int64) if integer else np.float64
    out_chunks = (sub.chunks[0],) + tuple(tuple(c // factor for c in ax) for ax in sub.chunks[1:])
    return sub.map_blocks(_block_sums, factor, acc, chunks=out_chunks, dtype=acc)


def _aligned_rows(chunk_rows: int, factor: int, fallback: int) -> int:
    """Rows of a rechunked image whose chunk boundaries fall on both ``factor`` and the stored chunks' rows
    (their least common multiple), so that each band task of :class:`_PendingMeans` reads its own stored rows
    and no others; ``fallback`` when that would exceed 16 stored chunk rows.

    Examples
    --------
    >>> _aligned_rows(1024, 40, 1000), _aligned_rows(1000, 17, 1020)
    (5120, 1020)
    """
    lcm = math.lcm(int(chunk_rows), int(factor))
    return lcm if lcm <= 16 * int(chunk_rows) else int(fallback)


_BAND_BYTES = 128 * 2**20
"""About how many bytes of block sums :func:`block_mean` gathers per ``compute`` from a lazy image (a 40k² channel:
12 band tasks per compute, enough to keep workers busy)."""


class _LazySums:
    """The lazy block sums of an image; a task reads one band of chunk rows of them itself (see
    :class:`_PendingMeans`). Pickles as the sums' graph, which reads the file by path: no pixels."""

    def __init__(self, sums):
        self.sums = sums

    def band(self, r0: int, n: int) -> np.ndarray:
        return self.sums[:, r0:r0 + n].compute(scheduler="synchronous")


class _PendingMeans:
    """Block means from lazy block sums ``(C, gh, gw)``: one task per row of chunks, which reads and sums its chunks
    inside the task (no task per chunk: a distributed scheduler's per-task cost was most of the time), gathered
    into one preallocated result and divided by the pixel counts there.

    Given a distributed ``client``, every task goes to its workers at once, where the sums wait until
    :meth:`result` gathers them one band at a time; otherwise :meth:`result` computes about
    :data:`_BAND_BYTES` of sums per ``dask.compute``.
    """

    def __init__(self, sums, factor: int, shape_yx: tuple[int, int], dtype, *, client: Any = None,
                 priority: int = 0) -> None:
        import dask  # noqa: PLC0415

        self.shape, self.factor, self.shape_yx, self.dtype = sums.shape, factor, shape_yx, dtype
        # each task carries the (small, ~100 kB) lazy sums itself: a shared dependency key would pull every band task
        # to the worker that holds it (one busy worker, one idle). Keys are not tokenised (pickling the sums' graph
        # once per task cost ~50 ms each, in the caller): unique names instead.
        src = _LazySums(sums)
        starts = np.concatenate([[0], np.cumsum(sums.chunks[1])[:-1]]).astype(int)
        self.rows = list(zip(starts.tolist(), sums.chunks[1]))
        self.tasks = [dask.delayed(_LazySums.band, pure=False)(src, r0, n) for r0, n in self.rows]
        c, _, gw = sums.shape
        self.per_compute = max(1, _BAND_BYTES // max(1, c * gw * sums.dtype.itemsize * max(sums.chunks[1], default=1)))
        # earlier channels first (the caller gathers them in order): without a priority, the workers interleaved the
        # queued channels, so all of them finished together and the workers then waited for the caller
        self.futures = client.compute(self.tasks, priority=priority) if client is not None else None

    def result(self) -> np.ndarray:
        import dask  # noqa: PLC0415

        out = np.empty(self.shape, self.dtype)
        if self.futures is not None:
            futures, self.futures = self.futures, None
            for (r0, n), fut in zip(self.rows, futures):
                _divide_by_counts(fut.result(), self.factor, self.shape_yx, r0, 0, self.dtype, out=out[:, r0:r0 + n])
                fut.release()
            return out
        for k in range(0, len(self.rows), self.per_compute):
            group = slice(k, k + self.per_compute)
            parts = dask.compute(*self.tasks[group])
            for (r0, n), part in zip(self.rows[group], parts):
                _divide_by_counts(part, self.factor, self.shape_yx, r0, 0, self.dtype, out=out[:, r0:r0 + n])
        return out


def block_sizes(n_px: int, factor: int, start: int = 0, n: int | None = None) -> np.ndarray:
    """Image pixels along one axis of grid blocks ``start .. start + n`` (``factor``, less for the last, partial one).

    Examples
    --------
    >>> block_sizes(10, 4).tolist(), block_sizes(10, 4, start=2, n=1).tolist()
    ([4, 4, 2], [2])
    """
    n = -(-int(n_px) // int(factor)) - start if n is None else n
    return np.minimum(factor, n_px - np.arange(start, start + n) * factor)


def _divide_by_counts(sums: np.ndarray, factor: int, shape_yx: tuple[int, int], r0: int, c0: int, dtype, *,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Block sums (C, y, x) whose first block is grid ``(r0, c0)`` → means: float64 division by the number of
    image pixels each block holds (partial blocks at the image's edges), then ``dtype``.

    ``out``: where to write the means (shape of ``sums``, dtype ``dtype``); without it, a float64 ``sums`` is divided
    in place. Either way no grid-sized temporary is made (the division runs a band of rows at a time).
    """
    rows = block_sizes(shape_yx[0], factor, r0, sums.shape[1])
    cols = block_sizes(shape_yx[1], factor, c0, sums.shape[2])
    if out is None:
        sums = out = sums.astype(np.float64, copy=False)
    for b0 in range(0, sums.shape[1], 1024):
        band = slice(b0, b0 + 1024)
        # float64 division (the float64 loop, also for integer sums and a float32 ``out``), cast on the way out
        np.divide(sums[:, band], np.outer(rows[band], cols), out=out[:, band], casting="unsafe")
    return out.astype(dtype, copy=False)


def _block_sums(block: np.ndarray, factor: int, acc) -> np.ndarray:
    """Sums of the ``factor × factor`` blocks of a (C, Y, X) chunk whose sides are multiples of ``factor``.

    Integer chunks are summed as ``factor`` strided slices along each axis (exact in any order; ~10× faster than
    numpy's reduction over the reshaped block axes); rows go through :func:`_row_accumulator` (uint32 for 8- and
    16-bit unsigned pixels when ``factor² · max`` fits). Float and 64-bit chunks keep numpy's reduction (float: its
    summation order).
    """
    c, h, w = block.shape
    if not np.issubdtype(block.dtype, np.integer) or block.dtype.itemsize >= 8:
        return block.reshape(c, h // factor, factor, w // factor, factor).sum(axis=(2, 4), dtype=acc)
    rows = block[:, 0::factor].astype(_row_accumulator(block.dtype, factor))
    for i in range(1, factor):
        rows += block[:, i::factor]
    out = rows[:, :, 0::factor].astype(acc)
    for i in range(1, factor):
        out += rows[:, :, i::factor]
    return out


def _row_accumulator(dtype, factor: int):
    """A dtype that holds the sum of ``factor²`` values of integer ``dtype`` exactly (uint32 when it can, else int64)."""
    info = np.iinfo(dtype)
    if info.min >= 0 and info.max * factor * factor <= np.iinfo(np.uint32).max:
        return np.uint32
    return np.int64


def cell_grid_index(cells: Any, *, grid_um: float, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grid pixel ``(row, col)`` of each cell: ``(floor(y_um / grid_um), floor(x_um / grid_um))``, clipped.

    Parameters
    ----------
    cells : DataFrame
        With ``x_um`` and ``y_um`` columns (µm).
    grid_um : float
        Grid pixel size (:func:`grid_pixel_um`), µm.
    shape : (int, int)
        Grid shape; indices are clipped to it.

    Returns
    -------
    rows, cols : int64 ndarrays, shape (n_cells,)

    Examples
    --------
    >>> import pandas as pd
    >>> r, c = cell_grid_index(pd.DataFrame({"x_um": [0.5, 5.0], "y_um": [3.9, 99.0]}), grid_um=2.0, shape=(4, 4))
    >>> r.tolist(), c.tolist()
    ([1, 3], [0, 2])
    """
    for c in ("x_um", "y_um"):
        if c not in cells.columns:
            from .errors import MissingStepError  # noqa: PLC0415

            raise MissingStepError(f"cells table has no '{c}' column; run quantification (quantify_cells) first")
    r = np.floor(cells["y_um"].to_numpy(np.float64) / grid_um).astype(np.int64)
    c = np.floor(cells["x_um"].to_numpy(np.float64) / grid_um).astype(np.int64)
    return np.clip(r, 0, shape[0] - 1), np.clip(c, 0, shape[1] - 1)


def grid_pixel_centres_px(shape_yx: Sequence[int], factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the grid's rows and columns in pixel coordinates of the full-resolution image.

    Pixel coordinates as QuPath writes them: image pixel ``(row r, col c)`` covers ``[c, c + 1) x [r, r + 1)``.
    Grid row ``i`` covers image rows ``[i * factor, min((i + 1) * factor, Y))``; its centre is the middle of that
    span, so a partial block at the bottom or right edge is centred on the part inside the image (as
    :func:`block_mean` averages only those pixels). Used to rasterise polygons onto the grid: a grid pixel is
    inside a polygon when its centre is.

    Parameters
    ----------
    shape_yx : (int, int)
        Full-resolution image shape ``(Y, X)``.
    factor : int
        Image pixels per grid pixel (:func:`grid_factor`).

    Returns
    -------
    ys, xs : float64 ndarrays, shapes (ceil(Y / factor),) and (ceil(X / factor),)

    Examples
    --------
    >>> ys, xs = grid_pixel_centres_px((10, 9), 4)
    >>> ys.tolist(), xs.tolist()
    ([2.0, 6.0, 9.0], [2.0, 6.0, 8.5])
    """
    factor = int(factor)
    out = []
    for n in shape_yx[:2]:
        start = np.arange(math.ceil(n / factor), dtype=np.float64) * factor
        out.append((start + np.minimum(start + factor, n)) / 2.0)
    return out[0], out[1]


def grid_pixel_centres_um(shape: Sequence[int], grid_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres (µm) of the rows and columns of a grid with origin 0 and pixel ``grid_um``: the grid of a run on
    cell tables (no image, so not tied to image pixels), where a cell falls as :func:`cell_grid_index` says.

    Returns
    -------
    ys_um, xs_um : float64 ndarrays, shapes (rows,), (cols,)

    Examples
    --------
    >>> ys, xs = grid_pixel_centres_um((2, 3), 2.0)
    >>> ys.tolist(), xs.tolist()
    ([1.0, 3.0], [1.0, 3.0, 5.0])
    """
    g = float(grid_um)
    return (np.arange(int(shape[0])) + 0.5) * g, (np.arange(int(shape[1])) + 0.5) * g


_EDT_BAND_ROWS = 512
"""Rows turned into distances at a time by :func:`distance_um` and :func:`iter_signed_distance`."""


# ------------------------------------------------------------------ exact Euclidean distances, a band at a time
# scipy's ``distance_transform_edt`` (Maurer et al. 2003, PAMI 25: 265) keeps a feature transform of the whole
# image (two int32 per pixel) before any distance can be read, plus an int64 copy of the input on the way. The same
# algorithm splits into a pass along the columns, whose result is one small integer per pixel (the row offset of the
# nearest pixel of the other class in the column), and a pass along each row that needs only that row. Below, the
# column pass is kept for the whole grid (2 bytes per pixel on grids under 65,535 rows) and the row pass runs one
# band of rows at a time. The row pass makes scipy's choices with scipy's arithmetic (among equidistant candidates
# the left-most; the Voronoi test and the distances use the same float64 operations in the same order: with a
# pixel size that is not a power of two, two candidates at the same distance in pixels can differ in the last
# bit), so the distances are scipy's bit for bit, for any pixel size (tests/test_grid.py).
# benchmarks/bench_edt.py compares the two.
def _column_offsets_kernel(mask, out, none):
    """``out[y, x]``: rows from ``(y, x)`` to the nearest pixel of the other class in column ``x``, ``none`` when the
    column holds no other class."""
    n_rows, n_cols = mask.shape
    last = np.full((2, n_cols), -1, np.int64)
    for y in range(n_rows):
        for x in range(n_cols):
            c = 1 if mask[y, x] else 0
            o = last[1 - c, x]
            out[y, x] = y - o if o >= 0 else none
            last[c, x] = y
    nxt = np.full((2, n_cols), -1, np.int64)
    for y in range(n_rows - 1, -1, -1):
        for x in range(n_cols):
            c = 1 if mask[y, x] else 0
            o = nxt[1 - c, x]
            if o >= 0 and o - y < out[y, x]:  # (a tie above and below is the same offset)
                out[y, x] = o - y
            nxt[c, x] = y
    return 0


def _row_distances_kernel(mask, col, none, feature, r0, r1, s0, s1, out, fx, fw, fdy, g):
    """``out[y - r0, x]``: distance (µm) from ``(y, x)`` to the nearest pixel with ``mask == feature``, rows
    ``r0:r1``; ``col`` from :func:`_column_offsets_kernel`; ``fx, fw, fdy, g``: work arrays of the row's length."""
    n_cols = mask.shape[1]
    for y in range(r0, r1):
        n = 0
        top = -1
        for x in range(n_cols):
            if mask[y, x] == feature:
                dy = 0
            else:
                dy = col[y, x]
                if dy == none:
                    continue
            tw = np.float64(dy) * s0
            w_r = tw * tw
            fd = np.float64(x)
            fx[n] = x
            fw[n] = w_r
            fdy[n] = dy
            while top >= 1:  # drop candidates that can no longer be nearest (scipy's _VoronoiFT test)
                i1 = g[top]
                i2 = g[top - 1]
                f1 = np.float64(fx[i1])
                a = (f1 - np.float64(fx[i2])) * s1
                b = (fd - f1) * s1
                c = a + b
                if c * fw[i1] - b * fw[i2] - a * w_r - a * b * c <= 0.0:
                    break
                top -= 1
            top += 1
            g[top] = n
            n += 1
        k = 0
        for x in range(n_cols):
            i = g[k]
            t0 = np.float64(fdy[i]) * s0
            t1 = np.float64(fx[i] - x) * s1
            d1 = t0 * t0 + t1 * t1
            while k < top:
                i = g[k + 1]
                t0 = np.float64(fdy[i]) * s0
                t1 = np.float64(fx[i] - x) * s1
                d2 = t0 * t0 + t1 * t1
                if d1 <= d2:
                    break
                d1 = d2
                k += 1
            out[y - r0, x] = np.sqrt(d1)
    return 0


def _feature_transform_kernel(feature, fy, fx, col, sx, sw, sdy, g):
    """scipy's feature transform at unit sampling (``ndimage.distance_transform_edt(~feature, return_indices=True)``):
    ``fy, fx`` (int32, shape of ``feature``) the row and column of each pixel's nearest ``feature`` pixel, chosen as
    scipy chooses among equidistant ones. Column pass: the nearest feature row of the column, the upper one on a tie
    (scipy's query keeps the earlier site); ``col`` (int32) holds it, -1 for a column without features. Row pass:
    scipy's Voronoi construction and query (:func:`_row_distances_kernel`, here keeping the site). It is written out
    again rather than shared: the two kernels calling shared helpers (compiled with ``inline="always"``) ran 2.6x
    slower when measured. At unit sampling every quantity is an integer held exactly in float64, so the comparisons
    are scipy's. ``sx, sw, sdy, g``: work arrays of the row's length."""
    n_rows, n_cols = feature.shape
    last = np.full(n_cols, -1, np.int64)  # row by row (memory order), one running value per column
    for y in range(n_rows):
        for x in range(n_cols):
            if feature[y, x]:
                last[x] = y
            col[y, x] = last[x]
    last[:] = -1
    for y in range(n_rows - 1, -1, -1):
        for x in range(n_cols):
            if feature[y, x]:
                last[x] = y
            below = last[x]
            up = col[y, x]
            if below >= 0 and (up < 0 or below - y < y - up):  # a tie keeps the upper feature
                col[y, x] = below
    for y in range(n_rows):
        n = 0
        top = -1
        for x in range(n_cols):
            r = col[y, x]
            if r < 0:
                continue
            dy = r - y
            w_r = np.float64(dy) * np.float64(dy)
            fd = np.float64(x)
            sx[n] = x
            sw[n] = w_r
            sdy[n] = dy
            while top >= 1:
                i1 = g[top]
                i2 = g[top - 1]
                f1 = np.float64(sx[i1])
                a = f1 - np.float64(sx[i2])
                b = fd - f1
                c = a + b
                if c * sw[i1] - b * sw[i2] - a * w_r - a * b * c <= 0.0:
                    break
                top -= 1
            top += 1
            g[top] = n
            n += 1
        k = 0
        for x in range(n_cols):
            i = g[k]
            t0 = np.float64(sdy[i])
            t1 = np.float64(sx[i] - x)
            d1 = t0 * t0 + t1 * t1
            while k < top:
                i = g[k + 1]
                t0 = np.float64(sdy[i])
                t1 = np.float64(sx[i] - x)
                d2 = t0 * t0 + t1 * t1
                if d1 <= d2:
                    break
                d1 = d2
                k += 1
            i = g[k]
            fy[y, x] = y + sdy[i]
            fx[y, x] = sx[i]
    return 0


_EDT_KERNELS: Any = None


def _edt_kernels():
    """The compiled column and row passes (numba, cached on disk), or None when numba is unavailable or disabled
    (``CHEMOZONE_NO_NUMBA=1``): then scipy's feature transform is used, with the same values.

    The same as :func:`chemozone._numba.compiled`, written out here: the grid is the bottom-level module and imports
    no other chemozone module (``tests/test_imports.py``)."""
    import os

    if os.environ.get("CHEMOZONE_NO_NUMBA", "") not in ("", "0"):
        return None
    global _EDT_KERNELS
    if _EDT_KERNELS is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            _EDT_KERNELS = False
        else:
            jit = numba.njit(cache=True, nogil=True)
            _EDT_KERNELS = (jit(_column_offsets_kernel), jit(_row_distances_kernel), jit(_feature_transform_kernel))
    return _EDT_KERNELS or None


class _BandedEDT:
    """Exact distances of a 2-D bool mask's pixels to the nearest pixel of the other class, one band of rows at a
    time: the column pass is done once for both classes (2 or 4 bytes per pixel), each band's row pass on demand."""

    def __init__(self, mask: np.ndarray, grid_um: float, kernels) -> None:
        self.mask = np.ascontiguousarray(mask, dtype=bool)
        self.s = float(grid_um)
        self.column_pass, self.row_pass = kernels[:2]
        dtype = np.uint16 if self.mask.shape[0] < np.iinfo(np.uint16).max else np.uint32
        self.none = int(np.iinfo(dtype).max)
        self.col = np.empty(self.mask.shape, dtype)
        self.column_pass(self.mask, self.col, self.none)
        n = self.mask.shape[1]
        self._work = (np.empty(n, np.int64), np.empty(n, np.float64), np.empty(n, np.int64), np.empty(n, np.int64))

    def band(self, r0: int, r1: int, *, to: bool) -> np.ndarray:
        """float64 (r1 - r0, X): each pixel's distance to the nearest pixel whose mask value is ``to``."""
        out = np.empty((r1 - r0, self.mask.shape[1]), np.float64)
        self.row_pass(self.mask, self.col, self.none, bool(to), r0, r1, self.s, self.s, out, *self._work)
        return out


def distance_um(mask: np.ndarray, *, grid_um: float, where: np.ndarray | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt(mask, sampling=grid_um)``, bit for bit, in a fraction of its memory.

    scipy builds the distances from its feature transform with several image-sized int32 and float64
    temporaries (about 40 bytes per pixel: 4 GB on a whole section's 10⁸-pixel grid). Here the same algorithm's
    column pass is kept (2 bytes per pixel) and its row pass gives the distances a band of rows at a time, with
    scipy's choices and arithmetic, so the values are identical (scipy's feature transform, turned into distances
    band by band, when numba is unavailable).

    Parameters
    ----------
    mask : ndarray (Y, X)
        Distances are from each nonzero pixel to the nearest zero pixel (0 on zero pixels).
    grid_um : float
        Pixel size (µm).
    where : bool ndarray (Y, X), optional
        Only these pixels of ``out`` are written (the others keep their values).
    out : float64 ndarray (Y, X), optional
        Written in place and returned (a new array when None).

    Returns
    -------
    float64 ndarray (Y, X)

    Examples
    --------
    >>> distance_um(np.array([[0, 1, 1, 1]]), grid_um=2.0).tolist()
    [[0.0, 2.0, 4.0, 6.0]]
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"distance_um expects a 2-D (Y, X) mask, got shape {mask.shape}")
    kernels = _edt_kernels()
    nonzero = mask != 0
    if kernels is not None and not nonzero.all():  # (no zero pixel at all: scipy's own, undefined, values)
        edt = _BandedEDT(nonzero, grid_um, kernels)
        del nonzero
        band = lambda r0, r1: edt.band(r0, r1, to=False)  # noqa: E731 - the nearest zero pixel
    else:
        del nonzero
        ft = _feature_transform(mask, grid_um)
        band = lambda r0, r1: _band_distances(ft, grid_um, r0, r1)  # noqa: E731
    out = np.empty(mask.shape, np.float64) if out is None else out
    for r0, r1 in _bands(mask.shape[0]):
        d = band(r0, r1)
        if where is None:
            out[r0:r1] = d
        else:
            sel = where[r0:r1]
            out[r0:r1][sel] = d[sel]
    return out


def _feature_transform(mask: np.ndarray, grid_um: float) -> np.ndarray:
    from scipy import ndimage as ndi  # noqa: PLC0415

    return ndi.distance_transform_edt(mask, sampling=grid_um, return_distances=False, return_indices=True)


def nearest_feature(feature: np.ndarray) -> np.ndarray:
    """Row and column of each pixel's nearest ``feature`` pixel: ``scipy.ndimage.distance_transform_edt(~feature,
    return_distances=False, return_indices=True)``, bit for bit, including scipy's choice among equidistant pixels.

    Compiled (numba) with scipy's algorithm at unit sampling, about 3x faster than scipy's, which it calls when numba is
    unavailable (or ``CHEMOZONE_NO_NUMBA=1``) and when ``feature`` has no True pixel.

    Parameters
    ----------
    feature : bool ndarray (Y, X)

    Returns
    -------
    int32 ndarray (2, Y, X)
        ``[rows, columns]`` of the nearest feature pixel.

    Examples
    --------
    >>> nearest_feature(np.array([[True, False, False, True]]))[1].tolist()
    [[0, 0, 3, 3]]
    """
    feature = np.ascontiguousarray(feature, dtype=bool)
    if feature.ndim != 2:
        raise ValueError(f"nearest_feature expects a 2-D (Y, X) mask, got shape {feature.shape}")
    kernels = _edt_kernels()
    if kernels is None or not feature.any():
        from scipy import ndimage as ndi  # noqa: PLC0415

        return ndi.distance_transform_edt(~feature, return_distances=False, return_indices=True).astype(np.int32,
                                                                                                      copy=False)
    h, w = feature.shape
    ft = np.empty((2, h, w), np.int32)
    col = np.empty((h, w), np.int32)
    kernels[2](feature, ft[0], ft[1], col, np.empty(w, np.int64), np.empty(w, np.float64), np.empty(w, np.int64),
               np.empty(w, np.int64))
    return ft


def _bands(n_rows: int):
    for r0 in range(0, n_rows, _EDT_BAND_ROWS):
        yield r0, min(n_rows, r0 + _EDT_BAND_ROWS)


def _band_distances(ft: np.ndarray, grid_um: float, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of the distances, with scipy's arithmetic: (ft - indices) as float64, * sampling,
    squared in place, summed over the axes, square root."""
    s = float(grid_um)
    dy = (ft[0, r0:r1] - np.arange(r0, r1, dtype=ft.dtype)[:, None]).astype(np.float64)
    dx = (ft[1, r0:r1] - np.arange(ft.shape[2], dtype=ft.dtype)[None, :]).astype(np.float64)
    dy *= s
    dx *= s
    np.multiply(dy, dy, dy)
    np.multiply(dx, dx, dx)
    return np.sqrt(dy + dx)


def signed_distance(mask: np.ndarray, *, grid_um: float) -> np.ndarray:
    """Signed distance to the edge of ``mask`` (µm): negative inside, positive outside.

    Pixel-centre Euclidean distance to the nearest pixel of the other class, minus half a grid pixel.
    An empty mask gives ``+inf`` everywhere, a full mask ``-inf``.

    Parameters
    ----------
    mask : bool ndarray (Y, X)
    grid_um : float
        Pixel size (µm).

    Returns
    -------
    float64 ndarray (Y, X)

    Examples
    --------
    >>> m = np.zeros((1, 5), bool); m[0, :2] = True
    >>> signed_distance(m, grid_um=2.0).tolist()
    [[-3.0, -1.0, 1.0, 3.0, 5.0]]
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    if mask.all():
        return np.full(mask.shape, -np.inf)
    out = np.empty(mask.shape, np.float64)
    for r0, r1, _, sel, d in iter_signed_distance(mask, grid_um=grid_um):
        out[r0:r1][sel] = d[sel]
    return out


def iter_signed_distance(mask: np.ndarray, *, grid_um: float
                         ) -> Iterator[tuple[int, int, bool, np.ndarray, np.ndarray]]:
    """:func:`signed_distance` one class of pixels and one band of rows at a time, never the whole map.

    Yields ``(r0, r1, inside, sel, d)``: the signed distances ``d`` (float64, shape ``(r1 - r0, X)``) of rows
    ``r0:r1`` hold :func:`signed_distance`'s values, bit for bit, where ``sel`` (bool, same shape) is True:
    the pixels outside the mask (``inside`` False), then those inside, for each band of rows in turn. Only the
    column pass of the distance transform is held (2 bytes per pixel; see :func:`distance_um`), never a float
    map of the whole grid (a whole section's 10⁸-pixel grid: 0.2 GB instead of 1.6).

    Examples
    --------
    >>> m = np.zeros((1, 5), bool); m[0, :2] = True
    >>> [(inside, d[sel].tolist()) for _, _, inside, sel, d in iter_signed_distance(m, grid_um=2.0)]
    [(False, [1.0, 3.0, 5.0]), (True, [-3.0, -1.0])]
    """
    mask = np.asarray(mask, bool)
    half = 0.5 * float(grid_um)
    if not mask.any() or mask.all():
        inside = bool(mask.any())
        for r0, r1 in _bands(mask.shape[0]):
            shape = (r1 - r0, mask.shape[1])
            yield r0, r1, inside, np.ones(shape, bool), np.full(shape, -np.inf if inside else np.inf)
        return
    # np.where(mask, -(d_in - half), d_out - half) with the same arithmetic, one class and one band of rows at a
    # time (see distance_um: scipy's own distance step needs ~40 bytes per pixel, this ~3)
    kernels = _edt_kernels()
    if kernels is not None:
        edt = _BandedEDT(mask, grid_um, kernels)
        for r0, r1 in _bands(mask.shape[0]):
            for inside in (False, True):
                d = edt.band(r0, r1, to=not inside)
                d -= half
                if inside:
                    np.negative(d, out=d)
                yield r0, r1, inside, mask[r0:r1] if inside else ~mask[r0:r1], d
        return
    for cls, inside in ((~mask, False), (mask, True)):
        ft = _feature_transform(cls, grid_um)
        for r0, r1 in _bands(mask.shape[0]):
            d = _band_distances(ft, grid_um, r0, r1)
            d -= half
            if inside:
                np.negative(d, out=d)
            yield r0, r1, inside, cls[r0:r1], d
        del ft
