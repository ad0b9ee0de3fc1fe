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

Nucleus diameter (``--diameter``): ``annotated`` = the median annotated diameter of each image (above);
``auto`` = ``segmentation.nucleus_diameter_um: auto``, i.e. ``chemozone.segment.estimate_nucleus_diameter_um``
with its defaults (pixel_size_um = 1, so its 3-100 µm search range is 3-100 px); ``both`` (default) runs
chemozone with each, side by side, and prints the estimate's error against the annotated median
(median |error|, fraction within 20 %, worst images).

Usage::

    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py            # all 52 images (~1 min)
    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py --limit 10 # quick look
    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py --per-image
    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py --small-ratio 0.72  # small_nucleus_diameter_um = 0.72 d
    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py --diameter annotated  # without the auto estimate
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
from chemozone.segment import estimate_nucleus_diameter_um, segment_nuclei  # noqa: E402
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


def _methods(diameter: str, opts: dict) -> dict:
    """name -> (segmenter(img, d_px), which diameter it gets: 'annotated' or 'auto')."""
    cz = lambda im, d: segment_nuclei(im, pixel_size_um=1.0, nucleus_diameter_um=d, **opts)  # noqa: E731
    out = {}
    if diameter in ("annotated", "both"):
        out["chemozone"] = (cz, "annotated")
    if diameter in ("auto", "both"):
        out["chemozone auto-d"] = (cz, "auto")
    out["textbook"] = (textbook, "annotated")
    return out


def _scale_report(errors: list[tuple[str, float, float]]) -> None:
    """The auto estimate against the annotated median diameter, per image."""
    err = np.array([a / t - 1 for _, t, a in errors])
    ab = np.abs(err)
    print(f"\nnucleus_diameter_um: auto vs the annotated median diameter ({len(err)} images)")
    print(f"median |error| {np.median(ab):.3f}   mean |error| {ab.mean():.3f}   within 10 % {np.mean(ab <= 0.1):.3f}"
          f"   within 20 % {np.mean(ab <= 0.2):.3f} ({int((ab <= 0.2).sum())}/{len(ab)})   median signed {np.median(err):+.3f}")
    worst = np.argsort(-ab)[:6]
    print("worst: " + ", ".join(f"{errors[i][0]} annotated {errors[i][1]:.1f} px auto {errors[i][2]:.1f} px "
                                f"({err[i]:+.0%})" for i in worst))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--per-image", action="store_true")
    ap.add_argument("--small-ratio", type=float, default=None,
                    help="segmentation.small_nucleus_diameter_um as a fraction of the diameter (e.g. 0.72 = 6.5/9)")
    ap.add_argument("--diameter", choices=["annotated", "auto", "both"], default="both",
                    help="nucleus diameter given to chemozone: the annotated median, the auto estimate, or both")
    args = ap.parse_args(argv)
    opts = {"distance_cap_factor": 0.5 * args.small_ratio} if args.small_ratio else {}
    import tifffile

    if not DATA.is_dir():
        print(f"data folder {DATA} not found; this benchmark needs ../shared/data")
        return 1
    files = sorted((DATA / "images").glob("*.tif"))[: args.limit]
    methods = _methods(args.diameter, opts)
    pooled = {m: np.zeros((3, len(DEFAULT_THRESHOLDS)), np.int64) for m in methods}
    per_image = {m: [] for m in methods}
    times = {m: 0.0 for m in methods}
    scale_errors, t_scale = [], 0.0
    for f in files:
        img = tifffile.imread(f)
        true = tifffile.imread(DATA / "masks" / f.name).astype(np.int64)
        areas = np.bincount(true.ravel())[1:]
        d = {"annotated": 2 * math.sqrt(float(np.median(areas[areas > 0])) / math.pi)}
        if args.diameter != "annotated":
            t0 = time.perf_counter()
            d["auto"] = estimate_nucleus_diameter_um(img, pixel_size_um=1.0)
            t_scale += time.perf_counter() - t0
            scale_errors.append((f.stem[:10], d["annotated"], d["auto"]))
        row = [f.stem[:10], " ".join(f"d {k} {v:5.1f}" for k, v in d.items())]
        for m, (fn, which) in methods.items():
            t0 = time.perf_counter()
            pred = fn(img, d[which])
            times[m] += time.perf_counter() - t0
            s = match_scores(true, pred)
            pooled[m] += np.stack([s["tp"], s["fp"], s["fn"]])
            per_image[m].append((s["f1"][0], s["ap"][0], s["ap"].mean()))
            row.append(f"{m}: F1 {s['f1'][0]:.3f} mAP {s['ap'].mean():.3f}")
        if args.per_image:
            print("  ".join(row), flush=True)
    _print_table(files, methods, pooled, per_image, times)
    if scale_errors:
        _scale_report(scale_errors)
        print(f"(auto estimate: {t_scale:.1f} s in all, {t_scale / len(files):.2f} s per image)")
    return 0


def _print_table(files, methods, pooled, per_image, times) -> None:
    first = next(iter(methods))
    print(f"\nnuclei_dsb2018: {len(files)} images, {int(pooled[first][0, 0] + pooled[first][2, 0])} nuclei")
    print(f"{'method':<17} {'diameter':<10} {'F1@0.5':>7} {'AP@0.5':>7} {'mAP.5-.9':>9} {'img F1':>7} {'img AP':>7} "
          f"{'img mAP':>8} {'time s':>7}")
    summary = {}
    for m, (_, which) in methods.items():
        tp, fp, fn = pooled[m]
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        apv = tp / np.maximum(tp + fp + fn, 1)
        pi = np.array(per_image[m])
        summary[m] = (f1[0], apv[0], apv.mean())
        print(f"{m:<17} {which:<10} {f1[0]:7.3f} {apv[0]:7.3f} {apv.mean():9.3f} {pi[:, 0].mean():7.3f} "
              f"{pi[:, 1].mean():7.3f} {pi[:, 2].mean():8.3f} {times[m]:7.2f}")
    t = summary["textbook"]
    for m in methods:
        if m != "textbook":
            c = summary[m]
            print(f"ratio {m}/textbook: F1@0.5 {c[0] / t[0]:.3f}  AP@0.5 {c[1] / t[1]:.3f}  mAP {c[2] / t[2]:.3f}")
    print("(pooled = TP/FP/FN summed over images; img = mean of per-image scores)")


if __name__ == "__main__":
    raise SystemExit(main())
