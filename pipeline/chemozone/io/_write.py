"""``write_ome_tiff``: a (C, Y, X) array as a tiled, optionally pyramidal OME-TIFF."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ImageError


def write_ome_tiff(
    path: str | Path,
    data,
    *,
    channels: Sequence[str],
    pixel_size_um: float,
    tile_px: int = 512,
    pyramid_levels: int = 0,
    compression: str | None = "zlib",
    uuid: str | None = None,
) -> Path:
    """Write a (C, Y, X) array as a tiled (optionally pyramidal) OME-TIFF.

    ``uuid`` fixes the OME ``UUID`` attribute (default: a random one from tifffile); pass a
    deterministic value to get byte-identical files from identical inputs.

    ``data`` may be a numpy array, a dask array (written tile by tile without loading it whole), or
    an iterator factory is not supported: pass a dask array for images larger than memory.
    Pyramid levels are 2× mean-downsampled (``pyramid_levels`` extra levels, SubIFDs).
    """
    import tifffile

    path = Path(path)
    c, y, x = data.shape
    if len(channels) != c:
        raise ImageError(f"{path}: {len(channels)} channel names for {c} channels")
    metadata = {
        "axes": "CYX",
        "Channel": {"Name": list(channels)},
        "PhysicalSizeX": float(pixel_size_um),
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": float(pixel_size_um),
        "PhysicalSizeYUnit": "µm",
    }
    if uuid is not None:
        metadata["UUID"] = f"urn:uuid:{uuid}"
    from ..layout import atomic_path

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=(c * y * x * np.dtype(data.dtype).itemsize) > 2**31 - 2**25, ome=True) as tw:
            kw = dict(tile=(tile_px, tile_px), dtype=data.dtype, compression=compression,
                      resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um), resolutionunit="CENTIMETER")
            tw.write(_tiles(data, tile_px), shape=(c, y, x), metadata=metadata, subifds=pyramid_levels, **kw)
            level = data
            for _ in range(pyramid_levels):
                level = _downsample(level)
                tw.write(_tiles(level, tile_px), shape=level.shape, subfiletype=1, **{**kw, "resolution": None})
    return path


def _tiles(arr, tile_px: int):
    """The ``tile_px``² tiles of a (C, Y, X) array in TIFF order (channel, tile row, tile column), zero-padded
    at the right and bottom edges."""
    # one strip of tile rows at a time: a dask array is computed strip by strip (bounded memory)
    ny, nx = -(-arr.shape[1] // tile_px), -(-arr.shape[2] // tile_px)
    for ci in range(arr.shape[0]):
        for ty in range(ny):
            strip = np.asarray(arr[ci, ty * tile_px:(ty + 1) * tile_px, :])
            if strip.shape[0] != tile_px or strip.shape[1] != nx * tile_px:
                pad = np.zeros((tile_px, nx * tile_px), dtype=arr.dtype)
                pad[: strip.shape[0], : strip.shape[1]] = strip
                strip = pad
            for tx in range(nx):
                yield strip[:, tx * tile_px:(tx + 1) * tile_px]


def _downsample(arr):
    """The next pyramid level: 2 × 2 mean (odd last row/column dropped), in the input's dtype (lazy, dask)."""
    import dask.array as da

    a = arr if hasattr(arr, "dask") else da.from_array(arr, chunks=(1, 2048, 2048))
    h, w = (a.shape[1] // 2) * 2, (a.shape[2] // 2) * 2
    a = a[:, :h, :w]
    return da.coarsen(np.mean, a, {1: 2, 2: 2}).astype(arr.dtype)
