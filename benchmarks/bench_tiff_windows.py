"""Reading windows of a tiled deflate OME-TIFF: chemozone's direct tile decoding against tifffile's zarr store.

``chemozone.io`` reads a window (what one dask chunk or one segmentation tile asks for) of a tiled, deflate or
uncompressed, one-sample-per-pixel TIFF by decoding the tiles it covers straight into the result
(``io._tiff._read_tiles``: libdeflate into one reused tile buffer, one copy). Any other TIFF goes through
tifffile's zarr store, which this script times side by side on the same windows, in one process, alternating
the two readers, after one untimed read of each window (so both read from the page cache). Prints CPU seconds
per window, the ratio, and checks the pixels are identical.

    python benchmarks/bench_tiff_windows.py                       # writes a 4096² x 6-channel test image (~40 s)
    python benchmarks/bench_tiff_windows.py --image SECTION.ome.tif --windows 12 --window 2048
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _test_image(path: Path, size: int, channels: int) -> Path:
    """A fluorescence-like uint16 image: smooth structure plus Poisson noise, written tile by tile."""
    import dask.array as da

    from chemozone.io import write_ome_tiff

    def block(b, block_info=None):
        (c0, _), (y0, _), (x0, _) = block_info[0]["array-location"]
        rng = np.random.default_rng(c0 * 7919 + y0 * 31 + x0)
        yy, xx = np.mgrid[y0 : y0 + b.shape[1], x0 : x0 + b.shape[2]]
        base = 200 + 150 * (np.sin(yy / 97.0 + c0) * np.cos(xx / 53.0)) ** 2
        return rng.poisson(base[None] * (1 + c0 % 3)).astype(np.uint16)

    arr = da.zeros((channels, size, size), np.uint16, chunks=(1, 2048, size)).map_blocks(block, dtype=np.uint16)
    return write_ome_tiff(path, arr, channels=[f"c{i}" for i in range(channels)], pixel_size_um=0.5)


def _decode_per_tile(plan, n_tiles: int = 60) -> None:
    """libdeflate per tile with the output size given (chemozone) and without it (as tifffile's store calls it)."""
    import os

    import imagecodecs

    if not plan.deflate:
        return
    ks = range(min(n_tiles, plan.counts.shape[1]))
    raws = [os.pread(plan.fileno, int(plan.counts[0, k]), int(plan.offsets[0, k])) for k in ks]
    out = np.empty(plan.tile_yx[0] * plan.tile_yx[1] * 8, np.uint8)  # room for any dtype up to 8 bytes
    size = len(imagecodecs.deflate_decode(raws[0]))  # bytes of one decoded tile
    t = time.process_time()
    for r in raws:
        imagecodecs.deflate_decode(r, out=out[:size])
    given = (time.process_time() - t) / len(raws)
    t = time.process_time()
    for r in raws:
        imagecodecs.deflate_decode(r)
    unknown = (time.process_time() - t) / len(raws)
    print(f"libdeflate per tile: {1e3 * given:.2f} ms with the output size given, {1e3 * unknown:.2f} ms without "
          f"({unknown / given:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    import tifffile

    from chemozone.io._tiff import TiffRegion

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, help="a tiled OME-TIFF (default: write a test image to --dir)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cz-bench-windows"))
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--channels", type=int, default=6)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=2048)
    a = ap.parse_args(argv)
    path = a.image
    if path is None:
        a.dir.mkdir(parents=True, exist_ok=True)
        path = a.dir / f"windows_{a.size}_{a.channels}.ome.tif"
        if not path.is_file():
            t = time.perf_counter()
            _test_image(path, a.size, a.channels)
            print(f"wrote {path} in {time.perf_counter() - t:.0f} s")
    with tifffile.TiffFile(path) as tif:
        s = tif.series[0]
        shape, dtype = s.shape, s.dtype
        page = s.pages[0]
        print(f"{path.name}: {shape} {dtype}, tiles {page.tilelength}x{page.tilewidth}, compression {page.compression.name}")
    direct = TiffRegion(str(path), 0, 0, shape, dtype)
    if direct._tiles() is None:
        print("this file is not decoded directly (tifffile reads it either way); nothing to compare")
        return 0

    class ZarrStore(TiffRegion):
        def _tiles(self):
            return None

    store = ZarrStore(str(path), 0, 0, shape, dtype)
    rng = np.random.default_rng(0)
    w = min(a.window, shape[1], shape[2])
    cpu = {"chemozone": 0.0, "tifffile": 0.0}
    for _ in range(a.windows):
        y0, x0 = int(rng.integers(0, shape[1] - w + 1)), int(rng.integers(0, shape[2] - w + 1))
        key = (slice(0, shape[0]), slice(y0, y0 + w), slice(x0, x0 + w))
        store[key], direct[key]  # page cache
        t = time.process_time()
        ref = store[key]
        cpu["tifffile"] += time.process_time() - t
        t = time.process_time()
        got = direct[key]
        cpu["chemozone"] += time.process_time() - t
        if not np.array_equal(got, ref):
            raise SystemExit(f"window {key}: pixels differ")
    n = a.windows
    _decode_per_tile(direct._tiles())
    print(f"{n} windows of {shape[0]} x {w}²: CPU s per window  chemozone {cpu['chemozone'] / n:.3f}  "
          f"tifffile zarr store {cpu['tifffile'] / n:.3f}  ratio {cpu['tifffile'] / cpu['chemozone']:.2f}x; pixels identical")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
