"""Peak memory of opening a large tiled OME-TIFF lazily and reading one 1024² tile.

Writes a 20000 x 20000 x 8 uint16 tiled OME-TIFF (tile by tile from a dask array, never whole in
memory), then, in a fresh subprocess, opens it with ``chemozone.io.read_image`` and reads one
1024 x 1024 tile of one channel, reporting peak RSS. Compared side by side with ``tifffile.imread``
of one full plane (the naive approach).

    python benchmarks/bench_io.py [--size 20000] [--channels 8] [--dir /tmp/cz-bench]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import resource, sys, time
import numpy as np
from chemozone.io import read_image
t = time.perf_counter()
img = read_image(sys.argv[1])
tile = img.data[3, 5000:6024, 7000:8024].compute()
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{peak:.0f} {dt:.3f} {tile.shape} {int(tile.sum())}")
"""

NAIVE = r"""
import resource, sys, time
import tifffile
t = time.perf_counter()
with tifffile.TiffFile(sys.argv[1]) as tif:
    plane = tif.series[0].asarray(key=3) if False else tif.pages[3].asarray()
dt = time.perf_counter() - t
print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} {dt:.3f}")
"""

BASE = r"""
import resource
import numpy, dask.array, tifffile, zarr, chemozone.io
print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cz-bench"))
    args = ap.parse_args()
    import dask.array as da
    import numpy as np

    from chemozone.io import write_ome_tiff

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"big_{args.size}_{args.channels}.ome.tif"
    if not path.exists():
        t = time.perf_counter()
        yy = da.arange(args.size, dtype=np.uint16, chunks=1024)[:, None]
        xx = da.arange(args.size, dtype=np.uint16, chunks=1024)[None, :]
        plane = ((yy * 7 + xx * 3) % 4096).astype(np.uint16)
        data = da.stack([plane + np.uint16(c) for c in range(args.channels)])
        write_ome_tiff(path, data, channels=[f"ch{c}" for c in range(args.channels)], pixel_size_um=0.5, tile_px=512)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB on disk) in {time.perf_counter() - t:.0f} s")
    base = float(subprocess.check_output([sys.executable, "-c", BASE], text=True).split()[0])
    ours = subprocess.check_output([sys.executable, "-c", CHILD, str(path)], text=True).split()
    naive = subprocess.check_output([sys.executable, "-c", NAIVE, str(path)], text=True).split()
    raw_gb = args.size**2 * args.channels * 2 / 1e9
    print(f"image: {args.channels} x {args.size} x {args.size} uint16 = {raw_gb:.1f} GB uncompressed")
    print(f"{'method':<42}{'peak RSS MB':>12}{'time s':>9}")
    print(f"{'imports only (baseline)':<42}{base:>12.0f}{'':>9}")
    print(f"{'chemozone read_image + one 1024² tile':<42}{float(ours[0]):>12.0f}{float(ours[1]):>9.2f}")
    print(f"{'tifffile: one full plane (naive)':<42}{float(naive[0]):>12.0f}{float(naive[1]):>9.2f}")


if __name__ == "__main__":
    main()
