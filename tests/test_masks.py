"""Bring your own masks: ``nuclei_mask`` / ``cells_mask`` sample-sheet columns instead of segmentation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from chemozone.cli import main
from chemozone.errors import MaskError
from chemozone.io import read_label_mask, write_labels_zarr
from chemozone.layout import RunLayout
from chemozone.segment import combine_masks, segment_cells


# ------------------------------------------------------------------------------------------- reading
def _labels() -> np.ndarray:
    a = np.zeros((6, 8), np.int64)
    a[0:2, 0:3] = 7
    a[3:6, 4:8] = 70_000  # non-contiguous, above uint16
    a[4, 0] = 3
    return a


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint32, np.uint64])
def test_integer_masks_keep_their_ids(tmp_path, dtype):
    a = _labels()
    if dtype == np.uint16:
        a[a == 70_000] = 65_000
    p = tmp_path / "m.tif"
    tifffile.imwrite(p, a.astype(dtype))
    out = read_label_mask(str(p), column="cells_mask", shape_yx=(6, 8))
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, a.astype(np.uint32))


def test_ome_zarr_image_and_label_images(tmp_path):
    a = _labels().astype(np.uint32)
    store = tmp_path / "seg.ome.zarr"
    write_labels_zarr(store, "cells", a, pixel_size_um=0.5)
    # the only label image of the store is taken without a selector; a named one with '#name'
    np.testing.assert_array_equal(read_label_mask(str(store), column="cells_mask"), a)
    write_labels_zarr(store, "nuclei", (a > 0) * a, pixel_size_um=0.5)
    np.testing.assert_array_equal(read_label_mask(f"{store}#nuclei", column="nuclei_mask"), a)
    with pytest.raises(MaskError, match=r"seg\.ome\.zarr \(sample-sheet column 'cells_mask'\).*label images"):
        read_label_mask(str(store), column="cells_mask")
    with pytest.raises(MaskError, match=r"no label image 'cytoplasm'.*\['cells', 'nuclei'\]"):
        read_label_mask(f"{store}#cytoplasm", column="cells_mask")


def _inform_maps(path: Path, nucleus: np.ndarray, cytoplasm: np.ndarray) -> None:
    """A TIFF laid out as inForm writes ``*_binary_seg_maps.tif`` (XML page descriptions, uint16 pages)."""
    def seg(kind):
        return ('<?xml version="1.0" encoding="utf-16"?>\r\n<SegmentationImage>\r\n <Version>1</Version>\r\n'
                f' <CompartmentType>{kind}</CompartmentType>\r\n</SegmentationImage>')
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.ones_like(nucleus, np.uint16), description="<?xml?><TissueClassMap></TissueClassMap>",
                 metadata=None)
        tw.write(nucleus.astype(np.uint16), description=seg("Nucleus"), metadata=None)
        tw.write(cytoplasm.astype(np.uint16), description=seg("Cytoplasm"), metadata=None)
        tw.write(((nucleus + cytoplasm) > 0).astype(np.uint16), description=seg("Membrane"), metadata=None)


def test_inform_maps_default_pages_and_selectors(tmp_path):
    nuc = np.zeros((5, 5), np.uint16)
    nuc[1, 1], nuc[3, 3] = 4, 9
    cyto = np.zeros((5, 5), np.uint16)
    cyto[0:3, 0:3] = 4
    cyto[1, 1] = 0
    cyto[3, 4] = 9
    p = tmp_path / "x_binary_seg_maps.tif"
    _inform_maps(p, nuc, cyto)
    np.testing.assert_array_equal(read_label_mask(str(p), column="nuclei_mask"), nuc)
    cells = read_label_mask(str(p), column="cells_mask")  # inForm's cell: nucleus + cytoplasm, same id
    np.testing.assert_array_equal(cells, np.where(nuc > 0, nuc, cyto))
    np.testing.assert_array_equal(read_label_mask(f"{p}#cytoplasm", column="cells_mask"), cyto)
    np.testing.assert_array_equal(read_label_mask(f"{p}#1", column="cells_mask"), nuc)
    with pytest.raises(MaskError, match=r"page 7 does not exist \(the file has 4 pages"):
        read_label_mask(f"{p}#7", column="cells_mask")
    with pytest.raises(MaskError, match=r"no page 'Golgi' \(inForm compartments: \['Cytoplasm', 'Membrane', "):
        read_label_mask(f"{p}#Golgi", column="cells_mask")


def test_multi_plane_tiff_needs_a_page(tmp_path):
    p = tmp_path / "stack.tif"
    stack = np.arange(90, dtype=np.uint16).reshape(3, 5, 6)
    tifffile.imwrite(p, stack, photometric="minisblack")
    with pytest.raises(MaskError, match=r"stack\.tif \(sample-sheet column 'nuclei_mask'\): 3 planes.*'#<page number>'"):
        read_label_mask(str(p), column="nuclei_mask")
    np.testing.assert_array_equal(read_label_mask(f"{p}#2", column="nuclei_mask"), stack[2])


@pytest.mark.parametrize("array, match", [
    (np.full((6, 8), 0.5, np.float32), r"float32 pixels; a label mask holds integer ids.*uint16/uint32"),
    (np.ones((6, 8), bool), r"a boolean \(binary\) image, not labels.*skimage\.measure\.label"),
    (np.tile(np.array([0, -3], np.int32), (6, 4)), r"negative ids \(min -3\).*relabel"),
    (np.full((6, 8), 2**32, np.int64), r"ids up to 4294967296 do not fit uint32.*relabel_sequential"),
    (np.zeros((6, 9), np.uint16), r"mask shape \(6, 9\) differs from the image's \(6, 8\).*full resolution"),
])
def test_bad_masks_are_refused_naming_file_and_column(tmp_path, array, match):
    p = tmp_path / "bad.tif"
    tifffile.imwrite(p, array)
    with pytest.raises(MaskError, match=r"bad\.tif \(sample-sheet column 'cells_mask'\): " + match):
        read_label_mask(str(p), column="cells_mask", shape_yx=(6, 8))


def test_missing_and_unreadable_mask_files(tmp_path):
    with pytest.raises(MaskError, match=r"nope\.tif \(sample-sheet column 'nuclei_mask'\): file not found; fix the "
                                        r"path in the sample sheet"):
        read_label_mask(str(tmp_path / "nope.tif"), column="nuclei_mask")
    (tmp_path / "t.tif").write_text("not a tiff")
    with pytest.raises(MaskError, match=r"t\.tif \(sample-sheet column 'cells_mask'\): not a readable TIFF"):
        read_label_mask(str(tmp_path / "t.tif"), column="cells_mask")


# ----------------------------------------------------------------------------------------- combining
def test_combine_both_masks_with_different_numbering():
    cells = np.zeros((4, 10), np.uint32)
    cells[:, 0:4], cells[:, 5:9] = 11, 500
    nuclei = np.zeros((4, 10), np.uint32)
    nuclei[1:3, 1:3] = 1          # inside cell 11
    nuclei[1:3, 6], nuclei[1:3, 8] = 2, 3  # two nuclei in cell 500 (multinucleated)
    nuclei[0, 9] = 4              # a nucleus outside every cell
    nuc, cel, rec = combine_masks(nuclei, cells, pixel_size_um=0.5)
    assert cel is cells
    np.testing.assert_array_equal(nuc, np.where(nuclei > 0, cells, 0))
    assert set(np.unique(nuc)) == {0, 11, 500}
    assert rec == {"nuclei_from": "mask", "cells_from": "mask", "nuclei_outside_cells": 1, "n_cells": 2,
                   "cells_without_nucleus": 0}


def test_combine_cells_only_and_nuclei_only():
    cells = np.zeros((5, 5), np.uint32)
    cells[1:4, 1:4] = 42
    nuc, cel, rec = combine_masks(None, cells, pixel_size_um=0.5)
    assert nuc is None and rec["nuclei_from"] == "none" and rec["n_cells"] == 1
    nuclei = np.zeros((9, 9), np.uint32)
    nuclei[2, 2], nuclei[6, 6] = 5, 900
    nuc, cel, rec = combine_masks(nuclei, None, pixel_size_um=0.5, expand_um=1.0)
    np.testing.assert_array_equal(cel, segment_cells(nuclei, pixel_size_um=0.5, expand_um=1.0))
    assert rec["cells_from"] == "expanded nuclei" and rec["n_cells"] == 2 and rec["expand_um"] == 1.0
    with pytest.raises(ValueError, match="needs nuclei, cells or both"):
        combine_masks(None, None, pixel_size_um=0.5)


def test_rgb_image_is_not_a_mask(tmp_path):
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, np.zeros((6, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(MaskError, match=r"rgb\.tif \(sample-sheet column 'cells_mask'\): an RGB\(A\) image"):
        read_label_mask(str(p), column="cells_mask")


# ------------------------------------------------------------------------------------ through the CLI
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from chemozone.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, preset="tiny", seed=3)
    return out


def _truth(tiny: Path, sid: str, name: str) -> np.ndarray:
    return tifffile.imread(tiny / "truth" / sid / f"{name}.tif")


def _run(sheet: pd.DataFrame, cfg: Path, tmp_path: Path, *extra: str) -> tuple[int, Path]:
    sheet.to_csv(tmp_path / "samples.csv", index=False)
    out = tmp_path / "run"
    code = main(["run", str(tmp_path / "samples.csv"), "--config", str(cfg), "--out", str(out), "--workers", "0",
                 "--quiet", "--no-report", *extra])
    return code, out


def test_run_with_precomputed_masks_and_bad_ones_skipped(tiny, tmp_path):
    """Both masks (int64, non-contiguous ids), nuclei only, a mask of the wrong shape, a mask with negative ids
    and a segmented sample in one run with --on-error skip."""
    sheet = pd.read_csv(tiny / "samples.csv")
    sheet["image"] = [str(tiny / p) for p in sheet["image"]]
    s_both, s_nuc, s_shape, s_seg = sheet["sample_id"]
    cells_t, nuclei_t = _truth(tiny, s_both, "cells"), _truth(tiny, s_both, "nuclei")
    remap = np.where(cells_t > 0, cells_t.astype(np.int64) * 1000 + 70_007, 0)  # ids 71007, 72007, ...
    tifffile.imwrite(tmp_path / "both_cells.tif", remap)
    tifffile.imwrite(tmp_path / "both_nuclei.tif", nuclei_t.astype(np.uint16))  # numbered 1..n: differently
    tifffile.imwrite(tmp_path / "nuc_only.tif", _truth(tiny, s_nuc, "nuclei").astype(np.int32))
    tifffile.imwrite(tmp_path / "cropped.tif", _truth(tiny, s_shape, "cells")[:-8])
    neg = _truth(tiny, s_seg, "cells").astype(np.int32)
    neg[neg == neg.max()] = -5
    tifffile.imwrite(tmp_path / "negative.tif", neg)
    neg_row = sheet.iloc[[3]].assign(sample_id="negative_ids")
    sheet = pd.concat([sheet, neg_row], ignore_index=True)
    sheet["nuclei_mask"] = ["both_nuclei.tif", "nuc_only.tif", "", "", "negative.tif"]  # relative to the sheet
    sheet["cells_mask"] = ["both_cells.tif", "", "cropped.tif", "", ""]
    code, out = _run(sheet, tiny / "config.yaml", tmp_path, "--on-error", "skip")
    assert code == 3
    prov = json.loads((out / "run.json").read_text())
    lay = RunLayout(out)
    st = prov["samples"]
    assert {s: st[s]["status"] for s in st} == {s_both: "done", s_nuc: "done", s_shape: "failed", s_seg: "done",
                                                 "negative_ids": "failed"}
    assert st[s_shape]["stage"] == "validate"
    assert "cropped.tif (sample-sheet column 'cells_mask'): mask shape (248, 256) differs from the image's " \
           "(256, 256)" in st[s_shape]["error"]
    assert st["negative_ids"]["stage"] == "masks" and "negative.tif (sample-sheet column 'nuclei_mask'): negative " \
        "ids (min -5)" in st["negative_ids"]["error"]
    for bad in (s_shape, "negative_ids"):  # nothing written for a refused sample
        assert not lay.sample_dir(bad).exists() or not any(lay.sample_dir(bad).iterdir())

    # both masks: the cells mask's ids kept; every cell has its nucleus (the truth nucleus inside it)
    m = pd.read_parquet(lay.measurements(s_both))
    assert sorted(m["cell_id"]) == sorted(set(np.unique(remap)) - {0})
    from chemozone.io import read_labels_zarr

    np.testing.assert_array_equal(read_labels_zarr(lay.masks(s_both), "cells"), remap)
    np.testing.assert_array_equal(read_labels_zarr(lay.masks(s_both), "nuclei"), np.where(nuclei_t > 0, remap, 0))
    assert (m["nucleus_area_um2"] > 0).all()
    rec = st[s_both]["step_a"]["segmentation"]
    assert rec["method"] == "precomputed" and rec["cells_from"] == "mask" and rec["nuclei_from"] == "mask"
    assert rec["masks"]["cells_mask"]["path"] == str(tmp_path / "both_cells.tif")
    assert rec["masks"]["cells_mask"]["n_objects"] == len(m) and rec["cells_without_nucleus"] == 0
    assert prov["inputs"][s_both]["masks"]["nuclei_mask"]["sha256"]
    # nuclei only: cells grown as the default segmenter grows them (expand_um of the config: 3 µm)
    cells_nuc = read_labels_zarr(lay.masks(s_nuc), "cells")
    np.testing.assert_array_equal(cells_nuc, segment_cells(_truth(tiny, s_nuc, "nuclei"), pixel_size_um=0.5,
                                                           expand_um=3.0))
    assert st[s_nuc]["step_a"]["segmentation"]["cells_from"] == "expanded nuclei"
    assert "segmentation" not in st[s_seg]["step_a"]  # segmented as usual
    cells = pd.read_parquet(lay.cohort_cells)
    assert set(cells["sample_id"]) == {s_both, s_nuc, s_seg}
    assert not {"nuclei_mask", "cells_mask"} & set(cells.columns)
    for t in (lay.cohort_infiltration, lay.cohort_zones):  # downstream ran for the mask samples
        assert {s_both, s_nuc} <= set(pd.read_parquet(t)["sample_id"])


def test_cells_only_mask(tiny, tmp_path, capsys):
    """A whole-cell mask alone: no nucleus compartment (NaN), cell means from the mask; a nucleus/cytoplasm gate
    is refused before the run starts."""
    sheet = pd.read_csv(tiny / "samples.csv").iloc[[0]]
    sid = sheet["sample_id"].iloc[0]
    sheet["image"] = [str(tiny / p) for p in sheet["image"]]
    cells_t = _truth(tiny, sid, "cells")
    tifffile.imwrite(tmp_path / "cells.tif", cells_t)
    sheet["cells_mask"] = [str(tmp_path / "cells.tif")]
    code, out = _run(sheet, tiny / "config.yaml", tmp_path)
    assert code == 1
    err = capsys.readouterr().err
    assert "cells.tif (sample-sheet column 'cells_mask'): a cells mask without a nuclei_mask has no nucleus " \
           "compartment, but phenotypes.markers.panCK.compartment is 'cytoplasm'; add a nuclei_mask" in err
    assert not (out / "run.json").exists()
    cfg = (tiny / "config.yaml").read_text().replace("compartment: cytoplasm", "compartment: cell").replace(
        "compartment: nucleus", "compartment: cell")
    (tmp_path / "c.yaml").write_text(cfg)
    code, out = _run(sheet, tmp_path / "c.yaml", tmp_path)
    assert code == 0
    lay = RunLayout(out)
    m = pd.read_parquet(lay.measurements(sid))
    assert sorted(m["cell_id"]) == sorted(set(np.unique(cells_t)) - {0})
    assert m["CD45_nucleus"].isna().all() and m["nucleus_area_um2"].isna().all()
    from chemozone.io import list_labels_zarr, read_image

    assert "nuclei" not in list_labels_zarr(lay.masks(sid))
    img = read_image(sheet["image"].iloc[0])
    cd45 = np.asarray(img.channel("CD45"), float)
    for cid in m["cell_id"].iloc[:5]:  # the mean over the mask's pixels, computed directly
        assert m.loc[m["cell_id"] == cid, "CD45_cell"].item() == pytest.approx(cd45[cells_t == cid].mean(), rel=1e-9)
    assert len(pd.read_parquet(lay.cohort_infiltration))


def test_missing_mask_file_refuses_or_skips(tiny, tmp_path, capsys):
    sheet = pd.read_csv(tiny / "samples.csv").iloc[:2]
    sheet["image"] = [str(tiny / p) for p in sheet["image"]]
    sheet["nuclei_mask"] = ["", "gone/nuclei.tif"]  # the irradiated sample's: the sham stays as the reference
    code, out = _run(sheet, tiny / "config.yaml", tmp_path)
    assert code == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gone' / 'nuclei.tif'} (sample-sheet column 'nuclei_mask'): file not found; fix the path" in err
    assert err.strip().count("\n") == 0 and not (out / "run.json").exists()
    code, out = _run(sheet, tiny / "config.yaml", tmp_path, "--on-error", "skip")
    assert code == 3
    st = json.loads((out / "run.json").read_text())["samples"]
    assert st[sheet["sample_id"].iloc[1]]["status"] == "failed" and st[sheet["sample_id"].iloc[0]]["status"] == "done"


def test_inform_set4_maps_as_precomputed_masks(shared_data, tmp_path):
    """inForm's Set4 nucleus and cell maps (6,072 nuclei) through ``chemozone run``: one cell per object of the map,
    with inForm's Cell IDs. The component image is not distributed, so inForm's composite (RGB JPEG of the same
    field) stands in as the image; pixel size 0.5 µm (Vectra 20x)."""
    from PIL import Image

    from chemozone.io import write_ome_tiff

    maps = shared_data / "exports" / "inform_Set4_binary_seg_maps.tif"
    rgb = np.asarray(Image.open(shared_data / "exports" / "inform_Set4_composite_image.jpg").convert("RGB"))
    write_ome_tiff(tmp_path / "set4.ome.tif", np.moveaxis(rgb, -1, 0).copy(), channels=["R", "G", "B"],
                   pixel_size_um=0.5)
    with tifffile.TiffFile(maps) as tif:
        nucleus = tif.pages[1].asarray()
    ids = set(np.unique(nucleus)) - {0}
    assert len(ids) == 6072
    sheet = pd.DataFrame({"sample_id": ["Set4"], "image": [str(tmp_path / "set4.ome.tif")], "patient": ["P1"],
                          "radiation": [""], "dose_gy": [""], "nuclei_mask": [str(maps)], "cells_mask": [str(maps)]})
    (tmp_path / "c.yaml").write_text("panel:\n  nuclear_channel: B\n")
    code, out = _run(sheet, tmp_path / "c.yaml", tmp_path)
    assert code == 0
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == 6072 and set(cells["cell_id"]) == ids
    rec = json.loads((out / "run.json").read_text())["samples"]["Set4"]["step_a"]["segmentation"]
    assert rec["masks"]["nuclei_mask"]["source"] == "inForm Nucleus"
    assert rec["masks"]["cells_mask"]["source"] == "inForm Nucleus + Cytoplasm"
    assert rec["masks"]["nuclei_mask"]["n_objects"] == 6072 and rec["n_cells"] == 6072


# ----------------------------------------------------------------------------- real masks through the CLI
def test_mibi_deepcell_cells_mask_gives_the_direct_per_cell_means(shared_data, tmp_path):
    """The MIBI-TOF field ``mibi_fov8`` (a folder of 22 single-channel count TIFFs) with its DeepCell/Mesmer
    whole-cell mask (int16, 272 cells) as the ``cells_mask``, through ``chemozone run``: every cell's mean of every
    channel in ``cells.parquet`` equals scipy.ndimage.mean over that label's pixels of the channel file, and the
    positions and areas are the labels' centroids (pixel centres) and pixel counts at 0.39 µm/px."""
    from scipy import ndimage as ndi

    folder = shared_data / "mibi_fov8" / "channels"
    mask_path = shared_data / "mibi_fov8" / "deepcell_whole_cell_labels.tiff"
    sheet = pd.DataFrame({"sample_id": ["fov8"], "image": [str(folder)], "patient": ["P1"], "radiation": [""],
                          "dose_gy": [""], "cells_mask": [str(mask_path)]})
    # the README's MIBI config (pixel size, nuclear channel); a whole-cell mask has only the cell compartment
    (tmp_path / "c.yaml").write_text("panel:\n  pixel_size_um: 0.39\n  nuclear_channel: HH3\nquantification:\n"
                                     "  compartments: [cell]\nrun:\n  write_qc: false\n")
    code, out = _run(sheet, tmp_path / "c.yaml", tmp_path)
    assert code == 0
    cells = pd.read_parquet(out / "cells.parquet").set_index("cell_id").sort_index()
    labels = tifffile.imread(mask_path)
    assert labels.dtype == np.int16
    ids = np.unique(labels[labels > 0])
    assert len(ids) == 272 and cells.index.tolist() == ids.tolist()  # DeepCell's ids kept
    files = sorted(folder.glob("*.tiff"))
    assert len(files) == 22
    for f in files:
        direct = ndi.mean(tifffile.imread(f).astype(np.float64), labels, ids)
        np.testing.assert_allclose(cells[f"{f.stem}_cell"].to_numpy(), direct, rtol=1e-12, atol=0, err_msg=f.stem)
    px = 0.39
    np.testing.assert_allclose(cells["area_um2"], ndi.sum(np.ones(labels.shape), labels, ids) * px**2, rtol=1e-12)
    cy, cx = np.transpose(ndi.center_of_mass(np.ones(labels.shape), labels, ids))
    np.testing.assert_allclose(cells["x_um"], (cx + 0.5) * px, rtol=1e-9)
    np.testing.assert_allclose(cells["y_um"], (cy + 0.5) * px, rtol=1e-9)
    rec = json.loads((out / "run.json").read_text())["samples"]["fov8"]["step_a"]["segmentation"]
    assert rec["method"] == "precomputed" and rec["cells_from"] == "mask" and rec["nuclei_from"] == "none"
    assert rec["masks"]["cells_mask"]["dtype"] == "int16" and rec["masks"]["cells_mask"]["n_objects"] == 272


def test_fihc4_inform_nucleus_map_reproduces_inform_nucleus_means(shared_data, tmp_path):
    """The Vectra field FIHC4 (inForm component image, 5 unmixed channels) with inForm's own nucleus map (page
    Nucleus of ``_binary_seg_maps.tif``, 270 nuclei) as the ``nuclei_mask`` and inForm's cell (Nucleus +
    Cytoplasm pages) as the ``cells_mask``, through ``chemozone run`` with an empty config: every nucleus mean of
    inForm's ``cell_seg_data.txt`` (5 channels x 270 cells, 3 decimals) is reproduced to the table's rounding, and
    so are the nucleus areas (pixels) and, for the cells whose cytoplasm pixel count agrees with inForm's, the
    cytoplasm means (``tests/test_quantify.py`` checks the same numbers on the library function)."""
    stem = shared_data / "vectra_phenoptr" / "FIHC4__0929309_HP_IM3_2"
    maps = f"{stem}_binary_seg_maps.tif"
    sheet = pd.DataFrame({"sample_id": ["FIHC4"], "image": [f"{stem}_component_data.tif"], "patient": ["P1"],
                          "radiation": [""], "dose_gy": [""], "nuclei_mask": [maps], "cells_mask": [maps]})
    (tmp_path / "c.yaml").write_text("run:\n  write_qc: false\n")  # channels and pixel size from the file
    code, out = _run(sheet, tmp_path / "c.yaml", tmp_path)
    assert code == 0
    ours = pd.read_parquet(out / "cells.parquet").set_index("cell_id").sort_index()
    inform = pd.read_csv(f"{stem}_cell_seg_data.txt", sep="\t").set_index("Cell ID").sort_index()
    assert len(inform) == 270 and ours.index.tolist() == inform.index.tolist()
    rec = json.loads((out / "run.json").read_text())["samples"]["FIHC4"]["step_a"]
    px = rec["pixel_size_um"]
    assert rec["segmentation"]["masks"]["nuclei_mask"]["source"] == "inForm Nucleus"
    np.testing.assert_array_equal(np.rint(ours["nucleus_area_um2"] / px**2), inform["Nucleus Area (pixels)"])
    worst = {}
    for ch in ("Alexa 594", "Cy3", "Cy5", "DAPI", "FITC"):
        diff = np.abs(ours[f"{ch}_nucleus"] - inform[f"Nucleus {ch} Mean (Normalized Counts, Total Weighting)"])
        worst[ch] = float(diff.max())
    assert max(worst.values()) <= 0.0005 + 1e-9, worst  # the table rounds to 3 decimals
    # inForm's Cytoplasm page overlaps other cells' nuclei (1,319 px; only 37 of the 270 cytoplasms avoid every
    # nucleus) while our compartments partition the cell (the nucleus keeps its pixels): where the cytoplasm pixel
    # counts agree, the means agree too
    cyt_px = np.rint((ours["area_um2"] - ours["nucleus_area_um2"]) / px**2)
    same = (cyt_px == inform["Cytoplasm Area (pixels)"]).to_numpy()
    assert same.sum() >= 35
    for ch in ("Alexa 594", "Cy3", "Cy5", "DAPI", "FITC"):
        diff = np.abs(ours[f"{ch}_cytoplasm"] - inform[f"Cytoplasm {ch} Mean (Normalized Counts, Total Weighting)"])
        assert (diff[same] <= 0.0005 + 1e-9).all(), ch
