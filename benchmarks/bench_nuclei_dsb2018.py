"""Nuclear segmentation accuracy on real images, configured as a user would: chemozone vs the textbook watershed.

Data: ``../shared/data/nuclei_dsb2018`` (52 fluorescence images with manual instance masks, from the
2018 Data Science Bowl stage-1 training set with the community fixes). Pixel size is unknown and the
magnification is **mixed** (nuclei ~8-40 px across), so ``pixel_size_um = 1`` and no single nucleus
diameter fits the dataset: the README's recommendation for such data is ``nucleus_diameter_um: auto``.

Nucleus diameter given to each method (``--diameter``; default ``all``)
-----------------------------------------------------------------------
auto      : ``segmentation.nucleus_diameter_um: auto``, i.e. ``chemozone.segment.estimate_nucleus_diameter_um``
            per image with its defaults (3-100 µm search range = 3-100 px here). **The recommended mode for
            this dataset** and the one the headline numbers use; the textbook baseline gets the same estimate.
dataset   : one number for the whole dataset, as a user who measures a few nuclei would set it: the median
            equivalent diameter (``2 sqrt(area / pi)``) of all annotated nuclei pooled over the 52 images.
            Shown to make the point that one value cannot fit mixed magnifications.
default   : the config default, ``nucleus_diameter_um: 8`` (8 px here): a user who sets nothing.
annotated : each image's own median annotated diameter. **Oracle** (needs the answer); kept for
            comparison with earlier numbers only, never as a headline.

Methods
-------
chemozone : ``chemozone.segment.segment_nuclei`` with its defaults and the diameter above.
textbook  : Gaussian (sigma 1 px) -> Otsu -> distance transform -> peak_local_max (``min_distance =
            k * diameter`` px, per connected component) -> watershed of the inverted distance; the same
            size filter as chemozone (the scikit-image gallery recipe given the same diameter).
            ``k = 0.25`` (d/4) as written, and **tuned**: ``k`` over ``SEED_SPACING_GRID`` (0.10-0.80 in
            steps of 0.05), the value with the best pooled F1@0.5 on these same images. Tuning on the
            evaluation data favours the baseline (an upper bound on what its seed spacing can give);
            chemozone is not tuned.

Metrics (``chemozone.metrics``): one-to-one matching; F1 and AP (= TP / (TP + FP + FN)) at IoU 0.5;
mean AP over IoU 0.5-0.9. Reported pooled over all nuclei (sum TP/FP/FN) and as the mean per image.

Usage::

    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py            # all 52 images, all diameters (~7 min)
    .venv/bin/python benchmarks/bench_nuclei_dsb2018.py --limit 10 --diameter auto  # quick look
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
from chemozone.segment import estimate_nucleus_diameter_um, segment_nuclei  # noqa: E402
from chemozone.segment._labels import _size_filter  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "nuclei_dsb2018"
SEED_SPACING_GRID = tuple(float(k) for k in np.round(np.arange(0.10, 0.801, 0.05), 2))
"""Textbook seed spacing ``k`` searched when tuning (``min_distance = k * diameter``); d/4 is k = 0.25."""
DEFAULT_DIAMETER_UM = 8.0  # chemozone.config's default nucleus_diameter_um
DIAMETERS = ("auto", "dataset", "default", "annotated")


def textbook_foreground(img: np.ndarray):
    """Otsu foreground of the Gaussian-smoothed image, its distance transform and connected components.

    Independent of the nucleus diameter, so a seed-spacing search computes it once per image.
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu

    sm = gaussian(img.astype(float), sigma=1)
    fg = sm > threshold_otsu(sm)
    return fg, ndi.distance_transform_edt(fg), ndi.label(fg)[0]


def textbook(img: np.ndarray, d_px: float, seed_spacing: float = 0.25, parts=None) -> np.ndarray:
    """The textbook watershed with seeds at least ``seed_spacing * d_px`` apart (``parts``: a cached
    :func:`textbook_foreground` of ``img``)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    fg, dist, comp = parts if parts is not None else textbook_foreground(img)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(seed_spacing * d_px))), labels=comp,
                           exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dist, markers, mask=fg)
    area = math.pi * (d_px / 2) ** 2
    return _size_filter(lab, 0.15 * area, 8 * area)


class Score:
    """Matching counts accumulated over images (pooled) and per-image scores, at ``thresholds``."""

    def __init__(self, thresholds=DEFAULT_THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self.i50 = self.thresholds.index(0.5)
        self.counts = np.zeros((3, len(self.thresholds)), np.int64)
        self.per_image: list[tuple[float, float, float]] = []
        self.time_s = 0.0
        self.n_pred = 0

    def add(self, true: np.ndarray, pred: np.ndarray, seconds: float = 0.0) -> dict:
        s = match_scores(true, pred, thresholds=self.thresholds)
        self.counts += np.stack([s["tp"], s["fp"], s["fn"]])
        mean_ap = s["ap"][self.i50:].mean()
        self.per_image.append((s["f1"][self.i50], s["ap"][self.i50], mean_ap))
        self.time_s += seconds
        self.n_pred += int(s["tp"][0] + s["fp"][0])
        return s

    def summary(self) -> dict:
        tp, fp, fn = self.counts
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        ap = tp / np.maximum(tp + fp + fn, 1)
        pi = np.array(self.per_image).reshape(-1, 3)
        return {"f1": f1, "ap": ap, "f1_50": f1[self.i50], "ap_50": ap[self.i50], "map": ap[self.i50:].mean(),
                "img_f1": pi[:, 0].mean(), "img_ap": pi[:, 1].mean(), "img_map": pi[:, 2].mean(),
                "n_pred": self.n_pred, "n_true": int(tp[0] + fn[0])}


def tune_textbook(images, grid=SEED_SPACING_GRID, thresholds=DEFAULT_THRESHOLDS,
                  scores: dict[float, Score] | None = None) -> dict[float, Score]:
    """The textbook baseline at every seed spacing of ``grid``.

    Parameters
    ----------
    images : iterable of (img (Y, X), true labels (Y, X), d_px float, parts or None)
    scores : dict k -> Score to add to (one image at a time), or None for new ones

    Returns
    -------
    dict k -> Score (pooled over ``images``); pick the best with :func:`best_spacing`.
    """
    scores = scores if scores is not None else {k: Score(thresholds) for k in grid}
    for img, true, d_px, parts in images:
        parts = parts if parts is not None else textbook_foreground(img)
        for k in grid:
            t0 = time.perf_counter()
            pred = textbook(img, d_px, k, parts)
            scores[k].add(true, pred, time.perf_counter() - t0)
    return scores


def best_spacing(scores: dict[float, Score]) -> float:
    """The seed spacing with the highest pooled F1@0.5 (the smallest k on ties)."""
    return max(scores, key=lambda k: (round(scores[k].summary()["f1_50"], 6), -k))


def grid_line(scores: dict[float, Score]) -> str:
    return "  ".join(f"{k:.2f}:{s.summary()['f1_50']:.3f}" for k, s in scores.items())


def _load(files):
    import tifffile

    out = []
    for f in files:
        true = tifffile.imread(DATA / "masks" / f.name).astype(np.int64)
        areas = np.bincount(true.ravel())[1:]
        out.append((f.stem[:10], tifffile.imread(f), true, 2 * np.sqrt(areas[areas > 0] / math.pi)))
    return out


def _diameters(images, which, t_auto) -> list[dict]:
    """Per image: the diameter (px) each mode gives; auto estimates timed into ``t_auto``."""
    d_dataset = float(np.median(np.concatenate([d for *_, d in images])))
    out = []
    for _, img, _, diam in images:
        d = {"dataset": d_dataset, "default": DEFAULT_DIAMETER_UM, "annotated": float(np.median(diam))}
        if "auto" in which:
            t0 = time.perf_counter()
            d["auto"] = estimate_nucleus_diameter_um(img, pixel_size_um=1.0)
            t_auto.append(time.perf_counter() - t0)
        out.append({k: v for k, v in d.items() if k in which})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--per-image", action="store_true")
    ap.add_argument("--small-ratio", type=float, default=None,
                    help="segmentation.small_nucleus_diameter_um as a fraction of the diameter (e.g. 0.72 = 6.5/9)")
    ap.add_argument("--diameter", choices=("all",) + DIAMETERS, default="all",
                    help="which nucleus diameter(s) to run (see the module docstring)")
    args = ap.parse_args(argv)
    opts = {"distance_cap_factor": 0.5 * args.small_ratio} if args.small_ratio else {}
    if not DATA.is_dir():
        print(f"data folder {DATA} not found; this benchmark needs ../shared/data")
        return 1
    which = DIAMETERS if args.diameter == "all" else (args.diameter,)
    images = _load(sorted((DATA / "images").glob("*.tif"))[: args.limit])
    t_auto: list[float] = []
    diam = _diameters(images, which, t_auto)
    ours = {w: Score() for w in which}
    grids = {w: {k: Score() for k in SEED_SPACING_GRID} for w in which}
    for (name, img, true, _), d in zip(images, diam):
        parts = textbook_foreground(img)
        row = [name]
        for w in which:
            t0 = time.perf_counter()
            pred = segment_nuclei(img, pixel_size_um=1.0, nucleus_diameter_um=d[w], **opts)
            s = ours[w].add(true, pred, time.perf_counter() - t0)
            tune_textbook([(img, true, d[w], parts)], scores=grids[w])
            row.append(f"{w} d {d[w]:5.1f} F1 {s['f1'][0]:.3f}")
        if args.per_image:
            print("  ".join(row), flush=True)
    n_true = ours[which[0]].summary()["n_true"]
    print(f"\nnuclei_dsb2018: {len(images)} images, {n_true} nuclei; pixel_size_um = 1 (unknown), mixed magnification")
    if "dataset" in which:
        print(f"dataset diameter (median annotated nucleus, pooled): {diam[0]['dataset']:.1f} px")
    print_detail(ours, grids, which)
    if "auto" in which:
        d_set = f"{diam[0]['dataset']:.1f} px" if "dataset" in which else "-"
        print_summary_row(f"dsb2018 ({len(images)} images, mixed magnification)", d_set, ours, grids["auto"],
                          "auto per image")
        _scale_report([(n, float(np.median(dd)), d["auto"]) for (n, _, _, dd), d in zip(images, diam)])
        print(f"(auto estimate: {sum(t_auto):.1f} s in all, {sum(t_auto) / len(images):.2f} s per image)")
    return 0


def print_detail(ours: dict, grids: dict, which, failed: dict | None = None) -> None:
    """Per diameter mode: chemozone, textbook d/4 and textbook at its best seed spacing (``failed``: mode ->
    the error that stopped chemozone, e.g. an auto estimate that found no nuclei)."""
    print(f"{'diameter':<18} {'method':<22} {'F1@0.5':>7} {'AP@0.5':>7} {'mAP.5-.9':>9} {'img F1':>7} "
          f"{'img mAP':>8} {'n pred':>7} {'time s':>7}")
    for w in which:
        tag = w + (" (oracle)" if w == "annotated" else "")
        if (failed or {}).get(w):
            print(f"{tag:<18} chemozone stops: {failed[w]}")
            continue
        k_best = best_spacing(grids[w])
        for m, sc in (("chemozone", ours[w]), ("textbook d/4", grids[w][0.25]),
                      (f"textbook tuned k={k_best:.2f}", grids[w][k_best])):
            s = sc.summary()
            print(f"{tag if m == 'chemozone' else '':<18} {m:<22} {s['f1_50']:7.3f} {s['ap_50']:7.3f} "
                  f"{s['map']:9.3f} {s['img_f1']:7.3f} {s['img_map']:8.3f} {s['n_pred']:7d} {sc.time_s:7.2f}")
        print(f"{'':<18} textbook F1@0.5 by k: {grid_line(grids[w])}")
    print("(pooled = TP/FP/FN summed over images; img = mean of per-image scores; textbook tuned = best k on these"
          " same images, which favours it)")


def print_summary_row(dataset: str, d_set: str, ours: dict, grid: dict, textbook_d: str) -> None:
    """One line of the README table, pooled F1@0.5 (mAP 0.5-0.9): ours with the default diameter, with one
    diameter for the dataset and with ``auto``; textbook d/4 and tuned, given ``textbook_d``."""
    def cell(sc):
        if sc is None:
            return "stops (no estimate)"
        if sc == "not run":
            return sc
        s = sc.summary()
        return f"{s['f1_50']:.3f} ({s['map']:.3f})"

    k = best_spacing(grid)
    print(f"\nREADME | {dataset} | {d_set} | {cell(ours.get('default', 'not run'))} | "
          f"{cell(ours.get('dataset', 'not run'))} | {cell(ours.get('auto', 'not run'))} | {cell(grid[0.25])} | "
          f"{cell(grid[k])}, k = {k:.2f} | textbook diameter: {textbook_d}")


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


if __name__ == "__main__":
    raise SystemExit(main())
