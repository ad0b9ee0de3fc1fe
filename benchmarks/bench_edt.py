"""Signed distances to a zone on a whole section's analysis grid: scipy's EDT vs ours, side by side.

    python benchmarks/bench_edt.py [--size 10000] [--grid-um 1.95]

A zone-like mask (smoothed noise, about 30 % of the grid; a 40k² section at 0.5 µm/px has a 10,000² grid at
2 µm) and its signed distance three ways, each in a fresh process (time and peak RSS above what the process held
before, sampled every 2 ms):

- ``scipy``: ``distance_transform_edt`` of the mask and of its complement, combined into the signed map (what the
  spatial stage did before this session's work on issue 18, and what a user would write);
- ``scipy banded``: scipy's feature transforms, turned into distances one band of rows at a time (the previous
  ``chemozone.grid.iter_signed_distance``, ``CHEMOZONE_NO_NUMBA=1``);
- ``chemozone``: ``chemozone.grid.iter_signed_distance`` (the column pass once, each band's row pass on demand).

Then the feature transform the cell expansion takes each pixel's nucleus from, on a segmentation tile's window
(2,300², nucleus-like discs): scipy's ``distance_transform_edt(..., return_indices=True)`` against
``chemozone.grid.nearest_feature``, the median of 5 runs each, and whether they are identical.

The banded ways only visit each band (as the spatial stage does: each cell's value and the band counts are read
from it). Every way's values are compared with scipy's, bit for bit, on the same mask (``identical`` column).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, threading, time
import numpy as np
from scipy import ndimage as ndi
size, grid_um, way = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
small = ndi.gaussian_filter(rng.random((size // 50 + 1, size // 50 + 1)), 2)
mask = ndi.zoom(small, 50, order=1)[:size, :size] > np.quantile(small, 0.7)
from chemozone import grid
grid._edt_kernels()  # compiled (or loaded from numba's cache) before timing
page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page_mb
base, peak, running = rss(), [0.0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
check = 0.0
if way == "scipy":
    d_out = ndi.distance_transform_edt(~mask, sampling=grid_um)
    d_in = ndi.distance_transform_edt(mask, sampling=grid_um)
    d = np.where(mask, -(d_in - grid_um / 2), d_out - grid_um / 2)
    check = float(d[::97, ::89].sum())
else:
    for r0, r1, inside, sel, d in grid.iter_signed_distance(mask, grid_um=grid_um):
        check += float(d[sel].sum())
wall = time.perf_counter() - t
running[0] = False
peak = max(peak[0], rss()) - base
ident = None
if way != "scipy" and size <= 4000:  # the whole-map comparison needs scipy's maps beside ours
    d_out = ndi.distance_transform_edt(~mask, sampling=grid_um)
    d_in = ndi.distance_transform_edt(mask, sampling=grid_um)
    ident = bool(np.array_equal(grid.signed_distance(mask, grid_um=grid_um),
                                np.where(mask, -(d_in - grid_um / 2), d_out - grid_um / 2)))
print(json.dumps({"wall_s": wall, "peak_mb": peak, "identical": ident}))
"""


def _one(size: int, grid_um: float, way: str) -> dict:
    env = dict(os.environ)
    env["CHEMOZONE_NO_NUMBA"] = "1" if way == "scipy banded" else ""
    arg = {"scipy": "scipy", "scipy banded": "banded", "chemozone": "chemozone"}[way]
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(grid_um), arg], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000, help="grid side (pixels); 10,000 = a 40k² section at 2 µm")
    ap.add_argument("--grid-um", type=float, default=1.95, help="grid pixel size (µm); 1.95 is not a power of two")
    args = ap.parse_args()
    ways = ["scipy", "scipy banded", "chemozone"]
    res = {w: _one(args.size, args.grid_um, w) for w in ways}
    print(f"signed distance of a {args.size}² mask, grid {args.grid_um} µm")
    print(f"{'way':<14}{'wall s':>9}{'peak MB':>10}{'identical':>11}")
    for w in ways:
        r = res[w]
        ident = "-" if r["identical"] is None else str(r["identical"])
        print(f"{w:<14}{r['wall_s']:>9.2f}{r['peak_mb']:>10.0f}{ident:>11}")
    ours = res["chemozone"]
    for w in ways[:2]:
        print(f"chemozone vs {w}: {res[w]['wall_s'] / ours['wall_s']:.1f}x faster, "
              f"{res[w]['peak_mb'] / max(ours['peak_mb'], 1.0):.1f}x less peak memory")
    _feature_transform()


def _feature_transform(side: int = 2300, repeats: int = 5) -> None:
    import time

    import numpy as np
    from scipy import ndimage as ndi

    from chemozone.grid import nearest_feature

    rng = np.random.default_rng(0)
    nuclei = np.zeros((side, side), bool)
    nuclei[rng.integers(0, side, side * side // 180), rng.integers(0, side, side * side // 180)] = True
    nuclei = ndi.binary_dilation(nuclei, iterations=3)  # ~7 px discs, about a third of the window
    nearest_feature(nuclei)  # compiled (or loaded from numba's cache) before timing

    def median_s(fn):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times)), out

    t_scipy, ft_scipy = median_s(lambda: ndi.distance_transform_edt(~nuclei, return_distances=False,
                                                                      return_indices=True))
    t_ours, ft_ours = median_s(lambda: nearest_feature(nuclei))
    print(f"\nfeature transform of a {side}² window ({nuclei.mean():.0%} nucleus pixels), median of {repeats}")
    print(f"scipy {t_scipy:.3f} s, chemozone {t_ours:.3f} s: {t_scipy / t_ours:.1f}x faster, "
          f"identical {bool(np.array_equal(ft_scipy, ft_ours))}")


if __name__ == "__main__":
    main()
