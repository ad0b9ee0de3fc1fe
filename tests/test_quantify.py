"""Tests of chemozone.quantify: hand computations, tiled == untiled, dask == numpy, golden inForm table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chemozone.errors import ChannelError, ConfigError, ImageError
from chemozone.quantify import quantify_cells

ALL_STATS = ("mean", "total", "std", "median", "p90")


# ------------------------------------------------------------------------------------------ fixtures
def _hand_5x5():
    """Two cells on a 5×5 image: cell 1 (left 2 columns), cell 3 (a 3×3 block) with a nucleus."""
    img = np.arange(25, dtype=np.uint16).reshape(1, 5, 5)
    cells = np.array(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 3, 3, 3],
            [0, 0, 3, 3, 3],
            [0, 0, 3, 3, 3],
        ],
        dtype=np.uint32,
    )
    nuclei = np.zeros((5, 5), np.uint32)
    nuclei[3, 3] = 3
    nuclei[3, 4] = 3
    nuclei[0, 0] = 9  # a nucleus pixel of another label inside cell 1: not cell 1's nucleus
    return img, cells, nuclei


def _brute(img, cells, nuclei, channels, px):
    rows = []
    for lab in np.unique(cells[cells > 0]):
        cell = cells == lab
        nuc = cell & (nuclei == lab) if nuclei is not None else np.zeros_like(cell)
        cyt = cell & ~nuc
        rr, cc = np.nonzero(cell)
        row = {
            "cell_id": lab,
            "x_um": (cc.mean() + 0.5) * px,
            "y_um": (rr.mean() + 0.5) * px,
            "area_um2": cell.sum() * px * px,
            "nucleus_area_um2": nuc.sum() * px * px if nuclei is not None else np.nan,
        }
        for ci, ch in enumerate(channels):
            for comp, m in (("nucleus", nuc), ("cytoplasm", cyt), ("cell", cell)):
                v = img[ci][m].astype(np.float64)
                defined = v.size > 0 and (nuclei is not None or comp == "cell")
                row[f"{ch}_{comp}"] = v.mean() if defined else np.nan
                row[f"{ch}_{comp}_total"] = v.sum() if defined else np.nan
                row[f"{ch}_{comp}_std"] = v.std() if defined else np.nan
                row[f"{ch}_{comp}_median"] = np.median(v) if defined else np.nan
                row[f"{ch}_{comp}_p90"] = np.quantile(v, 0.9) if defined else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _synthetic(h=120, w=150, n=60, c=3, seed=0, dtype=np.uint16):
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    seeds = np.zeros((h, w), np.uint32)
    pts = rng.integers(0, [h, w], (n, 2))
    seeds[pts[:, 0], pts[:, 1]] = rng.permutation(np.arange(1, n + 1)) * 3
    cells = expand_labels(seeds, 7).astype(np.uint32)
    nuclei = np.where(expand_labels(seeds, 3) == cells, cells, 0).astype(np.uint32)
    if np.dtype(dtype).kind == "f":
        img = rng.normal(100, 30, (c, h, w)).astype(dtype)
    else:
        img = rng.integers(0, np.iinfo(dtype).max, (c, h, w)).astype(dtype)
    return img, cells, nuclei


# ------------------------------------------------------------------------------------- hand computed
def test_hand_5x5_means_areas_centroids():
    img, cells, nuclei = _hand_5x5()
    df = quantify_cells(img, cells, nuclei=nuclei, channels=["DAPI"], pixel_size_um=0.5,
                        statistics=ALL_STATS)
    assert df["cell_id"].tolist() == [1, 3]
    assert df["cell_id"].dtype == np.uint32
    c1, c3 = df.iloc[0], df.iloc[1]
    # cell 1 = pixels 0, 1, 5, 6 -> mean 3; no own nucleus
    assert c1["DAPI_cell"] == 3.0
    assert c1["DAPI_cytoplasm"] == 3.0
    assert np.isnan(c1["DAPI_nucleus"])
    assert c1["nucleus_area_um2"] == 0.0
    assert c1["area_um2"] == 4 * 0.25
    assert (c1["x_um"], c1["y_um"]) == (1.0 * 0.5, 1.0 * 0.5)  # mean col 0.5 -> (0.5 + 0.5) px
    # cell 3 = 12,13,14,17,18,19,22,23,24 (mean 18); nucleus = 18, 19 (mean 18.5); cytoplasm = rest
    assert c3["DAPI_cell"] == 18.0
    assert c3["DAPI_nucleus"] == 18.5
    assert c3["DAPI_cytoplasm"] == (12 + 13 + 14 + 17 + 22 + 23 + 24) / 7
    assert c3["DAPI_cell_total"] == 162.0
    assert c3["DAPI_nucleus_median"] == 18.5
    assert c3["DAPI_cell_median"] == 18.0
    assert c3["DAPI_cell_p90"] == pytest.approx(np.quantile([12, 13, 14, 17, 18, 19, 22, 23, 24], 0.9))
    assert c3["DAPI_nucleus_std"] == 0.5
    assert c3["nucleus_area_um2"] == 2 * 0.25
    assert (c3["x_um"], c3["y_um"]) == (1.75, 1.75)  # (3 + 0.5) * 0.5: centre of pixel (3, 3)
    # the centroid convention: the cell's centroid falls in its centre pixel
    assert (int(c3["y_um"] / 0.5), int(c3["x_um"] / 0.5)) == (3, 3)


def test_column_order_and_names():
    img, cells, nuclei = _hand_5x5()
    img2 = np.concatenate([img, img * 2])
    df = quantify_cells(img2, cells, nuclei=nuclei, channels=["DAPI", "CD3"], pixel_size_um=1.0,
                        compartments=("cell", "nucleus"), statistics=("mean", "p90"), morphology=True)
    assert list(df.columns) == [
        "cell_id", "x_um", "y_um", "area_um2", "nucleus_area_um2",
        "DAPI_cell", "DAPI_cell_p90", "DAPI_nucleus", "DAPI_nucleus_p90",
        "CD3_cell", "CD3_cell_p90", "CD3_nucleus", "CD3_nucleus_p90",
        "eccentricity", "solidity", "major_axis_length_um", "minor_axis_length_um",
    ]
    assert df["CD3_cell"].tolist() == [6.0, 36.0]  # raw intensities, never rescaled


def test_background_subtraction_not_clipped():
    img, cells, nuclei = _hand_5x5()
    df = quantify_cells(img, cells, nuclei=nuclei, channels=["DAPI"], pixel_size_um=1.0,
                        statistics=ALL_STATS, background={"DAPI": 10.0})
    ref = quantify_cells(img, cells, nuclei=nuclei, channels=["DAPI"], pixel_size_um=1.0,
                         statistics=ALL_STATS)
    assert df["DAPI_cell"].tolist() == [3.0 - 10.0, 8.0]  # negative allowed (no clipping)
    np.testing.assert_allclose(df["DAPI_cell_median"], ref["DAPI_cell_median"] - 10)
    np.testing.assert_allclose(df["DAPI_cell_p90"], ref["DAPI_cell_p90"] - 10)
    np.testing.assert_allclose(df["DAPI_cell_total"], ref["DAPI_cell_total"] - 10 * np.array([4, 9]))
    np.testing.assert_allclose(df["DAPI_cell_std"], ref["DAPI_cell_std"])
    # same as subtracting from every pixel
    sub = quantify_cells(img.astype(np.float64) - 10, cells, nuclei=nuclei, channels=["DAPI"],
                         pixel_size_um=1.0, statistics=ALL_STATS)
    pd.testing.assert_frame_equal(df, sub, rtol=1e-12)


def test_without_nuclei_nucleus_columns_are_nan():
    img, cells, _ = _hand_5x5()
    df = quantify_cells(img, cells, channels=["DAPI"], pixel_size_um=1.0, statistics=("mean", "median"))
    assert df["nucleus_area_um2"].isna().all()
    assert df["DAPI_nucleus"].isna().all() and df["DAPI_cytoplasm_median"].isna().all()
    assert df["DAPI_cell"].tolist() == [3.0, 18.0]


def test_empty_labels_give_empty_table_with_columns():
    img = np.ones((2, 8, 8), np.uint16)
    df = quantify_cells(img, np.zeros((8, 8), np.uint32), channels=["a", "b"], pixel_size_um=1.0)
    assert len(df) == 0
    assert "a_nucleus" in df.columns and df["cell_id"].dtype == np.uint32


# ------------------------------------------------------------------------------ tiled == untiled etc.
@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 23), w=st.integers(1, 23), n_labels=st.integers(1, 6),
    tile=st.integers(1, 12), seed=st.integers(0, 2**16), big=st.booleans(),
)
def test_tiled_equals_untiled_equals_brute_force(h, w, n_labels, tile, seed, big):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, n_labels + 1, (h, w))
    offset = 4_000_000_000 if big else 0  # huge label values exercise the sorted-lookup path
    cells = np.where(values > 0, values + offset, 0).astype(np.uint32)
    nuclei = np.where(rng.random((h, w)) < 0.5, cells, 0).astype(np.uint32)
    img = rng.integers(0, 1000, (2, h, w)).astype(np.uint16)
    whole = quantify_cells(img, cells, nuclei=nuclei, channels=["a", "b"], pixel_size_um=0.5,
                           statistics=ALL_STATS, tile_size_px=64)
    tiled = quantify_cells(img, cells, nuclei=nuclei, channels=["a", "b"], pixel_size_um=0.5,
                           statistics=ALL_STATS, tile_size_px=tile)
    pd.testing.assert_frame_equal(whole, tiled, rtol=1e-12)
    brute = _brute(img, cells, nuclei, ["a", "b"], 0.5)
    if len(brute):
        brute["cell_id"] = brute["cell_id"].astype(np.uint32)
        pd.testing.assert_frame_equal(whole, brute[whole.columns], rtol=1e-10, atol=1e-9)
    else:
        assert len(whole) == 0


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.uint8])
def test_numpy_fallback_equals_compiled_kernel(dtype, monkeypatch):
    img, cells, nuclei = _synthetic(dtype=dtype)
    kw = dict(nuclei=nuclei, channels=["a", "b", "c"], pixel_size_um=0.5, statistics=ALL_STATS,
              morphology=True, tile_size_px=50)
    fast = quantify_cells(img, cells, **kw)
    monkeypatch.setenv("CHEMOZONE_NO_NUMBA", "1")
    slow = quantify_cells(img, cells, **kw)
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-12)
    brute = _brute(img, cells, nuclei, ["a", "b", "c"], 0.5)
    brute["cell_id"] = brute["cell_id"].astype(np.uint32)
    cols = [c for c in brute.columns if c in fast.columns]
    pd.testing.assert_frame_equal(fast[cols], brute[cols], rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_threaded_row_bands_equal_single_pass_and_fallback(dtype, monkeypatch):
    """Integer images may be measured in parallel row bands (exact int64 sums); every path gives the same table."""
    img, cells, nuclei = _synthetic(h=90, w=70, n=30, dtype=dtype)
    cells = cells.copy()
    cells[cells == 3] = 4_000_000_000  # a label far from the others: the sorted-lookup path of the kernel
    kw = dict(nuclei=nuclei, channels=["a", "b", "c"], pixel_size_um=0.5, statistics=ALL_STATS,
              morphology=True, tile_size_px=64)
    monkeypatch.setenv("CHEMOZONE_QUANT_THREADS", "3")
    banded = quantify_cells(img, cells, **kw)
    monkeypatch.setenv("CHEMOZONE_QUANT_THREADS", "1")
    single = quantify_cells(img, cells, **kw)
    monkeypatch.setenv("CHEMOZONE_NO_NUMBA", "1")
    slow = quantify_cells(img, cells, **kw)
    pd.testing.assert_frame_equal(banded, single, check_exact=True)
    pd.testing.assert_frame_equal(single, slow, check_exact=True)


def test_dask_and_zarr_inputs_equal_numpy(tmp_path):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    img, cells, nuclei = _synthetic(h=130, w=97)
    zc = zarr.open_array(str(tmp_path / "cells.zarr"), mode="w", shape=cells.shape, chunks=(40, 40),
                         dtype="uint32")
    zc[:] = cells
    kw = dict(channels=["a", "b", "c"], pixel_size_um=0.65, statistics=ALL_STATS, morphology=True)
    ref = quantify_cells(img, cells, nuclei=nuclei, tile_size_px=1000, **kw)
    got = quantify_cells(da.from_array(img, chunks=(1, 33, 33)), da.from_zarr(zc),
                         nuclei=da.from_array(nuclei, chunks=25), tile_size_px=40, **kw)
    pd.testing.assert_frame_equal(ref, got, rtol=1e-12)


def test_morphology_matches_regionprops_moments_and_solidity():
    from skimage.measure import regionprops_table

    img, cells, nuclei = _synthetic(n=40, seed=3)
    cells = cells.copy()
    cells[10:20, 10:30] = 999  # a rectangle: solidity 1
    cells[40:60, 100:104] = 1000  # an L shape: 20×4 + 4×12
    cells[56:60, 104:116] = 1000
    df = quantify_cells(img, cells, channels=["a", "b", "c"], pixel_size_um=0.5, morphology=True,
                        tile_size_px=37)
    rp = pd.DataFrame(regionprops_table(cells, properties=("label", "eccentricity", "axis_major_length",
                                                           "axis_minor_length")))
    np.testing.assert_array_equal(rp["label"], df["cell_id"])
    np.testing.assert_allclose(df["eccentricity"], rp["eccentricity"], atol=1e-6)
    np.testing.assert_allclose(df["major_axis_length_um"], rp["axis_major_length"] * 0.5, rtol=1e-9)
    np.testing.assert_allclose(df["minor_axis_length_um"], rp["axis_minor_length"] * 0.5, rtol=1e-9, atol=1e-9)
    sol = df.set_index("cell_id")["solidity"]
    assert sol[999] == 1.0
    # L: 128 pixels; the hull of its pixel centres (x, y) = (100,40),(103,40),(115,56),(115,59),(100,59)
    # adds, in rows 40..55, the centres right of x = 103 up to the edge x = 103 + 0.75 (r - 40):
    # floor(0.75 k) for k = 0..15 -> 0+0+1+2+3+3+4+5+6+6+7+8+9+9+10+11 = 84
    assert sum(int(np.floor(0.75 * k)) for k in range(16)) == 84
    assert sol[1000] == 128 / (128 + 84)
    assert (df["solidity"] <= 1).all()


# ------------------------------------------------------------------------------------ error branches
def test_error_label_shape_mismatch():
    with pytest.raises(ImageError, match=r"cells labels have shape \(4, 5\)"):
        quantify_cells(np.zeros((1, 5, 5)), np.zeros((4, 5), np.uint32), channels=["a"], pixel_size_um=1)
    with pytest.raises(ImageError, match=r"nuclei labels have shape"):
        quantify_cells(np.zeros((1, 5, 5)), np.zeros((5, 5), np.uint32), nuclei=np.zeros((5, 6), np.uint32),
                       channels=["a"], pixel_size_um=1)


def test_error_image_not_cyx():
    with pytest.raises(ImageError, match=r"must be \(C, Y, X\)"):
        quantify_cells(np.zeros((5, 5)), np.zeros((5, 5), np.uint32), channels=["a"], pixel_size_um=1)


def test_error_channel_count_mismatch():
    with pytest.raises(ImageError, match="2 channel names for an image with 3 channels"):
        quantify_cells(np.zeros((3, 5, 5)), np.zeros((5, 5), np.uint32), channels=["a", "b"], pixel_size_um=1)


def test_error_duplicate_channel_names():
    with pytest.raises(ImageError, match="duplicate channel names"):
        quantify_cells(np.zeros((2, 5, 5)), np.zeros((5, 5), np.uint32), channels=["a", "a"], pixel_size_um=1)


def test_error_non_integer_labels():
    with pytest.raises(ImageError, match="cells labels have dtype float32; labels must be integers"):
        quantify_cells(np.zeros((1, 5, 5)), np.zeros((5, 5), np.float32), channels=["a"], pixel_size_um=1)


def test_error_bad_pixel_size():
    with pytest.raises(ImageError, match="pixel_size_um must be a positive number"):
        quantify_cells(np.zeros((1, 5, 5)), np.zeros((5, 5), np.uint32), channels=["a"], pixel_size_um=0)


def test_error_unknown_compartment_and_statistic():
    args = (np.zeros((1, 5, 5)), np.zeros((5, 5), np.uint32))
    with pytest.raises(ConfigError, match=r"quantification.compartments: unknown compartment\(s\) \['membrane'\]"):
        quantify_cells(*args, channels=["a"], pixel_size_um=1, compartments=("membrane",))
    with pytest.raises(ConfigError, match=r"quantification.statistics: unknown statistic\(s\) \['max'\]"):
        quantify_cells(*args, channels=["a"], pixel_size_um=1, statistics=("max",))


def test_error_tile_size():
    with pytest.raises(ConfigError, match="tile_size_px must be >= 1"):
        quantify_cells(np.zeros((1, 5, 5)), np.zeros((5, 5), np.uint32), channels=["a"], pixel_size_um=1,
                       tile_size_px=0)


def test_error_background_unknown_channel():
    with pytest.raises(ChannelError, match="quantification.background: channel 'CD3' is not among"):
        quantify_cells(np.zeros((1, 5, 5)), np.zeros((5, 5), np.uint32), channels=["a"], pixel_size_um=1,
                       background={"CD3": 1.0})


def test_inputs_not_modified():
    img, cells, nuclei = _synthetic()
    copies = img.copy(), cells.copy(), nuclei.copy()
    quantify_cells(img, cells, nuclei=nuclei, channels=["a", "b", "c"], pixel_size_um=1.0,
                   statistics=ALL_STATS, morphology=True, tile_size_px=33)
    for a, b in zip((img, cells, nuclei), copies):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------- golden: inForm table
@pytest.mark.shared
def test_golden_inform_nucleus_means_and_areas(shared_data):
    import tifffile

    from chemozone.io import read_image

    folder = shared_data / "vectra_phenoptr"
    stem = "FIHC4__0929309_HP_IM3_2"
    image = read_image(folder / f"{stem}_component_data.tif")
    assert image.channels == ["Alexa 594", "Cy3", "Cy5", "DAPI", "FITC"]
    with tifffile.TiffFile(folder / f"{stem}_binary_seg_maps.tif") as tif:
        assert "<CompartmentType>Nucleus</CompartmentType>" in tif.pages[1].description
        nuclei = tif.pages[1].asarray().astype(np.uint32)
        assert "<CompartmentType>Cytoplasm</CompartmentType>" in tif.pages[2].description
        cytoplasm = tif.pages[2].asarray().astype(np.uint32)
    table = pd.read_csv(folder / f"{stem}_cell_seg_data.txt", sep="\t").set_index("Cell ID").sort_index()
    assert len(table) == 270
    px = image.pixel_size_um
    # nuclei as both cells and nuclei: the nucleus compartment is the nucleus label map
    df = quantify_cells(image.data, nuclei, nuclei=nuclei, channels=image.channels, pixel_size_um=px,
                        compartments=("nucleus",), tile_size_px=100).set_index("cell_id")
    assert df.index.tolist() == table.index.tolist()
    # inForm reports the nucleus area in pixels
    np.testing.assert_array_equal(np.rint(df["nucleus_area_um2"] / px**2), table["Nucleus Area (pixels)"])
    for ch in image.channels:
        ours = df[f"{ch}_nucleus"].to_numpy()
        theirs = table[f"Nucleus {ch} Mean (Normalized Counts, Total Weighting)"].to_numpy()
        np.testing.assert_array_less(np.abs(ours - theirs), 0.0005 + 1e-9)  # the table rounds to 3 decimals
    # inForm's cytoplasm label map (page 3) reproduces its cytoplasm means wherever its pixel count agrees
    cyt = quantify_cells(image.data, cytoplasm, channels=image.channels, pixel_size_um=px,
                         compartments=("cell",)).set_index("cell_id").reindex(table.index)
    same_area = np.rint(cyt["area_um2"] / px**2).to_numpy() == table["Cytoplasm Area (pixels)"].to_numpy()
    assert same_area.sum() >= 260
    for ch in image.channels:
        diff = np.abs(cyt[f"{ch}_cell"] - table[f"Cytoplasm {ch} Mean (Normalized Counts, Total Weighting)"])
        assert (diff[same_area] <= 0.0005 + 1e-9).all()
