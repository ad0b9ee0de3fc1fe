"""Nuclear segmentation on dense real tissue, configured as a user would: chemozone vs the textbook watershed.

Data (``../shared/data``), each a dataset of uniform magnification (one image each):

vectra   : the Vectra field ``FIHC4__0929309_HP_IM3_2`` (DAPI component, 0.497 µm/px from the file) against
           inForm's nuclei (page 1 of the ``binary_seg_maps``; 270 nuclei; a reference, not ground truth).
lymphoid : the lymphoid 5-channel test image (DAPI = channel 0, 101 x 101, 0.5 µm/px assumed) against its
           cell labels from another tool (56; a loose reference: cells, not nuclei).

Nucleus diameter given to each method (the same rules as ``bench_nuclei_dsb2018.py``)
-------------------------------------------------------------------------------------
dataset : one number per dataset, as a user who measures a few nuclei would set it: the median equivalent
          diameter (``2 sqrt(area / pi)``) of the reference objects, in µm. **The headline mode** for these
          datasets (uniform magnification); the textbook baseline gets the same number.
default : the config default, ``nucleus_diameter_um: 8`` (a user who sets nothing).
auto    : ``nucleus_diameter_um: auto`` (``estimate_nucleus_diameter_um``); where it finds no nuclei,
          ``chemozone run`` stops with a one-line error asking for a number, and the table says so.

Methods: chemozone ``segment_nuclei`` with its defaults; the textbook watershed of
``bench_nuclei_dsb2018.py`` with seed spacing d/4 and tuned over ``SEED_SPACING_GRID`` on the same image
(which favours it). Metrics: F1 / AP at IoU 0.5 and mean AP over IoU 0.5-0.9 against the reference.

Usage::

    .venv/bin/python benchmarks/bench_nuclei_real.py
    .venv/bin/python benchmarks/bench_nuclei_real.py --small-ratio 0.72   # small_nucleus_diameter_um = 0.72 d
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_nuclei_dsb2018 import (  # noqa: E402
    DEFAULT_DIAMETER_UM,
    Score,
    print_detail,
    print_summary_row,
    textbook_foreground,
    tune_textbook,
)

from chemozone.segment import estimate_nucleus_diameter_um, segment_nuclei  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
WHICH = ("dataset", "default", "auto")


def cases():
    """(name, nuclear image (Y, X), reference labels (Y, X), pixel size µm)."""
    import tifffile

    from chemozone.io import read_image

    v = DATA / "vectra_phenoptr"
    img = read_image(v / "FIHC4__0929309_HP_IM3_2_component_data.tif")
    dapi = np.asarray(img.channel("DAPI").compute(), np.float32)
    ref = tifffile.imread(v / "FIHC4__0929309_HP_IM3_2_binary_seg_maps.tif", key=1).astype(np.int64)
    yield "Vectra vs inForm", dapi, ref, float(img.pixel_size_um or 0.497)
    lym = DATA / "lymphoid_5ch"
    small = tifffile.imread(lym / "test_image.tiff")[0]
    ref = tifffile.imread(lym / "test_segmentation.tiff").astype(np.int64)
    yield "lymphoid test image", small, ref, 0.5


def diameters_um(img: np.ndarray, ref: np.ndarray, px: float) -> tuple[dict, dict]:
    """The diameter (µm) of each mode, and the error message of a mode that has none."""
    areas = np.bincount(ref.ravel())[1:]
    d = {"dataset": px * float(np.median(2 * np.sqrt(areas[areas > 0] / math.pi))), "default": DEFAULT_DIAMETER_UM}
    failed = {}
    try:
        d["auto"] = estimate_nucleus_diameter_um(img, pixel_size_um=px)
    except ValueError as e:
        failed["auto"] = str(e)
    return d, failed


def evaluate_case(img: np.ndarray, ref: np.ndarray, px: float, opts: dict | None = None):
    """chemozone and the textbook (every seed spacing of the grid) with each diameter mode of one dataset.

    Returns
    -------
    d : dict mode -> diameter µm; failed : dict mode -> error; ours : dict mode -> Score or None;
    grids : dict mode -> {k: Score}
    """
    d, failed = diameters_um(img, ref, px)
    parts = textbook_foreground(img)
    ours, grids = {}, {}
    for w in WHICH:
        if w in failed:
            ours[w] = None
            continue
        ours[w] = Score()
        t0 = time.perf_counter()
        lab = segment_nuclei(img, pixel_size_um=px, nucleus_diameter_um=d[w], **(opts or {}))
        ours[w].add(ref, lab, time.perf_counter() - t0)
        grids[w] = tune_textbook([(img, ref, d[w] / px, parts)])
    return d, failed, ours, grids


def run_case(name: str, img: np.ndarray, ref: np.ndarray, px: float, opts: dict) -> None:
    d, failed, ours, grids = evaluate_case(img, ref, px, opts)
    print(f"\n{name}: {img.shape[1]} x {img.shape[0]} px, {px:g} µm/px, {int((np.bincount(ref.ravel())[1:] > 0).sum())}"
          " reference objects; diameters (µm): " + ", ".join(f"{k} {v:.2f}" for k, v in d.items()))
    print_detail(ours, grids, WHICH, failed)
    print_summary_row(name, f"{d['dataset']:.2f} µm", ours, grids["dataset"], "the dataset's one value")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-ratio", type=float, default=None,
                    help="segmentation.small_nucleus_diameter_um as a fraction of the diameter (e.g. 0.72 = 6.5/9)")
    args = ap.parse_args(argv)
    opts = {"distance_cap_factor": 0.5 * args.small_ratio} if args.small_ratio else {}
    if not DATA.is_dir():
        print(f"data folder {DATA} not found; this benchmark needs ../shared/data")
        return 1
    for name, img, ref, px in cases():
        run_case(name, img, ref, px, opts)
    print("(references are other tools' segmentations, not ground truth)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
