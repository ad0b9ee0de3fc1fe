"""The napari plugin: manifest, reader, review files and widgets.

GUI tests (marked ``gui``) need an X server: run under ``xvfb-run -a``. The fixture ``run_folder`` fabricates a
tiny run folder (image, masks, cells, zones, infiltration, run.json) with known content, so these tests do
not depend on the batch runner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chemozone.layout import RunLayout, SampleLayout

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "chemozone_napari"
PX = 0.5
GRID_UM = 2.0
H, W = 96, 128
CHANNELS = ["DAPI", "CD3", "CXCL10", "panCK"]
# cells: centres (row, col) in pixels on a regular lattice, radius 4 px
CENTRES = [(12 + 16 * i, 12 + 16 * j) for i in range(6) for j in range(8)]
CD3_POS_IDS = {3, 7, 11, 20, 29, 41}  # cell ids (1-based) that are CD3 bright


def gui(func):
    """Mark a napari/Qt test (PyQt6 through qtpy); ignore only the third-party deprecations napari/vispy emit."""
    for mark in (
        pytest.mark.gui,
        pytest.mark.filterwarnings("ignore::DeprecationWarning:vispy.*"),
        pytest.mark.filterwarnings("ignore::DeprecationWarning:napari.*"),
    ):
        func = mark(func)
    return func


def _labels() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    nuclei = np.zeros((H, W), np.uint32)
    cells = np.zeros((H, W), np.uint32)
    for k, (r, c) in enumerate(CENTRES, start=1):
        d2 = (yy - r) ** 2 + (xx - c) ** 2
        cells[d2 <= 36] = k
        nuclei[d2 <= 12] = k
    return nuclei, cells


def _cells_table(cells_lbl: np.ndarray, image: np.ndarray) -> pd.DataFrame:
    ids = np.arange(1, len(CENTRES) + 1, dtype=np.uint32)
    rows = []
    for k, (r, c) in zip(ids, CENTRES):
        m = cells_lbl == k
        rows.append({"sample_id": "s1", "cell_id": k, "x_um": (c + 0.5) * PX, "y_um": (r + 0.5) * PX,
                     "area_um2": m.sum() * PX * PX, "nucleus_area_um2": 12 * np.pi * PX * PX,
                     **{f"{ch}_cell": float(image[i][m].mean()) for i, ch in enumerate(CHANNELS)}})
    df = pd.DataFrame(rows)
    df["cell_id"] = df["cell_id"].astype(np.uint32)
    df["CD3_pos"] = df["CD3_cell"] > 500
    df["panCK_pos"] = df["panCK_cell"] > 500
    df["cell_type"] = np.where(df["CD3_pos"], "T cell", np.where(df["panCK_pos"], "Tumor", "Other"))
    df["phenotype"] = df["cell_type"]
    df["in_CXCL10"] = df["x_um"] < W * PX / 2
    df["dist_CXCL10_um"] = df["x_um"] - W * PX / 2
    df["dist_tissue_edge_um"] = 10.0
    return df


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A tiny run folder with one sample ``s1`` (as ``chemozone run`` writes it)."""
    from chemozone.config import config_from_dict
    from chemozone.io import write_labels_zarr, write_ome_tiff
    from chemozone.layout import atomic_write_json, new_provenance, write_parquet

    rng = np.random.default_rng(0)
    nuclei, cells = _labels()
    img = rng.integers(20, 60, size=(len(CHANNELS), H, W)).astype(np.uint16)
    img[0][nuclei > 0] += 1000
    for k in CD3_POS_IDS:
        img[1][cells == k] += 2000
    img[3][:, W // 2:][cells[:, W // 2:] > 0] += 1500  # tumor cells on the right half
    img[2][:, : W // 2] += 800  # chemokine on the left half
    image_path = tmp_path / "inputs" / "s1.ome.tif"
    image_path.parent.mkdir()
    write_ome_tiff(image_path, img, channels=CHANNELS, pixel_size_um=PX, tile_px=64)
    out = tmp_path / "run"
    lay = RunLayout(out)
    lay.sample_dir("s1").mkdir(parents=True)
    store = lay.masks("s1")
    write_labels_zarr(store, "nuclei", nuclei, pixel_size_um=PX)
    write_labels_zarr(store, "cells", cells, pixel_size_um=PX)
    f = int(GRID_UM / PX)
    tissue = np.ones((H // f, W // f), np.uint8)
    tissue[:2] = 0
    zone = np.zeros_like(tissue)
    zone[:, : W // f // 2] = 1
    write_labels_zarr(store, "tissue", tissue, pixel_size_um=GRID_UM)
    write_labels_zarr(store, "zone_CXCL10", zone & tissue, pixel_size_um=GRID_UM)
    df = _cells_table(cells, img)
    write_parquet(df, lay.cells("s1"))
    samples = pd.DataFrame({"sample_id": ["s1"], "image": [str(image_path)], "patient": ["P1"],
                            "radiation": ["photon"], "dose_gy": [2.0]})
    write_parquet(samples, lay.cohort_samples)
    cfg = config_from_dict({
        "phenotypes": {
            "markers": {"CD3": {"transform": "arcsinh", "cofactor": 50.0, "gate": {"method": "otsu"}},
                        "panCK": {"transform": "arcsinh", "gate": {"method": "otsu"}}},
            "rules": [{"cell_type": "T cell", "pos": ["CD3"]}, {"cell_type": "Tumor", "pos": ["panCK"]}],
        },
        "zones": [{"name": "CXCL10", "channels": ["CXCL10"], "smooth_um": 4.0,
                   "threshold": {"mode": "absolute", "value": 0.5}}],
    })
    prov = new_provenance(cfg)
    prov["samples"] = {"s1": {"status": "done", "image": str(image_path)}}
    atomic_write_json(lay.run_json, prov)
    gates = pd.DataFrame({"sample_id": ["s1"], "marker": ["CD3"], "compartment": ["cell"],
                          "threshold": [float(np.arcsinh(500 / 50.0))], "threshold_raw": [500.0],
                          "method": ["otsu"], "transform": ["arcsinh"], "cofactor": [50.0], "warning": [""]})
    write_parquet(gates, lay.gates)
    write_parquet(pd.DataFrame({"sample_id": ["s1"], "zone": ["CXCL10"], "source": ["pixels"],
                                "channels": ["CXCL10"], "threshold_used": [0.5], "area_mm2": [0.001],
                                "tissue_area_mm2": [0.002]}), lay.zones("s1"))
    infl = pd.DataFrame({
        "sample_id": "s1", "population_type": "cell_type",
        "population": ["T cell", "T cell", "Tumor", "Tumor"], "zone": "CXCL10",
        "region": ["inside", "outside", "inside", "outside"], "n_cells": [4, 2, 0, 20],
        "area_mm2": [0.0015, 0.0015, 0.0015, 0.0015], "density_per_mm2": [2666.7, 1333.3, 0.0, 13333.3]})
    write_parquet(infl, lay.infiltration("s1"))
    return out


# ---------------------------------------------------------------------------------------- manifest
def test_manifest_validates_and_is_discovered():
    import npe2

    mf = npe2.PluginManifest.from_file(PLUGIN_DIR / "napari.yaml")
    assert mf.name == "chemozone"  # must equal the distribution name for napari to load it
    assert {c.id for c in mf.contributions.commands} >= {"chemozone.get_reader", "chemozone.make_sample",
                                                          "chemozone.gates", "chemozone.zones"}
    assert len(mf.contributions.widgets) == 7  # analyse, gates, zones, inspector, infiltration, regions, classifier
    assert mf.contributions.readers[0].accepts_directories
    for cmd in mf.contributions.commands:  # every python_name resolves
        module, attr = cmd.python_name.split(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name
    pm = npe2.PluginManager()
    pm.discover(include_npe1=False)
    assert "chemozone" in pm._manifests or "chemozone" in {m.name for m in pm.iter_manifests()}


# ------------------------------------------------------------------------------------------ reader
def test_reader_rejects_what_it_cannot_read(tmp_path):
    from chemozone_napari._reader import napari_get_reader

    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "empty")) is None
    assert napari_get_reader(str(tmp_path / "missing.tif")) is None
    assert napari_get_reader([str(tmp_path / "notes.txt")]) is None
    assert napari_get_reader([]) is None


def test_reader_qptiff(shared_data):
    from chemozone_napari._reader import napari_get_reader

    path = shared_data / "qptiff_vectra" / "small_vectra.qptiff"
    layers = napari_get_reader(str(path))(str(path))
    assert [kw["name"] for _, kw, _ in layers] == ["DAPI", "FITC", "Cy3"]
    assert all(kind == "image" for _, _, kind in layers)
    for data, kw, _ in layers:
        assert kw["scale"] == pytest.approx((0.4965, 0.4965), abs=1e-3)
        assert data.shape == (1440, 1920)
        assert hasattr(data, "dask")  # lazy
        lo, hi = kw["contrast_limits"]
        assert 0 <= lo < hi <= 255
    assert layers[0][1]["colormap"] == "blue"
    assert len({kw["colormap"] for _, kw, _ in layers}) == 3


def test_reader_inform_component_tiff(shared_data):
    from chemozone_napari._reader import napari_get_reader

    path = shared_data / "vectra_phenoptr" / "FIHC4__0929309_HP_IM3_2_component_data.tif"
    layers = napari_get_reader(str(path))(str(path))
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["Alexa 594", "Cy3", "Cy5", "DAPI", "FITC"]
    assert layers[3][1]["colormap"] == "blue"
    assert all(kw["scale"] == pytest.approx((0.4971, 0.4971), abs=1e-3) for _, kw, _ in layers)


def test_reader_pyramid_is_multiscale_and_contrast_uses_small_level(tmp_path):
    import dask.array as da

    from chemozone.io import write_ome_tiff
    from chemozone_napari._reader import image_layers

    arr = da.from_array(np.tile(np.arange(256, dtype=np.uint16), (2, 256, 1)), chunks=(1, 128, 128))
    path = write_ome_tiff(tmp_path / "pyr.ome.tif", arr, channels=["DAPI", "CD8"], pixel_size_um=0.25,
                          tile_px=64, pyramid_levels=2)
    layers = image_layers(path)
    data, kw, _ = layers[1]
    assert kw["multiscale"] and isinstance(data, list) and [d.shape for d in data] == [(256, 256), (128, 128), (64, 64)]
    assert kw["name"] == "CD8" and kw["scale"] == (0.25, 0.25)
    lo, hi = kw["contrast_limits"]
    assert lo < 10 and 240 < hi <= 255  # the ramp 0..255 (averaged by the pyramid)


def test_contrast_limits_sample_chunks_of_a_large_level(monkeypatch):
    import dask.array as da

    import chemozone_napari._reader as rd

    monkeypatch.setattr(rd, "CONTRAST_MAX_PX", 1000)
    arr = da.ones((1, 400, 400), chunks=(1, 50, 50), dtype=np.uint16) * 7
    arr = da.concatenate([arr, arr * 3], axis=0)
    assert rd.contrast_limits([arr], 1) == (21.0, 22.0)  # constant channel -> hi = lo + 1


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["uint8", "int8", "uint16", "int16", "int32", "float32"]), n=st.integers(1, 3000),
       seed=st.integers(0, 2**16), q=st.lists(st.floats(0, 100), min_size=1, max_size=3))
def test_display_percentiles_equal_numpys(dtype, n, seed, q):
    """The histogram percentiles of 8- and 16-bit pixels are numpy's (linear interpolation), extremes included.

    The reference is numpy's percentile of the values widened to float64: on integer input numpy interpolates in
    the input's own dtype, and the difference of two order statistics more than the dtype's maximum apart wraps
    around (pinned below), which is not what a display range should show.
    """
    from chemozone_napari._reader import _percentiles

    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    lo, hi = (np.iinfo(dt).min, np.iinfo(dt).max) if dt.kind in "ui" else (-1e3, 1e3)
    vals = rng.choice(np.array([lo, hi, 0, 1], dt), n) if seed % 2 else rng.integers(lo, hi, n, endpoint=True).astype(dt)
    ref = np.percentile(vals.astype(np.float64), q)
    np.testing.assert_allclose(_percentiles(vals, q), ref, rtol=1e-12, atol=1e-9)
    if dt.kind == "f" or np.ptp(vals.astype(np.int64)) <= np.iinfo(dt).max:
        np.testing.assert_allclose(np.percentile(vals, q), ref, rtol=1e-12, atol=1e-9)  # numpy's own, no wrap-around


def test_numpys_narrow_signed_percentile_wraps_around_and_the_display_range_does_not():
    """The example hypothesis found (a fresh CI run of 2026-12-01): numpy's int8 percentile is off by 2.56."""
    from chemozone_napari._reader import _percentiles

    vals = np.array([86, -62], np.int8)
    assert np.percentile(vals, [1.0])[0] == pytest.approx(-63.08)  # -62 + 0.01 * (148 wrapped to -108)
    assert _percentiles(vals, [1.0]) == pytest.approx([-62 + 0.01 * 148])  # -60.52


def test_reader_run_folder_layers_and_scales(run_folder):
    from chemozone_napari._reader import napari_get_reader

    for path in (run_folder, RunLayout(run_folder).sample_dir("s1")):
        reader = napari_get_reader(str(path))
        assert reader is not None
        layers = reader(str(path))
        by_name = {kw["name"]: (data, kw, kind) for data, kw, kind in layers}
        assert list(by_name)[:4] == CHANNELS
        assert {"nuclei", "cells", "tissue", "zone_CXCL10", "cell points"} <= set(by_name)
        assert by_name["DAPI"][1]["scale"] == (PX, PX)
        assert by_name["cells"][2] == "labels" and by_name["cell points"][2] == "points"
        assert by_name["nuclei"][1]["scale"] == (PX, PX) and by_name["nuclei"][2] == "labels"
        assert by_name["tissue"][1]["scale"] == (GRID_UM, GRID_UM)
        assert by_name["zone_CXCL10"][1]["translate"] == (GRID_UM / 2, GRID_UM / 2)
        pts, kw, _ = by_name["cell points"]
        feats = kw["features"]
        assert len(pts) == len(CENTRES) and {"CD3_cell", "phenotype", "phenotype_display"} <= set(feats.columns)
        # points are at the pixel centres of the labels in world (µm) coordinates
        r, c = CENTRES[5]
        assert pts[5] == pytest.approx([(r + 0.5) * PX, (c + 0.5) * PX])
        # phenotype colours: one colour per phenotype
        colors = kw["face_color"]
        t_rows = feats["phenotype"] == "T cell"
        assert len({tuple(x) for x in colors[t_rows.to_numpy()]}) == 1
        assert tuple(colors[t_rows.to_numpy()][0]) != tuple(colors[(~t_rows).to_numpy()][0])


def test_reader_lone_sample_folder(run_folder, tmp_path):
    """A sample folder copied out of its run folder opens without a run: masks and cells, no image."""
    import shutil

    from chemozone_napari._reader import napari_get_reader, path_kind

    lone = tmp_path / "copy" / "s1"
    shutil.copytree(RunLayout(run_folder).sample_dir("s1"), lone)
    assert path_kind(lone) == "sample" and path_kind(run_folder) == "run"
    layers = napari_get_reader(str(lone))(str(lone))
    by_name = {kw["name"]: (data, kw, kind) for data, kw, kind in layers}
    assert set(by_name) == {"nuclei", "cells", "tissue", "zone_CXCL10", "cell points"}
    meta = by_name["cell points"][1]["metadata"]["chemozone"]
    assert meta["run_dir"] is None and meta["sample_id"] == "s1" and meta["sample_dir"] == str(lone)
    assert len(by_name["cell points"][0]) == len(CENTRES)



def test_reader_masks_store_opens_only_the_masks(run_folder, monkeypatch):
    """A sample's masks store dropped into napari opens its label images and masks, the same layers as the sample's
    (scales, metadata), without reading the image, the cells table or the run config."""
    import chemozone_napari._reader as reader_mod

    sample = RunLayout(run_folder).sample_dir("s1")
    store = SampleLayout(sample).masks
    assert reader_mod.path_kind(store) == "masks"
    from_sample = {kw["name"]: (kw, kind) for _, kw, kind in reader_mod.sample_layers(sample) if kind == "labels"}

    def forbidden(*a, **k):
        raise AssertionError("the masks store must not read this")

    monkeypatch.setattr(reader_mod, "load_cells", forbidden)
    monkeypatch.setattr(reader_mod, "run_config", forbidden)
    monkeypatch.setattr(reader_mod, "image_layers", forbidden)
    layers = reader_mod.napari_get_reader(str(store))(str(store))
    assert [kind for _, _, kind in layers] == ["labels"] * len(from_sample)
    by_name = {kw["name"]: kw for _, kw, _ in layers}
    assert list(by_name) == list(from_sample) == ["cells", "nuclei", "tissue", "zone_CXCL10"]
    for name, kw in by_name.items():
        assert kw == from_sample[name][0]
    assert by_name["tissue"]["scale"] == (GRID_UM, GRID_UM) and by_name["nuclei"]["scale"] == (PX, PX)
    # masks: 0 transparent, every nonzero value one colour (white tissue, the first zone colour)
    from napari.utils.colormaps.standardize_color import transform_color

    from chemozone_napari._colors import ZONE_COLORS

    for name, colour in (("tissue", "white"), ("zone_CXCL10", ZONE_COLORS[0])):
        rgba = by_name[name]["colormap"].map(np.array([0, 1, 2], np.uint8))
        np.testing.assert_allclose(rgba, [[0, 0, 0, 0], transform_color(colour)[0], transform_color(colour)[0]])

# ------------------------------------------------------------------------------------ review files
def test_reviewed_phenotypes_merge_and_clear(run_folder):
    from chemozone_napari._reader import load_cells
    from chemozone_napari._review import load_reviewed, save_reviewed

    sd = RunLayout(run_folder).sample_dir("s1")
    save_reviewed(sd, [2, 5], ["NK", "T cell"])
    save_reviewed(sd, [5, 9], [None, "Tumor"])  # clears 5, adds 9
    rev = load_reviewed(sd)
    assert rev["cell_id"].tolist() == [2, 9] and rev["phenotype_reviewed"].tolist() == ["NK", "Tumor"]
    cells = load_cells(sd)
    by_id = cells.set_index("cell_id")
    assert by_id.loc[2, "phenotype_display"] == "NK"
    assert by_id.loc[5, "phenotype_display"] == by_id.loc[5, "phenotype"]
    assert by_id.loc[9, "phenotype_reviewed"] == "Tumor"
    # a re-run rewrites cells.parquet but not the sidecar: the correction survives
    from chemozone.layout import write_parquet

    write_parquet(pd.read_parquet(SampleLayout(sd).cells), SampleLayout(sd).cells)
    assert load_cells(sd).set_index("cell_id").loc[2, "phenotype_display"] == "NK"


def test_update_gates_file_keeps_other_entries(tmp_path):
    from chemozone.config import load_gates_file
    from chemozone_napari._review import update_gates_file

    path = tmp_path / "gates.yaml"
    update_gates_file(path, "CD3", 400.0, sample_id="s1")
    update_gates_file(path, "CD8", 12.5)
    update_gates_file(path, "CD3", 450.0, sample_id="s1")
    assert load_gates_file(path) == {"CD3": {"s1": 450.0}, "CD8": {"*": 12.5}}


def test_update_zone_config_writes_threshold_and_smoothing(tmp_path):
    from chemozone.config import load_config
    from chemozone.errors import ConfigError
    from chemozone_napari._review import update_zone_config

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"panel": {"pixel_size_um": 0.5},
                                    "zones": [{"name": "CXCL10", "channels": ["CXCL10"]},
                                              {"name": "CCL5", "channels": ["CCL5"], "smooth_um": 7.0}]}))
    update_zone_config(path, "CXCL10", threshold=1.25, smooth_um=15.0)
    cfg = load_config(path)
    z = cfg.zones[0]
    assert (z.threshold.mode, z.threshold.value, z.smooth_um) == ("absolute", 1.25, 15.0)
    assert cfg.zones[1].smooth_um == 7.0 and cfg.panel.pixel_size_um == 0.5
    with pytest.raises(ConfigError, match=r"no zone named 'CXCL8' \(zones: \['CXCL10', 'CCL5'\]\)"):
        update_zone_config(path, "CXCL8", threshold=1.0)
    with pytest.raises(ConfigError, match="config file not found"):
        update_zone_config(tmp_path / "nope.yaml", "CXCL10", threshold=1.0)
    with pytest.raises(ConfigError, match="smooth_um"):
        update_zone_config(path, "CXCL10", smooth_um=-1.0)
    assert load_config(path).zones[0].smooth_um == 15.0  # an invalid edit leaves the file untouched


def test_marker_setup_uses_run_cofactor_and_gate(run_folder):
    from chemozone_napari._reader import load_cells, run_config
    from chemozone_napari._review import marker_setup, to_raw

    cells = load_cells(RunLayout(run_folder).sample_dir("s1"))
    gates = pd.read_parquet(RunLayout(run_folder).gates)
    st = marker_setup(cells, "CD3", cfg=run_config(run_folder), gates=gates, sample_id="s1")
    assert st["column"] == "CD3_cell" and st["cofactor"] == 50.0 and st["transform"] == "arcsinh"
    assert st["values"] == pytest.approx(np.arcsinh(cells["CD3_cell"].to_numpy() / 50.0))
    assert st["threshold"] == pytest.approx(np.arcsinh(10.0))
    assert to_raw(st["threshold"], st) == pytest.approx(500.0)


# --------------------------------------------------------------------------------------------- GUI
@pytest.fixture
def viewer_with_run(make_napari_viewer, run_folder):
    viewer = make_napari_viewer()
    viewer.open(str(run_folder), plugin="chemozone")
    return viewer


@gui
def test_viewer_opens_run_folder(viewer_with_run):
    names = [ly.name for ly in viewer_with_run.layers]
    assert names[:4] == CHANNELS and {"nuclei", "cells", "tissue", "zone_CXCL10", "cell points"} <= set(names)
    pts = [ly for ly in viewer_with_run.layers if ly._type_string == "points"][0]
    assert len(pts.data) == len(CENTRES) and "CD3_cell" in pts.features.columns
    tissue = viewer_with_run.layers["tissue"]
    assert tuple(tissue.scale) == (GRID_UM, GRID_UM)


@gui
def test_gate_widget_recolours_and_saved_gates_replay(viewer_with_run, run_folder, tmp_path):
    from chemozone.config import load_gates_file
    from chemozone.phenotype import apply_gates, compute_gates
    from chemozone_napari._gate_widget import GateReviewWidget
    from chemozone_napari._reader import run_config

    w = GateReviewWidget(viewer_with_run)
    assert w.marker == "CD3" and w.gate == pytest.approx(np.arcsinh(10.0))
    pts = w.layer
    before = np.asarray(pts.face_color).copy()
    pos_before = w.positive()
    assert set(np.flatnonzero(pos_before) + 1) == CD3_POS_IDS
    # drag the gate below the background: every cell becomes positive and turns red
    low = float(np.arcsinh(30.0 / 50.0))
    w.set_gate(low)
    after = np.asarray(pts.face_color)
    assert w.positive().all() and not np.allclose(before, after)
    assert np.allclose(after, after[0]) and after[0][0] > 0.9  # all red
    assert pts.features["CD3_pos"].all()
    # the slider moves the gate too
    w.slider.setValue(900)
    assert w.gate > low and w.positive().sum() < len(CENTRES)
    # a reviewed gate: between the CD3- and CD3+ cells, but not the run's 500
    w.set_gate(float(np.arcsinh(800 / 50.0)))
    reviewed = w.positive()
    gates_path = tmp_path / "reviewed_gates.yaml"
    w.save(gates_path)
    assert load_gates_file(gates_path) == {"CD3": {"s1": pytest.approx(800.0)}}
    # replay: compute_gates with the gates file, then apply_gates, reproduces the reviewed _pos flags
    cfg = run_config(run_folder)
    pcfg = cfg.phenotypes.model_copy(update={"gates_file": gates_path})
    cells = pd.read_parquet(RunLayout(run_folder).cells("s1"))
    samples = pd.read_parquet(RunLayout(run_folder).cohort_samples)
    gates = compute_gates(cells, samples, markers=pcfg.markers, gates_file=pcfg.gates_file)
    replayed = apply_gates(cells, gates, markers=pcfg.markers)
    assert np.array_equal(replayed["CD3_pos"].to_numpy(), reviewed)
    assert np.array_equal(pts.features["CD3_pos"].to_numpy(), reviewed)


@gui
def test_cell_inspector_click_and_correct(viewer_with_run, run_folder):
    from chemozone_napari._inspector_widget import CellInspectorWidget
    from chemozone_napari._reader import load_cells

    w = CellInspectorWidget(viewer_with_run)
    r, c = CENTRES[10]
    i = w.select_at(((r + 0.5) * PX + 0.3, (c + 0.5) * PX - 0.2))
    assert i == 10
    fields = {w.table.item(k, 0).text(): w.table.item(k, 1).text() for k in range(w.table.rowCount())}
    assert fields["cell_id"] == "11" and fields["CD3_pos"] == "True" and "dist_CXCL10_um" in fields
    assert w.select_at((500.0, 500.0)) is None  # far from every cell
    w.correct("NK")
    assert load_cells(RunLayout(run_folder).sample_dir("s1")).set_index("cell_id").loc[11, "phenotype_display"] == "NK"
    pts = w.layer
    assert pts.features.loc[10, "phenotype_display"] == "NK"


@gui
def test_infiltration_panel_shows_the_sample_table(viewer_with_run):
    from chemozone_napari._infiltration_widget import InfiltrationWidget

    w = InfiltrationWidget(viewer_with_run)
    assert w.table.rowCount() == 4
    headers = [w.table.horizontalHeaderItem(k).text() for k in range(w.table.columnCount())]
    assert headers[:3] == ["population", "region", "n_cells"]
    assert len(w.fig.axes) == 1 and len(w.fig.axes[0].patches) == 4


@gui
def test_zone_widget_preview_and_save(viewer_with_run, tmp_path):
    from chemozone.config import load_config
    from chemozone_napari._zone_widget import ZoneReviewWidget

    w = ZoneReviewWidget(viewer_with_run)
    assert w.zone_box.currentText() == "CXCL10" and w.smooth.value() == 4.0 and w.thr.value() == 0.5
    sig = w.compute_signal(block=True)
    assert sig.shape == (1, H // 4, W // 4)
    w.set_threshold(float(np.median(sig[0, 2:])))
    preview = viewer_with_run.layers["zone preview: CXCL10"]
    m = np.asarray(preview.data).astype(bool)
    assert tuple(preview.scale) == (GRID_UM, GRID_UM)
    assert m[:, : W // 8].mean() > 0.5 > m[:, W // 8 + 4:].mean()  # the chemokine is on the left half
    assert not m[:2].any()  # outside the tissue
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump({"zones": [{"name": "CXCL10", "channels": ["CXCL10"]}]}))
    w.smooth.setValue(6.0)
    w.save(cfg_path)
    z = load_config(cfg_path).zones[0]
    assert z.threshold.value == pytest.approx(w.thr.value()) and z.smooth_um == 6.0


@gui
def test_zone_widget_previews_and_saves_the_runs_background_offsets(make_napari_viewer, run_folder, tmp_path):
    """A run whose zone thresholds carry tumor/stroma background offsets (halfmax with compartments): the preview at
    the run's threshold is the mask step B builds (build_zones with the same table), not the plain threshold's; Save
    writes the offsets, and a config without a gated tumor zone refuses them with a one-line error."""
    import json

    from chemozone.config import load_config
    from chemozone.errors import ConfigError
    from chemozone.layout import write_parquet
    from chemozone.zones import build_zones, threshold_zone_signal
    from chemozone_napari._zone_widget import ZoneReviewWidget

    lay = RunLayout(run_folder)
    prov = json.loads(lay.run_json.read_text())
    prov["config"]["zones"].append({"name": "tumor", "source": "tumor", "channels": ["panCK"]})
    lay.run_json.write_text(json.dumps(prov))
    thr = pd.DataFrame({"sample_id": ["s1"], "zone": ["CXCL10"], "channel": ["CXCL10"], "threshold": [400.0],
                        "mode": ["halfmax_f0.5"], "warning": [""], "tumor_offset": [-600.0], "stroma_offset": [0.0]})
    write_parquet(thr, lay.zone_thresholds)
    viewer = make_napari_viewer()
    viewer.open(str(run_folder), plugin="chemozone")
    w = ZoneReviewWidget(viewer)
    sig = w.compute_signal(block=True)
    assert w.offsets == (-600.0, 0.0) and "with the run's background offsets (tumor -600, stroma 0)" in w._offset_note
    w.set_threshold(400.0)
    m = np.asarray(viewer.layers["zone preview: CXCL10"].data).astype(bool)
    z = w.zone
    cells = pd.read_parquet(lay.cells("s1"))
    tumor = next(zz for zz in w._cfg.zones if zz.source == "tumor")
    both = pd.concat([thr, thr.assign(zone="tumor", channel="panCK", threshold=1e9, tumor_offset=0.0)])
    step_b = build_zones(None, cells, w.tissue, pixel_size_um=GRID_UM, grid_um=GRID_UM, zones=[z, tumor],
                         thresholds=both, sample_id="s1", channels=CHANNELS,
                         signals={"CXCL10": sig, "tumor": np.zeros_like(sig)})[0]["CXCL10"]
    plain = threshold_zone_signal(sig, [400.0], w.tissue, grid_um=GRID_UM, min_area_um2=z.min_area_um2,
                                  fill_holes=z.fill_holes)
    assert (m == step_b).all() and m.sum() > plain.sum()  # the nests' lower background adds tumor area
    assert "% of the tissue in the zone; with the run's background offsets" in w.info.text()
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"zones": [{"name": "CXCL10", "channels": ["CXCL10"]}]}))
    with pytest.raises(ConfigError, match="needs a 'source: tumor' zone whose channel is in phenotypes.markers"):
        w.save(bare)
    assert "threshold" not in yaml.safe_load(bare.read_text())["zones"][0]  # the file is left as it was
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump({"phenotypes": {"markers": {"panCK": {}}},
                                        "zones": [{"name": "CXCL10", "channels": ["CXCL10"]},
                                                  {"name": "tumor", "source": "tumor", "channels": ["panCK"]}]}))
    w.save(cfg_path)
    t = load_config(cfg_path).zones[0].threshold
    assert (t.mode, t.value, t.offsets) == ("absolute", 400.0, (-600.0, 0.0))


@gui
def test_zone_widget_saves_a_modules_mean_offsets_which_give_its_preview(make_napari_viewer, run_folder, tmp_path):
    """A module (two channels) whose run offsets differ by channel: the preview (one threshold for both channels)
    equals the mask that the saved config builds, the channels' mean offsets on both, and Save writes that mean."""
    import json

    from chemozone.config import load_config
    from chemozone.layout import write_parquet
    from chemozone.zones import threshold_zone_signal, zone_offset_map
    from chemozone_napari._zone_widget import ZoneReviewWidget

    lay = RunLayout(run_folder)
    prov = json.loads(lay.run_json.read_text())
    prov["config"]["zones"] += [{"name": "M", "channels": ["CXCL10", "CD3"], "smooth_um": 4.0,
                                 "threshold": {"mode": "absolute", "value": 0.5}},
                                {"name": "tumor", "source": "tumor", "channels": ["panCK"]}]
    lay.run_json.write_text(json.dumps(prov))
    thr = pd.DataFrame({"sample_id": "s1", "zone": "M", "channel": ["CXCL10", "CD3"], "threshold": [400.0, 300.0],
                        "mode": "halfmax_f0.5", "warning": "", "tumor_offset": [-600.0, -200.0],
                        "stroma_offset": [0.0, 100.0]})
    write_parquet(thr, lay.zone_thresholds)
    viewer = make_napari_viewer()
    viewer.open(str(run_folder), plugin="chemozone")
    w = ZoneReviewWidget(viewer)
    w.zone_box.setCurrentText("M")
    sig = w.compute_signal(block=True)
    assert sig.shape[0] == 2 and w.offsets == (-400.0, 50.0)
    assert "tumor -400, stroma 50, the mean over the module's channels" in w._offset_note
    w.set_threshold(350.0)
    m = np.asarray(viewer.layers["zone preview: M"].data).astype(bool)
    cells = pd.read_parquet(lay.cells("s1"))
    saved = thr.assign(tumor_offset=-400.0, stroma_offset=50.0)  # what the saved config's thresholds table holds
    omap = zone_offset_map(saved, w.zone, "s1", cells=cells, zones=w._cfg.zones, grid_um=GRID_UM, n_cols=sig.shape[-1])
    z = w.zone
    built = threshold_zone_signal(sig, [350.0, 350.0], w.tissue, grid_um=GRID_UM, min_area_um2=z.min_area_um2,
                                  fill_holes=z.fill_holes, offset=omap)
    plain = threshold_zone_signal(sig, [350.0, 350.0], w.tissue, grid_um=GRID_UM, min_area_um2=z.min_area_um2,
                                  fill_holes=z.fill_holes)
    assert (m == built).all() and (m != plain).any()
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump({"phenotypes": {"markers": {"panCK": {}}},
                                        "zones": [{"name": "M", "channels": ["CXCL10", "CD3"]},
                                                  {"name": "tumor", "source": "tumor", "channels": ["panCK"]}]}))
    w.save(cfg_path)
    assert load_config(cfg_path).zones[0].threshold.offsets == (-400.0, 50.0)


@gui
def test_screenshot_shows_labels(make_napari_viewer, run_folder):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black under xvfb/llvmpipe
    viewer.open(str(run_folder), plugin="chemozone")
    for ly in viewer.layers:
        ly.visible = ly.name in ("DAPI", "cells") and ly._type_string != "points"
    viewer.layers["cells"].opacity = 1.0
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    from skimage.io import imsave

    imsave("/tmp/napari_shot.png", shot, check_contrast=False)
    rgb = shot[..., :3].astype(int)
    assert rgb.std() > 5  # not blank
    # label colours are saturated, the grey DAPI is blue-only: many pixels with red or green signal
    colourful = (np.abs(rgb[..., 0] - rgb[..., 1]) > 40) | (rgb[..., 0] > 60)
    assert colourful.mean() > 0.05


# ------------------------------------------------------------------------------ sample data, analyse
def test_sample_data_is_a_synthetic_explant():
    from chemozone_napari._sample_data import make_sample_data

    layers = make_sample_data(size_px=128)
    kinds = {kw["name"]: kind for _, kw, kind in layers}
    assert kinds["DAPI"] == "image" and kinds["cells (truth)"] == "labels"
    assert kinds["cell points (truth)"] == "points"
    cells_lbl = next(d for d, kw, _ in layers if kw["name"] == "cells (truth)")
    pts, kw, _ = next(x for x in layers if x[1]["name"] == "cell points (truth)")
    assert cells_lbl.dtype == np.uint32 and len(pts) == len(np.unique(cells_lbl)) - 1
    assert kw["metadata"]["chemozone"]["color_by"] == "cell_type"


@gui
@pytest.mark.slow
def test_analyse_widget_runs_the_pipeline_and_adds_layers(make_napari_viewer, tmp_path):
    from chemozone.io import write_ome_tiff
    from chemozone.synth import generate_sample
    from chemozone_napari._analyse_widget import AnalyseWidget

    s = generate_sample(size_px=192, dose_gy=10, seed=1)
    img_path = write_ome_tiff(tmp_path / "img.ome.tif", s["image"], channels=s["channels"], pixel_size_um=0.5)
    cfg = {"tissue": {"min_area_um2": 1000.0},
           "phenotypes": {"markers": {"CD3": {"gate": {"method": "otsu"}}},
                          "rules": [{"cell_type": "T", "pos": ["CD3"]}]},
           "zones": [{"name": "CXCL10", "channels": ["CXCL10"], "threshold": {"mode": "per_sample"}}]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    viewer = make_napari_viewer()
    viewer.open(str(img_path), plugin="chemozone")
    empty = viewer.add_points(np.zeros((0, 2)), name="cell points")  # a name clash is resolved
    w = AnalyseWidget(viewer)
    assert w.image_box.currentText() == str(img_path)
    w.config_path.setText(str(tmp_path / "cfg.yaml"))
    w.out_path.setText(str(tmp_path / "out"))
    result = w.run(block=True)
    assert Path(result["sample_dir"]) == tmp_path / "out" / "samples" / "img"
    names = [ly.name for ly in viewer.layers]
    assert {"nuclei", "cells", "tissue", "zone_CXCL10", "cell points [img]"} <= set(names)
    assert names.count("DAPI") == 1  # the image is not added twice
    pts = viewer.layers["cell points [img]"]
    written = pd.read_parquet(SampleLayout(result["sample_dir"]).cells)
    assert empty.name == "cell points" and len(pts.data) == len(written) > 5 and "CD3_pos" in pts.features.columns


@gui
@pytest.mark.slow
def test_analyse_widget_shows_the_runs_plausibility_warnings(make_napari_viewer, tmp_path):
    """The widget shows RunResult.warnings (here: panel.pixel_size_um disagrees with the file's 0.5 µm/px) as the
    library words them, in a label and a napari notification; a clean re-run clears them."""
    import json

    from napari.utils.notifications import NotificationSeverity, notification_manager

    from chemozone.io import write_ome_tiff
    from chemozone.synth import generate_sample
    from chemozone_napari._analyse_widget import AnalyseWidget

    s = generate_sample(size_px=160, dose_gy=10, seed=2)
    img_path = write_ome_tiff(tmp_path / "img.ome.tif", s["image"], channels=s["channels"], pixel_size_um=0.5)
    cfg = {"panel": {"pixel_size_um": 0.65}, "tissue": {"min_area_um2": 1000.0},
           "phenotypes": {"markers": {"CD3": {"gate": {"method": "otsu"}}},
                          "rules": [{"cell_type": "T", "pos": ["CD3"]}]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    viewer = make_napari_viewer()
    viewer.open(str(img_path), plugin="chemozone")
    w = AnalyseWidget(viewer)
    w.config_path.setText(str(tmp_path / "cfg.yaml"))
    w.out_path.setText(str(tmp_path / "out"))
    n_before = len(notification_manager.records)
    result = w.run(block=True)
    recorded = json.loads((tmp_path / "out" / "run.json").read_text())["warnings"]
    assert "pixel_size_conflict" in [r["code"] for r in recorded]
    lines = w.warnings.text().splitlines()
    assert len(lines) == len(recorded) == len(result["warnings"])  # every warning of the run, one line each
    conflict = next(line for line in lines if "[pixel_size_conflict]" in line)
    assert "sample 'img'" in conflict and "panel.pixel_size_um = 0.65 is ignored" in conflict
    assert not w.warnings.isHidden()
    new = [n for n in notification_manager.records[n_before:] if n.severity == NotificationSeverity.WARNING]
    assert len(new) == 1 and new[0].message.startswith("chemozone: [") and lines[0][2:] in new[0].message
    # the same image with the file's pixel size: no conflict warning left on the widget
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({**cfg, "panel": {}}))
    w.out_path.setText(str(tmp_path / "out2"))
    w.run(block=True)
    again = json.loads((tmp_path / "out2" / "run.json").read_text())["warnings"]
    assert "[pixel_size_conflict]" not in w.warnings.text()
    assert len(w.warnings.text().splitlines()) == len(again) and w.warnings.isHidden() == (not again)


# ---------------------------------------------------------------------------------------------- regions
def _qupath_regions_doc():
    """Region annotations for the 128 x 96 px image of ``run_folder``, as QuPath v0.4+ writes them: a necrosis with
    a hole, a fold in two pieces (MultiPolygon) and a tumor outline (pixel coordinates)."""
    def feat(geom, cls):
        return {"type": "Feature", "id": "5c2f5a7e-0d4c-4b59-9a53-1b7b9a0b0c01", "geometry": geom,
                "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [200, 0, 0]}}}

    def ring(x0, y0, x1, y1):
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "FeatureCollection", "features": [
        feat({"type": "Polygon", "coordinates": [ring(8, 8, 56, 56), ring(24, 24, 40, 40)]}, "Necrosis"),
        feat({"type": "MultiPolygon", "coordinates": [[ring(70, 8, 90, 20)], [ring(100, 60, 120, 90)]]}, "Fold"),
        feat({"type": "Polygon", "coordinates": [ring(64, 30, 124, 80)]}, "Tumor")]}


@gui
def test_regions_widget_imports_shows_and_saves_qupath_geojson(make_napari_viewer, run_folder, tmp_path):
    import json

    from chemozone.regions import read_geojson
    from chemozone_napari._regions_widget import RegionsWidget

    path = tmp_path / "s1.geojson"
    path.write_text(json.dumps(_qupath_regions_doc()))
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black under xvfb/llvmpipe
    viewer.open(str(run_folder), plugin="chemozone")
    w = RegionsWidget(viewer)
    layer = w.import_regions(path)
    # necrosis outline + its hole, two fold pieces, the tumor: 5 shapes; vertices placed in µm (pixel x 0.5)
    assert len(layer.data) == 5 and layer.features["hole"].tolist() == [False, True, False, False, False]
    assert layer.features["classification"].tolist() == ["Necrosis", "Necrosis", "Fold", "Fold", "Tumor"]
    world = layer.data[4] * np.asarray(layer.scale) + np.asarray(layer.translate)
    np.testing.assert_allclose(world.min(axis=0), [30 * PX, 64 * PX])  # (y, x) of the tumor's top-left corner
    # saved back: the same geometry per class (the hole cut out again), in pixels
    viewer.layers.selection.active = layer
    out = w.save_shapes(tmp_path / "back.geojson")
    import shapely

    back = read_geojson(out).groupby("classification")["geometry"].apply(lambda g: shapely.union_all(list(g)))
    orig = read_geojson(path).set_index("classification")["geometry"]
    for cls in ("Necrosis", "Fold", "Tumor"):
        assert back[cls].symmetric_difference(orig[cls]).area == 0, cls
    assert back["Necrosis"].area == 48 * 48 - 16 * 16
    # a new Shapes layer drawn in µm (napari's default scale) gets the class typed in the widget
    drawn = viewer.add_shapes([np.array([[5.0, 10.0], [5.0, 20.0], [15.0, 20.0], [15.0, 10.0]])],
                              shape_type="rectangle", name="drawn")
    viewer.layers.selection.active = drawn
    w.cls_edit.setText("Damaged rim")
    t = read_geojson(w.save_shapes(tmp_path / "drawn.geojson"))
    assert t["classification"].tolist() == ["Damaged rim"] and t["object_type"].tolist() == ["annotation"]
    assert t["geometry"][0].bounds == (20.0, 10.0, 40.0, 30.0)  # µm / 0.5 µm per px, (x0, y0, x1, y1)

    # screenshot of the imported regions over DAPI
    viewer.layers.remove(drawn)
    for ly in viewer.layers:
        ly.visible = ly.name == "DAPI" or ly is layer
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    import os

    from skimage.io import imsave

    shots = Path(os.environ.get("CHEMOZONE_SCREENSHOTS", tmp_path))  # keep it: CHEMOZONE_SCREENSHOTS=folder
    shots.mkdir(parents=True, exist_ok=True)
    imsave(shots / "napari_regions.png", shot, check_contrast=False)
    rgb = shot[..., :3].astype(int)
    coloured = (np.abs(rgb[..., 0] - rgb[..., 2]) > 40) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 40)
    assert 0.05 < coloured.mean() < 0.95  # the regions are drawn, not the whole canvas


@gui
def test_run_folder_shows_the_samples_regions(make_napari_viewer, run_folder, tmp_path):
    import json

    from chemozone.layout import atomic_write_json, read_run_json

    path = tmp_path / "s1.geojson"
    path.write_text(json.dumps(_qupath_regions_doc()))
    prov = read_run_json(run_folder)
    prov.setdefault("inputs", {})["s1"] = {"regions": {"path": str(path)}}
    atomic_write_json(RunLayout(run_folder).run_json, prov)
    viewer = make_napari_viewer()
    viewer.open(str(run_folder), plugin="chemozone")
    reg = viewer.layers["regions"]
    assert reg._type_string == "shapes" and len(reg.data) == 5 and tuple(reg.scale) == (PX, PX)


@gui
def test_sample_masks_open_as_multiscale_labels(make_napari_viewer, tmp_path):
    """A section's masks are label pyramids (chemozone.io.write_labels_zarr): the reader hands napari every
    level, lazily, and napari shows them as one multiscale labels layer."""
    from chemozone.io import write_labels_zarr
    from chemozone_napari._reader import sample_layers

    nuclei, cells = _labels()
    big = np.tile(cells, (3, 3))  # 288 x 384 px, 48 px chunks: levels 288/384 -> ... -> 36/48
    sample = tmp_path / "s1"
    write_labels_zarr(SampleLayout(sample).masks, "cells", big, pixel_size_um=PX, chunk_px=48)
    write_labels_zarr(SampleLayout(sample).masks, "nuclei", nuclei, pixel_size_um=PX)
    by_name = {kw["name"]: (data, kw) for data, kw, kind in sample_layers(sample) if kind == "labels"}
    data, kw = by_name["cells"]
    assert kw["multiscale"] is True and [d.shape for d in data] == [(288, 384), (144, 192), (72, 96), (36, 48)]
    assert all(hasattr(d, "dask") for d in data)  # nothing read yet
    np.testing.assert_array_equal(data[3].compute(), big[::8, ::8])
    assert by_name["nuclei"][1]["multiscale"] is False and by_name["nuclei"][0].shape == (H, W)
    viewer = make_napari_viewer()
    layer = viewer.add_labels(data, **kw)
    assert layer.multiscale and len(layer.data) == 4 and tuple(layer.scale) == (PX, PX)
