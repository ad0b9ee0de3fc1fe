"""Per-cell quantification: chemozone vs skimage regionprops_table (MCQuant approach) vs the read floor.

Side by side in one run, on the same image and labels:

1. in memory (numpy): ``quantify_cells`` (nucleus, cytoplasm, cell means of every channel) vs
   ``skimage.measure.regionprops_table(labels, intensity_image=channel, properties=("label",
   "intensity_mean"))`` called per channel and per compartment mask (cells, nuclei, cytoplasm) — what MCQuant
   does — vs the floor: one pass that sums every channel (reads every byte once);
2. out of core (zarr on disk, read through dask): ``quantify_cells`` vs a pass that reads every tile of
   the image and sums it (the I/O + decompression floor);
3. peak memory (tracemalloc, in fresh subprocesses) of ``quantify_cells`` on zarr-backed inputs of one tile
   and of 4 tiles (2 × 2): the ratio must stay <= 1.3.

Usage::

    python benchmarks/bench_quantify.py            # 8 × 2048 × 2048 uint16, ~50k cells (< 3 min)
    python benchmarks/bench_quantify.py --full     # 8 × 4096 × 4096 uint16, ~200k cells
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))

from chemozone.quantify import quantify_cells  # noqa: E402


def synthetic(size: int, n_cells: int, n_channels: int, seed: int = 0):
    """uint16 image (C, Y, X), cell labels grown from random seeds, nuclei = inner part of each cell."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.uint32)
    pts = rng.integers(0, size, (n_cells, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, n_cells + 1, dtype=np.uint32)
    dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    near = seeds[iy, ix]
    mean_r = 0.5 * size / np.sqrt(n_cells)
    cells = np.where(dist <= 1.6 * mean_r, near, 0).astype(np.uint32)
    nuclei = np.where(dist <= 0.8 * mean_r, near, 0).astype(np.uint32)
    img = rng.integers(0, 4096, (n_channels, size, size), dtype=np.uint16)
    return img, cells, nuclei


def best(fn, repeat=3):
    """Best wall time of ``repeat`` runs (the machine may be shared), the output, and the best CPU time
    (all threads of the process: time.process_time)."""
    times, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    best.cpu = min(cpus)
    return min(times), out


def regionprops_mcquant(img, cells, nuclei):
    from skimage.measure import regionprops_table

    cyto = np.where(nuclei == cells, 0, cells)
    nuc = np.where(nuclei == cells, cells, 0)
    out = {}
    for ci in range(img.shape[0]):
        for name, lab in (("cell", cells), ("nucleus", nuc), ("cytoplasm", cyto)):
            out[(ci, name)] = regionprops_table(lab, intensity_image=img[ci], properties=("label", "intensity_mean"))
    return out


def floor_numpy(img):
    """Sum every channel once (numpy's uint64 accumulation of uint16): the fastest read of every byte."""
    return img.sum(axis=(1, 2))


def floor_float(img):
    """Read + convert every channel to float64 once, then sum it (what a float accumulator pays)."""
    return [img[c].astype(np.float64).sum() for c in range(img.shape[0])]


def floor_tiles(arr, tile):
    total = 0
    _, h, w = arr.shape
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            total += int(np.asarray(arr[:, y0:y0 + tile, x0:x0 + tile].compute(scheduler="synchronous"))
                         .sum(dtype=np.uint64))
    return total


def write_zarr(folder: Path, img, cells, nuclei, chunk=512):
    import zarr

    paths = {}
    for name, a, chunks in (("image", img, (1, chunk, chunk)), ("cells", cells, (chunk, chunk)),
                            ("nuclei", nuclei, (chunk, chunk))):
        z = zarr.open_array(str(folder / f"{name}.zarr"), mode="w", shape=a.shape, chunks=chunks, dtype=a.dtype)
        z[:] = a
        paths[name] = str(folder / f"{name}.zarr")
    return paths


_MEM_CHILD = r"""
import json, resource, sys, tracemalloc
sys.path.insert(0, {pipeline!r})
import numpy as np, dask.array as da
from chemozone.quantify import quantify_cells
p = json.loads({paths!r})
img = da.from_zarr(p["image"]); cells = da.from_zarr(p["cells"]); nuclei = da.from_zarr(p["nuclei"])
chans = [f"c{{i}}" for i in range(img.shape[0])]
# warm up (numba compilation / caches) on a small crop, outside the measurement
quantify_cells(img[:, :64, :64], cells[:64, :64], nuclei=nuclei[:64, :64], channels=chans, pixel_size_um=0.5)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if {traced}:
    tracemalloc.start()
df = quantify_cells(img, cells, nuclei=nuclei, channels=chans, pixel_size_um=0.5, tile_size_px={tile})
peak = tracemalloc.get_traced_memory()[1] if {traced} else 0
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_mb": peak / 2**20, "n_cells": len(df), "rss_before_mb": rss0, "rss_peak_mb": rss1}}))
"""


def peak_memory(folder: Path, tile: int, n_tiles_side: int, n_channels: int, cells_per_tile: int):
    size = tile * n_tiles_side
    img, cells, nuclei = synthetic(size, cells_per_tile * n_tiles_side**2, n_channels, seed=1)
    sub = folder / f"mem_{n_tiles_side}"
    sub.mkdir()
    paths = write_zarr(sub, img, cells, nuclei, chunk=min(512, tile))
    del img, cells, nuclei
    out = {}
    for traced in (True, False):  # tracemalloc in one child, RSS (without tracemalloc's overhead) in another
        code = _MEM_CHILD.format(pipeline=str(ROOT / "pipeline"), paths=json.dumps(paths), tile=tile, traced=traced)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        out.update(r if traced else {"rss_before_mb": r["rss_before_mb"], "rss_peak_mb": r["rss_peak_mb"]})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="8 × 4096 × 4096, ~200k cells")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--cells", type=int, default=None)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--tile", type=int, default=2048, help="tile_size_px of quantify_cells")
    ap.add_argument("--skip-regionprops", action="store_true")
    args = ap.parse_args(argv)
    size = args.size or (4096 if args.full else 2048)
    n_cells = args.cells or (200_000 if args.full else 50_000)

    t = time.perf_counter()
    img, cells, nuclei = synthetic(size, n_cells, args.channels)
    n_present = int(np.unique(cells).size - 1)
    print(f"image {args.channels} × {size} × {size} uint16 ({img.nbytes / 2**20:.0f} MiB), "
          f"{n_present} cells (synthesised in {time.perf_counter() - t:.1f} s)")
    chans = [f"c{i}" for i in range(args.channels)]
    kw = dict(nuclei=nuclei, channels=chans, pixel_size_um=0.5, tile_size_px=args.tile)
    quantify_cells(img[:, :64, :64], cells[:64, :64], nuclei=nuclei[:64, :64], channels=chans,
                   pixel_size_um=0.5)  # warm-up: numba compilation (cached on disk afterwards)

    rows = []
    t_floor, _ = best(lambda: floor_numpy(img))
    c_floor = best.cpu
    t_ffloor, _ = best(lambda: floor_float(img))
    c_ffloor = best.cpu
    t_ours, df = best(lambda: quantify_cells(img, cells, **kw))
    c_ours = best.cpu
    rows.append(("floor: img.sum(axis=(1, 2)) (numpy)", t_floor, c_floor))
    rows.append(("floor: every channel to float64, summed (numpy)", t_ffloor, c_ffloor))
    rows.append(("chemozone quantify_cells (numpy)", t_ours, c_ours))
    if not args.skip_regionprops:
        t_rp, rp = best(lambda: regionprops_mcquant(img, cells, nuclei), repeat=1)
        rows.append(("skimage regionprops_table per channel × compartment", t_rp, best.cpu))
        got = rp[(0, "cell")]
        assert np.array_equal(got["label"], df["cell_id"]), "label sets differ"
        assert np.allclose(got["intensity_mean"], df["c0_cell"], rtol=1e-12), "means differ"
        nuc = rp[(args.channels - 1, "nucleus")]
        pos = np.searchsorted(df["cell_id"].to_numpy(), nuc["label"])
        assert np.allclose(nuc["intensity_mean"], df[f"c{args.channels - 1}_nucleus"].to_numpy()[pos], rtol=1e-12)

    with tempfile.TemporaryDirectory() as tmp:
        import dask.array as da

        paths = write_zarr(Path(tmp), img, cells, nuclei)
        zimg, zcells, znuc = (da.from_zarr(paths[k]) for k in ("image", "cells", "nuclei"))
        t_zfloor, _ = best(lambda: floor_tiles(zimg, args.tile))
        rows.append(("floor: read + sum every tile (zarr on disk)", t_zfloor, best.cpu))
        t_zours, zdf = best(lambda: quantify_cells(zimg, zcells, nuclei=znuc, channels=chans, pixel_size_um=0.5,
                                                   tile_size_px=args.tile))
        rows.append(("chemozone quantify_cells (zarr on disk, dask)", t_zours, best.cpu))
        assert zdf.equals(df), "zarr/dask result differs from numpy"

        print(f"\n{'method':<55} {'wall s':>9} {'cpu s':>9}   (best of 3; cpu = all threads)")
        for name, sec, cpu in rows:
            print(f"{name:<55} {sec:>9.3f} {cpu:>9.3f}")
        print("\nratios")
        if not args.skip_regionprops:
            print(f"  regionprops / chemozone (numpy)      = {t_rp / t_ours:7.1f}×   (target >= 10)")
        print(f"  chemozone / floor (numpy)            = {t_ours / t_floor:7.2f}×   (target <= 3)   "
              f"cpu {c_ours / c_floor:.2f}×")
        print(f"  chemozone / float64 floor (numpy)    = {t_ours / t_ffloor:7.2f}×                  "
              f"cpu {c_ours / c_ffloor:.2f}×")
        print(f"  chemozone / floor (zarr on disk)     = {t_zours / t_zfloor:7.2f}×   (target <= 3)")

        mem_tile = 1024
        m1 = peak_memory(Path(tmp), mem_tile, 1, args.channels, cells_per_tile=12_000)
        m4 = peak_memory(Path(tmp), mem_tile, 2, args.channels, cells_per_tile=12_000)
        print(f"\npeak memory (tracemalloc, zarr-backed, tile_size_px={mem_tile}, {args.channels} channels)")
        print(f"  1 tile  ({mem_tile}²,  {m1['n_cells']:>6} cells): {m1['peak_mb']:8.1f} MiB")
        print(f"  4 tiles ({2 * mem_tile}², {m4['n_cells']:>6} cells): {m4['peak_mb']:8.1f} MiB")
        print(f"  ratio = {m4['peak_mb'] / m1['peak_mb']:.2f}   (target <= 1.3)")
        print("peak RSS (ru_maxrss of separate children without tracemalloc; includes the imports)")
        print(f"  1 tile : {m1['rss_peak_mb']:8.1f} MiB")
        print(f"  4 tiles: {m4['rss_peak_mb']:8.1f} MiB")
        print(f"  ratio = {m4['rss_peak_mb'] / m1['rss_peak_mb']:.2f}")


if __name__ == "__main__":
    main()
