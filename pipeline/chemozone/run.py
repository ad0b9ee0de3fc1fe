"""Batch runner behind ``chemozone run`` and ``chemozone demo``: what runs for each sample, in which order.

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

Where the tasks execute (Dask cluster or in process, failures as values, progress bars, ``run.log``) is
:mod:`chemozone.scheduler`; the command-line handlers are in :mod:`chemozone.cli`. This module is the one
place that turns config sections into the stages' keywords.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
import traceback
from contextlib import ExitStack, contextmanager
from contextlib import nullcontext as _nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from . import _run_record as record
from ._run_record import Ledger as _Ledger
from ._run_record import RunResult
from .config import Config, load_config
from .errors import ChemozoneError, ConfigError, MissingStepError, RunError
from .layout import RunLayout, atomic_write_json, new_provenance, read_parquet, write_parquet
from .options import (
    classifier_options,
    cognate_options,
    gate_options,
    infiltration_options,
    overlap_options,
    phenotype_options,
    precomputed_mask_options,
    qc_options,
    region_options,
    segmentation_options,
    tissue_options,
    zone_signal_options,
)
from .regions import REGIONS_COLUMN, add_region_zones, apply_regions, load_sample_regions
from .scheduler import (
    StageError,
    call_safely,
    dask_client,
    map_samples,
    progress_bars,
    run_log,
    spare_threads,
    task_executor,
    tile_progress,
)

__all__ = [
    "run_batch",
    "process_sample_a",
    "process_sample_b",
    "cohort_step",
    "merge_cohort",
    "RunResult",
    "STEP_A_SECTIONS",
]

log = logging.getLogger("chemozone")

STEP_A_SECTIONS = ("panel", "analysis_grid", "tissue", "segmentation", "quantification", "regions")


# ------------------------------------------------------------------------------------------- helpers
def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (``ru_maxrss``): on a Dask worker the largest of every task
    it has run, not only this sample's step (``peak_rss_mb`` in ``run.json``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t0, 3)


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
        ``{"sample_id", "timings_s", "peak_rss_mb", "n_cells", "shape", "pixel_size_um", "grid_um",
        "tissue_outcome", "tissue_fraction", "regions"}`` (the outcome of :func:`chemozone.tissue.tissue_mask`: tissue
        on glass, the whole field, or no tissue; ``regions``: :func:`chemozone.regions.apply_regions`'s record, None
        without region annotations; recorded per sample in ``run.json``).
    """
    import dask

    from . import quantify, segment, tissue
    from .grid_means import tee
    from .io import canonical_channel_names, resolve_channels, write_labels_zarr

    sid = row["sample_id"]
    lay = RunLayout(out)
    sdir = lay.sample_dir(sid)
    timings: dict[str, float] = {}
    ctx = dask.config.set(scheduler="synchronous") if local else _nullcontext()
    with ctx:
        with _timed(timings, "read"):
            img = _stage(sid, "read", lambda: _open_image(row, cfg))
        px = img.pixel_size_um
        pre = _precomputed_masks(row, img, cfg, timings)  # checked before anything of this sample is written
        regs = _stage(sid, "regions", lambda: load_sample_regions(row, shape_yx=img.data.shape[1:], **region_options(cfg)))
        sdir.mkdir(parents=True, exist_ok=True)
        with _timed(timings, "tissue"):
            tissue_idx = (
                resolve_channels(img.channels, cfg.tissue.channels, aliases=cfg.panel.aliases, source=img.path)
                if cfg.tissue.channels else None
            )
            ov = _overview_writer(img, cfg, lay.sample(sid).overview, tissue_idx)
            gm = _grid_means_writer(img, cfg, lay.sample(sid).grid_means)
            try:
                tres = _stage(sid, "tissue", lambda: tissue.tissue_mask(
                    img.data, pixel_size_um=px, channel_indices=tissue_idx, channel_means_callback=tee(ov, gm),
                    **tissue_options(cfg)))
            except BaseException:
                for w in (ov, gm):
                    if w is not None:
                        w.abort()
                raise
            for w in (ov, gm):
                if w is not None:
                    w.finish()
            tmask, grid_um = tres.mask, tres.grid_um
        tmp_store = sdir / ".tmp-labels.zarr"
        large = max(img.data.shape[1:]) > cfg.segmentation.tile_size_px
        seg_opts, scale = segmentation_options(cfg), None
        if pre is None and seg_opts["nucleus_diameter_um"] == "auto":
            with _timed(timings, "nucleus_scale"):
                seg_opts, scale = _stage(sid, "segment", lambda: segment.resolve_auto_diameter(
                    img.channel(cfg.panel.nuclear_channel, aliases=cfg.panel.aliases), seg_opts,
                    pixel_size_um=px, source=img.path))
        with _timed(timings, "segment"):
            nuclei, cells = pre[:2] if pre is not None else _stage(sid, "segment", lambda: segment.segment_image(
                img.data, channels=img.channels, pixel_size_um=px, **seg_opts,
                nuclear_channel=cfg.panel.nuclear_channel, aliases=cfg.panel.aliases,
                tissue=tmask, tissue_grid_um=grid_um, store=tmp_store if large else None))
        with _timed(timings, "quantify"):
            # columns carry the config's names (an image channel spelled as a panel.aliases entry gets its key)
            q_channels = cfg.quantification.channels or canonical_channel_names(img.channels, cfg.panel.aliases)
            q_idx = resolve_channels(img.channels, q_channels, aliases=cfg.panel.aliases, source=img.path)
            image_q = img.data[q_idx] if q_idx != list(range(img.data.shape[0])) else img.data
            table = _stage(sid, "quantify", lambda: quantify.quantify_cells(
                image_q, cells, nuclei=nuclei, channels=q_channels, pixel_size_um=px,
                compartments=tuple(cfg.quantification.compartments),
                statistics=tuple(cfg.quantification.statistics), morphology=cfg.quantification.morphology,
                background=cfg.quantification.background or None, tile_size_px=cfg.segmentation.tile_size_px))
            table.insert(0, "sample_id", sid)
        tmask, table, reg_rec = _apply_regions(sid, regs, tmask, table, img, grid_um)
        with _timed(timings, "write_masks"):
            def _write():
                from .layout import atomic_path

                with atomic_path(lay.masks(sid)) as tmp:
                    if nuclei is not None:  # a cells-only mask has no nucleus compartment
                        write_labels_zarr(tmp, "nuclei", nuclei, pixel_size_um=px)
                    write_labels_zarr(tmp, "cells", cells, pixel_size_um=px)
                    write_labels_zarr(tmp, "tissue", tmask, pixel_size_um=grid_um)
            _stage(sid, "write masks", _write)
            write_parquet(table, lay.measurements(sid))
        shutil.rmtree(tmp_store, ignore_errors=True)
    info = {
        "sample_id": sid,
        "timings_s": timings,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "n_cells": int(len(table)),
        "shape": list(img.data.shape),
        "pixel_size_um": px,
        "grid_um": grid_um,
        "tissue_outcome": tres.outcome,
        "tissue_fraction": round(tres.fraction, 4),
        "nucleus_diameter_um": seg_opts["nucleus_diameter_um"],
        "regions": reg_rec,  # where the region annotations came from, the excluded area and cells (None: none)
    }
    if scale is not None:  # segmentation.nucleus_diameter_um: auto
        info["nucleus_scale"] = scale
    if pre is not None:  # where the masks came from (paths, pages, object counts) instead of a segmenter
        info.update(segmentation=pre[2], nucleus_diameter_um=None)
    return info


def _zone_channel_indices(img, cfg: Config) -> dict[int, str]:
    """Image channel index -> name of every channel a pixel or tumor zone builds its signal from."""
    from .io import resolve_channels

    out: dict[int, str] = {}
    for z in cfg.zones:
        if z.source in ("pixels", "tumor"):
            try:
                idx = resolve_channels(img.channels, z.channels, aliases=cfg.panel.aliases, source=img.path)
            except ChemozoneError:  # the zone pass names the missing channel; step A has no use for it
                continue
            out.update({int(i): str(img.channels[i]) for i in idx})
    return out


def _grid_means_writer(img, cfg: Config, path: Path):
    """A :class:`~chemozone.grid_means.GridMeansWriter` that keeps the zone channels' grid means from the tissue
    pass for the zone pass (None without pixel or tumor zones)."""
    from .grid import grid_factor
    from .grid_means import GridMeansWriter

    shutil.rmtree(path, ignore_errors=True)  # never the means of an earlier image
    channels = _zone_channel_indices(img, cfg)
    if not channels:
        return None
    return GridMeansWriter(path, channels=channels, shape_yx=img.data.shape[1:],
                           grid_factor=grid_factor(img.pixel_size_um, cfg.analysis_grid.pixel_size_um))


def _overview_writer(img, cfg: Config, path: Path, tissue_idx):
    """An :class:`~chemozone.overview.OverviewWriter` for a large image without a pyramid whose tissue pass reads
    every channel (else None: the QC figure and napari then read the image's own pixels or levels)."""
    from .grid import grid_factor
    from .overview import OverviewWriter, overview_blocks

    n = img.data.shape[0]
    if len(img.levels or [img.data]) > 1 or (tissue_idx is not None and sorted(tissue_idx) != list(range(n))):
        return None
    f = grid_factor(img.pixel_size_um, cfg.analysis_grid.pixel_size_um)
    k = overview_blocks(img.data.shape[1:], f)
    if k is None:
        return None
    return OverviewWriter(path, shape_cyx=img.data.shape, grid_factor=f, blocks=k, channels=img.channels,
                          pixel_size_um=img.pixel_size_um)


def _apply_regions(sid: str, regs, tmask, table, img, grid_um: float):
    """``(tissue, cells, record)`` with what lies outside the analysis region or in an exclusion removed from the
    tissue mask and the cells alike (:func:`chemozone.regions.apply_regions`); unchanged when ``regs`` is None."""
    if regs is None:
        return tmask, table, None
    tmask, keep, rec = _stage(sid, "regions", lambda: apply_regions(
        regs, tmask, table, shape_yx=img.data.shape[1:], grid_um=grid_um, pixel_size_um=img.pixel_size_um))
    return tmask, table[keep].reset_index(drop=True), rec


def _precomputed_masks(row: dict[str, Any], img, cfg: Config, timings: dict[str, float]):
    """``(nuclei, cells, record)`` from the sample sheet's ``nuclei_mask`` / ``cells_mask`` (bring your own
    masks), or None when the row names none (the sample is segmented)."""
    from .io import sample_mask_specs
    from .segment import load_precomputed_masks

    specs = sample_mask_specs(row)
    if not specs:
        return None
    with _timed(timings, "read_masks"):
        return _stage(row["sample_id"], "masks", lambda: load_precomputed_masks(
            specs, img.data, channels=img.channels, pixel_size_um=img.pixel_size_um, **precomputed_mask_options(cfg)))


# ------------------------------------------------------------------------------------ cohort step
def zone_summaries(row: dict[str, Any], cfg: Config, out: str | Path):
    """Pass A of the zones for one sample: per-channel zone signals on the grid → small summaries.

    ``row`` may name a part of the sample's zones (``_zones``: their names; ``_part``: the part's number, see
    :func:`_zone_parts`): then only those are computed, the signal cache is left to the caller to clear, and the
    signal at the cells goes to the part's own file (:func:`_merge_cell_signal_parts` joins them).
    """
    import dask
    import pandas as pd

    from . import zones
    from ._zone_halfmax import signal_at_cells
    from .grid import grid_factor
    from .grid_means import read_grid_means
    from .io import read_labels_zarr, resolve_channels

    sid = row["sample_id"]
    lay = RunLayout(out)
    frames, at_cells, positions = [], [], None
    cache = lay.sample(sid).zone_signal_cache
    only = row.get("_zones")
    if only is None:
        shutil.rmtree(cache, ignore_errors=True)  # never a signal of an earlier run
    with dask.config.set(scheduler="synchronous"):
        img = _open_image(row, cfg)
        tissue_grid = read_labels_zarr(lay.masks(sid), "tissue").astype(bool)
        grid_um = _grid_um(img, cfg, tissue_grid, lay, sid)
        kept = read_grid_means(lay.sample(sid).grid_means, channels=img.channels, shape_yx=img.data.shape[1:],
                               grid_factor=grid_factor(img.pixel_size_um, grid_um))
        for z in cfg.zones:
            if z.source not in ("pixels", "tumor") or (only is not None and z.name not in only):
                continue
            idx = resolve_channels(img.channels, z.channels, aliases=cfg.panel.aliases, source=img.path)
            means = [kept[i] for i in idx] if all(i in kept for i in idx) else None  # else: read the image
            sig = _stage(sid, "zones", lambda: zones.zone_signal(
                img.data, channel_indices=idx, pixel_size_um=img.pixel_size_um, grid_um=grid_um,
                tissue=tissue_grid, grid_means=means, **zone_signal_options(z)))
            frames.append(zones.signal_summary(sig, tissue_grid, sample_id=sid, zone=z.name, channels=z.channels))
            _cache_signal(cache, z, sig, grid_um=grid_um)
            if z.threshold.mode == "halfmax":
                if positions is None:  # read once per sample, whatever the number of halfmax zones
                    positions = read_parquet(lay.measurements(sid), columns=["cell_id", "x_um", "y_um"])
                at_cells.append(signal_at_cells(sig, positions,
                                                grid_um=grid_um, sample_id=sid, zone=z.name, channels=z.channels))
    if at_cells:
        write_parquet(pd.concat(at_cells, ignore_index=True), _cell_signal_path(lay, sid, row.get("_part")))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cell_signal_path(lay: RunLayout, sid: str, part: int | None) -> Path:
    path = lay.sample(sid).zone_cell_signal
    return path if part is None else path.with_name(f"{path.stem}.part{part}{path.suffix}")


def _zone_parts(rows: list[dict[str, Any]], cfg: Config, client) -> list[dict[str, Any]]:
    """The zone pass's tasks: one per sample, or, when there are fewer samples than worker threads (a whole section
    alone on a cluster), each sample's pixel zones split into as many parts as it has threads (``_zones``, ``_part``
    in a copy of the row), so that the idle workers compute the other zones' signals."""
    names = [z.name for z in cfg.zones if z.source in ("pixels", "tumor")]
    n = min(len(names), spare_threads(client, len(rows)))
    if n < 2:
        return list(rows)
    return [{**r, "_zones": names[k::n], "_part": k} for r in rows for k in range(n)]


def _in_zone_order(frame, order: dict[str, int]):
    """A zone-summaries frame with its rows in the config's zone order (stable: channels keep theirs)."""
    import numpy as np

    if not len(frame):
        return frame
    return frame.iloc[np.argsort(frame["zone"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)


def _merge_cell_signal_parts(lay: RunLayout, sid: str, n_parts: int) -> None:
    """Join the parts' signal-at-cells files into the sample's one file (in part order), then remove them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .layout import atomic_path

    paths = [p for p in (_cell_signal_path(lay, sid, k) for k in range(n_parts)) if p.is_file()]
    if paths:
        table = pa.concat_tables([pq.read_table(p) for p in paths])
        with atomic_path(lay.sample(sid).zone_cell_signal) as tmp:
            pq.write_table(table, tmp)
        del table
    for p in paths:
        p.unlink()


def _signal_key(z, grid_um: float) -> dict[str, Any]:
    """What a cached zone signal was computed from (step B re-reads the image when any of it differs)."""
    return {"channels": list(z.channels), "smooth_um": z.smooth_um, "background_quantile": z.background_quantile,
            "grid_um": float(grid_um)}


def _cache_signal(path: Path, z, sig, *, grid_um: float) -> None:
    """Keep pass A's signal of zone ``z`` for step B (float32, exact; chunked like the masks)."""
    import zarr

    chunks = (1,) + tuple(max(1, min(2048, n)) for n in sig.shape[1:])
    arr = zarr.open_group(str(path), mode="a").create_array(z.name, shape=sig.shape, dtype=sig.dtype, chunks=chunks,
                                                           overwrite=True)
    arr[...] = sig
    arr.attrs.update(_signal_key(z, grid_um))


def _cached_signals(path: Path, zone_cfgs, tissue_shape, *, grid_um: float) -> dict[str, Any]:
    """Pass A's signals still valid for these zones (lazy zarr arrays; a missing or different one is left out
    and computed again from the image)."""
    if not path.is_dir():
        return {}
    import zarr

    grp = zarr.open_group(str(path), mode="r")
    names = set(grp.array_keys())
    out = {}
    for z in zone_cfgs:
        if z.name in names:
            arr = grp[z.name]
            if dict(arr.attrs) == _signal_key(z, grid_um) and tuple(arr.shape[1:]) == tuple(tissue_shape):
                out[z.name] = arr
    return out


def cohort_step(cfg: Config, samples, measurements: dict[str, Any], summaries: list[Any], out: str | Path,
                executor: Any = None) -> dict[str, Any]:
    """Cohort-wide decisions between the per-sample steps: gates and zone thresholds.

    Returns ``{"gates": DataFrame, "zone_thresholds": DataFrame}`` and writes both to the run folder. ``executor``
    (:func:`chemozone.scheduler.task_executor` of the run's client) fits the markers' gates as parallel tasks.
    """
    import pandas as pd

    from . import phenotype, zones

    lay = RunLayout(out)
    cells = pd.concat(list(measurements.values()), ignore_index=True) if measurements else pd.DataFrame()
    gates = phenotype.compute_gates(cells, samples, **gate_options(cfg), executor=executor)
    write_parquet(gates, lay.gates)
    frames = [f for f in summaries if len(f)]
    thresholds = pd.DataFrame()
    if frames and any(z.source in ("pixels", "tumor") for z in cfg.zones):
        thresholds = zones.compute_zone_thresholds(pd.concat(frames, ignore_index=True), samples, zones=cfg.zones,
                                                   cell_signals=_producer_cell_signals(cfg, cells, gates, samples, lay))
        write_parquet(thresholds, lay.zone_thresholds)
    return {"gates": gates, "zone_thresholds": thresholds}


def _producer_cell_signals(cfg: Config, cells, gates, samples, lay: RunLayout):
    """Pass A's signal at every cell of ``halfmax`` zones, with a ``producer`` column from the cohort's gates
    (None when no zone uses that mode)."""
    import pandas as pd

    from . import phenotype
    from .config import halfmax_producer_markers

    wanted = {(z.name, ch): m for z in cfg.zones for ch, m in halfmax_producer_markers(z).items()}
    if not wanted:
        return None
    at = pd.concat([pd.read_parquet(lay.sample(s).zone_cell_signal) for s in samples["sample_id"].astype(str)],
                   ignore_index=True)
    if cfg.phenotypes.classifier_file is not None:  # classifier-gated markers: {marker}_pos as step B will have them
        from .classify import apply_classifier_file

        cells = apply_classifier_file(cells, cfg.phenotypes.classifier_file)
    pos = phenotype.apply_gates(cells, gates, markers=cfg.phenotypes.markers)
    tumor = _tumor_fractions(pos, cfg)
    frames = []
    for (zone, ch), marker in wanted.items():
        calls = pos[["sample_id", "cell_id", f"{marker}_pos"]].rename(columns={f"{marker}_pos": "producer"})
        if tumor is not None:
            calls["tumor_fraction"] = tumor
        try:  # the producers' stain (neighbour shares, _zone_halfmax); a table without the column: equal stains
            col = phenotype.marker_column(pos, marker, cfg.phenotypes.markers[marker].compartment)
            calls["intensity"] = pos[col].to_numpy(float)
        except MissingStepError:
            pass
        part = at[(at["zone"] == zone) & (at["channel"] == ch)]
        frames.append(part.merge(calls.astype({"sample_id": str}), on=["sample_id", "cell_id"], how="left"))
    out = pd.concat(frames, ignore_index=True)
    out["producer"] = out["producer"].fillna(False).astype(bool)
    return out


def _tumor_fractions(pos, cfg: Config):
    """Each cell's tumor fraction (:mod:`chemozone._zone_compartments`), from the gates of the tumor zone's marker,
    sample by sample; None without a gated tumor marker."""
    import numpy as np

    from ._zone_compartments import sample_tumor_lattice, tumor_fraction_at

    out = np.full(len(pos), np.nan)
    for _, idx in pos.groupby(pos["sample_id"].astype(str)).indices.items():
        cells = pos.iloc[idx]
        lattice = sample_tumor_lattice(cells, cfg.zones)
        if lattice is None:  # no gated tumor marker (every sample has the same columns)
            return None
        out[idx] = tumor_fraction_at(*lattice, cells["x_um"], cells["y_um"])
    return out


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
def process_sample_b(row: dict[str, Any], cfg: Config, out: str | Path, gates, zone_thresholds,
                     n_threads: int = 1) -> dict[str, Any]:
    """Step B of one sample: phenotype → zones → spatial; writes the sample's tables, zone masks and qc.png.

    ``n_threads``: zones whose distances are computed at a time (:func:`chemozone.spatial.annotate_and_infiltrate`);
    the runner gives more than 1 only to samples that leave worker threads idle (:func:`~chemozone.scheduler.spare_threads`).

    Returns ``{"sample_id", "timings_s", "peak_rss_mb", "n_cells", "zone_threads", "positive_counts",
    "zone_fractions"}`` (for the plausibility checks: ``positive_counts`` per gated marker ``{sample_id, marker,
    n_cells, n_positive}``, ``zone_fractions`` per zone mask ``{sample_id, zone, source, area_fraction}``).
    """
    import dask
    import pandas as pd

    from . import phenotype, spatial, zones
    from .io import read_labels_zarr, write_labels_zarr
    from .plausibility import positive_counts

    sid = row["sample_id"]
    lay = RunLayout(out)
    timings: dict[str, float] = {}
    with dask.config.set(scheduler="synchronous"):
        img = _open_image(row, cfg)
        cells = read_parquet(lay.measurements(sid))
        with _timed(timings, "phenotype"):
            clf_file = cfg.phenotypes.classifier_file
            if clf_file is not None:  # saved cell classifiers: {marker}_prob / _pos before the gates and rules
                from .classify import apply_classifier_file

                cells = _stage(sid, "phenotype", lambda: apply_classifier_file(cells, clf_file))
            sg = gates[gates["sample_id"] == sid] if len(gates) else gates
            cells = _stage(sid, "phenotype", lambda: phenotype.phenotype_cells(cells, sg, **phenotype_options(cfg)))
            counts = positive_counts(cells, sid)
        tissue_grid = read_labels_zarr(lay.masks(sid), "tissue").astype(bool)
        grid_um = _grid_um(img, cfg, tissue_grid, lay, sid)
        with _timed(timings, "zones"):
            zt = zone_thresholds
            if zt is not None and len(zt):
                zt = zt[zt["sample_id"] == sid]
            cache = lay.sample(sid).zone_signal_cache
            signals = _cached_signals(cache, cfg.zones, tissue_grid.shape, grid_um=grid_um)
            masks, zones_df = _stage(sid, "zones", lambda: zones.build_zones(
                img.data, cells, tissue_grid, pixel_size_um=img.pixel_size_um, grid_um=grid_um,
                zones=[z for z in cfg.zones if z.source != "regions"], thresholds=zt, sample_id=sid,
                channels=img.channels, aliases=cfg.panel.aliases, signals=signals))
            masks, zones_df = _stage(sid, "zones", lambda: add_region_zones(  # annotated regions as zones
                masks, zones_df, row, tissue_grid, zones=cfg.zones, sample_id=sid, shape_yx=img.data.shape[1:],
                pixel_size_um=img.pixel_size_um, grid_um=grid_um, **region_options(cfg)))
        with _timed(timings, "spatial"):
            cells, infil = _stage(sid, "spatial", lambda: spatial.annotate_and_infiltrate(  # one distance map per zone
                cells, masks, tissue_grid, grid_um=grid_um, sample_id=sid, n_threads=n_threads,
                **infiltration_options(cfg)))
            cognate = _stage(sid, "spatial", lambda: spatial.cognate_specificity(
                infil, cells=_with_sample_id(cells, sid), **cognate_options(cfg)))
            overlap = _stage(sid, "spatial", lambda: spatial.zone_overlap_metrics(
                cells, masks, tissue_grid, grid_um=grid_um, sample_id=sid, **overlap_options(cfg)))
        reviewed = lay.reviewed(sid)
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
                from .overview import with_overview
                from .qc import write_qc

                shown = with_overview(img, lay.sample(sid).overview)  # a large image's overview: no second full read
                _stage(sid, "qc", lambda: write_qc(lay.qc(sid), shown, lay.masks(sid), masks, **qc_options(cfg)))
    shutil.rmtree(lay.sample(sid).zone_signal_cache, ignore_errors=True)  # step B done: the signals are not kept
    return {"sample_id": sid, "timings_s": timings, "peak_rss_mb": round(_peak_rss_mb(), 1), "n_cells": int(len(cells)),
            "zone_threads": int(n_threads), "positive_counts": counts, "zone_fractions": record.zone_fractions(zones_df)}


def _with_sample_id(cells, sid: str):
    """``cells.assign(sample_id=sid)`` without copying the other columns (a whole section's table: ~1 GB)."""
    out = cells.copy(deep=False)
    out["sample_id"] = sid
    return out


# ------------------------------------------------------------------------------------------ merge
def merge_cohort(out: str | Path, samples, ok_ids: list[str]) -> None:
    """Concatenate the per-sample tables of finished samples and join the sample metadata."""
    import pandas as pd

    lay = RunLayout(out)
    from .io import MASK_COLUMNS

    meta = samples.drop(columns=[c for c in ("image", *MASK_COLUMNS, REGIONS_COLUMN) if c in samples]).copy()  # tables: no image
    write_parquet(samples.assign(image=samples["image"].astype(str)) if "image" in samples else samples, lay.cohort_samples)
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
def run_batch(input_path: str | Path, config: Config | str | Path, out: str | Path, *, workers: int | None = None,
              scheduler: str | None = None, memory_limit: str | None = None, resume: bool = False,
              on_error: str | None = None, progress: bool = True, in_process: bool = False,
              command: list[str] | None = None, report: bool = False) -> RunResult:
    """Run every sample through all stages and write the run folder.

    Parameters
    ----------
    input_path : path
        Folder of images (+ optional samples.csv), a sample sheet, or one image.
    config : Config or path
    out : path
        Run folder.
    workers, scheduler, memory_limit : optional
        Local cluster size and per-worker memory, or the address of an existing scheduler. ``workers=0``
        runs in this process (as ``in_process``).
    resume : bool
        Skip step A of samples whose input and step-A config are unchanged.
    on_error : {"raise", "skip"}, optional
        Default from ``config.run.on_error``.
    in_process : bool
        Run without a Dask cluster (synchronous, in this process: small cohorts, debugging; a crash in one
        sample's native code then stops the run, and ``memory_limit`` does not apply).
    report : bool
        Also write ``report.html`` when a sample is done (:func:`chemozone.report.write_report`), its heavy sections
        as tasks of the run's Dask workers before the cluster closes (they have the libraries imported already).

    Returns
    -------
    RunResult
        ``exit_code`` is 0, or 3 when samples failed under ``on_error="skip"``; ``report`` the report's path (None
        when none was written).

    Raises
    ------
    ChemozoneError
        Validation problems (before any work), or the first failure under ``on_error="raise"``.
    """
    from .validate import runnable_inputs

    if workers is not None and workers < 0:
        raise ConfigError(f"workers must be >= 0 (0: no Dask cluster), got {workers}")
    in_process = in_process or workers == 0
    cfg = config if isinstance(config, Config) else load_config(config)
    on_error = on_error or cfg.run.on_error
    lay = RunLayout(out)
    inputs, unreadable = runnable_inputs(input_path, cfg, skip_unreadable=on_error == "skip")
    _validate_stage_config(cfg, inputs)
    with run_log(lay.run_log):
        return _run(inputs.samples, cfg, lay, workers=workers, scheduler=scheduler, memory_limit=memory_limit,
                    resume=resume, on_error=on_error, progress=progress, in_process=in_process,
                    command=command, images=inputs.images, unreadable=unreadable, report=report)


def _validate_stage_config(cfg: Config, report) -> None:
    from . import phenotype

    for info in report.images.values():
        phenotype.validate_phenotypes(info["channels"], aliases=cfg.panel.aliases, **phenotype_options(cfg))
    copts = classifier_options(cfg)
    if copts["classifier_file"] is not None:
        from .classify import check_classifier_file
        from .io import canonical_channel_names

        for info in report.images.values():
            chans = cfg.quantification.channels or canonical_channel_names(info["channels"], cfg.panel.aliases)
            check_classifier_file(copts["classifier_file"], channels=chans,
                                  classifier_markers=copts["classifier_markers"])


def _run(samples, cfg: Config, lay: RunLayout, *, workers, scheduler, memory_limit, resume, on_error,
         progress, in_process, command, images, unreadable, report: bool = False) -> RunResult:
    """The run once its inputs are valid: step A, the cohort step, step B, then the cohort tables."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress, highlight=False)
    old_samples = record.previous_samples(lay) if resume else {}
    ledger, rows = _start_ledger(samples, cfg, lay, on_error=on_error, command=command, images=images,
                                 unreadable=unreadable)
    stamps = {r["sample_id"]: record.step_a_stamp(r, cfg, STEP_A_SECTIONS) for r in rows}
    todo = _step_a_todo(rows, cfg, lay, stamps, ledger, old_samples, resume=resume)
    client_ctx = _nullcontext() if in_process else dask_client(
        address=scheduler or cfg.run.scheduler, n_workers=workers or cfg.run.workers,
        threads_per_worker=cfg.run.threads_per_worker, memory_limit=memory_limit or cfg.run.memory_limit,
        console=console)
    with ExitStack() as cluster:  # open until the report is written (its heavy sections run on the workers)
        with ledger.stopping():  # a cluster that does not start fails the run, as a sample's error does
            client = cluster.enter_context(client_ctx)
            with progress_bars(console, enabled=progress) as bar:
                _run_samples(client, bar, rows, todo, samples, cfg, lay, stamps, ledger, images)
        with ledger.stopping("cohort tables"):
            result = _finish(rows, samples, lay, ledger)
        if report and any(s == "done" for s in result.statuses.values()):  # after run.json is closed: a report
            from .report import write_report  # error is not the run's

            result.report = write_report(lay.root, executor=task_executor(client))
    return result


def _run_samples(client, bar, rows, todo, samples, cfg: Config, lay: RunLayout, stamps, ledger: _Ledger, images
                 ) -> None:
    """Step A, the cohort step and step B of the run's samples, with their plausibility warnings."""
    _run_step_a(client, bar, todo, cfg, lay, stamps, ledger, images)
    ok_a = [r for r in rows if ledger.status(r["sample_id"]) == "step_a_done"]
    for r in ok_a:  # plausibility of step A (resumed samples too): cells, tissue, density
        sid = r["sample_id"]
        ledger.warn(record.step_a_warnings(sid, ledger.prov["samples"][sid].get("step_a"), images[sid],
                                           cfg.segmentation, lay))
    ok_a, cohort = _run_cohort_step(client, ok_a, samples, cfg, lay, ledger)
    ledger.warn(record.cohort_warnings(cohort))
    _run_step_b(client, bar, ok_a, cfg, lay, cohort, ledger)
    step_b = {sid: s.get("step_b") for sid, s in ledger.prov["samples"].items() if s["status"] == "done"}
    ledger.warn(record.marker_warnings(step_b) + record.zone_warnings(step_b))


def _start_ledger(samples, cfg: Config, lay: RunLayout, *, on_error, command, images, unreadable
                  ) -> tuple[_Ledger, list[dict[str, Any]]]:
    """Write the first ``run.json`` (config, versions, inputs; every sample pending, or failed in validation).

    Returns the ledger and the rows of the samples to run (the readable ones).
    """
    from .segment import segmentation_provenance

    prov = new_provenance(cfg, command=command)
    # method, defaults, cellpose version/model
    prov["segmentation"] = segmentation_provenance(**segmentation_options(cfg))
    rows = samples.to_dict("records")
    for r in rows:
        prov["inputs"][r["sample_id"]] = record.input_record(r, images.get(r["sample_id"]))
        prov["samples"][r["sample_id"]] = {"status": "pending", "warnings": []}
    for sid, msg in unreadable.items():
        prov["samples"][sid] = {"status": "failed", "stage": "validate", "error": msg, "warnings": []}
        log.error("sample '%s' failed in validate: %s", sid, msg)
    rows = [r for r in rows if r["sample_id"] not in unreadable]
    ledger = _Ledger(prov, lay, on_error)
    ledger.save()
    ledger.warn(record.image_warnings(images))
    log.info("run started: %d samples, out=%s", len(rows), lay.root)
    ledger.result.errors.update({sid: f"sample '{sid}' failed in validate: {m}" for sid, m in unreadable.items()})
    return ledger, rows


def _step_a_todo(rows, cfg: Config, lay: RunLayout, stamps, ledger: _Ledger, old_samples, *, resume: bool
                 ) -> list[dict[str, Any]]:
    """The rows whose step A must run; with ``resume``, a sample whose stamp is current is recorded as done."""
    todo = []
    for r in rows:
        sid = r["sample_id"]
        if resume and record.step_a_is_current(sid, lay, stamps[sid]):
            prev = old_samples.get(sid, {})
            ledger.record(sid, status="step_a_done", resumed=True, step_a=prev.get("step_a"))
            log.info("%s: step A unchanged, skipped (--resume)", sid)
        else:
            lay.step_a_stamp(sid).unlink(missing_ok=True)
            todo.append(r)
    return todo


def _run_step_a(client, bar, todo, cfg: Config, lay: RunLayout, stamps, ledger: _Ledger, images) -> None:
    """Step A of each sample in ``todo``: one task per sample, except large images on a cluster, whose
    tiles become tasks of their own (the image is driven from here, with a progress bar of its tiles)."""
    task_a = bar.add_task("segment + quantify", total=len(todo))
    big = [r for r in todo if client is not None and _is_large(images.get(r["sample_id"]), cfg)]
    for r in big:
        with tile_progress(bar, r["sample_id"]):
            outcome = call_safely(lambda r=r: process_sample_a(r, cfg, lay.root, local=False))
            _finish_a(r, outcome, stamps, lay, ledger)
        bar.advance(task_a)
    small = [r for r in todo if r not in big]
    for r, outcome in map_samples(client, process_sample_a, small, (cfg, str(lay.root)), "step A"):
        _finish_a(r, outcome, stamps, lay, ledger)
        bar.advance(task_a)


def _is_large(info: dict | None, cfg: Config) -> bool:
    return bool(info) and max(info["shape"][1:]) > cfg.segmentation.tile_size_px


def _finish_a(r, outcome, stamps, lay: RunLayout, ledger: _Ledger) -> None:
    """Record a sample's step A; on success, write its stamp (last, so a killed run leaves no false stamp)."""
    if isinstance(outcome, StageError):
        ledger.fail(outcome)
        return
    sid = r["sample_id"]
    atomic_write_json(lay.step_a_stamp(sid), stamps[sid])
    ledger.record(sid, status="step_a_done", step_a=outcome)
    log.info("%s: step A done (%d cells) %s", sid, outcome["n_cells"], outcome["timings_s"])


def _run_cohort_step(client, ok_a, samples, cfg: Config, lay: RunLayout, ledger: _Ledger):
    """Zone-signal summaries per sample, then the cohort step (gates, zone thresholds).

    Returns the rows of the samples that passed both, and :func:`cohort_step`'s tables.
    """
    import pandas as pd

    t0 = time.perf_counter()
    summaries, failed_z = {}, set()
    parts = _zone_parts(ok_a, cfg, client)
    split = len(parts) > len(ok_a)
    ledger.prov["zone_pass_tasks"] = len(parts)
    if split:  # the parts write their zones' signals into one cache: cleared and created once, here
        import zarr

        for r in ok_a:
            shutil.rmtree(lay.sample(r["sample_id"]).zone_signal_cache, ignore_errors=True)
            zarr.open_group(str(lay.sample(r["sample_id"]).zone_signal_cache), mode="w")
    for r, outcome in map_samples(client, zone_summaries, parts, (cfg, str(lay.root)), "zone signals"):
        if isinstance(outcome, StageError):
            if r["sample_id"] not in failed_z:
                ledger.fail(outcome)
            failed_z.add(r["sample_id"])
        else:
            summaries.setdefault(r["sample_id"], []).append((r.get("_part", 0), outcome))
    ok_a = [r for r in ok_a if r["sample_id"] not in failed_z]
    if split:
        n_parts = 1 + max(p["_part"] for p in parts)
        for r in ok_a:
            _merge_cell_signal_parts(lay, r["sample_id"], n_parts)
        for sid in failed_z:  # a failed sample's parts are not left behind
            for k in range(n_parts):
                _cell_signal_path(lay, sid, k).unlink(missing_ok=True)
    order = {z.name: i for i, z in enumerate(cfg.zones)}  # a sample's parts back in the config's zone order
    summaries = [_in_zone_order(pd.concat([f for _, f in sorted(summaries[r["sample_id"]], key=lambda p: p[0])],
                                          ignore_index=True), order) for r in ok_a]
    measurements = {r["sample_id"]: read_parquet(lay.measurements(r["sample_id"])) for r in ok_a}
    ok_samples = samples[samples["sample_id"].isin([r["sample_id"] for r in ok_a])].reset_index(drop=True)
    summaries = sorted(summaries, key=lambda f: str(f["sample_id"].iloc[0]) if len(f) else "")
    with ledger.stopping("cohort step"):  # e.g. no reference sample at all: run.json says so
        cohort = cohort_step(cfg, ok_samples, measurements, summaries, lay.root, executor=task_executor(client))
    log.info("cohort step (zone signals, gates, zone thresholds) in %.1f s", time.perf_counter() - t0)
    ledger.prov["cohort_step_s"] = round(time.perf_counter() - t0, 3)
    return ok_a, cohort


def _run_step_b(client, bar, ok_a, cfg: Config, lay: RunLayout, cohort, ledger: _Ledger) -> None:
    """Step B of every sample that passed the cohort step, with the cohort's gates and zone thresholds."""
    task_b = bar.add_task("phenotype + zones + spatial", total=len(ok_a))
    # fewer samples than worker threads (a whole section alone): each sample's zones use the idle threads
    args_b = (cfg, str(lay.root), cohort["gates"], cohort["zone_thresholds"], spare_threads(client, len(ok_a)))
    for r, outcome in map_samples(client, process_sample_b, ok_a, args_b, "step B"):
        if isinstance(outcome, StageError):
            ledger.fail(outcome)
            shutil.rmtree(lay.sample(r["sample_id"]).zone_signal_cache, ignore_errors=True)  # not left behind
        else:
            ledger.record(r["sample_id"], status="done", step_b=outcome)
            log.info("%s: done (%d cells) %s", r["sample_id"], outcome["n_cells"], outcome["timings_s"])
        bar.advance(task_b)


def _finish(rows, samples, lay: RunLayout, ledger: _Ledger) -> RunResult:
    """Merge the finished samples into the cohort tables and close ``run.json`` (done or partial)."""
    prov, result = ledger.prov, ledger.result
    done = [r["sample_id"] for r in rows if ledger.status(r["sample_id"]) == "done"]
    merge_cohort(lay.root, samples, done)
    result.statuses = {sid: s["status"] for sid, s in prov["samples"].items()}
    failed = [sid for sid, st in result.statuses.items() if st != "done"]
    prov["status"] = "done" if not failed else "partial"
    prov["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    prov["failed"] = failed
    ledger.save()
    log.info("run finished: %d done, %d failed", len(done), len(failed))
    result.exit_code = 3 if failed else 0
    return result
