"""The scale-space LoG of ``nucleus_diameter_um: auto``: scipy's direct filtering vs chemozone's FFT, side by side.

For each image of ``../shared/data/nuclei_dsb2018`` (or random images with ``--random``), the normalised
LoG stack that :func:`chemozone.segment._scale.nucleus_scale` builds for its crops, computed both ways on
the same crops and scales; prints the largest absolute difference (the two must agree to rounding) and
the time ratio.

Usage::

    .venv/bin/python benchmarks/bench_scale_log.py            # the 52 dsb2018 images
    .venv/bin/python benchmarks/bench_scale_log.py --random 4  # four random 512 x 512 images
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from chemozone.segment._scale import _K, _PER_OCTAVE, _normalised_log_stack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuclei_dsb2018" / "images"


def _sigmas(shape: tuple[int, int], dmin_px: float = 3.0, dmax_px: float = 100.0) -> np.ndarray:
    hi = min(dmax_px, min(shape) / 3.0)
    lo = max(2.0, dmin_px)
    return np.geomspace(lo / _K, hi / _K, int(round(math.log2(hi / lo) * _PER_OCTAVE)) + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", type=int, default=0, help="use this many random 512 x 512 images instead")
    args = ap.parse_args()
    if args.random:
        rng = np.random.default_rng(0)
        images = [rng.random((512, 512)) for _ in range(args.random)]
    else:
        import tifffile

        images = [np.asarray(tifffile.imread(p), np.float64)[:512, :512] for p in sorted(DATA.glob("*.tif"))]
        images = [im.mean(axis=-1) if im.ndim == 3 else im for im in images]
    t_direct = t_fft = 0.0
    worst = 0.0
    for img in images:
        sig = _sigmas(img.shape)
        t = time.perf_counter()
        a = np.stack([-(s ** 2) * ndi.gaussian_laplace(img, s) for s in sig])
        t_direct += time.perf_counter() - t
        t = time.perf_counter()
        b = _normalised_log_stack(img, sig)
        t_fft += time.perf_counter() - t
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300)))
    print(f"images {len(images)}  scipy direct {t_direct:.2f} s  chemozone FFT {t_fft:.2f} s  "
          f"ratio {t_direct / t_fft:.2f}x  max relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
