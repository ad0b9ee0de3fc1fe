"""Nuclear segmentation accuracy on real images: chemozone vs the textbook watershed, side by side.

Data: ``../shared/data/nuclei_dsb2018`` (52 fluorescence images with manual instance masks, from the
2018 Data Science Bowl stage-1 training set with the community fixes). Pixel size is unknown, so
``pixel_size_um = 1`` and the nucleus diameter of each image is the median annotated diameter
(``2 sqrt(median area / pi)``), as the issue allows. One fixed parameter set for all images.

Methods
-------
chemozone : ``chemozone.segment.segment_nuclei`` with its defaults.
textbook  : Gaussian (sigma 1 px) -> Otsu -> distance transform -> peak_local_max (min_distance =
            diameter / 4, per connected component) -> watershed of the inverted distance; the same
            size filter as chemozone (the scikit-image gallery recipe given the same diameter).

Metrics (``chemozone.metrics``): one-to-one matching; F1 and AP (= TP / (TP + FP + FN)) at IoU 0.5;
mean AP over IoU 0.5-0.9. Reported pooled over all nuclei (sum TP/FP/FN) and as the mean per image.

Usage::

    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py            # all 52 images (~1 min)
    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py --limit 10 # quick look
    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py --per-image
    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py --small-ratio 0.72  # small_nucleus_diameter_um = 0.72 d
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))

from chemozone.metrics import DEFAULT_THRESHOLDS, match_scores  # noqa: E402
from chemozone.segment import segment_nuclei  # noqa: E402
from chemozone.segment._labels import _size_filter  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "nuclei_dsb2018"


def textbook(img: np.ndarray, d_px: float) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    sm = gaussian(img.astype(float), sigma=1)
    fg = sm > threshold_otsu(sm)
    dist = ndi.distance_transform_edt(fg)
    comp, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(d_px / 4))), labels=comp, exclude_border=False)
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dist, markers, mask=fg)
    area = math.pi * (d_px / 2) ** 2
    return _size_filter(lab, 0.15 * area, 8 * area)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--per-image", action="store_true")
    ap.add_argument("--small-ratio", type=float, default=None,
                    help="segmentation.small_nucleus_diameter_um as a fraction of the diameter (e.g. 0.72 = 6.5/9)")
    args = ap.parse_args(argv)
    opts = {"distance_cap_factor": 0.5 * args.small_ratio} if args.small_ratio else {}
    import tifffile

    if not DATA.is_dir():
        print(f"data folder {DATA} not found; this benchmark needs ../shared/data")
        return 1
    files = sorted((DATA / "images").glob("*.tif"))[: args.limit]
    methods = {
        "chemozone": lambda im, d: segment_nuclei(im, pixel_size_um=1.0, nucleus_diameter_um=d, **opts),
        "textbook": textbook,
    }
    pooled = {m: np.zeros((3, len(DEFAULT_THRESHOLDS)), np.int64) for m in methods}
    per_image = {m: [] for m in methods}
    times = {m: 0.0 for m in methods}
    for f in files:
        img = tifffile.imread(f)
        true = tifffile.imread(DATA / "masks" / f.name).astype(np.int64)
        areas = np.bincount(true.ravel())[1:]
        d_px = 2 * math.sqrt(float(np.median(areas[areas > 0])) / math.pi)
        row = [f.stem[:10], f"{d_px:5.1f}"]
        for m, fn in methods.items():
            t0 = time.perf_counter()
            pred = fn(img, d_px)
            times[m] += time.perf_counter() - t0
            s = match_scores(true, pred)
            pooled[m] += np.stack([s["tp"], s["fp"], s["fn"]])
            per_image[m].append((s["f1"][0], s["ap"][0], s["ap"].mean()))
            row.append(f"{m}: F1 {s['f1'][0]:.3f} mAP {s['ap'].mean():.3f}")
        if args.per_image:
            print("  ".join(row))

    print(f"\nnuclei_dsb2018: {len(files)} images, {int(pooled['chemozone'][0, 0] + pooled['chemozone'][2, 0])} nuclei")
    print(f"{'method':<11} {'F1@0.5':>7} {'AP@0.5':>7} {'mAP.5-.9':>9} {'img F1':>7} {'img AP':>7} "
          f"{'img mAP':>8} {'time s':>7}")
    summary = {}
    for m in methods:
        tp, fp, fn = pooled[m]
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        apv = tp / np.maximum(tp + fp + fn, 1)
        pi = np.array(per_image[m])
        summary[m] = (f1[0], apv[0], apv.mean())
        print(f"{m:<11} {f1[0]:7.3f} {apv[0]:7.3f} {apv.mean():9.3f} {pi[:, 0].mean():7.3f} "
              f"{pi[:, 1].mean():7.3f} {pi[:, 2].mean():8.3f} {times[m]:7.2f}")
    c, t = summary["chemozone"], summary["textbook"]
    print(f"ratio chemozone/textbook: F1@0.5 {c[0] / t[0]:.3f}  AP@0.5 {c[1] / t[1]:.3f}  mAP {c[2] / t[2]:.3f}")
    print("(pooled = TP/FP/FN summed over images; img = mean of per-image scores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
