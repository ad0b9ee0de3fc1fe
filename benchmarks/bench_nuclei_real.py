"""Nuclear segmentation on dense real tissue: chemozone vs the textbook watershed, side by side.

Data (``../shared/data``): the Vectra field ``FIHC4__0929309_HP_IM3_2`` (DAPI component, 0.497 µm/px)
against inForm's nuclei (page 1 of the ``binary_seg_maps``; 270 nuclei, a reference, not ground
truth), and the lymphoid 5-channel test image (DAPI = channel 0, 0.5 µm/px assumed) against its
cell labels from another tool (56; a loose reference). One fixed parameter set; the nucleus
diameter is given per image.

Usage::

    .venv/bin/python benchmarks/bench_nuclei_real.py
    .venv/bin/python benchmarks/bench_nuclei_real.py --small-ratio 0.72   # small_nucleus_diameter_um = 0.72 d
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_nuclei_dsb2018 import textbook  # noqa: E402

from chemozone.metrics import match_scores  # noqa: E402
from chemozone.segment import segment_nuclei  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"


def cases():
    import tifffile

    from chemozone.io import read_image

    v = DATA / "vectra_phenoptr"
    img = read_image(v / "FIHC4__0929309_HP_IM3_2_component_data.tif")
    dapi = np.asarray(img.channel("DAPI").compute(), np.float32)
    ref = tifffile.imread(v / "FIHC4__0929309_HP_IM3_2_binary_seg_maps.tif", key=1).astype(np.int64)
    for d in (6.0, 8.0):
        yield f"vectra d={d:g}um", dapi, ref, 0.497, d
    lym = DATA / "lymphoid_5ch"
    small = tifffile.imread(lym / "test_image.tiff")[0]
    ref = tifffile.imread(lym / "test_segmentation.tiff").astype(np.int64)
    yield "lymphoid d=5um", small, ref, 0.5, 5.0


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
    print(f"{'image':<16} {'method':<10} {'n':>5} {'ref n':>6} {'F1@0.3':>7} {'F1@0.5':>7} {'AP@0.5':>7} "
          f"{'mAP':>6} {'ms':>6}")
    for name, img, ref, px, d in cases():
        for m, fn in (("chemozone", lambda: segment_nuclei(img, pixel_size_um=px, nucleus_diameter_um=d, **opts)),
                      ("textbook", lambda: textbook(img, d / px))):
            t0 = time.perf_counter()
            lab = fn()
            ms = 1e3 * (time.perf_counter() - t0)
            s = match_scores(ref, lab, thresholds=[0.3, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9])
            print(f"{name:<16} {m:<10} {int(lab.max()):5d} {int(len(np.unique(ref)) - 1):6d} {s['f1'][0]:7.3f} "
                  f"{s['f1'][1]:7.3f} {s['ap'][1]:7.3f} {s['ap'][1:].mean():6.3f} {ms:6.0f}")
    print("(mAP = mean AP over IoU 0.5-0.9; references are other tools' segmentations, not ground truth)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
