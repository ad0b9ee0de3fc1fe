"""Tissue masks vs truth: synthetic explants (IoU with ``truth/<sid>/tissue.tif``) and a real MIBI field on glass.

Side by side in one run:

- ``chemozone``: :func:`chemozone.tissue.tissue_mask` with the config's ``tissue`` section (defaults);
- ``former cut``: the same with ``glass_fraction=1`` (cut at the automatic threshold itself) and ``counts=False``
  (no Anscombe transform), i.e. the tissue step before counts and dim stroma were handled.

Cohorts are synthesized into a temporary folder (``chemozone synth --preset tiny`` and ``demo``; the truth
tissue is reduced to the analysis grid as block mean ≥ 0.5). The MIBI case puts the real ``mibi_fov8`` field
(22 count channels) in a 300 px glass margin (Poisson 0.01 counts per pixel; the Background channel at 0 or 2
counts per pixel, as on a bare gold slide); its truth is the field's square.

Usage::

    .venv/bin/python benchmarks/eval_tissue.py              # tiny + demo cohorts + MIBI on glass (~1 min)
    .venv/bin/python benchmarks/eval_tissue.py --cohort /path/to/cohort   # a cohort with truth/<sid>/tissue.tif
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))
DATA = ROOT / ".." / "shared" / "data"

METHODS = {"chemozone": {}, "former cut": {"glass_fraction": 1.0, "counts": False}}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def cohort_rows(root: Path) -> list[tuple[str, dict[str, float]]]:
    """Per sample: IoU of each method's mask with the truth tissue on the analysis grid."""
    import tifffile

    from chemozone.config import load_config
    from chemozone.grid import block_mean, grid_factor
    from chemozone.io import read_image
    from chemozone.options import tissue_options
    from chemozone.samples import load_samples
    from chemozone.tissue import tissue_mask

    cfg = load_config(root / "config.yaml")
    rows = []
    for row in load_samples(root, cfg).itertuples():
        img = read_image(row.image, channels=cfg.panel.channels, pixel_size_um=cfg.panel.pixel_size_um)
        opts = tissue_options(cfg)
        f = grid_factor(img.pixel_size_um, opts["grid_um"])
        truth = block_mean((tifffile.imread(root / "truth" / row.sample_id / "tissue.tif") > 0)[None], f)[0] >= 0.5
        scores = {m: iou(tissue_mask(img.data, pixel_size_um=img.pixel_size_um, **{**opts, **kw}).mask, truth)
                  for m, kw in METHODS.items()}
        rows.append((row.sample_id, scores))
    return rows


def mibi_on_glass_rows() -> list[tuple[str, dict[str, float]]]:
    from scipy import ndimage as ndi

    from chemozone.io import read_image
    from chemozone.tissue import tissue_mask

    img = read_image(DATA / "mibi_fov8" / "channels", pixel_size_um=0.39)
    a = np.asarray(img.data)
    bg = img.channels.index("Background")
    margin = 300
    rows = []
    for bg_rate in (0.0, 2.0):
        rng = np.random.default_rng(0)
        c, h, w = a.shape
        field = rng.poisson(0.01, (c, h + 2 * margin, w + 2 * margin)).astype(a.dtype)
        if bg_rate:
            field[bg] = rng.poisson(bg_rate, field.shape[1:])
        field[:, margin:margin + h, margin:margin + w] = a
        scores = {}
        for m, kw in METHODS.items():
            res = tissue_mask(field, pixel_size_um=0.39, **kw)
            truth = np.zeros(res.mask.shape, bool)
            o, n = margin // 5, -(-h // 5)
            truth[o:o + n, o:o + n] = True
            interior = ndi.binary_erosion(truth, iterations=8)
            scores[m] = iou(res.mask, truth)
            scores[m + " interior"] = float(res.mask[interior].mean())
        rows.append((f"mibi_fov8 on glass, Background {bg_rate:g}", scores))
    return rows


def _print(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    keys = list(rows[0][1])
    print(f"\n{title}\n{'sample':40s} " + " ".join(f"{k:>22s}" for k in keys))
    for sid, sc in rows:
        print(f"{sid:40s} " + " ".join(f"{sc[k]:22.4f}" for k in keys))
    print(f"{'mean':40s} " + " ".join(f"{np.mean([r[1][k] for r in rows]):22.4f}" for k in keys))
    print(f"{'min':40s} " + " ".join(f"{np.min([r[1][k] for r in rows]):22.4f}" for k in keys))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=None, help="an existing cohort folder instead of tiny + demo")
    args = ap.parse_args(argv)
    if args.cohort:
        _print(f"IoU with the truth tissue: {args.cohort}", cohort_rows(args.cohort))
    else:
        from chemozone.synth import generate_cohort

        with tempfile.TemporaryDirectory() as tmp:
            for preset in ("tiny", "demo"):
                root = generate_cohort(Path(tmp) / preset, preset=preset)
                _print(f"IoU with the truth tissue: synthetic preset {preset}", cohort_rows(Path(root)))
    if DATA.is_dir():
        _print("real MIBI field on glass: IoU with the field, and fraction of its interior kept", mibi_on_glass_rows())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
