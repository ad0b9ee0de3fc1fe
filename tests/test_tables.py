"""Cell tables without images (issue 16): vendor exports → chemozone's columns, and runs on tables alone.

Values asserted below are read off the export files by hand (the first rows of each tiny SPIAT fixture) and from
phenoptr's published vignette (``count_within(CD68+ → CK+, 25 µm)`` = 274 from-cells, 3.28 per cell).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chemozone.cli import main
from chemozone.config import ZoneConfig
from chemozone.errors import ConfigError, TableError
from chemozone.io import read_cell_table
from chemozone.layout import RunLayout


def _import(tmp_path: Path, fmt: str, table: Path, *extra: str) -> pd.DataFrame:
    out = tmp_path / f"{table.name}.parquet"
    assert main(["import", fmt, str(table), "--out", str(out), *extra]) == 0
    return pd.read_parquet(out)


# ------------------------------------------------------------------------------ the tiny SPIAT exports
def test_tiny_inform_through_the_cli(shared_data, tmp_path, capsys):
    """inForm in pixels: positions × 0.5 µm, means per compartment ('Entire Cell' → cell), phenotypes → _pos."""
    c = _import(tmp_path, "inform", shared_data / "exports" / "tiny_inform.txt.gz", "--pixel-size-um", "0.5")
    assert "wrote 9 cells of 1 sample (inform, positions in pixels × 0.5 µm" in capsys.readouterr().out
    first = c.iloc[0]
    assert first["sample_id"] == "S6_[49209,17530].im3" and first["cell_id"] == 1
    assert (first["x_um"], first["y_um"]) == (41.0, 15.0)  # Cell X/Y Position 82, 30 pixels
    assert first["DAPI_nucleus"] == pytest.approx(14.557) and first["CD3_nucleus"] == pytest.approx(0.198)
    assert first["DAPI_cytoplasm"] == pytest.approx(3.003)
    assert first["nucleus_area_um2"] == pytest.approx(160 * 0.25)  # Nucleus Area 160 pixels
    assert first["vendor_phenotype"] == "OTHER" and first["tissue_category"] == "STROMA"
    second = c.iloc[1]  # Phenotype "AMACR+PD-L1-": AMACR positive, PD-L1 (hyphenated) negative
    assert second["AMACR_pos"] and not second["PD-L1_pos"] and not first["AMACR_pos"]
    assert {"CD8_cell", "AMACR_membrane", "Autofluorescence_cell"} <= set(c.columns)


def test_tiny_halo_through_the_cli(shared_data, tmp_path):
    """HALO: box centre × pixel size, dyes named from Analysis Inputs, positivity flags → _pos."""
    c = _import(tmp_path, "halo", shared_data / "exports" / "tiny_halo.csv.gz", "--pixel-size-um", "0.5")
    assert len(c) == 10
    first = c.iloc[0]
    assert first["cell_id"] == 723 and first["tissue_category"] == "TUMOUR"
    assert (first["x_um"], first["y_um"]) == ((2111 + 2131) / 4, (1082 + 1103) / 4)
    assert first["DAPI_nucleus"] == pytest.approx(7.38555)  # 'Dye 1 Nucleus Intensity', Dye 1:DAPI
    assert "Opal 620_cytoplasm" in c.columns and c["DAPI_pos"].all()


def test_tiny_codex_and_cellprofiler_through_the_cli(shared_data, tmp_path):
    ex = shared_data / "exports"
    codex = _import(tmp_path, "codex", ex / "tiny_codex.csv.gz", "--pixel-size-um", "0.5",
                    "--phenotypes", str(ex / "tiny_codex_phenotypes.txt.gz"))
    assert len(codex) == 9 and codex["sample_id"].iloc[0] == "BALBc-3_X05_Y03"
    assert (codex["x_um"].iloc[0], codex["y_um"].iloc[0]) == (5.0, 35.0)  # X.X 10, Y.Y 70
    assert codex["CD45_cell"].iloc[0] == pytest.approx(1577.67541503906)
    assert codex["vendor_phenotype"].iloc[0] == "CD11c(+) B cells"  # cluster 9600 in the phenotype table
    cp = _import(tmp_path, "auto", ex / "tiny_cellprofiler.txt.gz", "--pixel-size-um", "2")
    assert len(cp) == 9 and list(cp["cell_id"][:3]) == [1, 2, 3]
    assert (cp["x_um"].iloc[0], cp["y_um"].iloc[0]) == (1600.0, 243.0)  # Location_Center 800, 121.5
    assert cp["DNA_rs_cell"].iloc[0] == pytest.approx(0.47373737999322737)
    assert cp["cell_area_um2"].iloc[0] == 88 * 4  # AreaShape_Area 88 px²


def test_inform_table_in_microns_needs_no_pixel_size(shared_data):
    t = read_cell_table(shared_data / "vectra_phenoptr" / "sample_cell_seg_data.csv")
    assert t.format == "inform" and t.unit == "um" and len(t.cells) == 6072
    assert (t.cells["x_um"].iloc[0], t.cells["y_um"].iloc[0]) == (257.5, 6.5)
    assert sorted(t.positivity) == ["CD68", "CD8", "CK", "FoxP3"]
    assert int(t.cells["CD68_pos"].sum()) == 417 and int(t.cells["CK_pos"].sum()) == 2257


def test_qupath_and_mcmicro_tables(tmp_path):
    """QuPath (µm, classes 'CD3: CD8') and an MCMICRO/SCIMAP CSV (pixels, one column per marker)."""
    q = tmp_path / "qupath.tsv"
    q.write_text("Image\tName\tClass\tParent\tCentroid X µm\tCentroid Y µm\tNucleus: CD3: Mean\tCell: CD8: Mean\t"
                 "Cell: Area µm^2\nslide1.tif\tCell\tCD3: CD8\tTumor\t10.5\t20.25\t3.5\t7\t50\n"
                 "slide1.tif\tCell\tCD3\tStroma\t30\t40\t2\t0.5\t60\n")
    t = read_cell_table(q)
    c = t.cells
    assert t.format == "qupath" and list(c["x_um"]) == [10.5, 30.0] and list(c["CD3_nucleus"]) == [3.5, 2.0]
    assert list(c["CD3_pos"]) == [True, True] and list(c["CD8_pos"]) == [True, False]
    assert list(c["tissue_category"]) == ["Tumor", "Stroma"] and list(c["cell_area_um2"]) == [50.0, 60.0]
    m = tmp_path / "scimap.csv"
    m.write_text("CellID,CD3_nucleiMask,CD3_cellMask,X_centroid,Y_centroid,Area,imageid,phenotype\n"
                 "7,1.5,2.5,100,50,40,img1,T cell\n")
    c = read_cell_table(m, "scimap", pixel_size_um=0.65).cells
    assert c["cell_id"].iloc[0] == 7 and c["sample_id"].iloc[0] == "img1" and c["vendor_phenotype"].iloc[0] == "T cell"
    assert c["x_um"].iloc[0] == pytest.approx(65.0) and c["CD3_nucleus"].iloc[0] == 1.5 and c["CD3_cell"].iloc[0] == 2.5


# -------------------------------------------------------------------------------------------- bad input
def test_table_without_coordinates(tmp_path, capsys):
    p = tmp_path / "cells.csv"
    p.write_text("Cell ID,CD3\n1,2\n")
    with pytest.raises(TableError, match=r"cells\.csv: not a known cell-table export .*pass the format"):
        read_cell_table(p)
    with pytest.raises(TableError, match=r"cells\.csv: no column 'XMin' for the cell positions of a HALO export"):
        read_cell_table(p, "halo")
    assert main(["import", "inform", str(p), "--out", str(tmp_path / "o.parquet")]) == 1
    err = capsys.readouterr().err
    assert "cells.csv: no column 'Cell X Position' for the cell positions of a inForm export" in err
    assert err.count("\n") == 1 and not (tmp_path / "o.parquet").exists()


def test_unknown_unit_and_pixels_without_size(tmp_path):
    p = tmp_path / "inform.txt"
    p.write_text("Cell ID\tCell X Position\tCell Y Position\n1\t5\t6\n")  # no header says microns or pixels
    with pytest.raises(TableError, match=r"inform\.txt: column 'Cell X Position': the headers state no unit for the "
                                         r"positions; pass unit='um' or unit='px'"):
        read_cell_table(p)
    assert read_cell_table(p, unit="um").cells["x_um"].iloc[0] == 5.0
    q = tmp_path / "qupath.csv"
    q.write_text("Image,Centroid X mm,Centroid Y mm\na,1,2\n")
    with pytest.raises(TableError, match=r"qupath\.csv: no column 'Centroid X µm' \(or 'Centroid X px'\)"):
        read_cell_table(q, "qupath")
    h = tmp_path / "halo.csv"
    h.write_text("XMin,XMax,YMin,YMax\n0,2,0,2\n")
    with pytest.raises(TableError, match=r"halo\.csv: column 'XMin' is in pixels; pass the pixel size"):
        read_cell_table(h)
    with pytest.raises(TableError, match=r"halo\.csv: unknown unit 'mm'"):
        read_cell_table(h, unit="mm")
    h.write_text("XMin,XMax,YMin,YMax\n0,2,0,2\nx,4,0,2\n")
    with pytest.raises(TableError, match=r"halo\.csv: column 'XMin' has 1 empty or non-numeric value"):
        read_cell_table(h, pixel_size_um=1)


def test_vendor_gate_needs_the_vendor_column(shared_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("panel: {pixel_size_um: 0.5}\nphenotypes:\n  markers:\n    CD3: {gate: {method: vendor}}\n")
    code = main(["run", str(shared_data / "exports" / "tiny_cellprofiler.txt.gz"), "--cells", "--config", str(cfg),
                 "--out", str(tmp_path / "run"), "--no-report"])
    assert code == 1
    assert "phenotypes.markers.CD3: no channel 'CD3' in the panel" in capsys.readouterr().err
    cfg.write_text("panel: {pixel_size_um: 0.5}\nzones:\n  - {name: CXCL8, channels: [CXCL8]}\n")
    with pytest.raises(ConfigError, match=r"zones\[0\] 'CXCL8': source 'pixels' needs the image's pixels"):
        from chemozone.table_run import run_cell_tables

        run_cell_tables(shared_data / "exports" / "tiny_cellprofiler.txt.gz", cfg, tmp_path / "run")


# ---------------------------------------------------------------------------------------- runs on tables
HALO_CONFIG = """\
panel: {pixel_size_um: 0.5}
cell_tables: {format: halo, sample_column: deidentified_sample}
phenotypes:
  markers:
    CD3: {gate: {method: vendor}}
    CD8: {gate: {method: vendor}}
    FOXP3: {gate: {method: vendor}}
  rules:
    - {cell_type: Treg, pos: [CD3, FOXP3]}
    - {cell_type: CD8 T, pos: [CD3, CD8]}
    - {cell_type: T, pos: [CD3]}
zones:
  - {name: tumor, source: tumor_cells, tumor_column: tissue_category, tumor_values: [Tumor]}
"""


def test_halo_five_cores_end_to_end(shared_data, tmp_path):
    """spatialTIME's HALO export (12,782 cells, 5 TMA cores → 5 samples) through ``chemozone run --cells``: vendor
    positivity as our gates, the tumor compartment from Classifier.Label, densities per mm² of the tissue estimated
    from the cell positions (the pixel size, 0.5 µm, is the one at which the export's cell areas in µm² fill the
    ellipses inscribed in its pixel boxes)."""
    src = shared_data / "exports" / "halo_spatialtime_5_cores.csv"
    raw = pd.read_csv(src)
    box_px2 = (raw["XMax"] - raw["XMin"]) * (raw["YMax"] - raw["YMin"]) * np.pi / 4
    assert np.median(np.sqrt(raw["Cell.Area..m.."] / box_px2)) == pytest.approx(0.5, abs=0.005)
    (tmp_path / "c.yaml").write_text(HALO_CONFIG)
    out = tmp_path / "run"
    assert main(["run", str(src), "--cells", "--config", str(tmp_path / "c.yaml"), "--out", str(out)]) == 0
    lay = RunLayout(out)
    cells = pd.read_parquet(lay.cohort_cells)
    assert len(cells) == 12782 and cells["sample_id"].nunique() == 5
    assert set(cells["source_sample"]) == set(raw["deidentified_sample"])
    # vendor flags are our _pos: T cells = CD3 flag of HALO
    assert (cells["cell_type"] != "Other").sum() == int((raw["CD3..Opal.570..Positive"] == 1).sum())
    # every Tumor-labelled cell is in the intraepithelial compartment; few Stroma cells are
    tumor = cells["tissue_category"] == "Tumor"
    assert cells.loc[tumor, "in_tumor_intraepithelial"].all()
    assert cells.loc[~tumor, "in_tumor_intraepithelial"].mean() < 0.1
    inf = pd.read_parquet(lay.cohort_infiltration)
    assert set(inf["sample_id"]) == set(cells["sample_id"])
    run = json.loads(lay.run_json.read_text())
    for sid, s in run["samples"].items():
        assert s["status"] == "done"
        t = s["step_a"]["tissue"]
        row = inf[(inf["sample_id"] == sid) & (inf["population_type"] == "all") & (inf["zone"] == "tumor_intraepithelial")]
        n_all = int((cells["sample_id"] == sid).sum())
        assert row.set_index("region").loc[["inside", "outside"], "n_cells"].sum() == n_all
        area = row.set_index("region").loc[["inside", "outside"], "area_mm2"].sum()
        assert area == pytest.approx(t["area_mm2"], rel=1e-9)  # densities use the recorded tissue area
        # TMA cores are round: the estimate is the hull less the cell-free holes (core TMA2 [3,B] has lumina of
        # ~100 µm, ratio 0.83; the others 0.94-1.02)
        assert 0.8 < t["area_mm2"] / t["convex_hull_area_mm2"] < 1.05
    assert (out / "report.html").is_file()


def test_table_run_warns_of_a_zone_over_all_tissue_and_of_an_empty_one(shared_data, tmp_path, capsys):
    """Zone-area plausibility in a run on tables alone: a FOXP3+ reach of 3 mm covers every core, a milieu of
    100,000 CD8+ cells within 20 µm exists nowhere; both runs finish and say so (run.json, CLI summary)."""
    src = shared_data / "exports" / "halo_spatialtime_5_cores.csv"
    (tmp_path / "c.yaml").write_text(HALO_CONFIG + (
        "  - {name: Treg_reach, source: producers, producer_marker: FOXP3, radius_um: 3000}\n"
        "  - {name: CD8_milieu, source: producers, producer_marker: CD8, radius_um: 20, min_producers: 100000}\n"))
    out = tmp_path / "run"
    assert main(["run", str(src), "--cells", "--config", str(tmp_path / "c.yaml"), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    prov = json.loads(RunLayout(out).run_json.read_text())
    codes = {(w["code"], w["sample"], w["message"].split(" covers")[0]) for w in prov["warnings"]
             if w["code"].startswith("zone_")}
    assert codes == {("zone_covers_tissue", None, "zone Treg_reach"), ("zone_near_empty", None, "zone CD8_milieu")}
    assert "warning: [zone_covers_tissue] cohort: zone Treg_reach covers more than 95 % of the tissue in all 5" in stdout
    assert "warning: [zone_near_empty] cohort: zone CD8_milieu covers less than 0.1 % of the tissue in all 5" in stdout


def test_set4_count_within_reproduces_phenoptr(shared_data, tmp_path):
    """inForm Set4: its nucleus/cell maps as precomputed masks, ``sample_cell_seg_data.csv`` as the table; from
    chemozone's cells.parquet, count_within(CD68+ → CK+, 25 µm) gives phenoptr's 274 cells and 3.28 per cell."""
    from chemozone.spatial import count_within

    maps = shared_data / "exports" / "inform_Set4_binary_seg_maps.tif"
    table = shared_data / "vectra_phenoptr" / "sample_cell_seg_data.csv"
    vignette = (shared_data / "vectra_phenoptr" / "computing_distances.code_and_output.txt").read_text()
    assert "274" in vignette and "3.28" in vignette
    pd.DataFrame({"sample_id": ["Set4"], "cells_table": [str(table)], "nuclei_mask": [str(maps)],
                  "cells_mask": [str(maps)]}).to_csv(tmp_path / "sheet.csv", index=False)
    rules = "\n".join(f"    - {{cell_type: {t}, pos: [{m}]}}" for t, m in
                      (("Tumor", "CK"), ("CD8 T", "CD8"), ("Macrophage", "CD68"), ("Treg", "FoxP3")))
    markers = "\n".join(f"    {m}: {{gate: {{method: vendor}}}}" for m in ("CK", "CD8", "CD68", "FoxP3"))
    (tmp_path / "c.yaml").write_text(f"panel: {{pixel_size_um: 0.5}}\nphenotypes:\n  markers:\n{markers}\n"
                                     f"  rules:\n{rules}\n")
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "sheet.csv"), "--cells", "inform", "--config", str(tmp_path / "c.yaml"),
                 "--out", str(out), "--no-report"]) == 0
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == 6072
    for pop, src, dst in (("vendor_phenotype", "CD68+", "CK+"), ("cell_type", "Macrophage", "Tumor")):
        r = count_within(cells, population=pop, source=src, target=dst, radius_um=25).iloc[0]
        assert r["from_with"] == 274 and round(r["within_mean"], 2) == 3.28
    rec = json.loads((out / "run.json").read_text())["samples"]["Set4"]["step_a"]["segmentation"]
    assert rec["masks"]["nuclei_mask"]["n_objects"] == 6072
    assert rec["position_vs_centroid_um"]["max"] < 5  # the table's positions are the maps' objects
    from chemozone.io import read_labels_zarr

    assert set(np.unique(read_labels_zarr(out / "samples" / "Set4" / "masks.ome.zarr", "nuclei"))) - {0} == \
        set(cells["cell_id"])


def test_table_cells_must_be_objects_of_the_masks(shared_data, tmp_path):
    maps = shared_data / "exports" / "inform_Set4_binary_seg_maps.tif"
    other = shared_data / "vectra_phenoptr" / "FIHC4__0929309_HP_IM3_2_cell_seg_data.txt"
    (tmp_path / "sheet.csv").write_text(f"sample_id,cells_table,nuclei_mask\nF,{other},{maps}\n")
    (tmp_path / "c.yaml").write_text("panel: {pixel_size_um: 0.497}\n")
    from chemozone.errors import RunError
    from chemozone.table_run import run_cell_tables

    with pytest.raises(RunError, match=r"inform_Set4_binary_seg_maps\.tif \(sample-sheet column 'nuclei_mask'\): \d+ "
                                       r"cell\(s\) of the table are not objects of the mask"):
        run_cell_tables(tmp_path / "sheet.csv", tmp_path / "c.yaml", tmp_path / "run")


def test_tumor_cell_zones_missing_column():
    from chemozone.cell_regions import tumor_cell_zones

    z = ZoneConfig(name="T", source="tumor_cells", tumor_values=["Tumor"])
    with pytest.raises(ConfigError, match=r"zones 'T'.tumor_column: the cells table has no column 'cell_type'"):
        tumor_cell_zones(pd.DataFrame({"x_um": [1.0], "y_um": [1.0]}), np.ones((2, 2), bool), grid_um=2.0, zone=z)
    with pytest.raises(ConfigError, match="needs 'tumor_values'"):
        from chemozone.config import config_from_dict

        config_from_dict({"zones": [{"name": "T", "source": "tumor_cells"}]})


def test_vendor_gate_without_vendor_column_and_bad_positions():
    from chemozone.cell_regions import region_grid_shape
    from chemozone.config import MarkerConfig
    from chemozone.phenotype import compute_gates

    cells = pd.DataFrame({"sample_id": "s", "CD3_cell": [1.0, 5.0], "CD8_pos": [True, False]})
    with pytest.raises(ConfigError, match=r"phenotypes.markers.CD3.gate.method is 'vendor' but the cells table has "
                                          r"no 'CD3_pos' column \(vendor positivity found: \['CD8_pos'\]\)"):
        compute_gates(cells, markers={"CD3": MarkerConfig(gate={"method": "vendor"})})
    g = compute_gates(cells, markers={"CD8": MarkerConfig(gate={"method": "vendor"})})
    assert g["method"].tolist() == ["vendor"] and np.isnan(g["threshold_raw"].iloc[0])
    with pytest.raises(TableError, match=r"negative positions .*shift the coordinates"):
        region_grid_shape(pd.DataFrame({"x_um": [-3.0], "y_um": [1.0]}), grid_um=2.0, margin_um=10)
    with pytest.raises(TableError, match=r"raise analysis_grid.pixel_size_um"):
        region_grid_shape(pd.DataFrame({"x_um": [1e6], "y_um": [1.0]}), grid_um=2.0, margin_um=10)


def test_samples_whose_names_collide(tmp_path):
    from chemozone.config import Config
    from chemozone.table_run import load_cell_tables

    p = tmp_path / "cells.csv"
    p.write_text("CellID,X_centroid,Y_centroid,imageid\n1,1,1,a b\n2,2,2,a_b\n")
    with pytest.raises(TableError, match=r"cells\.csv: samples '.*' and another one both become sample_id 'a_b'"):
        load_cell_tables(p, Config(panel={"pixel_size_um": 1.0}))
