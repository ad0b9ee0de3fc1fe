"""Segmentation speed (megapixels/s on one core) and peak memory vs image size (tiled, zarr store).

Side by side in one run, on synthetic explant DAPI images (``chemozone.synth`` when available, else
blobs): chemozone ``segment_nuclei`` vs the textbook watershed (Gaussian -> Otsu -> distance ->
peak_local_max -> watershed), and ``segment_image`` with a zarr store on an image of one tile vs an
image 4x larger (each run in a fresh process, peak RSS from ``resource.getrusage``; single-threaded
dask scheduler, so the figures are per core).

Usage::

    .venv/bin/python benchmarks/bench_segment.py              # 1024 px tiles (~1 min)
    .venv/bin/python benchmarks/bench_segment.py --tile 2048  # the default tile size (slower)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_nuclei_dsb2018 import textbook  # noqa: E402  (the same textbook recipe in every benchmark)


def _dapi(side: int, seed: int = 0) -> np.ndarray:
    """A DAPI-like image: tile a 512 px synthetic explant patch (cheap to generate)."""
    try:
        from chemozone.synth import generate_sample

        s = generate_sample(size_px=512, dose_gy=10, seed=seed)
        patch = s["image"][s["channels"].index("DAPI")]
    except Exception:  # noqa: BLE001 - fall back to blobs
        rng = np.random.default_rng(seed)
        patch = rng.poisson(100, (512, 512)).astype(np.uint16)
    reps = -(-side // 512)
    return np.tile(patch, (reps, reps))[:side, :side]


def _child(side: int, tile: int, store: str) -> None:
    import resource

    import dask
    import dask.array as da

    from chemozone.segment import segment_image

    dapi = _dapi(side)
    # a lazy image: a zarr file on disk, read window by window
    import zarr

    zpath = Path(store) / "img.zarr"
    z = zarr.open_array(str(zpath), mode="w", shape=(1, side, side), chunks=(1, 512, 512), dtype=dapi.dtype)
    z[0] = dapi
    del dapi
    img = da.from_zarr(str(zpath))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        nuc, _ = segment_image(img, channels=["DAPI"], pixel_size_um=0.5, tile_size_px=tile, store=Path(store) / "seg")
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"side": side, "seconds": dt, "peak_mb": peak / 1024, "base_mb": base / 1024,
                      "n": int(nuc.max().compute())}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--child", nargs=3, metavar=("SIDE", "TILE", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(int(args.child[0]), int(args.child[1]), args.child[2])
        return 0
    from chemozone.segment import segment_nuclei

    # 1. throughput on one core, one tile, in process
    img = _dapi(args.tile)
    mp = img.size / 1e6
    rows = []
    for name, fn in (("chemozone", lambda: segment_nuclei(img, pixel_size_um=0.5, nucleus_diameter_um=8.0)),
                     ("textbook", lambda: textbook(img, 16.0))):
        fn()  # warm up imports
        t0, c0 = time.perf_counter(), time.process_time()
        lab = fn()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        rows.append((name, dt, mp / dc, int(lab.max()), dc))
    print(f"\nsegment_nuclei throughput, {args.tile}² px DAPI (0.5 µm/px, 8 µm nuclei), 1 core")
    print(f"{'method':<10} {'wall s':>8} {'CPU s':>7} {'MP/CPU-s':>9} {'nuclei':>7}")
    for r in rows:
        print(f"{r[0]:<10} {r[1]:8.2f} {r[4]:7.2f} {r[2]:9.2f} {r[3]:7d}")
    print(f"ratio chemozone/textbook CPU time: {rows[0][4] / rows[1][4]:.2f}")

    # 2. tiled vs whole image: same objects? (image-level statistics shared by all tiles) and cost
    import dask

    from chemozone.metrics import match_scores
    from chemozone.segment import segment_image

    side = min(args.tile, 1024)
    cyx = _dapi(side)[None]
    print(f"\ntiled vs whole image, {side}² px, synchronous scheduler")
    print(f"{'tiles':>8} {'seconds':>8} {'nuclei':>7} {'unmatched@0.5':>14} {'identical objects':>18}")
    with dask.config.set(scheduler="synchronous"):
        t0 = time.perf_counter()
        whole, _ = segment_image(cyx, channels=["DAPI"], pixel_size_um=0.5)
        t_whole = time.perf_counter() - t0
        print(f"{'1':>8} {t_whole:8.2f} {int(whole.max()):7d} {'-':>14} {'-':>18}")
        for tile in (side // 2, side // 4):
            t0 = time.perf_counter()
            tiled, _ = segment_image(cyx, channels=["DAPI"], pixel_size_um=0.5, tile_size_px=tile)
            dt = time.perf_counter() - t0
            sc = match_scores(whole, tiled, thresholds=(0.5,))
            m = (whole > 0) | (tiled > 0)
            pairs = np.unique(np.stack([whole[m], tiled[m]]), axis=1)
            same = np.unique(pairs[0]).size == pairs.shape[1] == np.unique(pairs[1]).size
            ntiles = (-(-side // tile)) ** 2
            print(f"{ntiles:>8} {dt:8.2f} {int(tiled.max()):7d} {int(sc['fp'][0] + sc['fn'][0]):14d} {str(same):>18}"
                  f"   time ratio {dt / t_whole:.2f}")

    # 3. peak memory: one tile vs 4x the area (2 x 2 tiles), each in a fresh process
    import tempfile

    print(f"\nsegment_image with a zarr store, tile {args.tile} px, synchronous scheduler")
    print(f"{'image':>12} {'seconds':>8} {'MP/s':>7} {'peak MB':>8} {'nuclei':>7}")
    res = []
    for side in (args.tile, 2 * args.tile):
        with tempfile.TemporaryDirectory() as d:
            out = subprocess.run([sys.executable, __file__, "--child", str(side), str(args.tile), d],
                                 capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res.append(r)
        print(f"{side:>6}x{side:<5} {r['seconds']:8.2f} {side * side / 1e6 / r['seconds']:7.2f} "
              f"{r['peak_mb']:8.0f} {r['n']:7d}")
    print(f"peak memory ratio (4x area / 1 tile): {res[1]['peak_mb'] / res[0]['peak_mb']:.2f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
