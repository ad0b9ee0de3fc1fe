"""Load a run folder's cohort tables (:func:`load_run`) and the effective dose (:func:`add_effective_dose`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, MissingStepError, RunError

TABLES = ("cells", "infiltration", "zones", "samples", "gates", "zone_overlap", "zone_thresholds")
_OPTIONAL = {"zone_overlap", "zone_thresholds"}  # absent in older run folders, or without pixel zones: empty
_STEP = {
    "zone_overlap": "chemozone run (spatial step)",
    "zone_thresholds": "chemozone run (cohort step)",
    "cells": "chemozone run (quantify + phenotype + spatial)",
    "infiltration": "chemozone run (spatial step)",
    "zones": "chemozone run (zones step)",
    "samples": "chemozone run",
    "gates": "chemozone run (phenotype step)",
}


def load_run(out: str | os.PathLike, *, tables: Sequence[str] = TABLES, missing: str = "raise") -> dict[str, Any]:
    """Load a run folder's cohort tables with the sample metadata joined.

    Parameters
    ----------
    out : path
        The run folder (holds ``run.json``).
    tables : sequence of str
        Which of ``cells, infiltration, zones, samples, gates, zone_overlap, zone_thresholds`` to read
        (``samples`` is always read).
    missing : {"raise", "empty"}
        A requested table that is absent raises :class:`MissingStepError` (``"raise"``) or comes back as
        an empty DataFrame (``"empty"``). ``zone_overlap`` (new in run folders of this version) always
        comes back empty when absent; :func:`receptor_overlap_counts` then says what to re-run.
        ``zone_thresholds`` (the cohort step's, written when the config has pixel or tumor zones) too.

    Returns
    -------
    dict
        ``{name: DataFrame}`` for each table plus ``"run"`` (the parsed ``run.json``) and
        ``"effectiveness"`` (``config.stats.effectiveness`` of the run). Every table carries the sample
        sheet's metadata columns and ``effective_dose_gy``.

    Raises
    ------
    RunError
        No run folder / no ``run.json``.
    MissingStepError
        A requested table is missing (names the file and the step that writes it).
    """
    from ..layout import RunLayout, read_run_json

    out = Path(out)
    if not out.is_dir():
        raise RunError(f"{out}: run folder not found; run 'chemozone run INPUT --config CFG --out {out}' first")
    if missing not in ("raise", "empty"):
        raise ValueError(f"missing must be 'raise' or 'empty', got {missing!r}")
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown tables {unknown}; choose from {list(TABLES)}")
    run = read_run_json(out)
    lay = RunLayout(out)
    paths = {"cells": lay.cohort_cells, "infiltration": lay.cohort_infiltration, "zones": lay.cohort_zones,
             "samples": lay.cohort_samples, "gates": lay.gates, "zone_overlap": lay.cohort_zone_overlap,
             "zone_thresholds": lay.zone_thresholds}
    eff = dict(((run.get("config") or {}).get("stats") or {}).get("effectiveness") or {})
    result: dict[str, Any] = {"run": run, "effectiveness": eff}
    wanted = ["samples"] + [t for t in tables if t != "samples"]
    for name in wanted:
        p = paths[name]
        if p.is_file():
            result[name] = pd.read_parquet(p)
        elif missing == "raise" and name not in _OPTIONAL:
            raise MissingStepError(f"{p}: '{name}' table not found; run '{_STEP[name]}' into {out} first")
        else:
            result[name] = pd.DataFrame({"sample_id": pd.Series(dtype=str)})
    samples = result["samples"]
    if len(samples) and eff and {"dose_gy", "radiation"} <= set(samples.columns):
        samples = add_effective_dose(samples, eff, strict=False)
    result["samples"] = samples
    for name in wanted:
        if name != "samples":
            result[name] = _join_meta(result[name], samples)
    return result


def _join_meta(df: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Add the sample sheet's columns that ``df`` lacks (by ``sample_id``)."""
    if "sample_id" not in df.columns or "sample_id" not in samples.columns or not len(samples):
        return df
    extra = [c for c in samples.columns if c not in df.columns and c != "image"]
    if not extra:
        return df
    meta = samples[["sample_id"] + extra].drop_duplicates("sample_id")
    return df.merge(meta, on="sample_id", how="left")


def add_effective_dose(df: pd.DataFrame, effectiveness: dict[str, float], *, dose: str = "dose_gy",
                       radiation: str = "radiation", strict: bool = True) -> pd.DataFrame:
    """Return a copy of ``df`` with ``effective_dose_gy = factor[radiation] * dose`` (0 Gy stays 0).

    Raises
    ------
    ConfigError
        (``strict``) an irradiated sample whose radiation type has no factor in ``stats.effectiveness``.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"radiation": ["photon", "carbon", "sham"], "dose_gy": [2.0, 2.0, 0.0]})
    >>> add_effective_dose(d, {"photon": 1.0, "carbon": 2.5})["effective_dose_gy"].tolist()
    [2.0, 5.0, 0.0]
    """
    out = df.copy()
    d = out[dose].astype(float)
    fac = out[radiation].map(lambda r: effectiveness.get(r, np.nan)).astype(float)
    bad = sorted(set(out.loc[(d > 0) & fac.isna(), radiation].astype(str)))
    if bad and strict:
        raise ConfigError(f"stats.effectiveness: no factor for radiation type(s) {bad} "
                          f"(have {sorted(effectiveness)}); add them to the config's stats.effectiveness")
    out["effective_dose_gy"] = np.where(d == 0, 0.0, d * fac)
    return out
