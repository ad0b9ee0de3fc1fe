"""Runs on cell tables without images: ``chemozone run TABLE --cells FORMAT`` (bring your own cell table).

Flow (the image run's steps, minus everything that needs pixels)::

    read every table (chemozone.io.read_cell_table)      -- refuses to start on a bad table or config
    per sample   cells → measurements.parquet; tissue estimated from the cell positions
                 (chemozone.cell_regions.cell_region) → masks.ome.zarr "tissue"; the sheet's region annotations
                 (``regions`` column, chemozone._table_regions) remove excluded cells and areas
    cohort step  gates (pooled / reference / per sample, or the vendor's positivity: gate method "vendor")
    per sample   phenotype → zones (producers, tumor_cells) → spatial → tables, zone masks
    cohort tables and run.json, as for images

INPUT is one table (samples from ``cell_tables.sample_column`` or the format's image column) or a sample sheet
(CSV) with ``sample_id``, ``cells_table`` and metadata (``patient``, ``radiation``, ``dose_gy``, ...), one table per
row, and optionally ``nuclei_mask`` / ``cells_mask`` (the table's masks) and ``regions`` (a QuPath GeoJSON). Zones from
pixels (``source: pixels`` / ``tumor``), tissue detection, segmentation, quantification and
``qc.png`` need the image and are not available; ``run.json`` records per sample how the tissue area was estimated.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ._run_record import Ledger, RunResult
from .config import Config, load_config
from .errors import ConfigError, SampleSheetError, TableError
from .layout import RunLayout, new_provenance, write_parquet
from .options import (
    cell_region_options,
    classifier_options,
    cognate_options,
    gate_options,
    infiltration_options,
    overlap_options,
    phenotype_options,
    table_read_options,
)

__all__ = ["run_cell_tables", "load_cell_tables", "TABLE_SHEET_COLUMN"]

log = logging.getLogger("chemozone")

TABLE_SHEET_COLUMN = "cells_table"
"""Sample-sheet column naming each sample's cell table."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_id(raw: str) -> str:
    return _UNSAFE.sub("_", str(raw)).strip("_.") or "sample"


def _is_sheet(path: Path) -> bool:
    if path.suffix.lower() != ".csv":
        return False
    head = pd.read_csv(path, nrows=0, encoding="utf-8-sig")
    return TABLE_SHEET_COLUMN in head.columns


def _split_samples(cells: pd.DataFrame, path: Path) -> dict[str, pd.DataFrame]:
    """A table's cells per (filesystem-safe) sample id; the vendor's name is kept in ``source_sample``."""
    out: dict[str, pd.DataFrame] = {}
    for raw, part in cells.groupby("sample_id", sort=True):
        sid = _safe_id(raw)
        if sid in out:
            raise TableError(f"{path}: samples '{raw}' and another one both become sample_id '{sid}'; rename them "
                             "or pass a sample sheet")
        out[sid] = part.assign(source_sample=str(raw), sample_id=sid).reset_index(drop=True)
    return out


def load_cell_tables(input_path: str | Path, cfg: Config) -> tuple[pd.DataFrame, dict[str, pd.DataFrame],
                                                                      dict[str, dict[str, Any]]]:
    """The samples, their cells and how each table was read, from one table or a sample sheet.

    Returns
    -------
    samples : DataFrame
        ``sample_id, cells_table, patient, radiation, dose_gy`` + the sheet's other columns.
    cells : dict sample_id -> DataFrame
        Each sample's imported cells (:func:`chemozone.io.read_cell_table`).
    records : dict sample_id -> dict
        :meth:`chemozone.io.CellTable.record` of the table each sample came from.
    """
    from .io import read_cell_table
    from .samples import _validate

    path = Path(input_path)
    opts = table_read_options(cfg)
    if not path.exists():
        raise TableError(f"{path}: cell table not found; fix the path")
    if not _is_sheet(path):
        table = read_cell_table(path, **opts)
        cells = _split_samples(table.cells, path)
        samples = pd.DataFrame({"sample_id": list(cells), "cells_table": str(path)})
        samples = samples.assign(patient=pd.NA, radiation=pd.NA, dose_gy=float("nan"))
        return samples, cells, {sid: table.record() for sid in cells}
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    for col in ("patient", "radiation", "dose_gy"):
        sheet[col] = sheet[col] if col in sheet else ""
    sheet = sheet.replace({"": pd.NA})
    sheet["image"] = [str((path.parent / p).resolve()) if isinstance(p, str) else p for p in sheet[TABLE_SHEET_COLUMN]]
    samples = _validate(sheet.drop(columns=[TABLE_SHEET_COLUMN]), source=str(path), row_offset=2)
    samples = samples.rename(columns={"image": TABLE_SHEET_COLUMN})
    from .io import MASK_COLUMNS, resolve_mask_spec

    for col in (c for c in MASK_COLUMNS if c in samples):  # precomputed masks of the table's image (optional)
        samples[col] = [resolve_mask_spec(v.strip(), path.parent) if isinstance(v, str) and v.strip() else pd.NA
                        for v in samples[col]]
    if "regions" in samples:  # region annotations (QuPath GeoJSON, chemozone._table_regions), relative to the sheet
        samples["regions"] = [str((path.parent / v.strip()).resolve()) if isinstance(v, str) and v.strip() else pd.NA
                              for v in samples["regions"]]
    cells, records = {}, {}
    for sid, tpath in zip(samples["sample_id"], samples[TABLE_SHEET_COLUMN]):
        t = read_cell_table(tpath, **{**opts, "sample_id": sid})
        cells[sid], records[sid] = t.cells, t.record()
    return samples, cells, records


def _check_config(cfg: Config, cells: dict[str, pd.DataFrame], source: str) -> None:
    """Refuse what a table cannot give: zones from pixels, gated markers the tables lack."""
    from . import phenotype
    from .io import table_markers

    for i, z in enumerate(cfg.zones):
        if z.source in ("pixels", "tumor"):
            raise ConfigError(f"zones[{i}] '{z.name}': source '{z.source}' needs the image's pixels; a run on cell "
                              "tables builds 'producers' and 'tumor_cells' zones (see README 'Cell tables')")
    for sid, c in cells.items():
        if not len(c):
            raise SampleSheetError(f"{source}: sample '{sid}' has no cells")
        phenotype.validate_phenotypes(table_markers(c), aliases=cfg.panel.aliases, **phenotype_options(cfg))
        copts = classifier_options(cfg)
        if copts["classifier_file"] is not None:
            from .classify import check_classifier_file

            check_classifier_file(copts["classifier_file"], channels=table_markers(c),
                                  classifier_markers=copts["classifier_markers"])


def _tissue(cells: pd.DataFrame, cfg: Config) -> tuple[Any, float, dict[str, Any]]:
    """Tissue on the analysis grid from the cell positions, and its ``run.json`` record."""
    from .cell_regions import cell_region, convex_hull_area_mm2, default_region_radius_um, region_grid_shape

    g = float(cfg.analysis_grid.pixel_size_um)
    opts = cell_region_options(cfg)
    r = opts["radius_um"] or default_region_radius_um(cells[["x_um", "y_um"]].to_numpy())
    shape = region_grid_shape(cells, grid_um=g, margin_um=r + opts["close_um"] + 2 * g)
    mask, r = cell_region(cells, grid_um=g, shape=shape, **{**opts, "radius_um": r})
    rec = {"method": "cell positions: discs of radius_um around the cells, closed by close_um, holes < "
                     "fill_holes_um2 filled (chemozone.cell_regions.cell_region)",
           "radius_um": round(r, 3), "close_um": opts["close_um"], "fill_holes_um2": opts["fill_holes_um2"],
           "grid_um": g, "shape": list(shape), "area_mm2": float(mask.sum()) * (g * 1e-3) ** 2,
           "convex_hull_area_mm2": convex_hull_area_mm2(cells)}
    return mask, g, rec


def _table_masks(row: dict[str, Any], cells: pd.DataFrame, cfg: Config) -> tuple[Any, Any, dict[str, Any]] | None:
    """The sample's precomputed masks (``nuclei_mask`` / ``cells_mask`` of the sheet), checked against the table:
    every cell of the table must be an object of the mask (inForm's ``Cell ID`` is the label value). The record
    adds how far the table's positions lie from the mask's nucleus (else cell) centroids."""
    import numpy as np
    from scipy import ndimage as ndi

    from .io import mask_header, sample_mask_specs
    from .options import precomputed_mask_options
    from .segment import load_precomputed_masks

    specs = sample_mask_specs(row)
    if not specs:
        return None
    px = cfg.panel.pixel_size_um
    col, spec = next(iter(specs.items()))
    if px is None:
        raise TableError(f"{spec} (sample-sheet column '{col}'): masks of a cell table need the image's pixel size; "
                         "set panel.pixel_size_um (CLI: --pixel-size-um)")
    shape = mask_header(spec, column=col)["shape"]
    nuclei, cell_mask, rec = load_precomputed_masks(specs, np.broadcast_to(np.float32(0), (1, *shape)), channels=["-"],
                                                    pixel_size_um=px, **precomputed_mask_options(cfg))
    ref = nuclei if nuclei is not None else cell_mask
    ids = cells["cell_id"].to_numpy(np.int64)
    missing = np.setdiff1d(ids, np.unique(ref))
    if missing.size:
        raise TableError(f"{spec} (sample-sheet column '{col}'): {missing.size} cell(s) of the table are not objects of "
                         f"the mask (first cell_id {int(missing[0])}); pair each table with the masks of its own image")
    cy, cx = (np.asarray(v) for v in zip(*ndi.center_of_mass(np.ones(ref.shape), ref, ids)))
    dev = np.hypot(cx * px - cells["x_um"].to_numpy(), cy * px - cells["y_um"].to_numpy())
    rec.update(position_vs_centroid_um={"median": float(np.median(dev)), "max": float(dev.max())})
    return nuclei, cell_mask, rec


def _regions(row: dict[str, Any], cells: pd.DataFrame, tissue, rec: dict[str, Any], cfg: Config, masks):
    """``(tissue, cells, record)`` with the sheet's region annotations applied (unchanged, None without them)."""
    from ._table_regions import apply_table_regions, load_table_regions
    from .options import region_options

    shape = None if masks is None else next(m.shape for m in masks[:2] if m is not None)
    margin = rec["radius_um"] + rec["close_um"] + 2 * rec["grid_um"]  # the tissue estimate's reach
    regs = load_table_regions(row, cells, pixel_size_um=cfg.panel.pixel_size_um, zones=cfg.zones,
                              image_shape_yx=shape, margin_um=margin, **region_options(cfg))
    if regs is None:
        return tissue, cells, None
    tissue, keep, reg = apply_table_regions(regs, tissue, cells, grid_um=rec["grid_um"],
                                            pixel_size_um=cfg.panel.pixel_size_um)
    rec.update(area_before_regions_mm2=rec["area_mm2"], area_mm2=float(tissue.sum()) * (rec["grid_um"] * 1e-3) ** 2)
    return tissue, cells[keep].reset_index(drop=True), reg


def _step_a(sid: str, cells: pd.DataFrame, cfg: Config, lay: RunLayout, record: dict[str, Any],
            row: dict[str, Any]) -> dict[str, Any]:
    """Per sample: the imported cells, its masks (when the sheet names them), the estimated tissue and the
    region annotations (when the sheet names them)."""
    from .io import write_labels_zarr

    t0 = time.perf_counter()
    masks = _table_masks(row, cells, cfg)
    tissue, g, rec = _tissue(cells, cfg)
    tissue, cells, reg_rec = _regions(row, cells, tissue, rec, cfg, masks)  # checked before anything is written
    ann = (record.get("annotation_area_um2") or {}).get(str(cells["source_sample"].iloc[0])
                                                       if "source_sample" in cells else sid)
    rec["annotation_area_mm2"] = ann * 1e-6 if ann is not None else None
    lay.sample_dir(sid).mkdir(parents=True, exist_ok=True)
    write_parquet(cells, lay.measurements(sid))
    write_labels_zarr(lay.masks(sid), "tissue", tissue, pixel_size_um=g)
    out = {"sample_id": sid, "n_cells": int(len(cells)), "tissue": rec, "grid_um": g, "regions": reg_rec,
           "timings_s": {"import": round(time.perf_counter() - t0, 3)}}
    if masks is not None:
        for name, m in (("nuclei", masks[0]), ("cells", masks[1])):
            if m is not None:
                write_labels_zarr(lay.masks(sid), name, m, pixel_size_um=cfg.panel.pixel_size_um)
        out["segmentation"] = masks[2]
    return out


def _zones(cells: pd.DataFrame, tissue, cfg: Config, sid: str, g: float, row: dict[str, Any]):
    """Producer zones (chemozone.zones), tumor compartments from tumor-cell positions and annotated regions
    (``source: regions``), in config order."""
    from . import zones
    from ._table_regions import load_table_regions, table_region_zones
    from .cell_regions import tumor_cell_zones
    from .options import region_options

    masks: dict[str, Any] = {}
    frames, recs = [], {}
    for z in cfg.zones:
        if z.source == "regions":
            regs = load_table_regions(row, cells, pixel_size_um=cfg.panel.pixel_size_um, zones=[z], checked=True,
                                      **region_options(cfg))  # checked against the cells and image in step A
            m, df = table_region_zones(regs, [z], tissue, grid_um=g, pixel_size_um=cfg.panel.pixel_size_um,
                                       sample_id=sid)
        elif z.source == "producers":
            m, df = zones.build_zones(None, cells, tissue, pixel_size_um=g, grid_um=g, zones=[z], thresholds=None,
                                      sample_id=sid, channels=[])
        else:
            opts = cell_region_options(cfg)
            m, recs[z.name] = tumor_cell_zones(cells, tissue, grid_um=g, zone=z, **opts)
            df = _zone_rows(m, tissue, g, sid, z)
        masks.update(m)
        frames.append(df)
    zdf = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=zones.ZONES_COLUMNS)
    return masks, zdf, recs


def _zone_rows(masks: dict[str, Any], tissue, g: float, sid: str, z) -> pd.DataFrame:
    from .zones import ZONES_COLUMNS

    px_mm2 = (g * 1e-3) ** 2
    t_mm2 = float(tissue.sum()) * px_mm2
    return pd.DataFrame([dict(sample_id=sid, zone=n, source=z.source, channels=f"{z.tumor_column}={','.join(z.tumor_values)}",
                              threshold_used=float("nan"), channel_thresholds="", area_mm2=float(m.sum()) * px_mm2,
                              tissue_area_mm2=t_mm2, area_fraction=float(m.sum()) * px_mm2 / t_mm2 if t_mm2 else float("nan"))
                         for n, m in masks.items()], columns=ZONES_COLUMNS)


def _step_b(sid: str, cfg: Config, lay: RunLayout, gates, row: dict[str, Any]) -> dict[str, Any]:
    """Per sample: phenotype → zones → spatial, written as the image run writes them."""
    from . import phenotype, spatial
    from ._run_record import zone_fractions
    from .io import read_labels_zarr, write_labels_zarr
    from .plausibility import positive_counts

    t0 = time.perf_counter()
    cells = pd.read_parquet(lay.measurements(sid))
    if cfg.phenotypes.classifier_file is not None:  # saved cell classifiers: {marker}_prob / _pos
        from .classify import apply_classifier_file

        cells = apply_classifier_file(cells, cfg.phenotypes.classifier_file)
    sg = gates[gates["sample_id"] == sid] if len(gates) else gates
    cells = phenotype.phenotype_cells(cells, sg, **phenotype_options(cfg))
    tissue = read_labels_zarr(lay.masks(sid), "tissue").astype(bool)
    g = float(cfg.analysis_grid.pixel_size_um)
    masks, zones_df, zrec = _zones(cells, tissue, cfg, sid, g, row)
    cells, infil = spatial.annotate_and_infiltrate(cells, masks, tissue, grid_um=g, sample_id=sid,
                                                   **infiltration_options(cfg))
    cognate = spatial.cognate_specificity(infil, cells=cells.assign(sample_id=sid), **cognate_options(cfg))
    overlap = spatial.zone_overlap_metrics(cells, masks, tissue, grid_um=g, sample_id=sid, **overlap_options(cfg))
    for name, m in masks.items():
        write_labels_zarr(lay.masks(sid), f"zone_{name}", m, pixel_size_um=g)
    for df, path in ((cells, lay.cells(sid)), (zones_df, lay.zones(sid)), (infil, lay.infiltration(sid)),
                     (cognate, lay.cognate(sid)), (overlap, lay.zone_overlap(sid))):
        write_parquet(df, path)
    gated = [f"{m}_pos" for m in cfg.phenotypes.markers]  # the vendor's other flags are not our gates
    return {"sample_id": sid, "n_cells": int(len(cells)), "positive_counts": positive_counts(cells[gated], sid),
            "zone_fractions": zone_fractions(zones_df), "tumor_cell_zones": zrec,
            "timings_s": {"phenotype_zones_spatial": round(time.perf_counter() - t0, 3)}}


def run_cell_tables(input_path: str | Path, config: Config | str | Path, out: str | Path, *,
                    on_error: str | None = None, command: list[str] | None = None) -> RunResult:
    """Run every sample of one or more cell tables through phenotyping, zones, spatial metrics and cohort tables.

    Parameters
    ----------
    input_path : path
        One cell table, or a sample sheet (CSV) with a ``cells_table`` column.
    config : Config or path
        ``cell_tables`` (format, unit, sample column, tissue estimate), ``panel.pixel_size_um`` (tables in pixels),
        ``phenotypes``, ``zones`` (producers, tumor_cells), ``spatial``.
    out : path
        Run folder (the image run's layout, without ``qc.png``).
    on_error : {"raise", "skip"}, optional
        Default from ``config.run.on_error``.

    Returns
    -------
    RunResult
        ``exit_code`` 0, or 3 when samples failed under ``on_error="skip"``.
    """
    from ._run_record import marker_warnings, zone_warnings
    from .phenotype import compute_gates
    from .run import _stage, merge_cohort
    from .scheduler import StageError, run_log

    cfg = config if isinstance(config, Config) else load_config(config)
    on_error = on_error or cfg.run.on_error
    lay = RunLayout(out)
    samples, cells, records = load_cell_tables(input_path, cfg)
    _check_config(cfg, cells, str(input_path))
    with run_log(lay.run_log):
        prov = new_provenance(cfg, command=command)
        prov["inputs"] = {sid: {**records[sid], "cells_table": True, **_regions_input(row)}
                          for sid, row in zip(samples["sample_id"], samples.to_dict("records"))}
        prov["samples"] = {sid: {"status": "pending", "warnings": []} for sid in cells}
        ledger = Ledger(prov, lay, on_error)
        ledger.save()
        ok = []
        for row in samples.to_dict("records"):
            sid = row["sample_id"]
            try:
                ledger.record(sid, status="step_a_done", step_a=_stage(sid, "import", lambda s=sid, r=row: _step_a(
                    s, cells[s], cfg, lay, records[s], r)))
                ok.append(sid)
            except StageError as exc:
                ledger.fail(exc)
        with ledger.stopping("cohort step"):
            measured = pd.concat([pd.read_parquet(lay.measurements(s)) for s in ok], ignore_index=True)
            gates = compute_gates(measured, samples[samples["sample_id"].isin(ok)], **gate_options(cfg))
            write_parquet(gates, lay.gates)
        rows = {r["sample_id"]: r for r in samples.to_dict("records")}
        for sid in ok:
            try:
                ledger.record(sid, status="done", step_b=_stage(sid, "spatial", lambda s=sid: _step_b(
                    s, cfg, lay, gates, rows[s])))
            except StageError as exc:
                ledger.fail(exc)
        step_b = {s: v.get("step_b") for s, v in prov["samples"].items() if v["status"] == "done"}
        ledger.warn(marker_warnings(step_b) + zone_warnings(step_b))
        return _finish(samples, lay, ledger, merge_cohort)


def _regions_input(row: dict[str, Any]) -> dict[str, Any]:
    """``run.json["inputs"][sid]["regions"]``: the GeoJSON's path and fingerprint (empty without one)."""
    from .layout import file_fingerprint
    from .regions import sample_regions_path

    p = sample_regions_path(row)
    if p is None:
        return {}
    return {"regions": {"path": p, **(file_fingerprint(p) if Path(p).is_file() else {"missing": True})}}


def _finish(samples, lay: RunLayout, ledger: Ledger, merge_cohort) -> RunResult:
    prov, result = ledger.prov, ledger.result
    done = [s for s, v in prov["samples"].items() if v["status"] == "done"]
    merge_cohort(lay.root, samples, done)
    result.statuses = {sid: s["status"] for sid, s in prov["samples"].items()}
    failed = [sid for sid, st in result.statuses.items() if st != "done"]
    prov.update(status="done" if not failed else "partial", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                failed=failed)
    ledger.save()
    log.info("cell-table run finished: %d done, %d failed", len(done), len(failed))
    result.exit_code = 3 if failed else 0
    return result
