"""Real fields end to end through the CLI, each from a config written from the README ("On your own images").

Each config sets only what the README tells a user to set for their own images (the pixel size and channel
names a file does not store, the nuclear channel, the nucleus diameter for the tissue); see
``benchmarks/eval_real_fields.py`` for the reasons behind each value and for the table these numbers come
from.

Reference counts (none is ground truth):

- ``mibi_fov8``: 458 nuclei, Laplacian-of-Gaussian blobs of nucleus size in the HH3 foreground
  (``benchmarks/eval_real_fields.py``; 395-461 over LoG thresholds 0.2-0.05). Checked by eye on two
  256² px crops: a tumor nest (~40 nuclei by eye; LoG 43, chemozone 45, DeepCell 39) and stroma (~15 by eye;
  LoG 15, chemozone 16, DeepCell 5). The DeepCell whole-cell mask (272 cells) misses most small stromal nuclei.
- ``lymphoid_5ch``: 1716 LoG blobs in the DAPI foreground (~3 nuclei per 10 µm square by eye on a crop).
- ``vectra``: inForm's 270 nucleus labels (``..._binary_seg_maps.tif``, page 1).
"""
from __future__ import annotations

import json

import pytest

from chemozone.cli import main

pytestmark = pytest.mark.shared

FIELDS = {
    # name: (image relative to shared data, config YAML, reference count)
    "mibi_fov8": ("mibi_fov8/channels", "panel:\n  pixel_size_um: 0.39\n  nuclear_channel: HH3\n", 458),
    "lymphoid_5ch": ("lymphoid_5ch/input.tiff",
                     "panel:\n  channels: [DAPI, CD4, CD8, FOXP3, BCL6]\n  pixel_size_um: 0.5\n"
                     "segmentation:\n  nucleus_diameter_um: 5.0\n", 1716),
    "vectra": ("vectra_phenoptr/FIHC4__0929309_HP_IM3_2_component_data.tif", "{}\n", 270),
}


def _run(shared_data, tmp_path, name):
    image, config, _ = FIELDS[name]
    sheet = tmp_path / "samples.csv"
    sheet.write_text(f"sample_id,image,patient,radiation,dose_gy\n{name},{shared_data / image},P1,,\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config)
    out = tmp_path / "run"
    assert main(["run", str(sheet), "--config", str(cfg), "--out", str(out), "--workers", "0"]) == 0
    run = json.loads((out / "run.json").read_text())
    return run["samples"][name]


@pytest.mark.parametrize("name", list(FIELDS))
def test_real_field_end_to_end(shared_data, tmp_path, name):
    rec = _run(shared_data, tmp_path, name)
    assert rec["status"] == "done"
    step_a = rec["step_a"]
    # the whole field is tissue, and run.json says so
    assert step_a["tissue_outcome"] == "whole_field" and step_a["tissue_fraction"] > 0.98
    ref = FIELDS[name][2]
    assert 0.75 * ref <= step_a["n_cells"] <= 1.25 * ref, (name, step_a["n_cells"], ref)
    assert (tmp_path / "run" / "samples" / name / "qc.png").stat().st_size > 10_000


def test_mibi_qc_picture_shows_nuclei_tumour_and_leukocytes(shared_data):
    """The QC composite of the MIBI field (config written from the README: nuclear channel only) shows HH3,
    PanKeratin and CD45 out of 22 channels, not an arbitrary first channel such as Background."""
    from chemozone.config import config_from_dict
    from chemozone.io import read_image
    from chemozone.options import qc_options
    from chemozone.qc import choose_qc_channels

    image, config, _ = FIELDS["mibi_fov8"]
    import yaml

    cfg = config_from_dict(yaml.safe_load(config))
    img = read_image(shared_data / image, pixel_size_um=cfg.panel.pixel_size_um)
    chosen = choose_qc_channels(img.channels, **qc_options(cfg))
    assert [c.channel for c in chosen] == ["HH3", "PanKeratin", "CD45"]
    assert img.channels[0] == "Background"


def test_mibi_channel_folder_found_by_scanning(shared_data, tmp_path):
    """A MIBI export (one folder of channel TIFFs per field of view) in the input folder is one sample."""
    import os

    (tmp_path / "input").mkdir()
    os.symlink(shared_data / "mibi_fov8" / "channels", tmp_path / "input" / "fov8")
    from chemozone.config import config_from_dict
    from chemozone.samples import load_samples

    df = load_samples(tmp_path / "input", config_from_dict({"panel": {"pixel_size_um": 0.39}}))
    assert df["sample_id"].tolist() == ["fov8"]
