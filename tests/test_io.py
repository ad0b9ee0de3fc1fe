import pickle
import re

import dask.array as da
import numpy as np
import pytest
import tifffile

from chemozone.errors import ChannelError, ImageError
from chemozone.io import (
    labels_pixel_size_um,
    list_labels_zarr,
    normalize_channel_name,
    read_image,
    read_labels_zarr,
    resolve_channels,
    write_labels_zarr,
    write_ome_tiff,
)


def _img(c=3, y=300, x=200, seed=0):
    return np.random.default_rng(seed).integers(0, 60000, size=(c, y, x), dtype=np.uint16)


def test_ome_tiff_round_trip_lazy(tmp_path):
    arr = _img()
    p = write_ome_tiff(tmp_path / "a.ome.tif", arr, channels=["DAPI", "CD3", "CD8"], pixel_size_um=0.5, tile_px=128)
    img = read_image(p)
    assert img.format == "ome-tiff"
    assert img.channels == ["DAPI", "CD3", "CD8"]
    assert img.pixel_size_um == pytest.approx(0.5)
    assert isinstance(img.data, da.Array) and img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data.compute(), arr)
    np.testing.assert_array_equal(img.data[1, 100:140, 50:90].compute(), arr[1, 100:140, 50:90])
    # the graph pickles (for Dask workers in other processes) and reads after unpickling
    again = pickle.loads(pickle.dumps(img.data))
    np.testing.assert_array_equal(again[2, :10, :10].compute(), arr[2, :10, :10])


def test_pyramidal_tiled_bigtiff_reads_full_resolution_lazily(tmp_path):
    arr = _img(2, 512, 384)
    p = write_ome_tiff(tmp_path / "p.ome.tif", da.from_array(arr, chunks=(1, 256, 256)), channels=["DAPI", "panCK"],
                       pixel_size_um=0.25, tile_px=128, pyramid_levels=2)
    img = read_image(p)
    assert len(img.levels) == 3
    assert img.levels[1].shape == (2, 256, 192) and img.levels[2].shape == (2, 128, 96)
    assert img.data.chunks[1][0] % 128 == 0  # chunks aligned to the file's tiles
    np.testing.assert_array_equal(img.data.compute(), arr)
    # BigTIFF variant via tifffile directly
    tifffile.imwrite(tmp_path / "b.ome.tif", arr, bigtiff=True, tile=(128, 128), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["A", "B"]}, "PhysicalSizeX": 0.3})
    big = read_image(tmp_path / "b.ome.tif")
    assert big.channels == ["A", "B"] and big.pixel_size_um == pytest.approx(0.3)
    np.testing.assert_array_equal(big.data.compute(), arr)


def test_plain_multipage_tiff_takes_names_from_panel(tmp_path):
    arr = _img(4, 64, 64)
    tifffile.imwrite(tmp_path / "plain.tif", arr, photometric="minisblack")
    with pytest.raises(ImageError, match="stores no pixel size; set panel.pixel_size_um"):
        read_image(tmp_path / "plain.tif")
    img = read_image(tmp_path / "plain.tif", channels=list("ABCD"), pixel_size_um=0.65)
    assert img.channels == list("ABCD") and img.pixel_size_um == 0.65
    np.testing.assert_array_equal(img.data.compute(), arr)
    with pytest.raises(ImageError, match="panel.channels lists 2 names for 4 channels"):
        read_image(tmp_path / "plain.tif", channels=["A", "B"], pixel_size_um=0.65)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(ImageError, match="image file not found"):
        read_image(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(ImageError, match="bad.tif: not a readable TIFF"):
        read_image(bad)
    other = tmp_path / "x.png"
    other.write_bytes(b"")
    with pytest.raises(ImageError, match="unsupported image type"):
        read_image(other)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ImageError, match="not a readable OME-Zarr|no 'multiscales'"):
        read_image(tmp_path / "empty.zarr")


def test_ome_zarr_image_round_trip(tmp_path):
    import zarr

    arr = _img(3, 80, 60)
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=arr, chunks=(1, 40, 40))
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.4, 0.4]}]}],
    }]
    root.attrs["omero"] = {"channels": [{"label": "DAPI"}, {"label": "CD3"}, {"label": "CXCL8"}]}
    img = read_image(tmp_path / "img.ome.zarr")
    assert img.format == "ome-zarr" and img.channels == ["DAPI", "CD3", "CXCL8"]
    assert img.pixel_size_um == pytest.approx(0.4)
    np.testing.assert_array_equal(img.data.compute(), arr)
    # what read_image can open (the napari reader asks this)
    from chemozone.io import is_image_path, write_labels_zarr

    write_labels_zarr(tmp_path / "masks.ome.zarr", "nuclei", np.zeros((4, 4), np.uint32), pixel_size_um=0.5)
    (tmp_path / "notes.txt").write_text("x")
    tifffile.imwrite(tmp_path / "plain.TIF", arr[0])
    assert is_image_path(tmp_path / "img.ome.zarr") and is_image_path(tmp_path / "plain.TIF")
    assert not is_image_path(tmp_path / "masks.ome.zarr")  # labels only, no multiscales image
    assert not is_image_path(tmp_path / "notes.txt") and not is_image_path(tmp_path / "missing.tif")
    assert not is_image_path(tmp_path)


def test_labels_zarr_round_trip_chunked(tmp_path):
    lab = np.arange(300 * 200, dtype=np.uint32).reshape(300, 200) % 5000
    store = tmp_path / "masks.ome.zarr"
    write_labels_zarr(store, "cells", da.from_array(lab, chunks=(128, 128)), pixel_size_um=0.5, chunk_px=128)
    write_labels_zarr(store, "tissue", lab > 10, pixel_size_um=2.0)
    assert list_labels_zarr(store) == ["cells", "tissue"]
    out = read_labels_zarr(store, "cells")
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, lab)
    assert read_labels_zarr(store, "tissue").dtype == np.uint8
    assert labels_pixel_size_um(store, "tissue") == 2.0
    # overwrite keeps other labels, replaces atomically
    write_labels_zarr(store, "cells", np.zeros((10, 10), np.uint32), pixel_size_um=0.5)
    assert read_labels_zarr(store, "cells").shape == (10, 10)
    assert list_labels_zarr(store) == ["cells", "tissue"]
    with pytest.raises(ImageError, match=r"no label image 'zones' \(present: \['cells', 'tissue'\]\)"):
        read_labels_zarr(store, "zones")
    # readable by the ome-zarr reference implementation
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = [n for n in Reader(parse_url(str(store / "labels" / "tissue"), fmt=FormatV04()))() if n.data]
    assert nodes and nodes[0].data[0].shape == (300, 200)


@pytest.mark.parametrize("name, spelled", [("CD8", "cd-8"), ("CD8", "CD8 (Opal 520)"), ("panCK", "PanCK"), ("p21", "P21")])
def test_channel_spellings_match(name, spelled):
    assert normalize_channel_name(name) == normalize_channel_name(spelled)
    assert resolve_channels(["DAPI", spelled], [name]) == [1]


def test_channel_aliases_and_missing_channel_lists_image_channels():
    assert resolve_channels(["DAPI", "CD8a"], ["CD8"], aliases={"CD8": ["CD8a"]}) == [1]
    assert resolve_channels(["DAPI", "CD8"], ["CD8a"], aliases={"CD8": ["CD8a"]}) == [1]
    with pytest.raises(ChannelError, match=r"img.tif: channel 'CXCL8' not found; the image has channels \['DAPI', 'CD3'\]"):
        resolve_channels(["DAPI", "CD3"], ["CXCL8"], source="img.tif")


def test_real_qptiff(shared_data):
    img = read_image(shared_data / "qptiff_vectra" / "small_vectra.qptiff")
    assert img.format == "qptiff"
    assert img.channels == ["DAPI", "FITC", "Cy3"]
    assert img.data.shape == (3, 1440, 1920)
    assert img.pixel_size_um == pytest.approx(0.497, abs=0.002)
    plane = img.data[0, :256, :256].compute()
    with tifffile.TiffFile(shared_data / "qptiff_vectra" / "small_vectra.qptiff") as tif:
        np.testing.assert_array_equal(plane, tif.pages[0].asarray()[:256, :256])


def test_real_inform_component_tiff(shared_data):
    p = shared_data / "vectra_phenoptr" / "FIHC4__0929309_HP_IM3_2_component_data.tif"
    img = read_image(p)
    assert img.format == "inform-tiff"
    assert img.channels == ["Alexa 594", "Cy3", "Cy5", "DAPI", "FITC"]
    assert img.data.dtype == np.float32 and img.data.shape[0] == 5
    assert img.pixel_size_um == pytest.approx(0.497, abs=0.002)
    with tifffile.TiffFile(p) as tif:
        np.testing.assert_array_equal(img.data[3].compute(), tif.pages[3].asarray())


def test_real_lymphoid_names_from_config(shared_data):
    from chemozone.config import config_from_dict

    cfg = config_from_dict({"panel": {"channels": ["DAPI", "CD4", "CD8", "FOXP3", "BCL6"], "pixel_size_um": 0.5}})
    img = read_image(shared_data / "lymphoid_5ch" / "input.tiff", channels=cfg.panel.channels,
                     pixel_size_um=cfg.panel.pixel_size_um)
    assert img.channels == ["DAPI", "CD4", "CD8", "FOXP3", "BCL6"]
    assert img.data.shape == (5, 500, 500) and img.data.dtype == np.uint16
    assert img.channel("FOXP3").shape == (500, 500)


# ------------------------------------------------------------------ a folder of single-channel TIFFs (MIBI / IMC)
def _channel_folder(root, names=("HH3", "CD45", "PanKeratin"), shape=(40, 30), dtype=np.uint8):
    folder = root / "fov1"
    folder.mkdir()
    planes = {}
    for i, n in enumerate(names):
        planes[n] = np.random.default_rng(i).poisson(0.5 + i, shape).astype(dtype)
        tifffile.imwrite(folder / f"{n}.tiff", planes[n], resolution=(72, 72))  # 72 dpi: not a pixel size
    return folder, planes


def test_channel_folder_reads_as_one_lazy_image(tmp_path):
    from chemozone.io import is_channel_folder, is_image_path

    folder, planes = _channel_folder(tmp_path)
    (folder / "notes.txt").write_text("ignored")
    assert is_channel_folder(folder) and is_image_path(folder)
    img = read_image(folder, pixel_size_um=0.39)
    assert img.format == "channel-folder" and isinstance(img.data, da.Array)
    assert img.channels == ["CD45", "HH3", "PanKeratin"]  # sorted file stems
    assert img.data.shape == (3, 40, 30) and img.data.dtype == np.uint8
    assert img.pixel_size_um == 0.39  # from the config; the files' 72 dpi is ignored
    for i, n in enumerate(img.channels):
        np.testing.assert_array_equal(img.data[i].compute(), planes[n])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(img.data)).compute(), img.data.compute())
    # panel.channels picks and orders the files (spellings matched like every channel name)
    img = read_image(folder, channels=["hh3", "Pan-Keratin"], pixel_size_um=0.39)
    assert img.channels == ["HH3", "PanKeratin"]
    np.testing.assert_array_equal(img.data[1].compute(), planes["PanKeratin"])


def test_channel_folder_errors(tmp_path):
    from chemozone.io import is_channel_folder, is_image_path

    folder, _ = _channel_folder(tmp_path)
    with pytest.raises(ImageError, match="stores no pixel size; set panel.pixel_size_um"):
        read_image(folder)
    with pytest.raises(ImageError, match=r"panel.channels names 'CD8' but the folder has no such file"):
        read_image(folder, channels=["HH3", "CD8"], pixel_size_um=0.39)
    tifffile.imwrite(folder / "Vimentin.tiff", np.zeros((40, 31), np.uint8))
    with pytest.raises(ImageError, match=r"differ in shape: CD45.tiff \(40, 30\) but Vimentin.tiff \(40, 31\)"):
        read_image(folder, pixel_size_um=0.39)
    tifffile.imwrite(folder / "Vimentin.tiff", np.zeros((40, 30), np.uint16))
    with pytest.raises(ImageError, match=r"differ in dtype: CD45.tiff uint8 but Vimentin.tiff uint16"):
        read_image(folder, pixel_size_um=0.39)
    # a multichannel TIFF in the folder: a folder of sample images, not of channels
    tifffile.imwrite(folder / "Vimentin.tiff", np.zeros((2, 40, 30), np.uint8))
    assert not is_channel_folder(folder) and not is_image_path(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not is_channel_folder(empty) and not is_image_path(empty)
    from chemozone.io._folder import _read_channel_folder

    with pytest.raises(ImageError, match="holds no .tif/.tiff files"):
        _read_channel_folder(empty)
    with pytest.raises(ImageError, match=r"Vimentin.tiff: holds an image of shape \(2, 40, 30\), not one channel"):
        _read_channel_folder(folder)


def test_channel_folders_are_samples(tmp_path):
    from chemozone.samples import load_samples

    folder, _ = _channel_folder(tmp_path)
    write_ome_tiff(tmp_path / "slide2.ome.tif", _img(3, 40, 30), channels=["HH3", "CD45", "PanKeratin"],
                   pixel_size_um=0.39)
    (tmp_path / "truth").mkdir()  # a folder without TIFFs is not a sample
    df = load_samples(tmp_path)
    assert df["sample_id"].tolist() == ["fov1", "slide2"]
    assert df["image"].tolist() == [str(folder.resolve()), str((tmp_path / "slide2.ome.tif").resolve())]
    # the sheet may name the folder as a sample's image
    (tmp_path / "sheet.csv").write_text("sample_id,image,patient,radiation,dose_gy\nP1_fov1,fov1,P1,sham,0\n")
    df = load_samples(tmp_path / "sheet.csv")
    assert df["image"].tolist() == [str(folder.resolve())]
    assert read_image(df["image"][0], pixel_size_um=0.39).channels == ["CD45", "HH3", "PanKeratin"]


def test_real_mibi_channel_folder(shared_data):
    import tifffile as tf

    folder = shared_data / "mibi_fov8" / "channels"
    img = read_image(folder, pixel_size_um=0.39)
    assert len(img.channels) == 22 and img.channels[0] == "Background" and "NaK ATPase" in img.channels
    assert img.data.shape == (22, 1024, 1024) and img.data.dtype == np.uint8
    hh3 = img.channels.index("HH3")
    np.testing.assert_array_equal(img.data[hh3].compute(), tf.imread(folder / "HH3.tiff"))


# ================================================================================================================
# Pixel size: a resolution tag outside 0.05–5 µm/px is not a pixel size (issue 14). The file's plausible value
# wins over panel.pixel_size_um (which then only warns); the config's value is used, and recorded, when the file
# has none or an implausible one; otherwise a one-line error names the file and the key.
# ================================================================================================================
def _dpi72(path, arr=None):
    arr = _img(2, 32, 32) if arr is None else arr
    tifffile.imwrite(path, arr, resolution=(72, 72), resolutionunit="INCH", photometric="minisblack")
    return path


DPI72_ERROR = (r"dpi72\.tif: the file's TIFF resolution tag \(72 pixels per inch\) gives 352\.8 µm/px, not a pixel "
               r"size \(outside 0\.05–5 µm/px\); set panel\.pixel_size_um in the config \(µm per pixel\)$")


def test_72_dpi_tiff_is_not_a_pixel_size(tmp_path):
    p = _dpi72(tmp_path / "dpi72.tif")
    with pytest.raises(ImageError, match=DPI72_ERROR):
        read_image(p)
    img = read_image(p, pixel_size_um=0.5)
    assert img.pixel_size_um == 0.5 and img.pixel_size_source == "config"
    assert img.pixel_size_note == ("the file's TIFF resolution tag (72 pixels per inch) gives 352.8 µm/px, not a pixel "
                                   "size (outside 0.05–5 µm/px)")
    with pytest.raises(ImageError, match=r"and panel\.pixel_size_um = 72 is outside 0\.05–5 µm/px too; set "
                                         r"panel\.pixel_size_um to the image's µm per pixel$"):
        read_image(p, pixel_size_um=72)


def test_plausible_resolution_tag_wins_over_a_different_config_value(tmp_path):
    p = tmp_path / "cm.tif"
    tifffile.imwrite(p, _img(2, 32, 32), resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER",
                     photometric="minisblack")
    img = read_image(p, pixel_size_um=0.5)
    assert img.pixel_size_um == pytest.approx(0.65) and img.pixel_size_source == "file"
    assert "panel.pixel_size_um = 0.5 is ignored" in img.pixel_size_note
    # within 1 %: agreement, no note
    assert read_image(p, pixel_size_um=0.652).pixel_size_note == ""
    ome = write_ome_tiff(tmp_path / "a.ome.tif", _img(2, 32, 32), channels=["A", "B"], pixel_size_um=0.325)
    img = read_image(ome, pixel_size_um=0.5)
    assert img.pixel_size_um == pytest.approx(0.325) and img.pixel_size_source == "file"
    assert img.pixel_size_note.startswith("the file's OME-XML PhysicalSizeX gives 0.325 µm/px; panel.pixel_size_um")


def test_cli_validate_72_dpi_with_and_without_the_config_key(tmp_path, capsys):
    from chemozone.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    _dpi72(folder / "dpi72.tif")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("panel: {channels: [DAPI, CD3], nuclear_channel: DAPI}\n")
    assert main(["validate", str(cfg), str(folder)]) == 1
    out = capsys.readouterr().out
    (problem,) = [ln for ln in out.splitlines() if ln.startswith("problem:")]
    assert re.search(r"^problem: sample 'dpi72': .*" + DPI72_ERROR, problem)
    cfg.write_text("panel: {channels: [DAPI, CD3], nuclear_channel: DAPI, pixel_size_um: 0.5}\n")
    assert main(["validate", str(cfg), str(folder)]) == 0
    out = capsys.readouterr().out
    assert "dpi72: dpi72.tif [tiff] 2x32x32 uint16, 0.5 µm/px (panel.pixel_size_um)" in out
    assert ("note: [pixel_size_from_config] sample 'dpi72': 0.5 µm/px from panel.pixel_size_um: the file's TIFF "
            "resolution tag (72 pixels per inch) gives 352.8 µm/px") in out
    assert out.rstrip().endswith("inputs OK")


@pytest.fixture(scope="module")
def dpi72_field(tmp_path_factory):
    """A synthetic field saved as a plain multi-page TIFF with a 72 dpi tag, and a config written from the README
    (panel.channels, no pixel size yet; no zones)."""
    import yaml

    from chemozone.synth import generate_cohort

    root = tmp_path_factory.mktemp("dpi72")
    cohort = generate_cohort(root / "cohort", preset="tiny", seed=3)
    img = read_image(cohort / "images" / "P01_photon_10Gy_r1.ome.tif")
    _dpi72(root / "dpi72.tif", np.asarray(img.data))
    cfg = yaml.safe_load((cohort / "config.yaml").read_text())
    cfg["panel"] = {"channels": list(img.channels), "nuclear_channel": "DAPI"}
    cfg["zones"], cfg["spatial"] = [], {"cognate_pairs": []}
    for marker in cfg["phenotypes"]["markers"].values():  # one field, no sham to take reference gates from
        marker.pop("gate", None)
    (root / "nopx.yaml").write_text(yaml.safe_dump(cfg))
    cfg["panel"]["pixel_size_um"] = 0.5
    (root / "px.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_cli_run_72_dpi_stops_without_the_key(dpi72_field, tmp_path):
    import os
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "chemozone")
    res = subprocess.run([exe, "run", str(dpi72_field / "dpi72.tif"), "--config", str(dpi72_field / "nopx.yaml"),
                          "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert re.search(r"^chemozone: error: refusing to start: sample 'dpi72': .*" + DPI72_ERROR, res.stderr.strip())
    assert not (tmp_path / "run" / "run.json").exists()


def test_cli_run_72_dpi_uses_and_records_the_config_value(dpi72_field, tmp_path, capsys):
    import json

    import pandas as pd

    from chemozone.cli import main
    from chemozone.layout import RunLayout

    out = tmp_path / "run"
    code = main(["run", str(dpi72_field / "dpi72.tif"), "--config", str(dpi72_field / "px.yaml"), "--out", str(out),
                 "--workers", "0", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert re.match(r"^1/1 samples done \(\d+ warnings?, see below and run\.json\)", stdout.splitlines()[0])
    assert ("warning: [pixel_size_from_config] sample 'dpi72': 0.5 µm/px from panel.pixel_size_um: the file's TIFF "
            "resolution tag (72 pixels per inch) gives 352.8 µm/px") in stdout
    lay = RunLayout(out)
    prov = json.loads(lay.run_json.read_text())
    info = prov["inputs"]["dpi72"]["image_info"]
    assert info["pixel_size_um"] == 0.5 and info["pixel_size_source"] == "config"
    codes = [w["code"] for w in prov["samples"]["dpi72"]["warnings"]]
    # the pixel size first; besides it only gate fallbacks (one field: pooled gates of chemokines that may not be
    # bimodal)
    assert codes[0] == "pixel_size_from_config" and set(codes[1:]) <= {"gate_warning"}, codes
    assert {w["code"] for w in prov["warnings"]} <= {"pixel_size_from_config", "gate_warning"}, prov["warnings"]
    assert prov["samples"]["dpi72"]["step_a"]["pixel_size_um"] == 0.5
    # every µm length follows 0.5 µm/px: the 256-px field spans 128 µm, nuclei have the synthetic size
    cells = pd.read_parquet(lay.cohort_cells)
    assert len(cells) > 10 and cells["x_um"].max() <= 128 and cells["y_um"].max() <= 128
    assert 20 < cells["nucleus_area_um2"].median() < 120  # 6.5–9 µm nuclei: 33–64 µm²
    # the report of this cohort (one sample, no radiation, no dose, no zones) renders with the warning on top
    text = lay.report.read_text(encoding="utf-8")
    assert "pixel_size_from_config" in text[:text.index("<section id='summary'>")]
    assert "could not be drawn" not in text


def test_real_mibi_channel_tiff_carries_a_72_dpi_tag(shared_data):
    p = shared_data / "mibi_fov8" / "channels" / "HH3.tiff"
    with pytest.raises(ImageError, match=r"HH3\.tiff: the file's TIFF resolution tag \(72 pixels per inch\) gives "
                                         r"352\.8 µm/px, not a pixel size"):
        read_image(p)
    img = read_image(p, pixel_size_um=0.39)
    assert img.pixel_size_um == 0.39 and img.pixel_size_source == "config"
