"""Tiles segmented into a zarr store: every tile task reads its own pixels and writes its own labels.

The graph holds no arrays: a tile task gets the image reader (:class:`._tiling._TileReader`, a small
lazy graph that reads the file by path), the tissue mask as a path (:class:`._tiling._ZarrTissue`) and
its tile's coordinates; it parks its window's labels in a scratch zarr array and returns only the
number of objects it kept. A second round of tasks stitches each core from its neighbours' parked
windows straight into ``store/nuclei`` and ``store/cells``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..io._zarr import scratch_array_kwargs
from ..progress import compute_with_progress
from ._tiling import _check_id_range, _segment_window, _stitch_core, _ZarrTissue

SCRATCH = ".tiles"
SCRATCH_CHUNK = 256
TISSUE = ".tissue"


def _segment_and_park(reader, tile: dict[str, Any], *, scratch: str, **kw) -> int:
    """One tile's task: segment its window (:func:`_segment_window`), park the labels in ``scratch``."""
    import zarr

    nuc, cell, n = _segment_window(reader, tile, **kw)
    arr = zarr.open_array(scratch, mode="r+")
    h, w = nuc.shape  # (the rest of a smaller window's slot stays at the fill value, 0)
    arr[tile["index"], 0, :h, :w] = nuc
    arr[tile["index"], 1, :h, :w] = cell
    return int(n)


class _Parked:
    """One label image of a parked window (``scratch[j, c]``); slicing reads only the chunks it needs."""

    def __init__(self, arr, j: int, c: int):
        self.arr, self.j, self.c = arr, j, c

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return self.arr[(self.j, self.c) + tuple(key)]


def _stitch_and_write(i: int, tiles: list[dict], offsets: np.ndarray, *, scratch: str, nuclei: str, cells: str) -> bool:
    """One core's task: paste its own and its neighbours' parked objects, write the core's labels (reading
    only the parts of the neighbours' windows that overlap this core)."""
    import zarr

    arr = zarr.open_array(scratch, mode="r")
    n_c, c_c = _stitch_core(i, tiles, offsets, lambda j: (_Parked(arr, j, 0), _Parked(arr, j, 1)))
    y0, y1, x0, x1 = tiles[i]["core"]
    zarr.open_array(nuclei, mode="r+")[y0:y1, x0:x1] = n_c
    zarr.open_array(cells, mode="r+")[y0:y1, x0:x1] = c_c
    return True


def _store_tissue(root, store: Path, tissue: np.ndarray | None) -> _ZarrTissue | None:
    """The tissue mask written next to the labels, for the tile tasks to read by path."""
    if tissue is None:
        return None
    if TISSUE in root:
        del root[TISSUE]
    side = max(1, min(1024, *tissue.shape))
    arr = root.create_array(TISSUE, shape=tissue.shape, chunks=(side, side), dtype=bool, fill_value=False,
                            overwrite=True)
    arr[...] = tissue
    return _ZarrTissue(str(store / TISSUE), tissue.shape)


def _segment_to_store(store, tiles: list[dict], reader_d, common: dict[str, Any], tissue: np.ndarray | None,
                      shape: tuple[int, int], tile: int):
    """Two rounds of tile tasks: segment windows into a scratch zarr array, then stitch each core from
    its neighbours' windows into ``store/nuclei`` and ``store/cells``. Returns zarr-backed dask arrays."""
    import dask
    import dask.array as da
    import zarr

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    root = zarr.open_group(str(store), mode="a")
    win_hw = (max(t["window"][1] - t["window"][0] for t in tiles), max(t["window"][3] - t["window"][2] for t in tiles))
    if SCRATCH in root:
        del root[SCRATCH]
    # spatial chunks: a core's stitch reads its neighbours' overlap strips, not their whole windows
    root.create_array(SCRATCH, shape=(len(tiles), 2) + win_hw, chunks=(1, 1, SCRATCH_CHUNK, SCRATCH_CHUNK),
                      dtype=np.uint32, fill_value=0, overwrite=True, **scratch_array_kwargs())
    chunk = (min(tile, shape[0]), min(tile, shape[1]))
    for name in ("nuclei", "cells"):
        if name in root:
            del root[name]
        root.create_array(name, shape=shape, chunks=chunk, dtype=np.uint32, fill_value=0, overwrite=True,
                          **scratch_array_kwargs())
    tissue_src = _store_tissue(root, store, tissue)
    paths = {"scratch": str(store / SCRATCH), "nuclei": str(store / "nuclei"), "cells": str(store / "cells")}
    counts = compute_with_progress([dask.delayed(_segment_and_park, pure=False)(
        reader_d, t, scratch=paths["scratch"], tissue=tissue_src, **common) for t in tiles],
        "tiles: segment")
    _check_id_range(int(np.sum(counts)))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    compute_with_progress([dask.delayed(_stitch_and_write, pure=False)(i, tiles, offsets, **paths)
                           for i in range(len(tiles))], "tiles: stitch")
    for name in (SCRATCH, TISSUE):
        if name in root:
            del root[name]
        shutil.rmtree(store / name, ignore_errors=True)
    return da.from_zarr(paths["nuclei"]), da.from_zarr(paths["cells"])
