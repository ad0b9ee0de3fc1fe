"""Batch runner: ``chemozone run`` and ``chemozone demo``, on Dask.

Flow (see README "How a run works")::

    validate everything (config, sample sheet, channels per image)   -- refuses to start on problems
    per sample, step A   read → tissue → segment → quantify            (Dask task per sample; tiles
                                                                        of large images are Dask tasks)
    cohort step          gates (pooled / reference / per sample), zone thresholds (reference / pooled)
    per sample, step B   phenotype → zones → spatial → tables, masks, qc.png
    cohort tables        cells / infiltration / zones / samples / gates merged with sample metadata

Step A is the expensive one; its outputs (``masks.ome.zarr`` nuclei/cells/tissue and
``measurements.parquet``) are kept with a stamp (input fingerprint + hash of the config sections
that step A depends on), so ``--resume`` skips step A for samples whose inputs and config are unchanged
and redoes it for the rest. The cohort step and step B always run for every sample, because pooled
and reference gates depend on the whole cohort.

Every file is written atomically (temporary name, then rename); the stamp is written last, so a
killed run never leaves a result that a later run mistakes for a finished one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import Config, load_config
from .errors import ChemozoneError, RunError
from .layout import RunLayout, atomic_write_json, file_fingerprint, new_provenance, write_parquet

__all__ = [
    "run_batch",
    "process_sample_a",
    "process_sample_b",
    "cohort_step",
    "merge_cohort",
    "RunResult",
    "cli_run",
    "cli_demo",
    "STEP_A_SECTIONS",
]

log = logging.getLogger("chemozone")

STEP_A_SECTIONS = ("panel", "analysis_grid", "tissue", "segmentation", "quantification")
STAMP = "step_a.json"
MEASUREMENTS = "measurements.parquet"
REVIEWED = "reviewed.parquet"  # cell_id, phenotype_reviewed: written by the napari cell inspector, never by a run


@dataclass
class RunResult:
    """What a batch run did."""

    out: Path
    statuses: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0


# ------------------------------------------------------------------------------------------- helpers
def _section_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    import hashlib

    payload = json.dumps({s: getattr(cfg, s).model_dump(mode="json") for s in sections}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t0, 3)


class StageError(Exception):
    """A sample failed in a stage (carries the stage name and a one-line message)."""

    def __init__(self, sample_id: str, stage: str, message: str, tb: str = "") -> None:
        super().__init__(f"sample '{sample_id}' failed in {stage}: {message}")
        self.sample_id, self.stage, self.message, self.tb = sample_id, stage, message, tb

    def __reduce__(self):  # picklable across Dask workers
        return (StageError, (self.sample_id, self.stage, self.message, self.tb))


def _stage(sample_id: str, stage: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except StageError:
        raise
    except ChemozoneError as exc:
        raise StageError(sample_id, stage, str(exc), traceback.format_exc()) from None
    except Exception as exc:  # noqa: BLE001 - recorded with traceback in run.log / run.json
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise StageError(sample_id, stage, msg, traceback.format_exc()) from None


def _open_image(row: dict[str, Any], cfg: Config):
    from .io import read_image

    return read_image(row["image"], channels=cfg.panel.channels, pixel_size_um=cfg.panel.pixel_size_um)


# --------------------------------------------------------------------------------------- step A
def _segmentation_options(seg) -> dict[str, Any]:
    """The config's ``segmentation`` section as the keywords of :func:`chemozone.segment.segment_image`
    and :func:`chemozone.segment.segmentation_provenance` (cellpose's fields with a ``cellpose_`` prefix)."""
    cp = seg.cellpose
    return {
        "method": seg.method,
        "nucleus_diameter_um": seg.nucleus_diameter_um,
        "small_nucleus_diameter_um": seg.small_nucleus_diameter_um,
        "min_nucleus_area_um2": seg.min_nucleus_area_um2,
        "max_nucleus_area_um2": seg.max_nucleus_area_um2,
        "threshold": seg.threshold,
        "cell_method": seg.cell_method,
        "expand_um": seg.expand_um,
        "membrane_channels": list(seg.membrane_channels),
        "tile_size_px": seg.tile_size_px,
        "tile_overlap_um": seg.tile_overlap_um,
        "cellpose_model": cp.model,
        "cellpose_gpu": cp.gpu,
        "cellpose_diameter_um": cp.diameter_um,
        "cellpose_flow_threshold": cp.flow_threshold,
        "cellpose_cellprob_threshold": cp.cellprob_threshold,
        "cellpose_batch_size": cp.batch_size,
        "cellpose_channels": list(cp.channels) if cp.channels else None,
    }


def process_sample_a(row: dict[str, Any], cfg: Config, out: str | Path, *, local: bool = True) -> dict[str, Any]:
    """Step A of one sample: read → tissue → segment → quantify; writes masks and measurements.

    Parameters
    ----------
    row : dict
        One row of the sample table (``sample_id``, ``image``, metadata).
    cfg : Config
    out : path
        Run folder.
    local : bool
        True when called inside a Dask task: tile tasks then run synchronously in this worker.
        False to let tile tasks use the active Dask client (large images processed by the driver).

    Returns
    -------
    dict
        ``{"sample_id", "timings_s", "peak_rss_mb", "n_cells", "shape", "pixel_size_um"}``.
    """
    import dask

    from . import quantify, segment, tissue
    from .io import resolve_channels, write_labels_zarr

    sid = row["sample_id"]
    lay = RunLayout(out)
    sdir = lay.sample_dir(sid)
    sdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    ctx = dask.config.set(scheduler="synchronous") if local else _nullcontext()
    with ctx:
        with _timed(timings, "read"):
            img = _stage(sid, "read", lambda: _open_image(row, cfg))
        px = img.pixel_size_um
        with _timed(timings, "tissue"):
            tissue_idx = (
                resolve_channels(img.channels, cfg.tissue.channels, aliases=cfg.panel.aliases, source=img.path)
                if cfg.tissue.channels else None
            )
            tc = cfg.tissue
            tmask, grid_um = _stage(sid, "tissue", lambda: tissue.tissue_mask(
                img.data, pixel_size_um=px, grid_um=cfg.analysis_grid.pixel_size_um, smooth_um=tc.smooth_um,
                threshold=tc.threshold, glass_contrast=tc.glass_contrast, min_area_um2=tc.min_area_um2,
                fill_holes_um2=tc.fill_holes_um2, channel_indices=tissue_idx))
        tmp_store = sdir / ".tmp-labels.zarr"
        large = max(img.data.shape[1:]) > cfg.segmentation.tile_size_px
        with _timed(timings, "segment"):
            nuclei, cells = _stage(sid, "segment", lambda: segment.segment_image(
                img.data, channels=img.channels, pixel_size_um=px, **_segmentation_options(cfg.segmentation),
                nuclear_channel=cfg.panel.nuclear_channel, aliases=cfg.panel.aliases,
                tissue=tmask, tissue_grid_um=grid_um, store=tmp_store if large else None))
        with _timed(timings, "quantify"):
            q_channels = cfg.quantification.channels or list(img.channels)
            q_idx = resolve_channels(img.channels, q_channels, aliases=cfg.panel.aliases, source=img.path)
            image_q = img.data[q_idx] if q_idx != list(range(img.data.shape[0])) else img.data
            table = _stage(sid, "quantify", lambda: quantify.quantify_cells(
                image_q, cells, nuclei=nuclei, channels=q_channels, pixel_size_um=px,
                compartments=tuple(cfg.quantification.compartments),
                statistics=tuple(cfg.quantification.statistics), morphology=cfg.quantification.morphology,
                background=cfg.quantification.background or None, tile_size_px=cfg.segmentation.tile_size_px))
            table.insert(0, "sample_id", sid)
        with _timed(timings, "write_masks"):
            def _write():
                from .layout import atomic_path

                with atomic_path(lay.masks(sid)) as tmp:
                    write_labels_zarr(tmp, "nuclei", nuclei, pixel_size_um=px)
                    write_labels_zarr(tmp, "cells", cells, pixel_size_um=px)
                    write_labels_zarr(tmp, "tissue", tmask, pixel_size_um=grid_um)
            _stage(sid, "write masks", _write)
            write_parquet(table, sdir / MEASUREMENTS)
        if tmp_store.exists():
            import shutil

            shutil.rmtree(tmp_store, ignore_errors=True)
    info = {
        "sample_id": sid,
        "timings_s": timings,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "n_cells": int(len(table)),
        "shape": list(img.data.shape),
        "pixel_size_um": px,
        "grid_um": grid_um,
    }
    return info


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _stamp_for(row: dict[str, Any], cfg: Config) -> dict[str, Any]:
    fp = file_fingerprint(row["image"])
    return {"input_sha256": fp["sha256"], "input_size": fp["size"], "config_sha256": _section_hash(cfg, STEP_A_SECTIONS)}


def _step_a_is_current(row: dict[str, Any], cfg: Config, lay: RunLayout, stamp: dict[str, Any]) -> bool:
    sid = row["sample_id"]
    p = lay.sample_dir(sid) / STAMP
    if not p.is_file() or not (lay.sample_dir(sid) / MEASUREMENTS).is_file() or not lay.masks(sid).is_dir():
        return False
    try:
        old = json.loads(p.read_text())
    except json.JSONDecodeError:
        return False
    return all(old.get(k) == v for k, v in stamp.items())


# ------------------------------------------------------------------------------------ cohort step
def zone_summaries(row: dict[str, Any], cfg: Config, out: str | Path):
    """Pass A of the zones for one sample: per-channel zone signals on the grid → small summaries."""
    import dask
    import pandas as pd

    from . import zones
    from .io import read_labels_zarr, resolve_channels

    sid = row["sample_id"]
    lay = RunLayout(out)
    frames = []
    with dask.config.set(scheduler="synchronous"):
        img = _open_image(row, cfg)
        tissue_grid = read_labels_zarr(lay.masks(sid), "tissue").astype(bool)
        grid_um = _grid_um(img, cfg, tissue_grid, lay, sid)
        for z in cfg.zones:
            if z.source not in ("pixels", "tumor"):
                continue
            idx = resolve_channels(img.channels, z.channels, aliases=cfg.panel.aliases, source=img.path)
            sig = _stage(sid, "zones", lambda: zones.zone_signal(
                img.data, channel_indices=idx, pixel_size_um=img.pixel_size_um, grid_um=grid_um, zone=z,
                tissue=tissue_grid))
            frames.append(zones.signal_summary(sig, tissue_grid, sample_id=sid, zone=z))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def cohort_step(cfg: Config, samples, measurements: dict[str, Any], summaries: list[Any], out: str | Path) -> dict[str, Any]:
    """Cohort-wide decisions between the per-sample steps: gates and zone thresholds.

    Returns ``{"gates": DataFrame, "zone_thresholds": DataFrame}`` and writes both to the run folder.
    """
    import pandas as pd

    from . import phenotype, zones

    lay = RunLayout(out)
    cells = pd.concat(list(measurements.values()), ignore_index=True) if measurements else pd.DataFrame()
    gates = phenotype.compute_gates(cells, samples, config=cfg.phenotypes, seed=cfg.run.seed)
    write_parquet(gates, lay.gates)
    pixel_zones = [z for z in cfg.zones if z.source in ("pixels", "tumor")]
    frames = [f for f in summaries if len(f)]
    thresholds = pd.DataFrame()
    if pixel_zones and frames:
        thresholds = zones.compute_zone_thresholds(pd.concat(frames, ignore_index=True), samples, zones=pixel_zones)
        write_parquet(thresholds, lay.zone_thresholds)
    return {"gates": gates, "zone_thresholds": thresholds}


def _grid_um(img, cfg: Config, tissue_grid, lay: RunLayout, sid: str) -> float:
    """The analysis grid's pixel size for this image; the stored tissue mask must be on that grid."""
    from .grid import grid_factor, grid_shape

    factor = grid_factor(img.pixel_size_um, cfg.analysis_grid.pixel_size_um)
    expected = grid_shape(img.data.shape[1:], factor)
    if tuple(tissue_grid.shape) != expected:
        raise RunError(f"{lay.masks(sid)}: the tissue mask has shape {tuple(tissue_grid.shape)} but the analysis "
                       f"grid of this image is {expected}; re-run step A (without --resume)")
    return factor * float(img.pixel_size_um)


# --------------------------------------------------------------------------------------- step B
def process_sample_b(row: dict[str, Any], cfg: Config, out: str | Path, gates, zone_thresholds) -> dict[str, Any]:
    """Step B of one sample: phenotype → zones → spatial; writes the sample's tables, zone masks and qc.png."""
    import dask
    import pandas as pd

    from . import phenotype, spatial, zones
    from .io import read_labels_zarr, write_labels_zarr

    sid = row["sample_id"]
    lay = RunLayout(out)
    sdir = lay.sample_dir(sid)
    timings: dict[str, float] = {}
    with dask.config.set(scheduler="synchronous"):
        img = _open_image(row, cfg)
        cells = pd.read_parquet(sdir / MEASUREMENTS)
        with _timed(timings, "phenotype"):
            sg = gates[gates["sample_id"] == sid] if len(gates) else gates
            cells = _stage(sid, "phenotype", lambda: phenotype.phenotype_cells(cells, sg, config=cfg.phenotypes))
        tissue_grid = read_labels_zarr(lay.masks(sid), "tissue").astype(bool)
        grid_um = _grid_um(img, cfg, tissue_grid, lay, sid)
        with _timed(timings, "zones"):
            zt = zone_thresholds
            if zt is not None and len(zt):
                zt = zt[zt["sample_id"] == sid]
            masks, zones_df = _stage(sid, "zones", lambda: zones.build_zones(
                img.data, cells, tissue_grid, pixel_size_um=img.pixel_size_um, grid_um=grid_um,
                zones=cfg.zones, thresholds=zt, sample_id=sid, channels=img.channels,
                aliases=cfg.panel.aliases))
        with _timed(timings, "spatial"):
            cells = _stage(sid, "spatial", lambda: spatial.annotate_cells(cells, masks, tissue_grid, grid_um=grid_um))
            infil = _stage(sid, "spatial", lambda: spatial.infiltration_metrics(
                cells, masks, tissue_grid, grid_um=grid_um, config=cfg.spatial, sample_id=sid))
            cognate = _stage(sid, "spatial", lambda: spatial.cognate_specificity(
                infil, config=cfg.spatial, cells=cells.assign(sample_id=sid)))
            overlap = _stage(sid, "spatial", lambda: spatial.zone_overlap_metrics(
                cells, masks, tissue_grid, grid_um=grid_um, config=cfg.spatial, sample_id=sid))
        reviewed = sdir / REVIEWED
        if reviewed.is_file():  # hand corrections from napari's cell inspector survive re-runs
            rev = pd.read_parquet(reviewed)[["cell_id", "phenotype_reviewed"]]
            cells = cells.merge(rev.astype({"cell_id": cells["cell_id"].dtype}), on="cell_id", how="left")
        with _timed(timings, "write"):
            for name, m in masks.items():
                write_labels_zarr(lay.masks(sid), f"zone_{name}", m, pixel_size_um=grid_um)
            write_parquet(cells, lay.cells(sid))
            write_parquet(zones_df, lay.zones(sid))
            write_parquet(infil, lay.infiltration(sid))
            write_parquet(cognate, lay.cognate(sid))
            write_parquet(overlap, lay.zone_overlap(sid))
        if cfg.run.write_qc:
            with _timed(timings, "qc"):
                from .qc import write_qc

                _stage(sid, "qc", lambda: write_qc(lay.qc(sid), img, lay.masks(sid), masks, cfg=cfg))
    return {"sample_id": sid, "timings_s": timings, "peak_rss_mb": round(_peak_rss_mb(), 1), "n_cells": int(len(cells))}


# ------------------------------------------------------------------------------------------ merge
def merge_cohort(out: str | Path, samples, ok_ids: list[str]) -> None:
    """Concatenate the per-sample tables of finished samples and join the sample metadata."""
    import pandas as pd

    lay = RunLayout(out)
    meta = samples.drop(columns=["image"]).copy()
    write_parquet(samples.assign(image=samples["image"].astype(str)), lay.cohort_samples)
    for per_sample, cohort in ((lay.cells, lay.cohort_cells), (lay.infiltration, lay.cohort_infiltration),
                               (lay.zones, lay.cohort_zones), (lay.cognate, lay.cohort_cognate),
                               (lay.zone_overlap, lay.cohort_zone_overlap)):
        frames = [pd.read_parquet(per_sample(s)) for s in ok_ids if per_sample(s).is_file()]
        if not frames:
            continue
        df = pd.concat(frames, ignore_index=True)
        extra = [c for c in meta.columns if c != "sample_id" and c not in df.columns]
        df = df.merge(meta[["sample_id"] + extra], on="sample_id", how="left")
        write_parquet(df, cohort)


# -------------------------------------------------------------------------------------- the batch
def _setup_logging(lay: RunLayout, quiet: bool) -> logging.Handler:
    lay.root.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(lay.run_log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


@contextmanager
def _dask_client(cfg: Config, *, workers: int | None, scheduler: str | None, memory_limit: str | None,
                 console) -> Iterator[Any]:
    """A Dask client: an existing scheduler by address, or a local cluster (processes)."""
    from distributed import Client, LocalCluster

    address = scheduler or cfg.run.scheduler
    if address:
        try:
            client = Client(address, timeout="20s")
        except OSError as exc:
            raise RunError(f"cannot reach the Dask scheduler at {address} ({exc}); start it or drop --scheduler") from None
        console.print(f"connected to Dask scheduler {address} (dashboard: {client.dashboard_link})")
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or cfg.run.workers
    cluster = LocalCluster(n_workers=n, threads_per_worker=cfg.run.threads_per_worker,
                           memory_limit=memory_limit or cfg.run.memory_limit, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    console.print(f"local Dask cluster: {n} worker(s); dashboard: {client.dashboard_link}")
    log.info("local Dask cluster with %d workers, dashboard %s", n, client.dashboard_link)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def run_batch(
    input_path: str | Path,
    config: Config | str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    memory_limit: str | None = None,
    resume: bool = False,
    on_error: str | None = None,
    progress: bool = True,
    in_process: bool = False,
    command: list[str] | None = None,
) -> RunResult:
    """Run every sample through all stages and write the run folder.

    Parameters
    ----------
    input_path : path
        Folder of images (+ optional samples.csv), a sample sheet, or one image.
    config : Config or path
    out : path
        Run folder.
    workers, scheduler, memory_limit : optional
        Local cluster size and per-worker memory, or the address of an existing scheduler.
    resume : bool
        Skip step A of samples whose input and step-A config are unchanged.
    on_error : {"raise", "skip"}, optional
        Default from ``config.run.on_error``.
    in_process : bool
        Run without a Dask cluster (synchronous, for debugging and fast tests).

    Returns
    -------
    RunResult
        ``exit_code`` is 0, or 3 when samples failed under ``on_error="skip"``.

    Raises
    ------
    ChemozoneError
        Validation problems (before any work), or the first failure under ``on_error="raise"``.
    """
    from rich.console import Console

    from .validate import validate_inputs

    cfg = config if isinstance(config, Config) else load_config(config)
    on_error = on_error or cfg.run.on_error
    console = Console(stderr=True, quiet=not progress, highlight=False)
    lay = RunLayout(out)

    report = validate_inputs(input_path, cfg)
    # with --on-error skip, a sample whose image cannot be read is recorded as failed and the others run;
    # any other problem (config, sample sheet, channels) refuses the run
    skippable = report.sample_problems if on_error == "skip" else {}
    blocking = [p for p in report.problems if not any(p == f"sample '{sid}': {m}" for sid, m in skippable.items())]
    if blocking:
        more = f" (and {len(blocking) - 1} more; run 'chemozone validate')" if len(blocking) > 1 else ""
        raise RunError(f"refusing to start: {blocking[0]}{more}")
    if report.samples is None or len(report.samples) == len(skippable):
        raise RunError(f"refusing to start: no sample can be read ({next(iter(skippable.values()), '')})")
    _validate_stage_config(cfg, report)
    samples = report.samples

    handler = _setup_logging(lay, not progress)
    try:
        return _run(samples, cfg, lay, console, workers=workers, scheduler=scheduler, memory_limit=memory_limit,
                    resume=resume, on_error=on_error, progress=progress, in_process=in_process,
                    command=command, images=report.images, unreadable=skippable)
    finally:
        log.removeHandler(handler)
        handler.close()


def _validate_stage_config(cfg: Config, report) -> None:
    from . import phenotype

    for sid, info in report.images.items():
        phenotype.validate_phenotypes(cfg.phenotypes, info["channels"], aliases=cfg.panel.aliases)


def _run(samples, cfg: Config, lay: RunLayout, console, *, workers, scheduler, memory_limit, resume, on_error,
         progress, in_process, command, images, unreadable=None) -> RunResult:
    import pandas as pd
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .segment import segmentation_provenance

    prov_path = lay.run_json
    prov = new_provenance(cfg, command=command)
    # method, defaults, cellpose version/model
    prov["segmentation"] = segmentation_provenance(**_segmentation_options(cfg.segmentation))
    old_samples: dict[str, Any] = {}
    if resume and prov_path.is_file():
        try:
            old_samples = json.loads(prov_path.read_text()).get("samples", {})
        except json.JSONDecodeError:
            old_samples = {}
    rows = samples.to_dict("records")
    unreadable = unreadable or {}
    for r in rows:
        prov["inputs"][r["sample_id"]] = {**file_fingerprint(r["image"]), "image_info": images.get(r["sample_id"])}
        prov["samples"][r["sample_id"]] = {"status": "pending"}
    for sid, msg in unreadable.items():
        prov["samples"][sid] = {"status": "failed", "stage": "validate", "error": msg}
        log.error("sample '%s' failed in validate: %s", sid, msg)
    rows = [r for r in rows if r["sample_id"] not in unreadable]
    atomic_write_json(prov_path, prov)
    log.info("run started: %d samples, out=%s", len(rows), lay.root)
    result = RunResult(out=lay.root)
    result.errors.update({sid: f"sample '{sid}' failed in validate: {m}" for sid, m in unreadable.items()})

    def record(sid: str, **kw: Any) -> None:
        prov["samples"][sid].update(kw)
        atomic_write_json(prov_path, prov)

    def fail(exc: StageError) -> None:
        log.error("%s\n%s", exc, exc.tb)
        record(exc.sample_id, status="failed", stage=exc.stage, error=exc.message)
        result.errors[exc.sample_id] = str(exc)
        if on_error == "raise":
            prov["status"] = "failed"
            atomic_write_json(prov_path, prov)
            raise RunError(f"{exc} (details in {lay.run_log}; use --on-error skip to finish the other samples)")

    # -------- step A
    stamps = {r["sample_id"]: _stamp_for(r, cfg) for r in rows}
    todo = []
    for r in rows:
        sid = r["sample_id"]
        if resume and _step_a_is_current(r, cfg, lay, stamps[sid]):
            prev = old_samples.get(sid, {})
            record(sid, status="step_a_done", resumed=True, step_a=prev.get("step_a"))
            log.info("%s: step A unchanged, skipped (--resume)", sid)
        else:
            (lay.sample_dir(sid) / STAMP).unlink(missing_ok=True)
            todo.append(r)

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    client_ctx = _nullcontext() if in_process else _dask_client(
        cfg, workers=workers, scheduler=scheduler, memory_limit=memory_limit, console=console)
    with Progress(*cols, console=console, disable=not progress, transient=False) as bar, client_ctx as client:
        task_a = bar.add_task("segment + quantify", total=len(todo))
        big = [r for r in todo if client is not None and _is_large(images.get(r["sample_id"]), cfg)]
        for r in big:  # the tiles of a large image become tasks on the cluster, with their own progress bar
            from .progress import report_progress

            tile_bar = bar.add_task(f"  {r['sample_id']}: tiles", total=None)

            def on_tiles(stage, done, total, tile_bar=tile_bar, sid=r["sample_id"]):
                bar.update(tile_bar, description=f"  {sid}: {stage}", completed=done, total=total)

            with report_progress(on_tiles):
                _collect(r, lambda r=r: process_sample_a(r, cfg, lay.root, local=False),
                         lambda r, info: _finish_a(r, info, stamps, lay, record), fail)
            bar.advance(task_a)
        small = [r for r in todo if r not in big]
        for r, outcome in _map(client, process_sample_a, small, (cfg, str(lay.root)), "step A"):
            if isinstance(outcome, StageError):
                fail(outcome)
            else:
                _finish_a(r, outcome, stamps, lay, record)
            bar.advance(task_a)

        ok_a = [r for r in rows if prov["samples"][r["sample_id"]]["status"] == "step_a_done"]
        # -------- zone signal summaries (per sample), then the cohort step
        t0 = time.perf_counter()
        summaries, failed_z = [], set()
        for r, outcome in _map(client, zone_summaries, ok_a, (cfg, str(lay.root)), "zone signals"):
            if isinstance(outcome, StageError):
                failed_z.add(r["sample_id"])
                fail(outcome)
            else:
                summaries.append(outcome)
        ok_a = [r for r in ok_a if r["sample_id"] not in failed_z]
        measurements = {r["sample_id"]: pd.read_parquet(lay.sample_dir(r["sample_id"]) / MEASUREMENTS) for r in ok_a}
        ok_samples = samples[samples["sample_id"].isin([r["sample_id"] for r in ok_a])].reset_index(drop=True)
        summaries = sorted(summaries, key=lambda f: str(f["sample_id"].iloc[0]) if len(f) else "")
        cohort = cohort_step(cfg, ok_samples, measurements, summaries, lay.root)
        log.info("cohort step (zone signals, gates, zone thresholds) in %.1f s", time.perf_counter() - t0)
        prov["cohort_step_s"] = round(time.perf_counter() - t0, 3)

        # -------- step B
        task_b = bar.add_task("phenotype + zones + spatial", total=len(ok_a))
        args_b = (cfg, str(lay.root), cohort["gates"], cohort["zone_thresholds"])
        for r, outcome in _map(client, process_sample_b, ok_a, args_b, "step B"):
            if isinstance(outcome, StageError):
                fail(outcome)
            else:
                record(r["sample_id"], status="done", step_b=outcome)
                log.info("%s: done (%d cells) %s", r["sample_id"], outcome["n_cells"], outcome["timings_s"])
            bar.advance(task_b)

    done = [r["sample_id"] for r in rows if prov["samples"][r["sample_id"]]["status"] == "done"]
    merge_cohort(lay.root, samples, done)
    result.statuses = {sid: s["status"] for sid, s in prov["samples"].items()}
    failed = [sid for sid, st in result.statuses.items() if st != "done"]
    prov["status"] = "done" if not failed else "partial"
    prov["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    prov["failed"] = failed
    atomic_write_json(prov_path, prov)
    log.info("run finished: %d done, %d failed", len(done), len(failed))
    result.exit_code = 3 if failed else 0
    return result


def _collect(r, fn, ok, fail) -> None:
    try:
        info = fn()
    except StageError as exc:
        fail(exc)
    else:
        ok(r, info)


def _call_safely(fn, *args):
    """Run on a worker: a sample's failure comes back as a value (no worker error log, no traceback)."""
    try:
        return fn(*args)
    except StageError as exc:
        return exc


def _map(client, fn, rows, args, label):
    """Run ``fn(row, *args)`` for every row, in process or as Dask tasks; yield (row, info or StageError)
    in completion order."""
    if client is None:
        for r in rows:
            try:
                yield r, fn(r, *args)
            except StageError as exc:
                yield r, exc
        return
    from distributed import as_completed

    # hash=False: unique keys, so data scattered for an earlier stage being released cannot race this one
    scattered = [client.scatter(a, broadcast=True, hash=False) if not isinstance(a, (str, int, float)) else a
                 for a in args]
    futures = {client.submit(_call_safely, fn, r, *scattered, pure=False, key=f"{label.replace(' ', '-')}-{r['sample_id']}"): r
               for r in rows}
    for fut in as_completed(futures):
        r = futures[fut]
        try:
            yield r, fut.result()
        except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by its memory limit
            yield r, StageError(r["sample_id"], f"{label} (worker)", " ".join(f"{type(exc).__name__}: {exc}".split()),
                                traceback.format_exc())


def _is_large(info: dict | None, cfg: Config) -> bool:
    return bool(info) and max(info["shape"][1:]) > cfg.segmentation.tile_size_px


def _finish_a(r, info, stamps, lay: RunLayout, record) -> None:
    sid = r["sample_id"]
    atomic_write_json(lay.sample_dir(sid) / STAMP, stamps[sid])
    record(sid, status="step_a_done", step_a=info)
    log.info("%s: step A done (%d cells) %s", sid, info["n_cells"], info["timings_s"])


# ---------------------------------------------------------------------------------------------- CLI
def cli_run(args: argparse.Namespace) -> int:
    """``chemozone run INPUT --config CFG --out OUT ...``"""
    res = run_batch(args.input, args.config, args.out, workers=args.workers, scheduler=args.scheduler,
                    memory_limit=args.memory_limit, resume=args.resume, on_error=args.on_error,
                    progress=not args.quiet, command=sys.argv)
    _print_summary(res)
    if not args.no_report and any(s == "done" for s in res.statuses.values()):
        from .report import write_report

        print(f"report: {write_report(res.out)}")
    return res.exit_code


def _print_summary(res: RunResult) -> None:
    n_ok = sum(1 for s in res.statuses.values() if s == "done")
    print(f"{n_ok}/{len(res.statuses)} samples done; results in {res.out}")
    for sid, err in res.errors.items():
        print(f"failed: {err}", file=sys.stderr)


def cli_demo(args: argparse.Namespace) -> int:
    """``chemozone demo [--out DIR]``: synthesize the demo cohort, run it, write the report."""
    from .synth import generate_cohort

    out = Path(args.out)
    cohort = out / "cohort"
    t0 = time.perf_counter()
    if not (cohort / "samples.csv").is_file():
        print(f"generating the synthetic '{args.preset}' cohort in {cohort} ...")
        generate_cohort(cohort, preset=args.preset)
    run_dir = out / "run"
    res = run_batch(cohort, cohort / "config.yaml", run_dir, workers=args.workers or min(2, os.cpu_count() or 1),
                    scheduler=args.scheduler, memory_limit=args.memory_limit, resume=args.resume,
                    on_error=args.on_error, progress=not args.quiet, command=sys.argv)
    from .report import write_report

    report = write_report(run_dir)
    _print_summary(res)
    print(f"report: {report}")
    print(f"cohort tables: {run_dir / 'cells.parquet'}, {run_dir / 'infiltration.parquet'}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return res.exit_code
