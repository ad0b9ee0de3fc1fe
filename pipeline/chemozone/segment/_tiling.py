"""Tiles and seams: the tile layout, the tile reader, the statistics pass, per-tile dask tasks, stitching.

An image is cut into cores of ``tile_size_px``; each core is segmented inside a window that extends
it by the overlap. A tile keeps the objects whose centroid pixel lies in its core, so each object is
kept by exactly one tile even when it straddles a seam. The kept objects of a core and its 8
neighbours are then pasted into the core (own tile first, then neighbours in tile order) so that
objects reaching across a seam stay whole. A cheap first pass gathers image-level statistics from a
lattice of every tile's core, so that all tiles use the same parameters as a whole-image run.

Every tile task reads its own window (:class:`_TileReader`, placed in the graph once): the graph carries
the image as a small lazy graph that reads the file by path, never pixels. The zarr-store variant is in
:mod:`._tile_store`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..progress import compute_with_progress
from ._cells import segment_cells
from ._labels import _nonzero, _relabel
from ._lattice import _lattice, _merge_samples, _robust_ranges
from ._nuclei import segment_nuclei
from ._preprocess import _context_px
from ._watershed import _nuclear_samples, _statistics_from_samples, _watershed_options


def _overlap_px(seg: dict[str, Any], *, pixel_size_um: float, tile_overlap_um: float) -> int:
    """Margin of a tile's window around its core, px: ``tile_overlap_um``, at least one nucleus
    diameter plus the cell expansion (and, for the watershed, the preprocessing context plus two
    diameters and the expansion)."""
    d_px = seg["nucleus_diameter_um"] / pixel_size_um
    expand_px = seg["expand_um"] / pixel_size_um
    overlap = int(math.ceil(tile_overlap_um / pixel_size_um))
    overlap = max(overlap, int(math.ceil(d_px + expand_px)) + 2)
    if seg["method"] == "watershed":
        # enough context that every object kept by a tile (and its neighbours) is computed from the
        # same preprocessed values as in a whole-image run
        overlap = max(overlap, _context_px(d_px, _watershed_options(seg["nuclei_options"]))
                      + int(math.ceil(2 * d_px + expand_px)) + 2)
    return overlap


def _tile_layout(shape: tuple[int, int], *, tile_size_px: int, overlap_px: int) -> list[dict[str, Any]]:
    """The tiles of an image: one tile covering it unless a side exceeds ``tile_size_px``."""
    h, w = shape
    tile = int(tile_size_px)
    if h > tile or w > tile:
        return _tile_grid((h, w), tile, overlap_px)
    return [{"index": 0, "ty": 0, "tx": 0, "core": (0, h, 0, w), "window": (0, h, 0, w)}]


def _tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[dict[str, Any]]:
    """Cores (a partition of the image into ``tile``-sized blocks) and windows (cores + overlap)."""
    h, w = shape
    tiles = []
    for ty, y0 in enumerate(range(0, h, tile)):
        for tx, x0 in enumerate(range(0, w, tile)):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            win = (max(0, y0 - overlap), min(h, y1 + overlap), max(0, x0 - overlap), min(w, x1 + overlap))
            tiles.append({"index": len(tiles), "ty": ty, "tx": tx, "core": (y0, y1, x0, x1), "window": win})
    return tiles


def _tissue_window(tissue, core, factor: int):
    """The rows/columns of the tissue mask (numpy, or a :class:`_ZarrTissue` read by path) that cover
    ``core``, and their grid origin; ``(None, (0, 0))`` without a mask."""
    if tissue is None:
        return None, (0, 0)
    gh, gw = tissue.shape
    y0, y1, x0, x1 = core
    gy0, gx0 = min(y0 // factor, gh - 1), min(x0 // factor, gw - 1)
    gy1, gx1 = min((y1 - 1) // factor + 1, gh), min((x1 - 1) // factor + 1, gw)
    return np.asarray(tissue[gy0:gy1, gx0:gx1]).astype(bool), (gy0, gx0)


class _ZarrTissue:
    """The tissue mask as a zarr array on disk, read crop by crop by the tile tasks (pickles as a path)."""

    def __init__(self, path: str, shape: tuple[int, int]):
        self.path, self.shape = path, tuple(shape)

    def __getitem__(self, key):
        import zarr

        return zarr.open_array(self.path, mode="r")[key]


def _keep_core_objects(nuc: np.ndarray, cells: np.ndarray, win, core, tissue, tissue_factor, tissue_origin=(0, 0)):
    """Keep the objects whose centroid lies in the core (and in the tissue); renumber them 1..n.

    ``tissue``: the mask's part that covers the core, starting at grid cell ``tissue_origin``.
    Returns window-sized ``(nuclei, cells, n)`` holding only the kept objects.
    """
    n_obj = int(nuc.max()) if nuc.size else 0
    if n_obj == 0:
        return np.zeros(nuc.shape, np.uint32), np.zeros(nuc.shape, np.uint32), 0
    # centroid pixel from exact integer sums (global coordinates), so that two tiles always agree on
    # which core holds an object: floor(sum / n + 1/2) >= y0  <=>  2 sum + n >= 2 y0 n
    idx, v = _nonzero(nuc)
    n = np.bincount(v, minlength=n_obj + 1)[1:].astype(np.int64)
    # local coordinate sums are integers well below 2**53: exact in float64
    w = nuc.shape[1]
    sy = np.rint(np.bincount(v, weights=(idx // w).astype(np.float64), minlength=n_obj + 1)[1:]).astype(np.int64)
    sx = np.rint(np.bincount(v, weights=(idx % w).astype(np.float64), minlength=n_obj + 1)[1:]).astype(np.int64)
    sy += int(win[0]) * n
    sx += int(win[2]) * n
    nz = np.maximum(n, 1)
    y0, y1, x0, x1 = core
    keep = ((n > 0) & (2 * sy + n >= 2 * y0 * n) & (2 * sy + n < 2 * y1 * n)
            & (2 * sx + n >= 2 * x0 * n) & (2 * sx + n < 2 * x1 * n))
    py = (2 * sy + n) // (2 * nz)
    px = (2 * sx + n) // (2 * nz)
    if tissue is not None:
        ty = np.clip((py // tissue_factor).astype(np.int64) - tissue_origin[0], 0, tissue.shape[0] - 1)
        tx = np.clip((px // tissue_factor).astype(np.int64) - tissue_origin[1], 0, tissue.shape[1] - 1)
        keep &= tissue[ty, tx].astype(bool)
    keep_lut = np.concatenate([[False], keep])
    # cells carry their nucleus's id: the same lookup renumbers both
    nuc_k, lut = _relabel(nuc, keep_lut, nonzero=(idx, v))
    cells_k = lut[cells]
    return nuc_k, cells_k, int(nuc_k.max()) if nuc_k.size else 0


def _segment_window(reader, tile: dict[str, Any], *, pixel_size_um, seg: dict[str, Any], tissue, tissue_factor,
                    model, statistics=None):
    """One tile's task: read its window (``reader.read(tile)``), segment it, keep its core's objects.

    ``statistics``: image-level ``{"nuclei": ..., "membrane_scales": ...}`` shared by all tiles;
    ``tissue``: None, a numpy mask or a :class:`_ZarrTissue` (only the part over the core is read).
    """
    win, core = tile["window"], tile["core"]
    nuclear, mem = reader.read(tile)
    statistics = statistics or {}
    opts = dict(seg["nuclei_options"])
    if seg["method"] == "cellpose":
        opts.update(model=model, **seg["cellpose"])
    else:
        opts["origin_px"] = (int(win[0]), int(win[2]))
    nuc = segment_nuclei(nuclear, pixel_size_um=pixel_size_um, nucleus_diameter_um=seg["nucleus_diameter_um"],
                         method=seg["method"], statistics=statistics.get("nuclei"), **opts)
    cells = segment_cells(nuc, pixel_size_um=pixel_size_um, expand_um=seg["expand_um"], method=seg["cell_method"],
                          membrane=mem, membrane_scales=statistics.get("membrane_scales"))
    t_arr, t_origin = _tissue_window(tissue, core, tissue_factor)
    return _keep_core_objects(nuc, cells, win, core, t_arr, tissue_factor, t_origin)


def _window_samples(reader, tile: dict[str, Any], *, step, seg: dict[str, Any], d_px: float, nuclei: bool = True,
                    window=None):
    """First pass of a tile (its own task): lattice samples of its core for the image-level statistics.

    ``window``: the tile's ``(nuclear, membrane)`` pixels when already read (else ``reader.read(tile)``).
    """
    win, core = tile["window"], tile["core"]
    nuclear, membrane = window if window is not None else reader.read(tile)
    origin = (int(win[0]), int(win[2]))
    out: dict[str, Any] = {}
    if not nuclei:
        pass
    elif seg["method"] == "watershed":
        out["nuclei"] = _nuclear_samples(nuclear, d_px, _watershed_options(seg["nuclei_options"]),
                                         origin=origin, region=core, step=step)
    else:  # cellpose: raw values of the channels it reads (for its normalisation)
        arr = np.asarray(nuclear, dtype=np.float32)
        arr = arr if arr.ndim == 3 else arr[None]
        out["raw"] = _lattice(arr, origin, core, step).reshape(arr.shape[0], -1)
    if membrane is not None:
        out["membrane"] = _lattice(membrane, origin, core, step).reshape(membrane.shape[0], -1)
    return out


def _image_statistics(parts: list[dict], seg: dict[str, Any], nuclei: bool = True) -> dict[str, Any]:
    """Combine the tiles' lattice samples into the statistics every tile uses."""
    stats: dict[str, Any] = {}
    if not nuclei:
        pass
    elif seg["method"] == "watershed":
        stats["nuclei"] = _statistics_from_samples(_merge_samples([p["nuclei"] for p in parts]),
                                                   _watershed_options(seg["nuclei_options"]))
    else:
        raw = np.concatenate([p["raw"] for p in parts], axis=1)
        stats["nuclei"] = {"lowhigh": _robust_ranges(raw)}
    if parts and "membrane" in parts[0]:
        stats["membrane_scales"] = _robust_ranges(np.concatenate([p["membrane"] for p in parts], axis=1))
    return stats


def _paste(dst_nuc, dst_cell, tile_res, offset, tile, core_i):
    """Write ``tile``'s kept objects into the core ``core_i`` where nothing is written yet."""
    nuc, cell = tile_res
    wy0, wy1, wx0, wx1 = tile["window"]
    y0, y1, x0, x1 = core_i
    iy0, iy1, ix0, ix1 = max(y0, wy0), min(y1, wy1), max(x0, wx0), min(x1, wx1)
    if iy0 >= iy1 or ix0 >= ix1:
        return
    src = (slice(iy0 - wy0, iy1 - wy0), slice(ix0 - wx0, ix1 - wx0))
    dst = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    for out, lab in ((dst_nuc, nuc), (dst_cell, cell)):
        s = lab[src]
        o = out[dst]
        put = (o == 0) & (s > 0)
        o[put] = s[put] + np.uint32(offset)


def _stitch_core(i: int, tiles, offsets, get_result) -> tuple[np.ndarray, np.ndarray]:
    """Assemble the labels of core ``i``: its own tile first, then its neighbours in tile order."""
    t = tiles[i]
    y0, y1, x0, x1 = t["core"]
    nuc = np.zeros((y1 - y0, x1 - x0), np.uint32)
    cell = np.zeros_like(nuc)
    neigh = [j for j, u in enumerate(tiles) if abs(u["ty"] - t["ty"]) <= 1 and abs(u["tx"] - t["tx"]) <= 1]
    for j in [i] + [j for j in neigh if j != i]:
        _paste(nuc, cell, get_result(j), offsets[j], tiles[j], t["core"])
    m = nuc > 0
    cell[m] = nuc[m]  # every nucleus pixel belongs to its own cell, whatever the seam rule chose
    return nuc, cell


class _TileReader:
    """Reads a tile's window inside the tile's own task: the nuclear (or cellpose) channel(s) as stored and
    the membrane channels as float32, numpy.

    Pickles as the image itself: a lazy dask image from :func:`chemozone.io.read_image` is a small graph
    that reads the file by path (no pixels), so the tile tasks carry no arrays; a numpy image is placed
    in the graph once, as one key that every tile task depends on.
    """

    def __init__(self, image_cyx, nuclear_index, membrane_indices: list[int]):
        self.image, self.nuclear_index, self.membrane_indices = image_cyx, nuclear_index, list(membrane_indices)

    def read(self, tile: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(nuclear, membrane or None)`` of ``tile``'s window."""
        wy0, wy1, wx0, wx1 = tile["window"]
        nucw = self.image[self.nuclear_index, wy0:wy1, wx0:wx1]
        memw = self.image[self.membrane_indices, wy0:wy1, wx0:wx1] if self.membrane_indices else None
        if hasattr(nucw, "dask"):  # read here, whatever scheduler runs this task
            import dask

            nucw, memw = dask.compute(nucw, memw, scheduler="synchronous")
        return np.asarray(nucw), None if memw is None else np.asarray(memw, dtype=np.float32)


class _Preread:
    """A reader of one window already in memory."""

    def __init__(self, window):
        self.window = window

    def read(self, tile):
        return self.window


def _segment_single_tile(reader: _TileReader, tile: dict[str, Any], *, tissue, common: dict[str, Any],
                         sample_kw: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """An image of one tile, without a store: segmented in this process, numpy labels."""
    window = reader.read(tile)
    seg = common["seg"]
    stats = {}
    need_nuc = seg["method"] == "cellpose"  # the classical segmenter computes its own, identically
    if need_nuc or window[1] is not None:
        part = _window_samples(reader, tile, nuclei=need_nuc, window=window, **sample_kw)
        stats = _image_statistics([part], seg, nuclei=need_nuc)
    nuc, cell, _ = _segment_window(_Preread(window), tile, tissue=tissue, statistics=stats, **common)
    return nuc, cell


def _statistics_pass(tiles: list[dict], reader_d, sample_kw: dict[str, Any]) -> dict[str, Any]:
    """First pass: image-level statistics from a lattice of every tile's core (small results)."""
    import dask

    parts = compute_with_progress([dask.delayed(_window_samples, pure=True)(reader_d, t, **sample_kw)
                                   for t in tiles], "tiles: statistics")
    return _image_statistics(list(parts), sample_kw["seg"])


def _segment_tiles(tiles: list[dict], reader_d, common: dict[str, Any], tissue_d,
                   shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Second pass in memory: one dask task per tile, then each core stitched from its neighbours."""
    import dask

    tasks = [dask.delayed(_segment_window, pure=True)(reader_d, t, tissue=tissue_d, **common) for t in tiles]
    results = compute_with_progress(tasks, "tiles: segment")
    counts = [r[2] for r in results]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    _check_id_range(int(np.sum(counts)))
    nuclei = np.zeros(shape, np.uint32)
    cells = np.zeros(shape, np.uint32)
    for i, t in enumerate(tiles):
        y0, y1, x0, x1 = t["core"]
        n_c, c_c = _stitch_core(i, tiles, offsets, lambda j: results[j][:2])
        nuclei[y0:y1, x0:x1] = n_c
        cells[y0:y1, x0:x1] = c_c
    return nuclei, cells


def _check_id_range(n: int) -> None:
    if n >= 2**32 - 1:
        raise ValueError(f"{n} objects do not fit in uint32 labels")
