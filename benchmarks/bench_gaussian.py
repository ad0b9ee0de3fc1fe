"""Gaussian smoothing: ``chemozone.gaussian.gaussian_filter`` against ``scipy.ndimage.gaussian_filter``, side by side.

The cases are the pipeline's own: a segmentation tile's three smoothings (a 2,278² float32 window, 0.5 µm pixels,
nucleus diameter 9 µm: sigma 0.72, 2.16 and 1.44 px, ``mode="nearest"``) and one band of a zone signal on a 40k²
section's analysis grid (1,090 × 10,000 float64, sigma 5.13 px, ``mode="constant"``). Each case runs both ways
alternately, median of ``--repeats`` (one core: run it on an otherwise idle machine), and checks the results are
identical.

Usage::

    .venv/bin/python benchmarks/bench_gaussian.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from chemozone.gaussian import gaussian_filter  # noqa: E402


def _case(img: np.ndarray, sigma: float, mode: str, repeats: int) -> tuple[float, float, bool]:
    gaussian_filter(img[:64, :64], sigma, mode=mode)  # compile or load the kernels outside the timing
    t_sc, t_cz = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ref = ndi.gaussian_filter(img, sigma, mode=mode)
        t_sc.append(time.perf_counter() - t)
        t = time.perf_counter()
        got = gaussian_filter(img, sigma, mode=mode)
        t_cz.append(time.perf_counter() - t)
    return float(np.median(t_sc)), float(np.median(t_cz)), bool(np.array_equal(ref, got, equal_nan=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tile = rng.gamma(2.0, 300.0, (2278, 2278)).astype(np.float32)
    band = rng.random((1090, 10000)) * (rng.random((1090, 10000)) > 0.3)
    cases = [("tile, smooth (sigma 0.72)", tile, 0.72, "nearest"), ("tile, blob (sigma 2.16)", tile, 2.16, "nearest"),
             ("tile, seed map (sigma 1.44)", tile, 1.44, "nearest"), ("zone band (sigma 5.13)", band, 5.13, "constant")]
    print(f"{'case':32s} {'scipy s':>9s} {'chemozone s':>12s} {'ratio':>7s}  identical")
    tot_sc = tot_cz = 0.0
    for name, img, sigma, mode in cases:
        sc, cz, same = _case(img, sigma, mode, args.repeats)
        if name.startswith("tile"):
            tot_sc, tot_cz = tot_sc + sc, tot_cz + cz
        print(f"{name:32s} {sc:9.3f} {cz:12.3f} {sc / cz:6.2f}x  {same}")
    print(f"{'a tile (three smoothings)':32s} {tot_sc:9.3f} {tot_cz:12.3f} {tot_sc / tot_cz:6.2f}x")


if __name__ == "__main__":
    main()
