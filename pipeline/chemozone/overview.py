"""A display overview of a large image: every channel's block means at a coarse scale, as a small pyramid.

A whole explant section is often stored without a pyramid (a stitched OME-TIFF of 40,000² px). Showing it
whole (the QC figure, napari's first frame) would then read every pixel again. The tissue step already reads
every channel once, as block means on the analysis grid (:func:`chemozone.tissue.tissue_mask`); an
:class:`OverviewWriter` passed as its ``channel_means_callback`` coarsens each channel's grid means further and
writes them to ``samples/<id>/overview.zarr`` (float32; level ``k`` halves level ``k - 1`` by 2 × 2 means).
Nothing is read twice.

Level 0 holds the exact means of ``factor × factor`` image pixels (edge blocks average the pixels they hold),
``factor`` = the grid factor × :func:`overview_blocks`, so that level 0's longer side is at most
:data:`OVERVIEW_SIDE_PX`. Images up to :data:`MIN_IMAGE_SIDE_PX` get none (their own pixels are cheap to show).

:func:`read_overview` returns the levels as lazy arrays; :func:`with_overview` appends them to an image's
levels (for images without a pyramid), which is how the QC figure and the napari plugin use them.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .grid import block_mean, block_sizes, grid_shape

__all__ = ["OVERVIEW_SIDE_PX", "MIN_IMAGE_SIDE_PX", "overview_blocks", "OverviewWriter", "read_overview",
           "with_overview"]

OVERVIEW_SIDE_PX = 2048
"""Longer side of an overview's level 0, at most (px)."""

MIN_IMAGE_SIDE_PX = 4096
"""Images whose longer side is at most this (px) get no overview."""

_CHUNK_PX = 1024


def overview_blocks(shape_yx: Sequence[int], grid_factor: int) -> int | None:
    """Analysis-grid blocks per overview pixel along each axis, or None when the image needs no overview.

    Examples
    --------
    >>> overview_blocks((40000, 40000), 4), overview_blocks((16384, 16384), 4), overview_blocks((2048, 2048), 4)
    (5, 2, None)
    """
    side = max(int(s) for s in shape_yx)
    if side <= MIN_IMAGE_SIDE_PX:
        return None
    return max(1, -(-side // (OVERVIEW_SIDE_PX * int(grid_factor))))


class OverviewWriter:
    """Writes an overview from each channel's analysis-grid block means, as the tissue step produces them.

    Parameters
    ----------
    path : path
        The ``overview.zarr`` folder to write (replaced atomically by :meth:`finish`).
    shape_cyx : (int, int, int)
        The full-resolution image's shape.
    grid_factor : int
        Image pixels per analysis-grid pixel (:func:`chemozone.grid.grid_factor`).
    blocks : int
        Grid blocks per overview pixel (:func:`overview_blocks`).
    channels : list of str
        Channel names (recorded in the attributes).
    pixel_size_um : float
        Full-resolution pixel size (µm).

    Notes
    -----
    Call the writer with ``(channel_index, grid_means)`` for every channel (``grid_means`` float, shape of the
    analysis grid), then :meth:`finish`; :meth:`abort` removes a partial write.
    """

    def __init__(self, path: str | Path, *, shape_cyx: Sequence[int], grid_factor: int, blocks: int,
                 channels: Sequence[str], pixel_size_um: float) -> None:
        import zarr

        from .layout import atomic_path

        self.path = Path(path)
        self._publish = ExitStack()  # atomic_path: written beside, renamed into place by finish(), removed by abort()
        tmp = self._publish.enter_context(atomic_path(self.path))
        c, h, w = (int(s) for s in shape_cyx)
        self.shape_yx, self.f, self.k = (h, w), int(grid_factor), int(blocks)
        self.channels, self.px = [str(x) for x in channels], float(pixel_size_um)
        self.grid_shape = grid_shape((h, w), self.f)
        oh, ow = grid_shape(self.grid_shape, self.k)
        self.root = zarr.open_group(str(tmp), mode="w")
        self.level0 = self.root.create_array("0", shape=(c, oh, ow), chunks=(1, _CHUNK_PX, _CHUNK_PX),
                                             dtype=np.float32, fill_value=np.nan)
        self.done: set[int] = set()

    def __call__(self, channel: int, grid_means: np.ndarray) -> None:
        if tuple(grid_means.shape) != self.grid_shape:
            raise ValueError(f"overview: channel {channel} grid means have shape {grid_means.shape}, expected "
                             f"{self.grid_shape}")
        self.level0[int(channel)] = coarsen_means(grid_means, self.shape_yx, self.f, self.k)
        self.done.add(int(channel))

    def finish(self) -> Path | None:
        """Write the coarser levels and the attributes, and move the overview into place; None (and nothing
        written) when not every channel was given."""
        if len(self.done) != self.level0.shape[0]:
            self.abort()
            return None
        n = 1
        prev = self.level0
        while max(prev.shape[1:]) > _CHUNK_PX // 2 and min(prev.shape[1:]) > 1:
            nxt = block_mean(prev, 2, dtype=np.float32)
            arr = self.root.create_array(str(n), shape=nxt.shape, chunks=(1, _CHUNK_PX, _CHUNK_PX), dtype=np.float32,
                                         fill_value=np.nan)
            arr[...] = nxt
            prev, n = arr, n + 1
        factor = self.f * self.k
        self.root.attrs.update({
            "chemozone_overview": {"factor": factor, "n_levels": n, "channels": self.channels,
                                   "shape_yx": list(self.shape_yx), "pixel_size_um": self.px,
                                   "method": "block means of factor x factor image pixels; level k: 2x2 means of k-1"},
        })
        self._publish.close()
        return self.path

    def abort(self) -> None:
        """Remove the partial write (the previous overview, if any, stays)."""
        err = RuntimeError("overview aborted")
        self._publish.__exit__(type(err), err, None)  # atomic_path publishes only on a clean exit


def coarsen_means(grid_means: np.ndarray, shape_yx: Sequence[int], grid_factor: int, blocks: int) -> np.ndarray:
    """Means of ``(grid_factor · blocks)²`` image pixels from the means of ``grid_factor²`` ones (float32).

    Each grid mean is weighted by the pixels its block holds (edge blocks hold fewer), so the result is the
    mean of the image pixels in each overview block, as :func:`chemozone.grid.block_mean` at the full factor
    gives it (to float32 rounding).

    Examples
    --------
    >>> img = np.arange(35.0).reshape(5, 7)
    >>> g = block_mean(img, 2)
    >>> np.allclose(coarsen_means(g, img.shape, 2, 2), block_mean(img, 4))
    True
    """
    h, w = (int(s) for s in shape_yx)
    f, k = int(grid_factor), int(blocks)
    gh, gw = grid_means.shape
    cols = block_sizes(w, f).astype(np.float64)
    rows = block_sizes(h, f).astype(np.float64)
    row_px = _strided_sums(rows[:, None], k, axis=0)[:, 0]  # image pixels per overview row / column
    col_px = _strided_sums(cols[None], k, axis=1)[0]
    out = np.empty((-(-gh // k), -(-gw // k)), np.float32)
    band = 256 * k  # grid rows per band (a multiple of k): no grid-sized temporaries
    for g0 in range(0, gh, band):
        g1 = min(gh, g0 + band)
        weighted = grid_means[g0:g1] * rows[g0:g1, None]
        weighted *= cols
        o0, o1 = g0 // k, -(-g1 // k)
        out[o0:o1] = _strided_sums(_strided_sums(weighted, k, axis=0), k, axis=1) / np.outer(row_px[o0:o1], col_px)
    return out


def _strided_sums(x: np.ndarray, k: int, *, axis: int) -> np.ndarray:
    """Sums of ``k`` consecutive entries along ``axis`` of a 2-D float array (the last group may be shorter), as
    ``k`` strided additions: several times faster than numpy's reduction over a reshaped block axis."""
    n = x.shape[axis]
    m = -(-n // k)
    shape = (m, x.shape[1]) if axis == 0 else (x.shape[0], m)
    out = np.zeros(shape, np.float64)
    for i in range(min(k, n)):
        part = x[i::k] if axis == 0 else x[:, i::k]
        if axis == 0:
            out[:part.shape[0]] += part
        else:
            out[:, :part.shape[1]] += part
    return out


def read_overview(path: str | Path) -> tuple[list[Any], dict[str, Any]] | None:
    """The overview's levels (lazy dask arrays, shape (C, y, x), largest first) and its attributes
    (``factor``: image pixels per level-0 pixel, ``channels``, ``shape_yx``), or None when there is none."""
    path = Path(path)
    if not (path / "zarr.json").is_file() and not (path / ".zattrs").is_file():
        return None  # no overview (or not a zarr group)
    import dask.array as da
    import zarr

    root = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs).get("chemozone_overview")
    if not attrs:
        return None
    return [da.from_zarr(str(path), component=str(i)) for i in range(int(attrs["n_levels"]))], attrs


def with_overview(img, path: str | Path):
    """``img`` with the overview's levels appended to its levels, when it has no pyramid of its own and the
    overview matches it (channels and shape); else ``img`` unchanged."""
    if len(img.levels or [img.data]) > 1:
        return img
    ov = read_overview(path)
    if ov is None:
        return img
    levels, attrs = ov
    if list(attrs["channels"]) != list(img.channels) or list(attrs["shape_yx"]) != list(img.data.shape[1:]):
        return img
    return replace(img, levels=[img.data, *levels])
