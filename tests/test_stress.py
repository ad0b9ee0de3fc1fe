"""The stress generator (chemozone.stress): truth consistent with the pixels, the imaging model as specified,
determinism, co-localised territories, and independence from chemozone.synth."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from chemozone import stress
from chemozone.errors import ConfigError
from chemozone.io import normalize_channel_name, read_image
from chemozone.stress._render import camera
from chemozone.stress._scene import smooth_field, territories

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample():
    return stress.generate_sample(size_px=384, dose_gy=10.0, patient=0, seed=3, sample_id="PT1_photon_10Gy")


def _cell_means(s, channel: int) -> np.ndarray:
    cells = s["cells"].ravel()
    n = int(cells.max())
    cnt = np.bincount(cells, minlength=n + 1)
    tot = np.bincount(cells, weights=s["image"][channel].ravel().astype(float), minlength=n + 1)
    return (tot / np.maximum(cnt, 1))[s["truth"]["cell_id"].to_numpy()]


def test_labels_match_truth_table(sample):
    t, nuclei, cells = sample["truth"], sample["nuclei"], sample["cells"]
    assert nuclei.dtype == np.uint32 and cells.dtype == np.uint32
    ids = t["cell_id"].to_numpy()
    assert len(ids) > 50 and len(np.unique(ids)) == len(ids)
    assert set(np.unique(nuclei[nuclei > 0])) == set(ids)  # every surviving nucleus is in the table
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])  # a nucleus lies inside its own cell
    px = sample["pixel_size_um"]
    cnt = np.bincount(cells.ravel(), minlength=int(cells.max()) + 1)
    np.testing.assert_allclose(t["area_um2"], cnt[ids] * px * px)
    yy, xx = np.nonzero(cells == ids[0])
    assert t["x_um"].iloc[0] == pytest.approx((xx.mean() + 0.5) * px)
    assert t["y_um"].iloc[0] == pytest.approx((yy.mean() + 0.5) * px)
    assert set(t["cell_type"]) <= set(stress.CELL_TYPES) and {"Tumor", "Stroma", "CD8 T", "NK"} <= set(t["cell_type"])


def test_truth_flags_follow_lineages(sample):
    t = sample["truth"]
    imm = t["cell_type"].isin(["CD8 T", "CD4 T", "NK", "Other immune"])
    assert (t["CD45_pos"] == imm).all()
    assert (t["panCK_pos"] == (t["cell_type"] == "Tumor")).all()
    assert (t["CD3_pos"] == t["cell_type"].isin(["CD8 T", "CD4 T"])).all()
    assert not t.loc[t["cell_type"] == "CD4 T", "CD8_pos"].any()
    assert not t.loc[~imm, ["CXCR3_pos", "CCR5_pos"]].to_numpy().any()  # receptors only on immune cells
    assert t.loc[t["recruited"] == "CXCL10", "CXCR3_pos"].all() and t.loc[t["recruited"] == "CCL5", "CCR5_pos"].all()
    assert (t["CXCL10_pos"] <= (t["cell_type"] == "Tumor")).all()  # producers are tumor cells


def test_channels_need_aliases_only_for_other_spellings():
    keys = {normalize_channel_name(c) for c in stress.CHANNELS}
    assert {"dapi", "panck", "cd56", "cd45", "cxcr3", "ccr5", "cxcl10", "ccl5"} <= keys  # matched by normalisation
    assert {"cd3e", "cd8a"} <= keys and not {"cd3", "cd8"} & keys  # these need panel.aliases


def test_offset_and_12_bit_range(sample):
    img = sample["image"]
    assert img.dtype == np.uint16 and img.max() <= 4095
    glass = ~sample["tissue"]
    for c, spec in enumerate(stress.PANEL):
        assert np.median(img[c][glass]) == pytest.approx(spec[6], abs=2)  # camera offset on glass


def test_spillover_into_next_channel():
    rng = np.random.default_rng(0)
    shape = (1, 64, 64)
    clean = np.zeros((len(stress.PANEL),) + shape[1:], np.float32)
    clean[1] = 1000.0  # light only in channel 1 (Pan-CK)
    zero = np.zeros(shape[1:], np.float32)
    p = stress.parameters()
    out = camera(clean, rng, zero.astype(bool), zero, zero, stress.PIXEL_SIZE_UM, p).astype(float)
    off = np.array([s[6] for s in stress.PANEL])
    excess = out.mean(axis=(1, 2)) - off
    assert excess[2] == pytest.approx(stress.SPILLOVER * 1000.0, rel=0.1)  # 3 % into CD3e
    assert abs(excess[0]) < 1 and abs(excess[3]) < 1  # not backwards, not two channels on


def test_spillover_and_autofluorescence_lift_negatives(sample):
    t = sample["truth"]
    cd3 = _cell_means(sample, stress.MARKERS.index("CD3"))
    cd8 = _cell_means(sample, stress.MARKERS.index("CD8"))
    tumor, stroma = (t["cell_type"] == "Tumor").to_numpy(), (t["cell_type"] == "Stroma").to_numpy()
    assert np.median(cd3[tumor]) > np.median(cd3[stroma]) + 5  # Pan-CK spills into CD3e in tumor cells
    assert np.median(cd8[stroma]) > np.median(cd8[tumor]) + 30  # stromal autofluorescence (Opal 480)


@pytest.mark.parametrize("receptor", ["CXCR3", "CCR5"])
def test_receptors_are_dim(sample, receptor):
    t = sample["truth"]
    x = _cell_means(sample, stress.MARKERS.index(receptor))
    imm = t["cell_type"].isin(["CD8 T", "CD4 T", "NK", "Other immune"]).to_numpy()
    pos = t[f"{receptor}_pos"].to_numpy()
    ratio = np.median(x[imm & pos]) / np.median(x[imm & ~pos])
    assert 2.0 <= ratio <= 4.0


def test_deterministic_by_seed():
    a = stress.generate_sample(size_px=128, dose_gy=5, seed=11, sample_id="s")
    b = stress.generate_sample(size_px=128, dose_gy=5, seed=11, sample_id="s")
    c = stress.generate_sample(size_px=128, dose_gy=5, seed=12, sample_id="s")
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["cells"], b["cells"])
    pd.testing.assert_frame_equal(a["truth"], b["truth"])
    assert not np.array_equal(a["image"], c["image"])


def test_territories_correlate_positively():
    rng = np.random.default_rng(5)
    h = territories(rng, (128, 128), 2.0, stress.parameters())
    r = np.corrcoef(h["CXCL10"].ravel(), h["CCL5"].ravel())[0, 1]
    assert 0.3 < r < 0.9
    assert smooth_field(rng, (32, 32), 2.0).std() == pytest.approx(1.0)


def test_zones_grow_with_dose_and_sham_is_small():
    frac = {}
    for d in (0.0, 10.0):
        s = stress.generate_sample(size_px=512, dose_gy=d, patient=1, seed=2, sample_id="x")
        frac[d] = s["info"]["zone_fraction"]
        co = (s["zones"]["CXCL10"] & s["zones"]["CCL5"]).sum()
        if d > 0:  # co-localised modules overlap more than independent ones would
            expect = s["zones"]["CXCL10"].sum() * s["zones"]["CCL5"].sum() / s["tissue"].sum()
            assert co > 1.3 * expect
            t = s["truth"]
            assert (t["recruited"] != "").sum() > 5
    for m in stress.MODULES:
        assert frac[0.0][m] <= 0.05
        assert frac[10.0][m] > frac[0.0][m] + 0.05


def test_generate_cohort_layout(tmp_path):
    out = stress.generate_cohort(tmp_path / "c", n_patients=1, size_px=96, seed=1, design=[("sham", 0.0), ("photon", 5.0)])
    sheet = pd.read_csv(out / "samples.csv")
    assert list(sheet.columns) == ["sample_id", "image", "patient", "radiation", "dose_gy"]
    assert not (out / "config.yaml").exists()  # the user writes the config
    sid = sheet["sample_id"].iloc[1]
    img = read_image(out / sheet["image"].iloc[1])
    assert list(img.channels) == stress.CHANNELS and img.pixel_size_um == pytest.approx(stress.PIXEL_SIZE_UM)
    cells = tifffile.imread(out / "truth" / sid / "cells.tif")
    truth = pd.read_parquet(out / "truth" / sid / "cells.parquet")
    assert cells.dtype == np.uint32 and set(truth["cell_id"]) <= set(np.unique(cells))
    for name in ("nuclei", "tissue", "tumor", "zone_CXCL10", "zone_CCL5"):
        assert (out / "truth" / sid / f"{name}.tif").is_file()
    assert (out / "truth" / "cohort.json").is_file()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="n_patients must be >= 1"):
        stress.generate_cohort(tmp_path, n_patients=0)
    with pytest.raises(ConfigError, match="size_px must be >= 64"):
        stress.generate_cohort(tmp_path, size_px=10)
    with pytest.raises(SystemExit):
        stress.main([str(tmp_path), "--doses", "0,x"])


def test_main_writes_a_cohort(tmp_path, capsys):
    assert stress.main([str(tmp_path / "m"), "--patients", "1", "--size", "64", "--doses", "0,10"]) == 0
    assert len(pd.read_csv(tmp_path / "m" / "samples.csv")) == 2
    assert "no config" in capsys.readouterr().out


def test_independent_of_synth():
    for path in (ROOT / "pipeline" / "chemozone" / "stress").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any("synth" in nm for nm in names), path
