"""Writing one rendered sample of a cohort: the OME-TIFF image, the truth masks as tiled TIFFs and the
per-cell truth table (see :func:`generate_cohort` for the layout)."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ._params import MODULES, PIXEL_SIZE_UM
from ._sample import RENDER_TILE_PX, render_all, truth_table

STREAM_ABOVE_PX = 2048 * 2048  # larger images are rendered tile by tile through a temporary zarr


def write_tiff(path: Path, arr, *, tile_px: int = 512) -> None:
    """A tiled, zlib-compressed single-plane TIFF from a numpy or zarr 2-D array (tile by tile)."""
    import tifffile

    from ..layout import atomic_path

    h, w = arr.shape

    def tiles():
        for ty in range(-(-h // tile_px)):
            for tx in range(-(-w // tile_px)):
                block = np.asarray(arr[ty * tile_px:(ty + 1) * tile_px, tx * tile_px:(tx + 1) * tile_px])
                if block.shape != (tile_px, tile_px):
                    pad = np.zeros((tile_px, tile_px), arr.dtype)
                    pad[: block.shape[0], : block.shape[1]] = block
                    block = pad
                yield block

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=h * w * np.dtype(arr.dtype).itemsize > 2**31) as tw:
            tw.write(tiles(), shape=(h, w), dtype=arr.dtype, tile=(tile_px, tile_px), compression="zlib",
                     metadata=None, resolution=(1e4 / PIXEL_SIZE_UM, 1e4 / PIXEL_SIZE_UM), resolutionunit="CENTIMETER")


def uuid_for(seed: int, sample_id: str) -> str:
    """The OME UUID of a sample, derived from the master seed and the sample id (same seed, same bytes)."""
    return str(uuid.UUID(bytes=hashlib.md5(f"chemozone-synth:{seed}:{sample_id}".encode()).digest()))


def write_sample(out: Path, sample_id: str, sc: dict[str, Any], seed: int) -> None:
    """Render a scene and write ``images/{sample_id}.ome.tif`` and ``truth/{sample_id}/*`` under ``out``.

    Images above :data:`STREAM_ABOVE_PX` are rendered tile by tile into a temporary zarr next to the truth.
    """
    from ..io import write_ome_tiff
    from ..layout import write_parquet

    H, W = sc["shape"]
    ch = sc["channels"]
    img_path = out / "images" / f"{sample_id}.ome.tif"
    tdir = out / "truth" / sample_id
    tdir.mkdir(parents=True, exist_ok=True)
    names = ["nuclei", "cells", "tissue", "tumor"] + [f"zone_{m}" for m in MODULES]
    dtypes = {"nuclei": np.uint32, "cells": np.uint32}
    if H * W <= STREAM_ABOVE_PX:
        store: dict[str, Any] = {"image": np.zeros((len(ch), H, W), np.uint16)}
        for k in names:
            store[k] = np.zeros((H, W), dtypes.get(k, np.uint8))
        tmp_dir = None
    else:  # out of core: a temporary chunked zarr, one chunk per rendered tile
        import zarr

        tmp_dir = tdir / ".render.zarr"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        T = RENDER_TILE_PX
        grp = zarr.open_group(str(tmp_dir), mode="w")
        store = {"image": grp.create_array("image", shape=(len(ch), H, W), chunks=(1, T, T), dtype=np.uint16)}
        for k in names:
            store[k] = grp.create_array(k, shape=(H, W), chunks=(T, T), dtype=dtypes.get(k, np.uint8))

    def sink(y0, x0, t):
        h, w = t["nuclei"].shape
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        store["image"][(slice(None),) + sl] = t["image"]
        for k in ("nuclei", "cells", "tissue", "tumor"):
            store[k][sl] = t[k]
        for m in MODULES:
            store[f"zone_{m}"][sl] = t["zones"][m]

    sums = render_all(sc, sink)
    image = store["image"]
    if tmp_dir is not None:
        import dask.array as da

        image = da.from_zarr(store["image"])
    write_ome_tiff(img_path, image, channels=ch, pixel_size_um=PIXEL_SIZE_UM, tile_px=512,
                   uuid=uuid_for(seed, sample_id))
    for k in names:
        write_tiff(tdir / f"{k}.tif", store[k])
    write_parquet(truth_table(sc, sums, sample_id), tdir / "cells.parquet")
    if tmp_dir is not None:
        shutil.rmtree(tmp_dir, ignore_errors=True)
