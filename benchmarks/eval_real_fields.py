"""Real fields end to end through the CLI: cells found vs an independent reference count, tissue outcome.

Data (``../shared/data``): the MIBI-TOF field ``mibi_fov8`` (a folder of 22 single-channel uint8 count
TIFFs; DeepCell whole-cell mask: 272 cells), the lymphoid field ``lymphoid_5ch/input.tiff`` (5 × 500²
uint16, no names, no pixel size) and the Vectra component image of ``vectra_phenoptr`` (inForm's nucleus
labels: 270). Each field is run with ``chemozone run`` (the CLI, one worker) from a config written from the
README's "On your own images" section, setting only what it tells a user to set:

- ``mibi_fov8``: ``panel.pixel_size_um: 0.39`` (the files' 72-dpi tags are not a pixel size; the value is the
  instrument's, given with the data) and ``panel.nuclear_channel: HH3`` (histone H3 is the nuclear channel).
  ``nucleus_diameter_um`` stays 8 (the default; carcinoma per README is 8–10 µm, and the isolated HH3 nuclei
  of this field have a median equivalent diameter of 8.4 µm);
- ``lymphoid_5ch``: ``panel.channels`` (DAPI, CD4, CD8, FOXP3, BCL6), ``panel.pixel_size_um: 0.5`` (the file
  stores none; nuclei are 8–12 px and lymphocyte nuclei are ~5 µm, and 0.5 µm/px is a 20× scan) and
  ``segmentation.nucleus_diameter_um: 5`` (README: dense lymphoid tissue);
- ``vectra``: nothing (names and pixel size are in the file; DAPI is the default nuclear channel).

Reference count (independent of chemozone's segmenter): Laplacian-of-Gaussian blobs
(``skimage.feature.blob_log``, radius 0.35–0.85 × the nucleus diameter, threshold 0.1 on the nuclear channel
scaled to its 99.5th percentile, Anscombe-transformed first for counts) whose centre lies in the Otsu
foreground of the lightly smoothed channel: one blob per nucleus-sized bright spot, splitting touching nuclei
by scale-space maxima rather than by a watershed. Its range over LoG thresholds 0.05–0.2 is printed too.

Usage::

    .venv/bin/python benchmarks/eval_real_fields.py            # all three fields (~1 min)
    .venv/bin/python benchmarks/eval_real_fields.py mibi_fov8  # one field
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))
DATA = ROOT / ".." / "shared" / "data"

FIELDS = {
    "mibi_fov8": {
        "image": "mibi_fov8/channels",
        "config": "panel:\n  pixel_size_um: 0.39\n  nuclear_channel: HH3\n",
        "nuclear": "HH3", "diameter_um": 8.0, "counts": True,
        "other": ("DeepCell whole-cell mask", "mibi_fov8/deepcell_whole_cell_labels.tiff", 0),
    },
    "lymphoid_5ch": {
        "image": "lymphoid_5ch/input.tiff",
        "config": ("panel:\n  channels: [DAPI, CD4, CD8, FOXP3, BCL6]\n  pixel_size_um: 0.5\n"
                   "segmentation:\n  nucleus_diameter_um: 5.0\n"),
        "nuclear": "DAPI", "diameter_um": 5.0, "counts": False, "other": None,
    },
    "vectra": {
        "image": "vectra_phenoptr/FIHC4__0929309_HP_IM3_2_component_data.tif",
        "config": "{}\n",
        "nuclear": "DAPI", "diameter_um": 8.0, "counts": False,
        "other": ("inForm nuclei", "vectra_phenoptr/FIHC4__0929309_HP_IM3_2_binary_seg_maps.tif", 1),
    },
}


def reference_count(img: np.ndarray, *, pixel_size_um: float, diameter_um: float, counts: bool,
                    threshold: float = 0.1) -> int:
    """LoG blobs of nucleus size whose centre is in the Otsu foreground (see the module docstring)."""
    from scipy import ndimage as ndi
    from skimage import feature, filters

    v = img.astype(np.float64)
    if counts:
        v = 2.0 * np.sqrt(np.clip(v, 0, None) + 0.375)
    v = ndi.gaussian_filter(v, 1.5 if counts else 1.0)
    fg = v > filters.threshold_otsu(v)
    vn = (v - v.min()) / (np.percentile(v, 99.5) - v.min())
    r_px = np.array([0.35, 0.85]) * diameter_um / pixel_size_um
    blobs = feature.blob_log(vn, min_sigma=r_px[0] / np.sqrt(2), max_sigma=r_px[1] / np.sqrt(2), num_sigma=9,
                             threshold=threshold, overlap=0.3)
    return int(fg[blobs[:, 0].astype(int), blobs[:, 1].astype(int)].sum())


def write_inputs(name: str, spec: dict, folder: Path) -> tuple[Path, Path]:
    """The sample sheet and the config of one field."""
    folder.mkdir(parents=True, exist_ok=True)
    sheet = folder / "samples.csv"
    sheet.write_text(f"sample_id,image,patient,radiation,dose_gy\n{name},{(DATA / spec['image']).resolve()},P1,,\n")
    cfg = folder / "config.yaml"
    cfg.write_text(spec["config"])
    return sheet, cfg


def run_field(name: str, spec: dict, work: Path) -> dict:
    """``chemozone run`` on one field; the step-A record of ``run.json`` and the wall time."""
    sheet, cfg = write_inputs(name, spec, work / name)
    out = work / name / "run"
    env_path = f"{ROOT / 'pipeline'}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "chemozone.cli", "run", str(sheet), "--config", str(cfg), "--out",
                           str(out), "--workers", "1"], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": env_path})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: chemozone run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rec = json.loads((out / "run.json").read_text())["samples"][name]["step_a"]
    return {**rec, "wall_s": wall}


def main(argv=None) -> int:
    import tifffile

    from chemozone.io import read_image

    names = (argv if argv is not None else sys.argv[1:]) or list(FIELDS)
    if not DATA.is_dir():
        print(f"{DATA} is absent: nothing to evaluate")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            spec = FIELDS[name]
            rec = run_field(name, spec, Path(tmp))
            cfg_px = {"mibi_fov8": 0.39, "lymphoid_5ch": 0.5}.get(name)
            channels = ["DAPI", "CD4", "CD8", "FOXP3", "BCL6"] if name == "lymphoid_5ch" else None
            img = read_image(DATA / spec["image"], channels=channels, pixel_size_um=cfg_px)
            nuc = np.asarray(img.channel(spec["nuclear"]))
            kw = dict(pixel_size_um=img.pixel_size_um, diameter_um=spec["diameter_um"], counts=spec["counts"])
            ref = reference_count(nuc, **kw)
            lo_hi = [reference_count(nuc, **kw, threshold=t) for t in (0.2, 0.05)]
            other = ""
            if spec["other"]:
                label, path, key = spec["other"]
                lab = tifffile.imread(DATA / path, key=key)
                other = f"{label}: {len(np.unique(lab[lab > 0]))}"
            rows.append((name, rec["n_cells"], ref, lo_hi, other, rec["tissue_outcome"], rec["tissue_fraction"],
                         rec["wall_s"], rec["timings_s"]))
    print(f"{'field':14s} {'cells':>6s} {'LoG ref':>8s} {'ref range':>10s} {'ratio':>6s}  {'tissue':22s} "
          f"{'wall s':>7s}  other reference")
    for name, n, ref, (lo, hi), other, outcome, frac, wall, _ in rows:
        print(f"{name:14s} {n:6d} {ref:8d} {lo:4d}-{hi:<5d} {n / max(ref, 1):6.2f}  {outcome} {frac:.3f}"
              f"{'':>4s} {wall:7.1f}  {other}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
