"""Tests of chemozone.spatial: distances, infiltration metrics, cognate specificity, cell–cell metrics."""
from __future__ import annotations

import importlib.metadata as md
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from chemozone.config import CognatePair, SpatialConfig
from chemozone.errors import ConfigError, MissingStepError
from chemozone.spatial import (
    PSEUDOCOUNT,
    annotate_and_infiltrate,
    annotate_cells,
    band_names,
    cognate_specificity,
    count_within,
    infiltration_metrics,
    nearest_distances,
    neighbourhood_enrichment,
    overlap_zone_names,
    signed_distance,
    tissue_depth,
    zone_overlap_metrics,
)

DEFAULT_BANDS_UM = SpatialConfig().distance_bands_um  # the config's default distance bands


# ----------------------------------------------------------------------------------- helpers
def _brute_signed(mask: np.ndarray, g: float) -> np.ndarray:
    yy, xx = np.indices(mask.shape)
    pts = np.column_stack([yy.ravel(), xx.ravel()]).astype(float)
    ins = pts[mask.ravel()]
    outs = pts[~mask.ravel()]
    out = np.empty(mask.size)
    for n, p in enumerate(pts):
        other = outs if mask.ravel()[n] else ins
        d = np.sqrt(((other - p) ** 2).sum(1)).min() * g - g / 2
        out[n] = -d if mask.ravel()[n] else d
    return out.reshape(mask.shape)


def _random_sample(seed: int, zone_fractions) -> tuple[np.ndarray, dict[str, np.ndarray], pd.DataFrame]:
    """A 30 × 30 grid (5 µm pixels) with a tissue block, random zone masks of the given pixel fractions and 200
    random cells of two types and three phenotypes."""
    rng = np.random.default_rng(seed)
    tissue = np.zeros((30, 30), bool)
    tissue[2:28, 3:27] = True
    masks = {name: rng.random((30, 30)) < p for name, p in zone_fractions}
    n = 200
    cells = pd.DataFrame({"x_um": rng.uniform(0, 150, n), "y_um": rng.uniform(0, 150, n),
                          "cell_type": rng.choice(["NK", "T"], n), "phenotype": rng.choice(["NK", "NK CXCR2+", "T"], n)})
    return tissue, masks, cells


def _phenoptr(shared_data):
    df = pd.read_csv(shared_data / "vectra_phenoptr" / "sample_cell_seg_data.csv")
    return df.rename(columns={"Cell X Position": "x_um", "Cell Y Position": "y_um", "Cell ID": "cell_id"})


# --------------------------------------------------------------------------------- distances
def test_signed_distance_docstring_example():
    m = np.zeros((1, 5), bool)
    m[0, :2] = True
    assert signed_distance(m, grid_um=2.0).tolist() == [[-3.0, -1.0, 1.0, 3.0, 5.0]]


@settings(max_examples=30, deadline=None)
@given(arrays(bool, st.tuples(st.integers(2, 7), st.integers(2, 7))), st.sampled_from([0.5, 1.0, 2.0]))
def test_signed_distance_equals_brute_force(mask, g):
    d = signed_distance(mask, grid_um=g)
    if not mask.any():
        assert np.isposinf(d).all()
    elif mask.all():
        assert np.isneginf(d).all()
    else:
        np.testing.assert_allclose(d, _brute_signed(mask, g), atol=1e-9)
        assert (d[mask] < 0).all() and (d[~mask] > 0).all()


def test_tissue_depth_is_positive_inside():
    t = np.zeros((5, 5), bool)
    t[1:4, 1:4] = True
    d = tissue_depth(t, grid_um=1.0)
    assert d[2, 2] == 1.5 and d[1, 1] == 0.5 and d[0, 0] < 0


def test_band_names():
    assert band_names([0, 25, 50.5]) == ["band_0_25_um", "band_25_50.5_um"]


def test_annotate_cells_values_and_input_untouched():
    tissue = np.ones((4, 6), bool)
    tissue[:, 5] = False
    zone = np.zeros((4, 6), bool)
    zone[:, :2] = True
    cells = pd.DataFrame({"cell_id": [1, 2, 3], "x_um": [1.0, 7.9, 11.0], "y_um": [1.0, 3.0, 7.5]})
    before = cells.copy()
    out = annotate_cells(cells, {"Z": zone}, tissue, grid_um=2.0)
    pd.testing.assert_frame_equal(cells, before)
    # cell 1 -> pixel (0,0) inside; cell 2 -> (1,3) outside; cell 3 -> (3,5) outside tissue
    assert out["in_Z"].tolist() == [True, False, False]
    np.testing.assert_allclose(out["dist_Z_um"], [-3.0, 3.0, 7.0])
    np.testing.assert_allclose(out["dist_tissue_edge_um"], [9.0, 3.0, -1.0])  # image border is not an edge
    # annotating again (columns that exist already) must not write into the first result either
    first = out.copy()
    again = annotate_cells(out, {"Z": ~zone}, tissue, grid_um=2.0)
    pd.testing.assert_frame_equal(out, first)
    assert again["in_Z"].tolist() == [False, True, True]


# --------------------------------------------------------------------------- infiltration
def _constructed():
    """10×10 grid of 10 µm pixels: tissue = all; zone = left 3 columns; cells placed by hand."""
    g = 10.0
    tissue = np.ones((10, 10), bool)
    zone = np.zeros((10, 10), bool)
    zone[:, :3] = True
    # inside: 3 NK (pixel col 0..2); outside: 1 NK at col 3 (dist 5 µm), 1 NK at col 9 (dist 65 µm), 2 T at col 5
    xs = [5, 15, 25, 35, 95, 55, 55]
    ys = [5, 15, 25, 35, 45, 55, 65]
    ct = ["NK", "NK", "NK", "NK", "NK", "T", "T"]
    ph = ["NK CXCR2+", "NK CXCR2+", "NK", "NK", "NK CXCR2+", "T", "T"]
    cells = pd.DataFrame({"x_um": np.array(xs, float), "y_um": np.array(ys, float), "cell_type": ct, "phenotype": ph})
    return cells, {"Z": zone}, tissue, g


def test_infiltration_counts_areas_densities_by_hand():
    cells, masks, tissue, g = _constructed()
    df = infiltration_metrics(cells, masks, tissue, grid_um=g, sample_id="s1", distance_bands_um=[0, 20, 50, 100])
    assert set(df["region"]) == {"inside", "outside", "band_0_20_um", "band_20_50_um", "band_50_100_um"}
    nk = df[(df.population_type == "cell_type") & (df.population == "NK")].set_index("region")
    px = (10e-3) ** 2  # mm² per grid pixel
    assert nk.loc["inside", "n_cells"] == 3 and nk.loc["inside", "area_mm2"] == pytest.approx(30 * px)
    assert nk.loc["outside", "n_cells"] == 2 and nk.loc["outside", "area_mm2"] == pytest.approx(70 * px)
    # pixel columns outside: col3 d=5, col4 d=15 -> band_0_20 = 20 px; cols 5,6,7 (25,35,45) -> 30 px; cols 8,9 -> 20 px
    assert nk.loc["band_0_20_um", "area_mm2"] == pytest.approx(20 * px) and nk.loc["band_0_20_um", "n_cells"] == 1
    assert nk.loc["band_20_50_um", "area_mm2"] == pytest.approx(30 * px) and nk.loc["band_20_50_um", "n_cells"] == 0
    assert nk.loc["band_50_100_um", "n_cells"] == 1
    assert nk.loc["inside", "density_per_mm2"] == pytest.approx(3 / (30 * px))
    expected = np.log2(((3 + 0.3 * PSEUDOCOUNT) / (30 * px)) / ((2 + 0.7 * PSEUDOCOUNT) / (70 * px)))
    assert nk.loc["inside", "log2_enrichment"] == pytest.approx(expected)
    allc = df[df.population_type == "all"].set_index("region")
    assert allc.loc["inside", "n_cells"] + allc.loc["outside", "n_cells"] == 7
    ph = df[(df.population_type == "phenotype") & (df.population == "NK CXCR2+")].set_index("region")
    assert ph.loc["inside", "n_cells"] == 2 and ph.loc["outside", "n_cells"] == 1
    band_area = df[(df.population == "all") & df.region.str.startswith("band")]["area_mm2"].sum()
    assert band_area == pytest.approx(70 * px)  # bands cover everything outside up to 100 µm


def test_edge_correction_on_constructed_explant():
    """A 20×20 px round-ish explant (square), rim of 2 px excluded: areas and counts drop by hand."""
    g = 5.0
    tissue = np.zeros((24, 24), bool)
    tissue[2:22, 2:22] = True  # 20×20 px = 100×100 µm
    zone = np.zeros_like(tissue)
    zone[2:22, 2:12] = True  # left half of the explant
    # one cell per tissue pixel centre
    yy, xx = np.nonzero(tissue)
    cells = pd.DataFrame({"x_um": (xx + 0.5) * g, "y_um": (yy + 0.5) * g, "cell_type": "T", "phenotype": "T"})
    px = (g * 1e-3) ** 2
    raw = infiltration_metrics(cells, {"Z": zone}, tissue, grid_um=g, sample_id="e", distance_bands_um=[0, 50])
    cor = infiltration_metrics(cells, {"Z": zone}, tissue, grid_um=g, sample_id="e", distance_bands_um=[0, 50],
                               edge_exclusion_um=10.0)
    r = raw[raw.population_type == "all"].set_index("region")
    c = cor[cor.population_type == "all"].set_index("region")
    assert r.loc["inside", "n_cells"] == 200 and r.loc["inside", "area_mm2"] == pytest.approx(200 * px)
    # depth = distance to edge: 2.5, 7.5, 12.5 µm for the 1st, 2nd, 3rd pixel -> keep pixels >= 3rd from edge
    # kept square: rows/cols 4..19 (16×16 px); inside the zone cols 4..11 (8) = 128 px; outside cols 12..19 = 128
    assert c.loc["inside", "n_cells"] == 128 and c.loc["inside", "area_mm2"] == pytest.approx(128 * px)
    assert c.loc["outside", "n_cells"] == 128 and c.loc["outside", "area_mm2"] == pytest.approx(128 * px)
    np.testing.assert_allclose(c["density_per_mm2"].dropna(), 1 / px)


def test_cells_outside_tissue_are_not_counted():
    cells, masks, tissue, g = _constructed()
    tissue = tissue.copy()
    tissue[:, 9] = False
    df = infiltration_metrics(cells, masks, tissue, grid_um=g, sample_id="s", distance_bands_um=DEFAULT_BANDS_UM)
    nk = df[(df.population_type == "cell_type") & (df.population == "NK")].set_index("region")
    assert nk.loc["outside", "n_cells"] == 1 and nk.loc["outside", "area_mm2"] == pytest.approx(60 * 1e-4)


def test_zone_overlap_by_hand():
    """Two overlapping zones on the constructed grid: combination areas and counts by hand."""
    cells, masks, tissue, g = _constructed()
    z2 = np.zeros_like(tissue)
    z2[:5, :] = True  # top 5 rows (y < 50 µm)
    masks = {"Z": masks["Z"], "W": z2}
    df = zone_overlap_metrics(cells, masks, tissue, grid_um=g, sample_id="s1", zones=["Z", "W"])
    px = (10e-3) ** 2
    nk = df[(df.population_type == "cell_type") & (df.population == "NK")].set_index("region")
    assert list(df.columns) == ["sample_id", "population_type", "population", "region", "in_Z", "in_W",
                                "n_cells", "area_mm2"]
    # Z: cols 0-2; W: rows 0-4. Z+W+ = 15 px, Z+W- = 15, Z-W+ = 35, Z-W- = 35
    assert nk.loc["Z+ W+", "area_mm2"] == pytest.approx(15 * px) and nk.loc["Z- W-", "area_mm2"] == pytest.approx(35 * px)
    # NK at (x, y) = (5,5) (15,15) (25,25) -> Z+W+; (35,35) (95,45) -> Z-W+
    assert nk.loc["Z+ W+", "n_cells"] == 3 and nk.loc["Z- W+", "n_cells"] == 2
    assert nk.loc["Z+ W-", "n_cells"] == 0 and nk.loc["Z- W-", "n_cells"] == 0  # zero-filled
    assert bool(nk.loc["Z- W+", "in_W"]) and not bool(nk.loc["Z- W+", "in_Z"])
    t = df[(df.population_type == "cell_type") & (df.population == "T")].set_index("region")
    assert t.loc["Z- W-", "n_cells"] == 2  # the T cells at y = 55, 65 µm
    # default zones: the cognate pairs' zones
    default = overlap_zone_names(overlap_zones=None, cognate_pairs=[CognatePair(zone="W", receptor="CXCR2")])
    d1 = zone_overlap_metrics(cells, masks, tissue, grid_um=g, sample_id="s1", zones=default)
    assert set(d1["region"]) == {"W+", "W-"} and "in_Z" not in d1
    none = overlap_zone_names(overlap_zones=None, cognate_pairs=[])
    assert zone_overlap_metrics(cells, masks, tissue, grid_um=g, sample_id="s", zones=none).empty
    with pytest.raises(ConfigError, match=r"zone\(s\) \['Q'\] have no mask"):
        zone_overlap_metrics(cells, masks, tissue, grid_um=g, sample_id="s", zones=["Q"])
    many = {f"Z{i}": masks["Z"] for i in range(9)}
    with pytest.raises(ConfigError, match="at most 8"):
        zone_overlap_metrics(cells, many, tissue, grid_um=g, sample_id="s", zones=list(many))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 15.0))
def test_zone_overlap_margins_equal_infiltration(seed, edge_um):
    """Summing the combination rows with in_{zone} true gives infiltration_metrics' inside counts and areas."""
    g = 5.0
    tissue, masks, cells = _random_sample(seed, (("A", 0.3), ("B", 0.5), ("C", 0.1)))
    ov = zone_overlap_metrics(cells, masks, tissue, grid_um=g, sample_id="s", zones=["A", "B", "C"],
                              edge_exclusion_um=edge_um)
    inf = infiltration_metrics(cells, masks, tissue, grid_um=g, sample_id="s", distance_bands_um=DEFAULT_BANDS_UM,
                               edge_exclusion_um=edge_um)
    for z in "ABC":
        for reg, flag in (("inside", True), ("outside", False)):
            a = ov[ov[f"in_{z}"] == flag].groupby(["population_type", "population"])[["n_cells", "area_mm2"]].sum()
            b = inf[(inf.zone == z) & (inf.region == reg)].set_index(["population_type", "population"])
            assert (a["n_cells"].reindex(b.index, fill_value=0) == b["n_cells"]).all()
            areas = ov[(ov[f"in_{z}"] == flag) & (ov.population_type == "all")]["area_mm2"].sum()
            assert areas == pytest.approx(b["area_mm2"].iloc[0])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 15.0), st.sampled_from([[], [0.0, 10.0], DEFAULT_BANDS_UM]))
def test_annotate_and_infiltrate_equals_the_two_steps(seed, edge_um, bands):
    """The one-pass function (one distance map per zone) gives exactly annotate_cells + infiltration_metrics."""
    g = 5.0
    tissue, masks, cells = _random_sample(seed, (("A", 0.3), ("B", 0.02), ("C", 0.0)))
    before = cells.copy()
    ann, inf = annotate_and_infiltrate(cells, masks, tissue, grid_um=g, sample_id="s", distance_bands_um=bands,
                                       edge_exclusion_um=edge_um)
    pd.testing.assert_frame_equal(ann, annotate_cells(cells, masks, tissue, grid_um=g))
    pd.testing.assert_frame_equal(inf, infiltration_metrics(cells, masks, tissue, grid_um=g, sample_id="s",
                                                            distance_bands_um=bands, edge_exclusion_um=edge_um))
    pd.testing.assert_frame_equal(cells, before)


def _reference_annotate_and_infiltrate(cells, masks, tissue, *, g, bands, edge_um):
    """The definitions on whole maps (as the code computed them before the distances were streamed): the signed
    distance map of each zone, the tissue depth map, region masks on the grid, cells looked up at their pixels."""
    r = np.clip(np.floor(cells["y_um"].to_numpy() / g).astype(int), 0, tissue.shape[0] - 1)
    c = np.clip(np.floor(cells["x_um"].to_numpy() / g).astype(int), 0, tissue.shape[1] - 1)
    depth = tissue_depth(tissue, grid_um=g)
    keep = tissue & (depth >= edge_um) if edge_um > 0 else tissue.copy()
    cols, rows = {}, []
    pops = [("all", "all", np.ones(len(cells), bool))] + [
        (pt, v, cells[pt].astype(str).to_numpy() == v) for pt in ("cell_type", "phenotype")
        for v in sorted(cells[pt].astype(str).unique())]
    for z, m in masks.items():
        d = signed_distance(m, grid_um=g)
        cols[f"in_{z}"], cols[f"dist_{z}_um"] = m[r, c], d[r, c]
        regions = {"inside": keep & m, "outside": keep & ~m}
        for lo, hi in zip(bands, bands[1:]):
            regions[f"band_{lo:g}_{hi:g}_um"] = (d > lo) & (d <= hi) & keep & ~m
        areas = {k: np.count_nonzero(v) * (g * 1e-3) ** 2 for k, v in regions.items()}
        for pt, pn, sel in pops:
            sel = sel & keep[r, c]
            n = {k: int(np.count_nonzero(sel & v[r, c])) for k, v in regions.items()}
            a_in, a_out = areas["inside"], areas["outside"]
            tot = a_in + a_out
            enr = (np.log2(((n["inside"] + PSEUDOCOUNT * a_in / tot) / a_in) / ((n["outside"] + PSEUDOCOUNT * a_out / tot)
                                                                              / a_out))
                   if a_in > 0 and a_out > 0 else np.nan)
            rows += [dict(sample_id="s", population_type=pt, population=pn, zone=z, region=k, n_cells=n[k],
                          area_mm2=areas[k], density_per_mm2=n[k] / areas[k] if areas[k] > 0 else np.nan,
                          log2_enrichment=enr) for k in regions]
    cols["dist_tissue_edge_um"] = depth[r, c]
    return cells.assign(**cols), pd.DataFrame(rows)


@pytest.fixture(scope="module")
def few_rows_per_band():
    from chemozone import grid

    old, grid._EDT_BAND_ROWS = grid._EDT_BAND_ROWS, 4  # several bands of rows even on a 30-row grid
    yield
    grid._EDT_BAND_ROWS = old


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 15.0), st.sampled_from([[], [0.0, 10.0], DEFAULT_BANDS_UM]),
       st.sampled_from([1, 3]))
def test_streamed_distances_equal_the_whole_map_definitions_bit_for_bit(few_rows_per_band, seed, edge_um, bands,
                                                                      n_threads):
    """Cells' distances, depths, region counts and band areas from one band of rows at a time (and zones on
    threads) are exactly those of whole signed-distance maps."""
    g = 5.0
    tissue, masks, cells = _random_sample(seed, (("A", 0.3), ("B", 0.02), ("C", 0.0), ("D", 1.0)))
    ann, inf = annotate_and_infiltrate(cells, masks, tissue, grid_um=g, sample_id="s", distance_bands_um=bands,
                                       edge_exclusion_um=edge_um, n_threads=n_threads)
    ref_ann, ref_inf = _reference_annotate_and_infiltrate(cells, masks, tissue, g=g, bands=bands, edge_um=edge_um)
    pd.testing.assert_frame_equal(ann, ref_ann, check_exact=True)
    pd.testing.assert_frame_equal(inf.drop(columns="log2_enrichment"), ref_inf.drop(columns="log2_enrichment"),
                                  check_exact=True, check_dtype=False)
    np.testing.assert_allclose(inf["log2_enrichment"], ref_inf["log2_enrichment"], rtol=1e-12)


def test_annotate_and_infiltrate_rejects_no_threads():
    tissue, masks, cells = _random_sample(0, (("A", 0.3),))
    with pytest.raises(ValueError, match="n_threads must be >= 1, got 0"):
        annotate_and_infiltrate(cells, masks, tissue, grid_um=5.0, sample_id="s", distance_bands_um=[], n_threads=0)


def test_infiltration_missing_population_column():
    cells, masks, tissue, g = _constructed()
    with pytest.raises(MissingStepError, match="no 'phenotype' column; run phenotyping"):
        infiltration_metrics(cells.drop(columns="phenotype"), masks, tissue, grid_um=g, sample_id="s",
                             distance_bands_um=DEFAULT_BANDS_UM)


def test_annotate_mask_shape_mismatch():
    cells, masks, tissue, g = _constructed()
    with pytest.raises(ValueError, match="zone mask 'Z' has shape"):
        annotate_cells(cells, {"Z": np.zeros((3, 3), bool)}, tissue, grid_um=g)


# ------------------------------------------------------------------------------- cognate
def test_cognate_specificity_cells_and_phenotype_paths_agree():
    cells, masks, tissue, g = _constructed()
    cells["CXCR2_pos"] = cells["phenotype"].str.contains("CXCR2+", regex=False)
    cells["sample_id"] = "s1"
    pairs = [CognatePair(zone="Z", receptor="CXCR2", cell_types=["NK"])]
    inf = infiltration_metrics(cells, masks, tissue, grid_um=g, sample_id="s1", distance_bands_um=[0, 50])
    ann = annotate_cells(cells, masks, tissue, grid_um=g)
    a = cognate_specificity(inf, cognate_pairs=pairs, cells=ann)
    b = cognate_specificity(inf, cognate_pairs=pairs)
    pd.testing.assert_frame_equal(a, b)
    row = a.iloc[0]
    assert (row.n_pos_inside, row.n_pos_outside, row.n_neg_inside, row.n_neg_outside) == (2, 1, 1, 1)
    a_in, a_out = 30e-4, 70e-4
    ep = np.log2((2.3 / a_in) / (1.7 / a_out))  # pseudocount 1 cell split 0.3 / 0.7 by area
    en = np.log2((1.3 / a_in) / (1.7 / a_out))
    assert row.log2_enrichment_pos == pytest.approx(ep) and row.log2_enrichment_neg == pytest.approx(en)
    assert row.log2_specificity == pytest.approx(ep - en)
    empty = infiltration_metrics(cells.iloc[:0], masks, tissue, grid_um=g, sample_id="s1", distance_bands_um=[0, 50])
    np.testing.assert_allclose(empty["log2_enrichment"], 0, atol=1e-12)  # no cells: no enrichment


def test_cognate_missing_zone():
    cells, masks, tissue, g = _constructed()
    pairs = [CognatePair(zone="Q", receptor="CXCR2")]
    inf = infiltration_metrics(cells, masks, tissue, grid_um=g, sample_id="s", distance_bands_um=DEFAULT_BANDS_UM)
    with pytest.raises(MissingStepError, match="zone 'Q' is not in the infiltration table"):
        cognate_specificity(inf, cognate_pairs=pairs)


# ---------------------------------------------------------------------------- cell–cell
def test_nearest_distances_small_example_and_samples_separate():
    cells = pd.DataFrame(
        {"sample_id": ["a"] * 4 + ["b"] * 2, "cell_id": [1, 2, 3, 4, 1, 2],
         "x_um": [0.0, 3.0, 0.0, 10.0, 0.0, 1.0], "y_um": [0.0, 4.0, 1.0, 0.0, 0.0, 0.0],
         "cell_type": ["T", "T", "NK", "T", "NK", "NK"]}
    )
    nd = nearest_distances(cells, population="cell_type")
    np.testing.assert_allclose(nd["dist_nearest_T_um"].to_numpy(), [5.0, 5.0, 1.0, np.sqrt(65), np.nan, np.nan])
    np.testing.assert_allclose(nd["dist_nearest_NK_um"].to_numpy(), [1.0, np.sqrt(9 + 9), np.nan, np.sqrt(101), 1.0, 1.0])
    assert nd["nearest_T_cell_id"].tolist() == [2, 1, 1, 2, -1, -1]


def test_nearest_distances_duplicate_positions():
    cells = pd.DataFrame({"x_um": [0.0, 0.0, 5.0], "y_um": [0.0, 0.0, 0.0], "cell_type": ["T", "T", "T"]})
    nd = nearest_distances(cells, population="cell_type")
    np.testing.assert_allclose(nd["dist_nearest_T_um"], [0.0, 0.0, 5.0])


def test_count_within_by_hand_and_missing_column():
    cells = pd.DataFrame({"x_um": [0.0, 0.0, 3.0, 30.0], "y_um": [0.0, 4.0, 4.0, 0.0], "p": ["A", "B", "B", "A"]})
    r = count_within(cells, population="p", source="A", target="B", radius_um=5.0).iloc[0]
    assert (r.from_count, r.to_count, r.from_with, r.within_mean) == (2, 2, 1, 1.0)
    r = count_within(cells, population="p", source="B", target="B", radius_um=5.0).iloc[0]
    assert (r.from_with, r.within_mean) == (2, 1.0)  # each B sees the other, not itself
    with pytest.raises(MissingStepError, match="no 'q' column"):
        count_within(cells, population="q", source="A", target="B", radius_um=5.0)


@pytest.mark.shared
def test_count_within_reproduces_phenoptr(shared_data):
    csd = _phenoptr(shared_data)
    r = count_within(csd, population="Phenotype", source="CD68+", target="CK+", radius_um=25).iloc[0]
    assert (r.from_count, r.to_count, r.from_with) == (417, 2257, 274)
    assert round(r.within_mean, 2) == 3.28
    r = count_within(csd, population="Phenotype", source="CK+", target="CD68+", radius_um=25).iloc[0]
    assert (r.from_count, r.to_count, r.from_with) == (2257, 417, 664)
    assert round(r.within_mean, 3) == 0.606


@pytest.mark.shared
def test_nearest_distances_reproduce_phenoptr_table(shared_data):
    csd = _phenoptr(shared_data)
    csd = csd[csd["Phenotype"] != "other"].reset_index(drop=True)
    nd = nearest_distances(csd, population="Phenotype")
    # first rows of phenoptr's glimpse()
    np.testing.assert_allclose(nd["dist_nearest_CD68+_um"].iloc[:3], [29.529646, 38.082148, 36.674242], atol=1e-6)
    np.testing.assert_allclose(nd["dist_nearest_CK+_um"].iloc[:4], [36.830694, 109.317199, 3.605551, 4.031129], atol=1e-6)
    assert nd["nearest_CD8+_cell_id"].iloc[:4].tolist() == [101, 5068, 423, 189]
    means = pd.concat([csd[["Phenotype"]], nd.filter(like="dist_")], axis=1).groupby("Phenotype").mean().round(1)
    expected = {  # phenoptr vignette: mean distance by phenotype (rows) to the nearest (columns)
        "CD68+": [14.2, 30.6, 23.1, 24.8],
        "CD8+": [23.1, 17.5, 19.3, 28.4],
        "CK+": [44.3, 48.2, 7.9, 50.5],
        "FoxP3+": [19.1, 29.1, 23.3, 22.3],
    }
    cols = ["dist_nearest_CD68+_um", "dist_nearest_CD8+_um", "dist_nearest_CK+_um", "dist_nearest_FoxP3+_um"]
    for ph, vals in expected.items():
        np.testing.assert_allclose(means.loc[ph, cols].to_numpy(float), vals, atol=1e-9)


def test_neighbourhood_enrichment_counts_by_hand_and_seeded():
    cells = pd.DataFrame({"x_um": [0.0, 1.0, 2.0, 10.0, 11.0], "y_um": [0.0] * 5, "p": ["A", "A", "B", "B", "B"]})
    z, c = neighbourhood_enrichment(cells, population="p", radius_um=1.5, n_permutations=50, seed=3)
    # edges: 0-1 (A-A), 1-2 (A-B), 3-4 (B-B), both directions
    assert c.loc["A", "A"] == 2 and c.loc["A", "B"] == 1 and c.loc["B", "A"] == 1 and c.loc["B", "B"] == 2
    z2, _ = neighbourhood_enrichment(cells, population="p", radius_um=1.5, n_permutations=50, seed=3)
    pd.testing.assert_frame_equal(z, z2)
    _, ck = neighbourhood_enrichment(cells, population="p", n_neighbors=1, n_permutations=5)
    assert int(ck.to_numpy().sum()) == 5
    with pytest.raises(ValueError, match="exactly one of radius_um or n_neighbors"):
        neighbourhood_enrichment(cells, population="p")


def _import_squidpy():
    """squidpy (test dependency only). xarray_schema still imports pkg_resources, which setuptools>=81 lacks."""
    if "pkg_resources" not in sys.modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pkg_resources  # noqa: F401
        except ImportError:
            shim = types.ModuleType("pkg_resources")

            class DistributionNotFound(Exception):
                pass

            def get_distribution(name):
                try:
                    return types.SimpleNamespace(version=md.version(name))
                except md.PackageNotFoundError:
                    raise DistributionNotFound(name) from None

            shim.DistributionNotFound = DistributionNotFound
            shim.get_distribution = get_distribution
            sys.modules["pkg_resources"] = shim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import anndata
            import squidpy
        except ImportError as exc:  # pragma: no cover
            pytest.skip(f"squidpy unavailable: {exc}")
    return squidpy, anndata


@pytest.mark.shared
@pytest.mark.parametrize("graph", ["radius", "knn"])
def test_neighbourhood_enrichment_matches_squidpy(shared_data, graph):
    sq, ad = _import_squidpy()
    csd = _phenoptr(shared_data)
    csd = csd[csd["Phenotype"] != "other"].reset_index(drop=True)
    if graph == "knn":  # positions lie on a 0.5 µm lattice: break distance ties so both kNN graphs are the same
        jitter = np.random.default_rng(0).uniform(-1e-3, 1e-3, size=(len(csd), 2))
        csd[["x_um", "y_um"]] = csd[["x_um", "y_um"]].to_numpy() + jitter
    n_perm = 1000
    kw = {"radius_um": 25.0} if graph == "radius" else {"n_neighbors": 6}
    z, c = neighbourhood_enrichment(csd, population="Phenotype", n_permutations=n_perm, seed=1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(obs=pd.DataFrame({"p": pd.Categorical(csd["Phenotype"])}, index=csd.index.astype(str)))
        adata.obsm["spatial"] = csd[["x_um", "y_um"]].to_numpy()
        if graph == "radius":
            sq.gr.spatial_neighbors(adata, coord_type="generic", radius=25.0)
        else:
            sq.gr.spatial_neighbors(adata, coord_type="generic", n_neighs=6)
        res = sq.gr.nhood_enrichment(adata, cluster_key="p", n_perms=n_perm, seed=2, copy=True, show_progress_bar=False, n_jobs=1)
    zs, cs = (res.zscore, res.counts) if hasattr(res, "zscore") else res
    cats = list(adata.obs["p"].cat.categories)
    assert cats == list(z.index)
    np.testing.assert_array_equal(c.to_numpy(), np.asarray(cs))
    zs = np.asarray(zs)
    # permutation noise: the z of two independent 1000-permutation runs differ by ~0.03 (+3% of |z|)
    np.testing.assert_allclose(z.to_numpy(), zs, atol=0.2, rtol=0.1)
