"""Analyse one image from napari: the stage functions of the library, step by step (no Qt here).

:func:`analyse_steps` is a generator so the widget can run it in a worker thread and show progress; each
step yields ``{"step": i, "n_steps": n, "message": ...}`` and the last one adds ``sample_dir``.
The result is a run folder with one sample (same layout as ``chemozone run``), opened with the reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

N_STEPS = 7


def analyse_steps(image: str | Path, config_path: str | Path | None = None,
                  out: str | Path | None = None) -> Iterator[dict[str, Any]]:
    """Run tissue → segmentation → quantification → phenotypes → zones → spatial on one image.

    Parameters
    ----------
    image : path
        The image file.
    config_path : path, optional
        Experiment config (defaults when None).
    out : path, optional
        Run folder to write into (a new temporary folder when None).

    Yields
    ------
    dict
        ``step``, ``n_steps``, ``message``; the final dict also has ``sample_dir`` and ``run_dir``.
    """
    import pandas as pd

    from chemozone.config import load_config
    from chemozone.io import read_image, resolve_channels, write_labels_zarr
    from chemozone.layout import RunLayout, atomic_write_json, make_tempdir, new_provenance, write_parquet

    cfg = load_config(config_path)
    out = Path(out) if out else make_tempdir("chemozone-napari-")
    lay = RunLayout(out)
    image = Path(image)
    sample_id = image.name.split(".")[0]
    sdir = lay.sample_dir(sample_id)
    sdir.mkdir(parents=True, exist_ok=True)
    store = lay.masks(sample_id)

    def step(i, msg):
        return {"step": i, "n_steps": N_STEPS, "message": msg}

    yield step(0, "reading the image")
    img = read_image(image, channels=cfg.panel.channels, pixel_size_um=cfg.panel.pixel_size_um)
    px = img.pixel_size_um
    samples = pd.DataFrame({"sample_id": [sample_id], "image": [str(image.resolve())], "patient": [sample_id],
                            "radiation": ["unknown"], "dose_gy": [np.nan]})
    write_parquet(samples, lay.cohort_samples)
    prov = new_provenance(cfg, command=["napari", "analyse", str(image)])
    prov["samples"] = {sample_id: {"image": str(image.resolve()), "status": "running"}}
    atomic_write_json(lay.run_json, prov)

    yield step(1, "tissue mask")
    from chemozone.tissue import tissue_mask

    tidx = (resolve_channels(img.channels, cfg.tissue.channels, aliases=cfg.panel.aliases, source=image)
            if cfg.tissue.channels else None)
    tissue, grid_um = tissue_mask(img.data, pixel_size_um=px, config=cfg.tissue, channel_indices=tidx)
    write_labels_zarr(store, "tissue", tissue, pixel_size_um=grid_um)

    yield step(2, "segmentation")
    from chemozone.segment import segment_image

    nuclei, cells_lbl = segment_image(img.data, channels=img.channels, pixel_size_um=px, config=cfg.segmentation,
                                      nuclear_channel=cfg.panel.nuclear_channel, aliases=cfg.panel.aliases,
                                      tissue=tissue, tissue_grid_um=grid_um)
    write_labels_zarr(store, "nuclei", nuclei, pixel_size_um=px)
    write_labels_zarr(store, "cells", cells_lbl, pixel_size_um=px)

    yield step(3, "quantification")
    from chemozone.quantify import quantify_cells

    qch = cfg.quantification
    if qch.channels:
        qidx = resolve_channels(img.channels, qch.channels, aliases=cfg.panel.aliases, source=image)
        data, names = img.data[qidx], [img.channels[i] for i in qidx]
    else:
        data, names = img.data, list(img.channels)
    cells = quantify_cells(data, cells_lbl, nuclei=nuclei, channels=names, pixel_size_um=px,
                           compartments=tuple(qch.compartments), statistics=tuple(qch.statistics),
                           morphology=qch.morphology, background=qch.background or None)
    cells.insert(0, "sample_id", sample_id)

    yield step(4, "phenotypes")
    if cfg.phenotypes.markers:
        from chemozone.phenotype import compute_gates, phenotype_cells

        gates = compute_gates(cells, samples, config=cfg.phenotypes)
        write_parquet(gates, lay.gates)
        cells = phenotype_cells(cells, gates, config=cfg.phenotypes)

    yield step(5, "zones")
    masks: dict[str, np.ndarray] = {}
    if cfg.zones:
        from chemozone.zones import build_zones, compute_zone_thresholds, signal_summary, zone_signal

        summaries = []
        for z in cfg.zones:
            if z.source == "pixels":
                idx = resolve_channels(img.channels, z.channels, aliases=cfg.panel.aliases, source=image)
                sig = zone_signal(img.data, channel_indices=idx, pixel_size_um=px, grid_um=grid_um, zone=z,
                                  tissue=tissue)
                summaries.append(signal_summary(sig, tissue, sample_id=sample_id, zone=z))
        summ = pd.concat(summaries, ignore_index=True) if summaries else None
        thresholds = compute_zone_thresholds(summ, samples, zones=cfg.zones) if summ is not None else None
        masks, zones_df = build_zones(img.data, cells, tissue, pixel_size_um=px, grid_um=grid_um, zones=cfg.zones,
                                      thresholds=thresholds, sample_id=sample_id, channels=img.channels,
                                      aliases=cfg.panel.aliases)
        write_parquet(zones_df, lay.zones(sample_id))
        for name, m in masks.items():
            write_labels_zarr(store, f"zone_{name}", m, pixel_size_um=grid_um)

    yield step(6, "spatial")
    from chemozone.spatial import annotate_cells, infiltration_metrics

    cells = annotate_cells(cells, masks, tissue, grid_um=grid_um)
    if masks and "cell_type" in cells.columns:
        infl = infiltration_metrics(cells, masks, tissue, grid_um=grid_um, config=cfg.spatial, sample_id=sample_id)
        write_parquet(infl, lay.infiltration(sample_id))
    write_parquet(cells, lay.cells(sample_id))
    prov["samples"][sample_id]["status"] = "done"
    prov["status"] = "done"
    atomic_write_json(lay.run_json, prov)
    yield {**step(N_STEPS, f"done: {len(cells)} cells"), "sample_dir": str(sdir), "run_dir": str(out)}
