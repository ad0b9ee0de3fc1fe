"""``quantify_cells``: the stage function (validation, the tile loop); the definitions it implements are in the
package docstring (:mod:`chemozone.quantify`)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ChannelError, ConfigError, ImageError
from ..progress import active_client, compute_with_progress, notify_progress
from ._kernels import _measure_tile_numba, _measure_tile_numpy, _numba_kernels
from ._morphology import _row_runs
from ._quantiles import _tile_quantiles
from ._table import _assemble, _Parts

COMPARTMENTS = ("nucleus", "cytoplasm", "cell")
STATISTICS = ("mean", "total", "std", "median", "p90")
_QUANTILES = {"median": 0.5, "p90": 0.9}


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
        Side of the square tiles read at a time (peak memory ~ C × tile² × itemsize + a few label tiles). With a
        lazy image and lazy labels while a Dask distributed client is active (:func:`chemozone.progress.active_client`)
        and no quantile statistic, each tile is a task that reads its own pixels on a worker (the same table).

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
    >>> import numpy as np
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
    totals_lab, totals_cnt = _quantile_totals(cells, nuclei, tiles, ts) if qs else (None, None)

    parts = _Parts()
    source = _TileSource(image_cyx, cells, nuclei, ts)
    if not qs and len(tiles) > 1 and active_client() is not None and all(
            _is_dask(a) or a is None for a in (image_cyx, cells, nuclei)):
        # a lazy image on a cluster (a whole section driven from the run's main process): each tile is a task
        # that reads its own pixels and labels on a worker and returns only its per-cell sums
        import dask

        source_d = dask.delayed(source, traverse=False)  # a small graph that reads by path: no arrays
        done = compute_with_progress([dask.delayed(_measure_tile_task, pure=False)(
            source_d, y0, x0, morphology=morphology, want_sq=want_sq) for y0, x0 in tiles], "tiles: quantify")
        for res in done:
            if res is not None:
                parts.labels.append(res[0])
                parts.blocks.append(res[1])
                if morphology:
                    parts.runs.append(res[2])
        return _assemble(parts, channels, n_c, px, compartments, statistics, qstats, qs, morphology,
                         has_nuc, background or {})
    for t_done, (y0, x0) in enumerate(tiles, 1):
        if len(tiles) > 1:
            notify_progress("tiles: quantify", t_done, len(tiles))
        tile = source.read(y0, x0, kernels)
        if tile is None:
            continue
        lab, nuc, img, lab_range = tile
        labels_here, idx, block = _measure(kernels, lab_range, lab, nuc, img, y0, x0, morphology, want_sq, bool(qs))
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


class _TileSource:
    """The labels and pixels of one tile at a time, read where it is called (a Dask task reads them itself:
    pickles as the lazy arrays, small graphs that read their files by path)."""

    def __init__(self, image_cyx, cells, nuclei, tile_px: int) -> None:
        self.image, self.cells, self.nuclei, self.ts = image_cyx, cells, nuclei, int(tile_px)

    def read(self, y0: int, x0: int, kernels):
        """``(cells, nuclei or None, image, label range)`` of the tile at ``(y0, x0)``; None when it holds no
        cell (its pixels are then not read)."""
        key = (slice(y0, y0 + self.ts), slice(x0, x0 + self.ts))
        lab = _read(self.cells, key)
        lab_range = None
        if kernels is not None:
            lab_range = kernels["label_range"](lab)
            if lab_range[1] < lab_range[0]:
                return None
        elif not lab.any():
            return None
        nuc = _read(self.nuclei, key) if self.nuclei is not None else None
        return lab, nuc, _read(self.image, (slice(None),) + key), lab_range


def _measure(kernels, lab_range, lab, nuc, img, y0, x0, morphology, want_sq, want_idx):
    if kernels is not None:
        return _measure_tile_numba(kernels, lab_range, lab, nuc, y0, x0, morphology, img, want_sq, want_idx)
    return _measure_tile_numpy(lab, nuc, y0, x0, morphology, img, want_sq, want_idx)


def _measure_tile_task(source: _TileSource, y0: int, x0: int, *, morphology: bool, want_sq: bool):
    """One tile's task: ``(labels present, per-label block, row runs or None)``, or None for a tile without
    cells (no quantiles: those need the whole image's pixel counts, so they stay in the caller's loop)."""
    kernels = _numba_kernels()
    tile = source.read(y0, x0, kernels)
    if tile is None:
        return None
    lab, nuc, img, lab_range = tile
    labels_here, _, block = _measure(kernels, lab_range, lab, nuc, img, y0, x0, morphology, want_sq, False)
    return labels_here, block, _row_runs(lab, y0, x0) if morphology else None


def _quantile_totals(cells, nuclei, tiles, ts):
    """Pixels per bin ``2 × label + is_nucleus`` over the whole image: (sorted bins, int64 counts).

    Tells the tile loop which cells are complete in a tile (their quantiles are finished there)."""
    has_nuc = nuclei is not None
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
        return u, np.bincount(inv, weights=np.concatenate(tc)).astype(np.int64)
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
