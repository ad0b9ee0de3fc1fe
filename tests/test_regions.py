"""Region annotations (QuPath GeoJSON per sample) and the export back to QuPath.

The fixtures are written the way QuPath writes *File > Export objects as GeoJSON*: v0.4+ (``objectType``,
``classification: {name | names, color}``, a UUID ``id``, measurements as a map) and v0.2 (the object type in the
feature ``id``, ``classification: {name, colorRGB}``, measurements as a list of ``{name, value}``).
"""
from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from chemozone.cli import main
from chemozone.config import config_from_dict
from chemozone.errors import ConfigError, RegionError, RunError
from chemozone.layout import RunLayout
from chemozone.regions import apply_regions, load_regions, rasterize_geometry, read_geojson, region_zone_mask


def _ring(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(geometry, cls=None, *, object_type="annotation", legacy=False):
    """One feature as QuPath writes it (v0.4+, or v0.2 with ``legacy``)."""
    if legacy:
        props = {"isLocked": False, "measurements": [{"name": "Area", "value": 1.0}]}
        if cls is not None:
            props["classification"] = {"name": cls, "colorRGB": -3670016}
        kind = {"annotation": "PathAnnotationObject", "detection": "PathDetectionObject"}[object_type]
        return {"type": "Feature", "id": kind, "geometry": geometry, "properties": props}
    props = {"objectType": object_type}
    if cls is not None:
        props["classification"] = ({"names": cls, "color": [200, 0, 0]} if isinstance(cls, list)
                                   else {"name": cls, "color": [200, 0, 0]})
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geometry, "properties": props}


def qupath_regions(*, legacy=False, scale=1.0):
    """Analysis region (unclassified), necrosis with a viable hole, a fold in two pieces (MultiPolygon), a tumor
    outline, a stroma outline, a ruler (LineString) and a detection; pixel coordinates (x right, y down)."""
    def s(r):
        return [[[x * scale, y * scale] for x, y in ring] for ring in r]
    fold = ["Fold", "Severe"] if not legacy else "Fold"  # a derived class in v0.4+ ('Fold: Severe')
    feats = [
        _feature({"type": "Polygon", "coordinates": s([_ring(10, 10, 190, 190)])}, legacy=legacy),
        _feature({"type": "Polygon", "coordinates": s([_ring(20, 20, 80, 80), _ring(40, 40, 60, 60)])}, "Necrosis",
                 legacy=legacy),
        _feature({"type": "MultiPolygon", "coordinates": [s([_ring(100, 20, 120, 40)]), s([_ring(140, 140, 160, 180)])]},
                 fold, legacy=legacy),
        _feature({"type": "Polygon", "coordinates": s([_ring(100, 100, 180, 180)])}, "Tumor", legacy=legacy),
        _feature({"type": "Polygon", "coordinates": s([_ring(0, 0, 8, 8)])}, "Stroma", legacy=legacy),
        _feature({"type": "LineString", "coordinates": [[0, 0], [50 * scale, 50 * scale]]}, "Tumor", legacy=legacy),
        _feature({"type": "Polygon", "coordinates": s([_ring(30, 30, 31, 31)])}, "Tumor", object_type="detection",
                 legacy=legacy),
    ]
    return {"type": "FeatureCollection", "features": feats}


def _write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    return path


# cells (x, y) in pixels (pixel size 1 µm): what each must become, checked by hand against the outlines above
CELLS = {"necrosis": (30, 30), "hole": (50, 50), "fold1": (110, 30), "fold2_in_tumor": (150, 170),
         "outside_corner": (5, 5), "outside_right": (195, 100), "plain": (100, 60), "tumor": (130, 130),
         "fold2_tumor_edge": (150, 150), "beside_necrosis": (85, 85), "necrosis_rim": (20.5, 50),
         "on_analysis_outline": (10.0, 100)}
KEPT = {"hole", "plain", "tumor", "beside_necrosis"}
EXCLUDED = {"necrosis", "fold1", "fold2_in_tumor", "fold2_tumor_edge", "necrosis_rim"}


@pytest.mark.parametrize("legacy", [False, True], ids=["qupath-0.4+", "qupath-0.2"])
def test_qupath_geojson_excludes_exactly_the_right_cells_and_area(tmp_path, legacy):
    path = _write(tmp_path / "s1.geojson", qupath_regions(legacy=legacy))
    regs = load_regions(path, shape_yx=(200, 200), exclude_classes=["Necrosis", "Fold"], analysis_classes=["Region*"],
                        unclassified="analysis")
    assert regs.counts == {"": 1, "Necrosis": 1, "Fold" if legacy else "Fold: Severe": 1, "Tumor": 1, "Stroma": 1}
    assert regs.ignored == {"annotation LineString": 1, "detection": 1}
    cells = pd.DataFrame({"cell_id": np.arange(len(CELLS), dtype=np.uint32), "name": list(CELLS),
                          "x_um": [c[0] for c in CELLS.values()], "y_um": [c[1] for c in CELLS.values()]})
    tissue = np.ones((100, 100), bool)  # grid of 2 µm = 2 x 2 pixels; centres at odd pixel coordinates
    new, keep, rec = apply_regions(regs, tissue, cells, shape_yx=(200, 200), grid_um=2.0, pixel_size_um=1.0)
    assert set(cells["name"][keep]) == KEPT
    assert rec["cells_excluded"] == len(EXCLUDED) and rec["cells_outside_analysis"] == 3  # outline = outside
    # by hand, in grid pixels of 4 µm²: analysis 90 x 90 = 8100; necrosis 30² - hole 10² = 800; fold 10 x 10 + 10 x 20
    assert new.sum() == 8100 - 800 - 300 == 7000
    assert rec["excluded_area_mm2"] == pytest.approx(1100 * 4e-6)
    assert rec["outside_analysis_mm2"] == pytest.approx((10000 - 8100) * 4e-6)
    assert rec["tissue_removed_mm2"] == pytest.approx(3000 * 4e-6)
    assert not new[15, 15] and new[25, 25]  # necrosis: grid pixel centre (31, 31) out; its hole: (51, 51) in
    # the tumor outline as a zone: 40 x 40 grid pixels minus the fold piece inside it (10 x 20)
    tumor = region_zone_mask(regs, "tumor", new, shape_yx=(200, 200), factor=2, zone="T")
    assert tumor.sum() == 1600 - 200


def test_holes_multipolygons_and_derived_classes_read_as_qupath_writes_them(tmp_path):
    t = read_geojson(_write(tmp_path / "r.geojson", qupath_regions()))
    assert list(t["object_type"]) == ["annotation"] * 6 + ["detection"]
    assert t["classification"].tolist()[:3] == [None, "Necrosis", "Fold: Severe"]
    assert t["geometry"][1].area == 60 * 60 - 20 * 20 and len(t["geometry"][1].interiors) == 1
    assert t["geometry"][2].geom_type == "MultiPolygon" and t["geometry"][2].area == 400 + 800
    legacy = read_geojson(_write(tmp_path / "old.geojson", qupath_regions(legacy=True)))
    assert legacy["measurements"][0] == {"Area": 1.0} and legacy["object_type"].iloc[-1] == "detection"
    # QuPath's exportObjectsToGeoJson without FEATURE_COLLECTION writes a plain list of features
    as_list = read_geojson(_write(tmp_path / "list.geojson", qupath_regions()["features"]))
    assert len(as_list) == 7


def test_rasterising_uses_pixel_centres_of_partial_edge_blocks():
    from shapely.geometry import box

    # image 10 x 9 px, factor 4: last column block covers x 8..9 (centre 8.5), last row block y 8..10 (centre 9)
    m = rasterize_geometry(box(8.4, 8.9, 9, 10), shape_yx=(10, 9), factor=4)
    assert m.astype(int).tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert not rasterize_geometry(box(8.6, 0, 9, 10), shape_yx=(10, 9), factor=4).any()


@pytest.mark.parametrize("doc, match", [
    ({"type": "FeatureCollection", "features": [_feature({"type": "Polygon", "coordinates": [_ring(0, 0, 400, 100)]})]},
     r"s\.geojson \(sample-sheet column 'regions'\): annotations span x 0\.\.400, y 0\.\.100 px, outside the image "
     r"\(200 x 200 px at full resolution\); export the GeoJSON from QuPath on this image"),
    ({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::4326"}},
      "features": []},
     r"s\.geojson \(sample-sheet column 'regions'\): coordinates in the reference system 'urn:ogc:def:crs:EPSG::4326'; "
     r"region annotations must be in pixels"),
    ({"type": "FeatureCollection", "features": [_feature({"type": "Circle", "coordinates": [5, 5], "radius": 3})]},
     r"s\.geojson \(sample-sheet column 'regions'\): feature 0 has geometry type 'Circle'; supported are"),
    ({"type": "Polygon", "coordinates": [_ring(0, 0, 4, 4)]},
     r"s\.geojson \(sample-sheet column 'regions'\): not a GeoJSON FeatureCollection, Feature or list of Features"),
])
def test_bad_geojson_is_refused_naming_file_and_column(tmp_path, doc, match):
    path = _write(tmp_path / "s.geojson", doc)
    with pytest.raises(RegionError, match=match):
        load_regions(path, shape_yx=(200, 200))


def test_missing_or_broken_geojson_and_missing_class(tmp_path):
    with pytest.raises(RegionError, match=r"gone\.geojson \(sample-sheet column 'regions'\): file not found; fix the "
                                          r"path in the sample sheet"):
        load_regions(tmp_path / "gone.geojson", shape_yx=(10, 10))
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(RegionError, match=r"bad\.geojson \(sample-sheet column 'regions'\): not valid JSON"):
        load_regions(tmp_path / "bad.geojson", shape_yx=(10, 10))
    regs = load_regions(_write(tmp_path / "r.geojson", qupath_regions()), shape_yx=(200, 200))
    with pytest.raises(RegionError, match=r"no annotation of class 'Vessel' for zones 'V' \(classes: \['\(unclassified\)"
                                          r"', 'Fold: Severe', 'Necrosis', 'Stroma', 'Tumor'\]\); draw one"):
        region_zone_mask(regs, "Vessel", np.ones((100, 100), bool), shape_yx=(200, 200), factor=2, zone="V")
    with pytest.raises(RegionError, match=r"zones 'V' \(source: regions\) needs a regions GeoJSON for this sample; "
                                          r"name it in the sample sheet's 'regions' column"):
        region_zone_mask(None, "Tumor", np.ones((1, 1), bool), shape_yx=(2, 2), factor=2, zone="V")


def test_region_config_is_validated():
    cfg = config_from_dict({"zones": [{"name": "T", "source": "regions", "region_class": "Tumor"}]})
    assert cfg.regions.exclude_classes[:2] == ["Necrosis", "Fold"] and cfg.regions.unclassified == "analysis"
    with pytest.raises(ConfigError, match=r"zones\[0\].*'region_class' goes with \(and only with\) source 'regions'"):
        config_from_dict({"zones": [{"name": "T", "source": "regions"}]})
    with pytest.raises(ConfigError, match=r"zones\[0\]\.region_class 'necrosis' is in regions\.exclude_classes"):
        config_from_dict({"zones": [{"name": "N", "source": "regions", "region_class": "necrosis"}]})
    with pytest.raises(ConfigError, match=r"regions.*classes \['fold'\] are both excluded and analysis classes"):
        config_from_dict({"regions": {"analysis_classes": ["Fold"]}})
    with pytest.raises(ConfigError, match=r"regions\.unclassified"):
        config_from_dict({"regions": {"unclassified": "exclude"}})


# ------------------------------------------------------------------------------------ through the CLI
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from chemozone.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, preset="tiny", seed=3, size_px=SIZE)
    return out


SIZE, SCALE = 512, 2.56  # the fixture's 200-px outlines scaled onto the 512-px synthetic images
ANALYSIS_RUN = (10, 10, 190, 150)  # the analysis region of the run: through the explant, so cells lie outside it


@pytest.fixture(scope="module")
def region_run(tiny, tmp_path_factory):
    """Four samples with --on-error skip: truth masks + regions (scaled by SCALE; no outline passes through a
    grid-pixel centre), a regions file outside the image, a broken one, none."""
    tmp = tmp_path_factory.mktemp("regionrun")
    sheet = pd.read_csv(tiny / "samples.csv")
    sheet["image"] = [str(tiny / p) for p in sheet["image"]]
    s_reg = sheet["sample_id"].iloc[0]
    for name in ("cells", "nuclei"):
        tifffile.imwrite(tmp / f"{name}.tif", tifffile.imread(tiny / "truth" / s_reg / f"{name}.tif"))
    doc = qupath_regions(scale=SCALE)
    doc["features"] = [f for f in doc["features"] if f["properties"].get("classification", {}).get("name") != "Stroma"]
    doc["features"][0]["geometry"]["coordinates"] = [[[x * SCALE, y * SCALE] for x, y in _ring(*ANALYSIS_RUN)]]
    _write(tmp / "s1.geojson", doc)
    _write(tmp / "outside.geojson", qupath_regions(scale=SCALE * 3))
    (tmp / "broken.geojson").write_text("{")
    sheet["cells_mask"] = ["cells.tif", "", "", ""]
    sheet["nuclei_mask"] = ["nuclei.tif", "", "", ""]
    sheet["regions"] = ["s1.geojson", "outside.geojson", "broken.geojson", ""]
    sheet.to_csv(tmp / "samples.csv", index=False)
    cfg = (tiny / "config.yaml").read_text() + "\n".join([
        "", "regions:", "  exclude_classes: [Necrosis, Fold]"])
    cfg = cfg.replace("zones:\n", "zones:\n- name: T\n  source: regions\n  region_class: Tumor\n", 1)
    # the regions zone needs a GeoJSON in every sample: the sample without one fails in validation too
    (tmp / "config.yaml").write_text(cfg)
    out = tmp / "run"
    code = main(["run", str(tmp / "samples.csv"), "--config", str(tmp / "config.yaml"), "--out", str(out),
                 "--workers", "0", "--quiet", "--no-report", "--on-error", "skip"])
    return {"code": code, "out": out, "sheet": sheet, "tmp": tmp, "s_reg": s_reg}


def test_run_with_regions_excludes_cells_and_areas_and_skips_bad_files(region_run, tiny):
    out, sheet, s_reg = region_run["out"], region_run["sheet"], region_run["s_reg"]
    assert region_run["code"] == 3
    prov = json.loads((out / "run.json").read_text())
    st = prov["samples"]
    sids = list(sheet["sample_id"])
    assert [st[s]["status"] for s in sids] == ["done", "failed", "failed", "failed"]
    assert all(st[s]["stage"] == "validate" for s in sids[1:])
    assert "outside.geojson (sample-sheet column 'regions'): annotations span x 0..1459.2, y 0..1459.2 px, outside " \
           "the image (512 x 512 px at full resolution)" in st[sids[1]]["error"]
    assert "broken.geojson (sample-sheet column 'regions'): not valid JSON" in st[sids[2]]["error"]
    assert "zones 'T' (source: regions) needs a regions GeoJSON for this sample" in st[sids[3]]["error"]
    lay = RunLayout(out)
    for bad in sids[1:]:  # nothing written for a refused sample
        assert not lay.sample_dir(bad).exists() or not any(lay.sample_dir(bad).iterdir())
    rec = st[s_reg]["step_a"]["regions"]
    assert rec["source"] == str(region_run["tmp"] / "s1.geojson")
    assert prov["inputs"][s_reg]["regions"]["sha256"]
    # cells: an independent point-in-rectangle check of every truth cell's centroid (pixel coordinates)
    truth = tifffile.imread(tiny / "truth" / s_reg / "cells.tif")
    ids = np.unique(truth)[1:]
    cy, cx = (np.asarray(v) + 0.5 for v in zip(*ndi.center_of_mass(np.ones_like(truth), truth, ids)))

    def inside(x0, y0, x1, y1):
        k = SCALE
        return (cx > x0 * k) & (cx < x1 * k) & (cy > y0 * k) & (cy < y1 * k)
    analysis = inside(*ANALYSIS_RUN)
    excluded = (inside(20, 20, 80, 80) & ~inside(40, 40, 60, 60)) | inside(100, 20, 120, 40) | inside(140, 140, 160, 180)
    m = pd.read_parquet(lay.measurements(s_reg))
    assert sorted(m["cell_id"]) == sorted(ids[analysis & ~excluded])
    assert rec["cells_excluded"] == int((excluded & analysis).sum()) > 0
    assert rec["cells_outside_analysis"] == int((~analysis).sum()) > 0
    # areas: the stored tissue mask holds no grid pixel outside the analysis region or inside an exclusion
    from chemozone.config import load_config
    from chemozone.io import read_image, read_labels_zarr
    from chemozone.options import tissue_options
    from chemozone.tissue import tissue_mask

    tissue = read_labels_zarr(lay.masks(s_reg), "tissue").astype(bool)
    cy, cx = np.mgrid[0:128, 0:128] * 4 + 2.0  # grid of 2 µm = 4 x 4 px: centres at 4k + 2 (never on an outline)
    g_an = inside(*ANALYSIS_RUN)
    g_ex = (inside(20, 20, 80, 80) & ~inside(40, 40, 60, 60)) | inside(100, 20, 120, 40) | inside(140, 140, 160, 180)
    assert g_an.sum() == 116 * 90  # centres x 26 ... 486 inside 25.6 ... 486.4, y 26 ... 382 inside 25.6 ... 384
    assert rec["excluded_area_mm2"] == pytest.approx((g_ex & g_an).sum() * 4e-6)
    assert rec["outside_analysis_mm2"] == pytest.approx((128 * 128 - 116 * 90) * 4e-6)
    cfg = load_config(region_run["tmp"] / "config.yaml")
    img = read_image(sheet["image"].iloc[0])
    before = tissue_mask(img.data, pixel_size_um=0.5, **tissue_options(cfg)).mask
    np.testing.assert_array_equal(tissue, before & g_an & ~g_ex)  # removed from the tissue area exactly
    assert rec["tissue_removed_mm2"] == pytest.approx((before.sum() - tissue.sum()) * 4e-6)
    zone = read_labels_zarr(lay.masks(s_reg), "zone_T").astype(bool)
    np.testing.assert_array_equal(zone, inside(100, 100, 180, 180) & tissue)  # the fold piece is not tissue
    z = pd.read_parquet(lay.zones(s_reg)).set_index("zone")
    assert z.loc["T", "source"] == "regions" and z.loc["T", "area_mm2"] == pytest.approx(zone.sum() * 4e-6)
    cells = pd.read_parquet(lay.cells(s_reg))
    assert cells["in_T"].sum() > 0 and "regions" not in pd.read_parquet(lay.cohort_cells).columns


def test_export_to_qupath_reads_back_to_the_same_geometry_and_counts(region_run, tiny, tmp_path):
    from chemozone.io import read_labels_zarr

    out, s_reg = region_run["out"], region_run["s_reg"]
    assert main(["export", str(out), "--to", "qupath"]) == 0
    lay = RunLayout(out)
    d = lay.export_qupath / s_reg
    cells = pd.read_parquet(lay.cells(s_reg))
    back = read_geojson(d / "cells.geojson")
    assert len(back) == len(cells) and set(back["object_type"]) == {"detection"}
    labels = read_labels_zarr(lay.masks(s_reg), "cells")
    ids = [int(m["cell_id"]) for m in back["measurements"]]
    assert ids == cells["cell_id"].astype(int).tolist()
    areas = ndi.sum(np.ones_like(labels), labels, ids)
    np.testing.assert_array_equal([g.area for g in back["geometry"]], areas)  # exact pixel outlines
    assert back["classification"].tolist() == cells["phenotype"].astype(str).tolist()
    assert [m["in_T"] for m in back["measurements"]] == cells["in_T"].astype(float).tolist()
    zones = read_geojson(d / "zones.geojson").set_index("classification")
    assert set(zones["object_type"]) == {"annotation"}
    for name in ("T", "Tissue", "CXCL8"):
        stored = read_labels_zarr(lay.masks(s_reg), "tissue" if name == "Tissue" else f"zone_{name}").astype(bool)
        np.testing.assert_array_equal(rasterize_geometry(zones.loc[name, "geometry"], shape_yx=(SIZE, SIZE), factor=4),
                                      stored)
    np.testing.assert_array_equal(tifffile.imread(d / "cells.tif"), labels)
    assert tifffile.imread(d / "cells.tif").dtype == np.uint32
    # centroids instead of outlines
    assert main(["export", str(out), "--to", "qupath", "--cells", "points", "--dest", str(tmp_path / "pts")]) == 0
    pts = read_geojson(tmp_path / "pts" / s_reg / "cells.geojson")
    np.testing.assert_allclose([g.x for g in pts["geometry"]], cells["x_um"] / 0.5)


def test_qupath_export_errors_name_what_to_do(tmp_path):
    from chemozone.errors import MissingStepError
    from chemozone.layout import atomic_write_json
    from chemozone.qupath import cell_features, export_qupath, mask_polygons

    cells = pd.DataFrame({"cell_id": np.array([1, 5], np.uint32), "x_um": [0.5, 1.5], "y_um": [0.5, 0.5],
                          "phenotype": ["T", "B"]})
    with pytest.raises(MissingStepError, match=r"sample 's1': cell outlines need the cells label image .*"
                                               r"export the cells as points \(--cells points\)"):
        cell_features(cells, sample_id="s1", pixel_size_um=0.5)
    labels = np.array([[1, 1, 0]], np.uint32)
    with pytest.raises(MissingStepError, match=r"sample 's1': cells \[5\] of cells.parquet are not in the cells mask"):
        cell_features(cells, sample_id="s1", pixel_size_um=0.5, labels=labels)
    pts = cell_features(cells, sample_id="s1", pixel_size_um=0.5, as_points=True)
    assert [f["geometry"]["coordinates"] for f in pts] == [[1.0, 1.0], [3.0, 1.0]]
    out = tmp_path / "run"
    out.mkdir()
    atomic_write_json(RunLayout(out).run_json, {"samples": {"s1": {"status": "failed"}}})
    with pytest.raises(MissingStepError, match=r"run\.json: no finished sample to export; run 'chemozone run'"):
        export_qupath(out)
    # a grid mask's outline: grid pixels of 4 px, the partial last block clipped to the 10 x 9 px image
    m = np.zeros((3, 3), bool)
    m[2, 2] = True
    assert mask_polygons(m, factor=4, shape_yx=(10, 9)).bounds == (8.0, 8.0, 9.0, 10.0)


# --------------------------------------------------------------------------- regions on a cell-table run
TABLE_PX = 0.5  # µm per pixel of the table's image; the analysis grid is 1 µm = 2 x 2 px (centres at odd px)
TABLE_CONFIG = f"""\
panel: {{pixel_size_um: {TABLE_PX}}}
analysis_grid: {{pixel_size_um: 1.0}}
phenotypes:
  markers:
    CD8: {{compartment: cell, gate: {{method: vendor}}}}
  rules:
    - {{cell_type: CD8 T, pos: [CD8]}}
zones:
  - {{name: T, source: regions, region_class: Tumor}}
"""


def _lattice_table(path: Path, image: str = "slide1.tif") -> Path:
    """A QuPath detection-measurement export (µm) of 50 x 50 cells at pixels (1 + 4i, 1 + 4j) of a 200-px image
    (odd pixels: never on an outline of :func:`qupath_regions`); every fifth cell is classified CD8."""
    i, j = np.meshgrid(np.arange(50), np.arange(50))
    x_px, y_px = (1 + 4 * i).ravel(), (1 + 4 * j).ravel()
    cls = np.where(np.arange(x_px.size) % 5 == 0, "CD8", "")
    pd.DataFrame({"Image": image, "Name": "Cell", "Class": cls, "Parent": "Annotation",
                  "Centroid X µm": x_px * TABLE_PX, "Centroid Y µm": y_px * TABLE_PX,
                  "Cell: CD8: Mean": np.where(cls == "CD8", 5.0, 1.0)}).to_csv(path, sep="\t", index=False)
    return path


def test_regions_apply_to_a_cell_table_run(tmp_path):
    """``chemozone run SHEET --cells qupath`` with the QuPath fixture (a hole, a multipolygon, a derived class) as
    the sample's ``regions``: cells excluded by position, areas from the outlines, the Tumor outline as a zone.

    By hand (pixels; lattice values 1 + 4i): the analysis box (10, 190) holds 45 x 45 = 2025 cells (475 outside);
    the necrosis ring (20, 80) less its hole (40, 60) 15² - 5² = 200, the fold pieces 5 x 5 + 5 x 10 = 75: 1750
    kept. Grid pixels of 1 µm² (2 x 2 px): analysis 90² = 8100, necrosis 30² - 10² = 800, fold 10 x 10 + 10 x 20
    = 300, so the analysed tissue is 7000 µm²; the Tumor zone is 40² less the fold piece in it (10 x 20) = 1400 µm²
    with 20² - 5 x 10 = 350 cells."""
    _lattice_table(tmp_path / "cells.tsv")
    _write(tmp_path / "s1.geojson", qupath_regions())
    (tmp_path / "sheet.csv").write_text("sample_id,cells_table,regions\nS1,cells.tsv,s1.geojson\n")
    (tmp_path / "c.yaml").write_text(TABLE_CONFIG)
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "sheet.csv"), "--cells", "qupath", "--config", str(tmp_path / "c.yaml"),
                 "--out", str(out), "--no-report", "--quiet"]) == 0
    lay = RunLayout(out)
    run = json.loads(lay.run_json.read_text())
    assert run["inputs"]["S1"]["regions"]["path"] == str(tmp_path / "s1.geojson") and \
        run["inputs"]["S1"]["regions"]["sha256"]
    a = run["samples"]["S1"]["step_a"]
    rec = a["regions"]
    assert rec["annotations"] == {"": 1, "Necrosis": 1, "Fold: Severe": 1, "Tumor": 1, "Stroma": 1}
    assert rec["cells_outside_analysis"] == 475 and rec["cells_excluded"] == 275 and a["n_cells"] == 1750
    assert rec["excluded_area_mm2"] == pytest.approx(1100e-6)
    assert rec["excluded_geometry_mm2"] == pytest.approx(1100e-6) and rec["analysis_geometry_mm2"] == pytest.approx(8100e-6)
    tissue = read_labels_zarr_bool(lay, "S1", "tissue")
    assert tissue.sum() == 7000 and a["tissue"]["area_mm2"] == pytest.approx(7000e-6)
    assert rec["tissue_removed_mm2"] == pytest.approx(a["tissue"]["area_before_regions_mm2"] - 7000e-6)
    cells = pd.read_parquet(lay.cells("S1"))
    x, y = cells["x_um"] / TABLE_PX, cells["y_um"] / TABLE_PX

    def inside(x0, y0, x1, y1):
        return (x > x0) & (x < x1) & (y > y0) & (y < y1)
    assert len(cells) == 1750 and inside(10, 10, 190, 190).all()
    assert not ((inside(20, 20, 80, 80) & ~inside(40, 40, 60, 60)) | inside(100, 20, 120, 40)
                | inside(140, 140, 160, 180)).any()
    z = pd.read_parquet(lay.zones("S1")).set_index("zone")
    assert z.loc["T", "source"] == "regions" and z.loc["T", "area_mm2"] == pytest.approx(1400e-6)
    assert z.loc["T", "tissue_area_mm2"] == pytest.approx(7000e-6)
    assert read_labels_zarr_bool(lay, "S1", "zone_T").sum() == 1400
    assert cells["in_T"].sum() == 350 and cells.loc[cells["in_T"], "x_um"].min() / TABLE_PX > 100
    inf = pd.read_parquet(lay.infiltration("S1"))
    row = inf[(inf["zone"] == "T") & (inf["population_type"] == "all")].set_index("region")
    assert row.loc["inside", "n_cells"] == 350 and row.loc["inside", "area_mm2"] == pytest.approx(1400e-6)
    assert row.loc[["inside", "outside"], "area_mm2"].sum() == pytest.approx(7000e-6)  # densities per analysed mm²
    # back to QuPath (points: a table has no outlines): the zone reads back as the Tumor outline less the fold piece
    assert main(["export", str(out), "--to", "qupath", "--cells", "points"]) == 0
    from shapely.geometry import box

    from chemozone.grid import grid_pixel_centres_um
    from chemozone.regions import contains_grid_centres

    d = lay.export_qupath / "S1"
    zones = read_geojson(d / "zones.geojson").set_index("classification")
    assert zones.loc["T", "geometry"].symmetric_difference(box(100, 100, 180, 180) - box(140, 140, 160, 180)).area == 0
    ys, xs = grid_pixel_centres_um((tissue.shape), 1.0)
    for name, stored in (("T", "zone_T"), ("Tissue", "tissue")):
        np.testing.assert_array_equal(contains_grid_centres(zones.loc[name, "geometry"], ys / TABLE_PX, xs / TABLE_PX),
                                      read_labels_zarr_bool(lay, "S1", stored))
    pts = read_geojson(d / "cells.geojson")
    assert len(pts) == 1750 and [g.x for g in pts["geometry"]] == (cells["x_um"] / TABLE_PX).tolist()
    # SpatialData of a table run: no image, the grid masks and the table (the run's pandas string columns too)
    import warnings

    from chemozone.export import export_spatialdata

    with warnings.catch_warnings():  # third-party notices on writing (ome-zarr's Scaler, zarr's autosharding)
        warnings.simplefilter("ignore")
        sd = pytest.importorskip("spatialdata")
        s = sd.read_zarr(export_spatialdata(out, tmp_path / "r.zarr"))
    assert not s.images and {"S1_tissue", "S1_zone_T"} <= set(s.labels)
    assert s.tables["table"].n_obs == 1750 and int(s.labels["S1_zone_T"].values.astype(bool).sum()) == 1400


def read_labels_zarr_bool(lay: RunLayout, sid: str, name: str) -> np.ndarray:
    from chemozone.io import read_labels_zarr

    return read_labels_zarr(lay.masks(sid), name).astype(bool)


def test_bad_regions_of_a_cell_table_run(tmp_path):
    """Refused per sample before anything of it is written (``--on-error skip`` runs the others): annotations away
    from every cell (a GeoJSON in another frame), an analysis region without cells, annotations beyond the image
    when the sheet's masks give its size, a missing file, a regions zone without a file; and a table run with
    regions but no pixel size."""
    from chemozone.table_run import run_cell_tables

    _lattice_table(tmp_path / "cells.tsv")
    far = qupath_regions()
    for f in far["features"]:  # every outline 5,000 px away (another image's frame)
        if f["geometry"]["type"] == "Polygon":
            f["geometry"]["coordinates"] = [[[x + 5000, y + 5000] for x, y in r] for r in f["geometry"]["coordinates"]]
    far["features"] = [f for f in far["features"] if f["geometry"]["type"] == "Polygon"]
    _write(tmp_path / "far.geojson", far)
    empty = {"type": "FeatureCollection", "features": [
        _feature({"type": "Polygon", "coordinates": [_ring(2, 2, 4, 4)]}),  # between the cells: none inside
        _feature({"type": "Polygon", "coordinates": [_ring(100, 100, 180, 180)]}, "Tumor")]}
    _write(tmp_path / "empty.geojson", empty)
    _write(tmp_path / "big.geojson", qupath_regions(scale=1.5))  # 285 px: beyond the 200-px image of the masks
    mask = np.zeros((200, 200), np.uint32)
    i, j = np.meshgrid(np.arange(50), np.arange(50))
    mask[(1 + 4 * j).ravel(), (1 + 4 * i).ravel()] = np.arange(1, 2501)  # QuPath's rows are cells 1..2500
    tifffile.imwrite(tmp_path / "cells_mask.tif", mask)
    _write(tmp_path / "ok.geojson", qupath_regions())
    (tmp_path / "sheet.csv").write_text(
        "sample_id,cells_table,regions,cells_mask\nfar,cells.tsv,far.geojson,\nempty,cells.tsv,empty.geojson,\n"
        "big,cells.tsv,big.geojson,cells_mask.tif\ngone,cells.tsv,gone.geojson,\nnone,cells.tsv,,\n"
        "ok,cells.tsv,ok.geojson,cells_mask.tif\n")
    (tmp_path / "c.yaml").write_text(TABLE_CONFIG)
    res = run_cell_tables(tmp_path / "sheet.csv", tmp_path / "c.yaml", tmp_path / "run", on_error="skip")
    assert res.exit_code == 3
    st = json.loads((tmp_path / "run" / "run.json").read_text())["samples"]
    assert {s: v["status"] for s, v in st.items()} == {"far": "failed", "empty": "failed", "big": "failed",
                                                      "gone": "failed", "none": "failed", "ok": "done"}
    errors = {s: v["error"] for s, v in st.items() if v["status"] == "failed"}
    assert re.search(r"far\.geojson \(sample-sheet column 'regions'\): the annotations lie away from every cell "
                     r"\(annotations span x 5000\.\.5190, y 5000\.\.5190 px, the table's cells x 1\.\.197, y 1\.\.197 px "
                     r"at 0\.5 µm/px\); export the GeoJSON from QuPath on this table's image", errors["far"])
    assert re.search(r"empty\.geojson \(sample-sheet column 'regions'\): no cell of the table lies inside the analysis "
                     r"region", errors["empty"])
    assert re.search(r"big\.geojson \(sample-sheet column 'regions'\): annotations span x 0\.\.285, y 0\.\.285 px, "
                     r"outside the image \(200 x 200 px", errors["big"])
    assert re.search(r"gone\.geojson \(sample-sheet column 'regions'\): file not found", errors["gone"])
    assert re.search(r"zones 'T' \(source: regions\) needs a regions GeoJSON for this sample", errors["none"])
    lay = RunLayout(tmp_path / "run")
    for bad in errors:  # nothing written for a refused sample
        assert not lay.sample_dir(bad).exists() or not any(lay.sample_dir(bad).iterdir())
    assert st["ok"]["step_a"]["n_cells"] == 1750  # the masks give the image's size: the same outcome
    (tmp_path / "nopx.yaml").write_text(TABLE_CONFIG.replace(f"panel: {{pixel_size_um: {TABLE_PX}}}\n", ""))
    (tmp_path / "one.csv").write_text("sample_id,cells_table,regions\nS1,cells.tsv,ok.geojson\n")
    with pytest.raises(RunError, match=r"ok\.geojson \(sample-sheet column 'regions'\): region annotations of a cell "
                                       r"table need its image's pixel size .*set panel\.pixel_size_um \(CLI: "
                                       r"--pixel-size-um\)"):
        run_cell_tables(tmp_path / "one.csv", tmp_path / "nopx.yaml", tmp_path / "run2")
    # a table in µm without a pixel size has no pixel frame to export to QuPath
    (tmp_path / "nopx.yaml").write_text(TABLE_CONFIG.split("panel:")[0] + TABLE_CONFIG.split("\n", 1)[1].split("zones:")[0])
    (tmp_path / "plain.csv").write_text("sample_id,cells_table\nS1,cells.tsv\n")
    assert run_cell_tables(tmp_path / "plain.csv", tmp_path / "nopx.yaml", tmp_path / "run3").exit_code == 0
    from chemozone.errors import MissingStepError
    from chemozone.qupath import export_qupath

    with pytest.raises(MissingStepError, match=r"sample 'S1': a run on cell tables in µm without panel\.pixel_size_um "
                                               r"has no pixel coordinates for QuPath; rerun it with --pixel-size-um"):
        export_qupath(tmp_path / "run3", cells="points")
