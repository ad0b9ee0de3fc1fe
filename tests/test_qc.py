"""The QC composite: channel choice from the config, per-channel display ranges, legend, lazy reading."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from chemozone.config import config_from_dict
from chemozone.errors import ConfigError
from chemozone.options import qc_options
from chemozone.qc import QcChannel, choose_qc_channels, composite_rgb, qc_figure, write_qc

# a MIBI-TOF panel as the instrument names it (41 channels, the nuclear one is histone H3)
MIBI = ["Background", "BetaCatenin", "BetaTubulin", "CD11b", "CD11c", "CD138", "CD16", "CD20", "CD209", "CD3",
        "CD31", "CD4", "CD45", "CD45RO", "CD56", "CD63", "CD68", "CD8", "CSF1R", "ECadherin", "ER", "FoxP3",
        "GLUT1", "Granzyme B", "H3K27me3", "H3K9ac", "HER2", "HH3", "HLA-DR", "HLA_Class_1", "IDO", "Ki67",
        "LaminAC", "Lag3", "Membrane", "NaK ATPase", "PanKeratin", "PD1", "PDL1", "SMA", "Vimentin"]


def _names(chosen):
    return [(c.channel, c.role, c.colour) for c in chosen]


def test_synthetic_config_gives_nuclear_tumour_leukocyte_chemokine():
    from chemozone.synth import DEFAULT_CHANNELS, cohort_config

    cfg = config_from_dict(cohort_config())
    chosen = choose_qc_channels(DEFAULT_CHANNELS, **qc_options(cfg))
    assert _names(chosen) == [("DAPI", "nuclear", "blue"), ("panCK", "tumour", "green"),
                              ("CD45", "leukocyte", "red"), ("CXCL8", "chemokine", "magenta")]


def test_mibi_panel_with_a_config_a_user_would_write():
    cfg = config_from_dict({
        "panel": {"nuclear_channel": "HH3", "pixel_size_um": 0.39},
        "phenotypes": {"markers": {m: {} for m in ["PanKeratin", "CD45", "CD3", "CD8", "CD20", "SMA"]},
                       "rules": [{"cell_type": "CD8 T", "pos": ["CD3", "CD8"]},
                                 {"cell_type": "B cell", "pos": ["CD20"]},
                                 {"cell_type": "Other immune", "pos": ["CD45"]},
                                 {"cell_type": "Tumor", "pos": ["PanKeratin"]},
                                 {"cell_type": "Stroma", "pos": ["SMA"]}]}})
    opts = qc_options(cfg)
    assert opts["tumour_markers"] == ["PanKeratin"] and opts["leukocyte_markers"] == ["CD45", "CD3", "CD8", "CD20"]
    assert _names(choose_qc_channels(MIBI, **opts)) == [
        ("HH3", "nuclear", "blue"), ("PanKeratin", "tumour", "green"), ("CD45", "leukocyte", "red")]
    # no rules at all: the epithelial and leukocyte defaults still find them
    bare = qc_options(config_from_dict({"panel": {"nuclear_channel": "HH3"}}))
    assert [c.channel for c in choose_qc_channels(MIBI, **bare)] == ["HH3", "PanKeratin", "CD45"]


def test_tumour_zone_channel_and_cd3_fallback_and_aliases():
    cfg = config_from_dict({"panel": {"aliases": {"panCK": ["Opal 690"]}},
                            "zones": [{"name": "CXCL10", "channels": ["CXCL10"]},
                                      {"name": "epi", "source": "tumor", "channels": ["panCK"]}]})
    chosen = choose_qc_channels(["DAPI", "Opal 690", "CD3", "CXCL10"], **qc_options(cfg))
    assert _names(chosen) == [("DAPI", "nuclear", "blue"), ("Opal 690", "tumour", "green"),
                              ("CD3", "leukocyte", "red"), ("CXCL10", "chemokine", "magenta")]
    # a role the image lacks is left out, and a channel is used once
    assert [c.channel for c in choose_qc_channels(["DAPI", "CD8"], nuclear_channel="DAPI")] == ["DAPI"]


def test_run_qc_channels_overrides_and_is_validated():
    cfg = config_from_dict({"panel": {"nuclear_channel": "HH3"}, "run": {"qc_channels": ["HH3", "Vimentin", "CD8"]}})
    assert _names(choose_qc_channels(MIBI, **qc_options(cfg))) == [
        ("HH3", "chosen", "blue"), ("Vimentin", "chosen", "green"), ("CD8", "chosen", "red")]
    with pytest.raises(ConfigError, match="run.qc_channels: channel 'CD99' is not in the image"):
        choose_qc_channels(MIBI, override=["HH3", "CD99"])
    with pytest.raises(ConfigError, match="run.qc_channels"):
        config_from_dict({"run": {"qc_channels": ["HH3", "HH3"]}})
    with pytest.raises(ConfigError, match="run.qc_channels"):
        config_from_dict({"run": {"qc_channels": ["A", "B", "C", "D", "E"]}})
    with pytest.raises(ConfigError, match="run.qc_channels"):
        config_from_dict({"run": {"qc_channels": []}})


def _image(shape=(3, 96, 96), seed=0):
    """DAPI nuclei (float), a bright CD45 patch, and a sparse count channel (>99.5 % zeros)."""
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    data[0, 10:30, 10:30] = 1000.0
    data[0] += rng.normal(100, 5, shape[1:])
    data[1, 60:80, 60:80] = 50.0
    counts = np.zeros(shape[1:], np.float32)
    counts[40, 40] = counts[41, 42] = 3.0  # 2 pixels of 9216: the 99.5th percentile is 0
    data[2] = counts
    return SimpleNamespace(data=data, levels=[data], channels=["DAPI", "CD45", "Ki67"], pixel_size_um=0.5,
                           path="sample.ome.tif")


def test_composite_colours_and_per_channel_ranges():
    img = _image()
    chosen = [QcChannel("DAPI", "nuclear", "blue"), QcChannel("CD45", "leukocyte", "red"),
              QcChannel("Ki67", "chosen", "green")]
    rgb, factor, scales = composite_rgb(img, channels=chosen)
    assert rgb.shape == (96, 96, 3) and factor == 1.0
    nuc, leuk = rgb[20, 20], rgb[70, 70]
    assert nuc[2] > 0.9 and nuc[0] < 0.3  # blue
    assert leuk[0] > 0.9 and leuk[2] < 0.2  # red, at full scale although 20x dimmer than DAPI
    ki = {s["channel"]: s for s in scales}["Ki67"]
    assert ki["hi"] > ki["lo"]  # sparse counts: smoothed, range from a higher percentile / the maximum
    assert rgb[40, 40, 1] - rgb[5, 90, 1] > 0.5  # the counts show as green spots


def test_composite_reads_a_coarse_pyramid_level_not_the_full_image():
    import dask.array as da

    def boom(block):
        raise AssertionError("the full-resolution level was read")

    full = da.zeros((2, 4096, 4096), chunks=(1, 1024, 1024)).map_blocks(boom, dtype=float)
    small = np.random.default_rng(0).random((2, 1024, 1024))
    img = SimpleNamespace(data=full, levels=[full, small], channels=["DAPI", "CD45"])
    rgb, factor, _ = composite_rgb(img, channels=[QcChannel("DAPI", "nuclear", "blue")], max_side=512)
    assert rgb.shape == (512, 512, 3) and factor == 8.0


def test_qc_figure_legend_names_channels_and_png_is_written(tmp_path):
    from matplotlib.text import Text

    from chemozone.io import write_labels_zarr

    img = _image()
    store = tmp_path / "masks.zarr"
    cells = np.zeros((96, 96), np.uint32)
    cells[8:32, 8:32] = 1
    write_labels_zarr(store, "cells", cells, pixel_size_um=0.5)
    write_labels_zarr(store, "tissue", np.ones((24, 24), np.uint8), pixel_size_um=2.0)
    zone = np.zeros((24, 24), bool)
    zone[12:20, 12:20] = True
    opts = {"nuclear_channel": "DAPI", "leukocyte_markers": ["CD45"], "chemokine_markers": ["Ki67"]}
    fig = qc_figure(img, store, {"CXCL8": zone}, **opts)
    texts = {t.get_text() for t in fig.findobj(Text)}
    assert {"DAPI (nuclear): blue", "CD45 (leukocyte): red", "Ki67 (chemokine): magenta", "zone CXCL8"} <= texts
    assert any("DAPI (blue), CD45 (red), Ki67 (magenta)" in t for t in texts)
    out = write_qc(tmp_path / "qc.png", img, store, {"CXCL8": zone}, **opts)
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500
        px = np.asarray(im.convert("RGB"))
    assert (px[..., 0] > 150).any() and (px[..., 2] > 150).any()  # red and blue both drawn


def test_lymphoid_panel_without_cd45_takes_the_t_cell_rule_marker():
    cfg = config_from_dict({"phenotypes": {"markers": {m: {} for m in ["CD4", "CD8", "FOXP3", "BCL6"]},
                                           "rules": [{"cell_type": "Treg", "pos": ["CD4", "FOXP3"]},
                                                     {"cell_type": "CD4 T", "pos": ["CD4"]},
                                                     {"cell_type": "CD8 T", "pos": ["CD8"]},
                                                     {"cell_type": "Tfh", "pos": ["CD4", "BCL6"]}]}})
    opts = qc_options(cfg)
    assert opts["leukocyte_markers"][:2] == ["CD4", "FOXP3"]
    chosen = choose_qc_channels(["DAPI", "CD4", "CD8", "FOXP3", "BCL6"], **opts)
    assert _names(chosen) == [("DAPI", "nuclear", "blue"), ("CD4", "leukocyte", "red")]


@pytest.mark.parametrize("step", [1, 2, 3, 4, 6, 8, 12])
def test_strided_labels_reads_the_same_pixels_from_a_pyramid_level(tmp_path, step):
    """The QC outline's ``labels[::step, ::step]`` comes from the coarsest pyramid level holding exactly those
    pixels: equal to striding the full-resolution labels, for steps that are and are not powers of two."""
    from chemozone.io import write_labels_zarr
    from chemozone.qc import strided_labels

    lab = np.random.default_rng(step).integers(0, 2**32 - 1, size=(203, 150), dtype=np.uint32)
    write_labels_zarr(tmp_path / "m.zarr", "cells", lab, pixel_size_um=0.5, levels=4)
    np.testing.assert_array_equal(strided_labels(tmp_path / "m.zarr", "cells", step), lab[::step, ::step])


@pytest.mark.parametrize("max_side", [100, 10_000])
def test_zone_contour_of_a_whole_section_grid_is_reduced_and_stays_on_the_edge(max_side):
    """A 40k² section's grid is 10⁸ pixels: its contours are drawn from k × k block fractions (k = 30 here),
    and the reduced contour still lies on the zone's edge to within one block."""
    from matplotlib.figure import Figure

    from chemozone.qc import _contour

    grid_um, r_px = 2.0, 1100.0
    yy, xx = np.ogrid[:3000, :2400]
    disc = (yy - 1500.0) ** 2 + (xx - 1200.0) ** 2 <= r_px ** 2
    ax = Figure().add_subplot()
    cs = _contour(ax, disc, grid_um, "white", 1.0, max_side=max_side)
    z = cs.allsegs[0]
    k = 1 if max_side >= 3000 else int(np.ceil(3000 / max_side))
    assert sum(len(seg) for seg in z) <= 8 * (3000 // k + 2400 // k)  # vertices scale with the reduced grid
    pts = np.concatenate(z)  # (x_um, y_um)
    r_um = np.hypot(pts[:, 0] - 1200.5 * grid_um, pts[:, 1] - 1500.5 * grid_um)
    assert np.abs(r_um - r_px * grid_um).max() <= k * grid_um
    assert _contour(ax, np.zeros((5, 5), bool), grid_um, "white", 1.0, max_side=max_side) is None
