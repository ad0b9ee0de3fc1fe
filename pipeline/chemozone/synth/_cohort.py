"""A synthetic cohort on disk (:func:`generate_cohort`) and the chemozone config that analyses it
(:func:`cohort_config`)."""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ._params import (
    DEFAULT_CHANNELS,
    MODULES,
    PIXEL_SIZE_UM,
    PRESETS,
    RECEPTORS,
    check_channels,
    patient_effects,
    preset_parameters,
)
from ._scene import build_scene
from ._write import write_sample


def sample_id_for(patient: str, radiation: str, dose: float, replicate: int) -> str:
    """``{patient}_{radiation}_{dose:g}Gy_r{replicate}``.

    >>> sample_id_for("P01", "photon", 10.0, 1)
    'P01_photon_10Gy_r1'
    """
    return f"{patient}_{radiation}_{dose:g}Gy_r{replicate}"


def generate_cohort(out: str | Path, *, preset: str = "demo", patients: int | None = None,
                    size_px: int | None = None, seed: int = 0, channels: Sequence[str] | None = None,
                    progress: bool = False) -> Path:
    """Write a synthetic cohort with ground truth to ``out`` (layout below).

    Parameters
    ----------
    out : path
        Output folder (created; existing files of the same names are replaced).
    preset : {"tiny", "demo", "stats", "large", "dim_receptors"}
        Design and default size/channels (:data:`PRESETS`).
    patients, size_px : int, optional
        Override the preset's number of patients / image side (px).
    seed : int
        Master seed: same seed, same bytes.
    channels : sequence of str, optional
        Panel (default: the preset's); must contain ``DAPI``; unknown names become generic membrane
        markers on 15 % of immune cells.
    progress : bool
        Print one line per sample.

    Returns
    -------
    Path
        ``out``.

    Notes
    -----
    Layout of ``out``::

        images/{sample_id}.ome.tif     tiled OME-TIFF, uint16, channel names, 0.5 µm pixels
        samples.csv                    sample_id, image, patient, radiation, dose_gy, replicate
        truth/{sample_id}/nuclei.tif, cells.tif (uint32), tissue.tif, tumor.tif, zone_{m}.tif (uint8),
                          cells.parquet
        truth/cohort.json              all truth parameters, patient effects and per-sample realisations
        config.yaml                    a chemozone config that analyses the cohort (:func:`cohort_config`)
    """
    import pandas as pd
    import yaml

    from ..config import config_from_dict
    from ..layout import atomic_write_json, atomic_write_text

    if preset not in PRESETS:
        raise ConfigError(f"synth preset '{preset}' is unknown; use one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    n_pat = int(patients if patients is not None else p["patients"])
    size = int(size_px if size_px is not None else p["size_px"])
    if n_pat < 1:
        raise ConfigError(f"synth --patients must be >= 1, got {n_pat}")
    if size < 64:
        raise ConfigError(f"synth --size must be >= 64 px, got {size}")
    ch = check_channels(channels if channels is not None else p["channels"])
    cfg = cohort_config(ch, sham=any(d == 0 for _, d in p["design"]))
    config_from_dict(cfg, source="synth cohort_config")  # fail before any work
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    params = preset_parameters(preset)
    rows = []
    truth_samples = {}
    pats = {}
    for pi in range(n_pat):
        pid = f"P{pi + 1:02d}"
        pe = patient_effects(pi, seed=seed, params=params)
        pats[pid] = pe
        for radiation, dose in p["design"]:
            sid = sample_id_for(pid, radiation, dose, 1)
            sseed = [int(seed), pi, zlib.crc32(sid.encode())]
            frng = np.random.default_rng(np.random.SeedSequence(sseed + [99]))
            tear = bool(p["features"] and frng.random() < 0.3)
            oof = bool(p["features"] and frng.random() < 0.3)
            t0 = time.perf_counter()
            sc = build_scene((size, size), dose_gy=dose, radiation=radiation, patient=pe, seed=sseed,
                             channels=ch, params=params, tear=tear, out_of_focus=oof)
            sc["seed_entropy_list"] = sseed
            write_sample(out, sid, sc, seed)
            rows.append({"sample_id": sid, "image": f"images/{sid}.ome.tif", "patient": pid,
                         "radiation": radiation, "dose_gy": dose, "replicate": 1})
            truth_samples[sid] = {"seed": sseed, "patient": pid, "radiation": radiation, "dose_gy": dose,
                                  "n_cells": int(len(sc["cells"]["x"])), **sc["info"]}
            if progress:
                print(f"{sid}: {len(sc['cells']['x'])} cells, {time.perf_counter() - t0:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    atomic_write_text(out / "samples.csv", df.to_csv(index=False, lineterminator="\n"))
    atomic_write_json(out / "truth" / "cohort.json", {
        "generator": "chemozone.synth", "version": 1, "preset": preset, "seed": int(seed), "size_px": size,
        "channels": ch, "parameters": params, "patients": pats, "samples": truth_samples,
    })
    atomic_write_text(out / "config.yaml", "# chemozone config for this synthetic cohort (chemozone synth)\n"
                      + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return out


def cohort_config(channels: Sequence[str] | None = None, *, sham: bool = True) -> dict[str, Any]:
    """A chemozone config (as a dict) that analyses a synthetic cohort with these channels.

    Rules name the truth's cell types (``Tumor, CD8 T, CD4 T, NK, Macrophage, Other immune, Stroma``);
    rules whose markers are missing from the panel are left out. Pixel zones for the chemokines present
    (``halfmax``: the same patient's 0 Gy median + half of one gated producer's signal), a ``tumor`` zone from
    panCK, and the cognate pairs. Written as a user would from README.md and ``configs/example.yaml``: default
    gates (reference gates for producers), the recommended zone mode and default smoothing, default radiation
    effectiveness; no value that only the
    generator knows (its amplitudes, zone level or RBE factors).

    ``sham=False`` (a design without 0 Gy samples, e.g. the ``large`` preset): producers keep the default (pooled)
    gates, as README says for cohorts without a reference, and zones fall back to the pooled model with a warning.

    >>> from chemozone.config import config_from_dict
    >>> config_from_dict(cohort_config()).zones[0].name
    'CXCL8'
    >>> config_from_dict(cohort_config(sham=False)).phenotypes.markers["CXCL8"].gate.method
    'pooled'
    """
    ch = list(channels) if channels is not None else list(DEFAULT_CHANNELS)
    has = set(ch)
    comp = {"p21": "nucleus", "Ki67": "nucleus", "FOXP3": "nucleus", "panCK": "cytoplasm", "CD68": "cytoplasm",
            "aSMA": "cytoplasm", "CXCL8": "cytoplasm", "CXCL10": "cytoplasm", "CCL5": "cytoplasm"}
    # gates as configs/example.yaml recommends: the default (pooled) for lineage markers and receptors, the
    # same patient's sham quantile for producers (chemokines) and p21
    reference = {"method": "reference", "reference": {"dose_gy": 0}, "group_by": "patient"}
    producer_q = {"p21": 0.95, "CXCL8": 0.99, "CXCL10": 0.99, "CCL5": 0.99}
    markers = {m: {"compartment": comp.get(m, "cell"), "transform": "arcsinh"} for m in ch if m != "DAPI"}
    for m, q in producer_q.items():
        if m in markers and sham:
            markers[m]["gate"] = {**reference, "quantile": q}
    # lineage-specific immune markers first: immune cells inside tumor nests pick up panCK from the
    # surrounding tumor cytoplasm (blur, spillover), so "panCK+" alone must not outrank CD3/CD56/CD68, nor
    # CD45 (the leukocyte lineage marker)
    candidates = [
        {"cell_type": "CD8 T", "pos": ["CD3", "CD8"]},
        {"cell_type": "CD4 T", "pos": ["CD3", "CD4"]},
        {"cell_type": "NK", "pos": ["CD56"], "neg": ["CD3"]},
        {"cell_type": "Macrophage", "pos": ["CD68"], "neg": ["CD3"]},
        {"cell_type": "Other immune", "pos": ["CD45"]},
        {"cell_type": "Tumor", "pos": ["panCK"]},
        {"cell_type": "Stroma", "neg": ["panCK", "CD45"]},
    ]
    rules = []
    for r in candidates:
        need = r.get("pos", []) + r.get("neg", [])
        if all(m in has for m in need):
            rules.append(r)
    receptors = [r for r in RECEPTORS if r in has]
    # zones in the README's recommended mode (halfmax: the same patient's sham median + half of one gated
    # producer's signal) with the default smoothing: nothing here comes from the generator's parameters
    # (README "How good are the zones"); without a producer gate, the schema's default (reference q 0.99)
    zones: list[dict[str, Any]] = [{"name": m, "source": "pixels", "channels": [m],
                                    **({"threshold": {"mode": "halfmax"}} if m in markers else {})}
                                   for m in MODULES if m in has]
    if "panCK" in has:
        zones.append({"name": "tumor", "source": "tumor", "channels": ["panCK"], "smooth_um": 4.0})
    pairs = []
    lineages = {"CXCL8": ["NK", "CD8 T"], "CXCL10": ["CD8 T", "NK"], "CCL5": ["CD8 T", "NK"]}
    typed = {r["cell_type"] for r in rules}
    for m, rec in MODULES.items():
        if m in has and rec in has:
            pairs.append({"zone": m, "receptor": rec, "cell_types": [t for t in lineages[m] if t in typed]})
    return {
        "panel": {"pixel_size_um": PIXEL_SIZE_UM, "nuclear_channel": "DAPI"},
        # lymphocyte nuclei (~6.5 µm) crowd among tumor nuclei (~11 µm) in the attracting zones
        "segmentation": {"method": "watershed", "nucleus_diameter_um": 9.0, "small_nucleus_diameter_um": 6.5,
                         "expand_um": 3.0},
        "phenotypes": {"markers": markers, "rules": rules, "receptors": receptors,
                       "receptor_cell_types": [t for t in ["CD8 T", "CD4 T", "NK", "Macrophage", "Other immune"]
                                               if t in typed],
                       "default_cell_type": "Other"},
        "zones": zones,
        "spatial": {"cognate_pairs": pairs},
        "stats": {"reference_radiation": "photon"},
    }
