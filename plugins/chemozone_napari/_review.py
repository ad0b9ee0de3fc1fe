"""File plumbing of the review widgets (no Qt here, so it is testable without a display).

- Reviewed phenotypes: ``samples/<id>/reviewed.parquet`` (:attr:`chemozone.layout.SampleLayout.reviewed`;
  ``cell_id, phenotype_reviewed``), a sidecar that ``chemozone run`` does not write, so hand corrections
  survive re-runs; merged into the cells table as ``phenotype_reviewed`` and ``phenotype_display``
  (reviewed when set, else ``phenotype``).
- Reviewed gates: the YAML of :func:`chemozone.config.save_gates_file` that ``phenotypes.gates_file`` replays.
- Reviewed zones: threshold (absolute) and smoothing of one zone written into the experiment config YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


# ---------------------------------------------------------------------------------- reviewed phenotypes
def load_reviewed(sample_dir: str | Path):
    """The hand corrections of a sample: DataFrame ``cell_id, phenotype_reviewed`` (empty when none)."""
    import pandas as pd

    from chemozone.layout import SampleLayout

    path = SampleLayout(sample_dir).reviewed
    if not path.is_file():
        return pd.DataFrame({"cell_id": pd.Series(dtype="uint32"), "phenotype_reviewed": pd.Series(dtype="object")})
    return pd.read_parquet(path)


def save_reviewed(sample_dir: str | Path, cell_ids, phenotypes) -> Path:
    """Record hand-corrected phenotypes of cells (merged with earlier corrections; the latest wins).

    Parameters
    ----------
    sample_dir : path
        ``OUT/samples/<id>``.
    cell_ids : sequence of int
    phenotypes : sequence of str or None
        The corrected phenotype per cell; ``None`` or ``""`` removes the correction of that cell.
    """
    import pandas as pd

    from chemozone.layout import SampleLayout, write_parquet

    new = pd.DataFrame({"cell_id": np.asarray(cell_ids, dtype=np.uint32),
                        "phenotype_reviewed": pd.Series(list(phenotypes), dtype="object")})
    old = load_reviewed(sample_dir)
    both = pd.concat([old[~old["cell_id"].isin(new["cell_id"])], new], ignore_index=True)
    keep = both["phenotype_reviewed"].notna() & (both["phenotype_reviewed"].astype(str) != "")
    both = both[keep].sort_values("cell_id").reset_index(drop=True)
    both["cell_id"] = both["cell_id"].astype(np.uint32)
    both["phenotype_reviewed"] = both["phenotype_reviewed"].astype(str)
    return write_parquet(both, SampleLayout(sample_dir).reviewed)


def merge_reviewed(cells, sample_dir: str | Path | None):
    """``cells`` plus ``phenotype_reviewed`` (None where not reviewed) and ``phenotype_display``."""
    import pandas as pd

    out = cells.copy(deep=False)  # new and dropped columns change the copy only (a million-cell table: no data copy)
    for c in ("phenotype_reviewed", "phenotype_display"):
        if c in out.columns:
            del out[c]
    rev = load_reviewed(sample_dir) if sample_dir is not None else None
    if rev is not None and len(rev) and "cell_id" in out.columns:
        mapping = dict(zip(rev["cell_id"].astype(np.int64), rev["phenotype_reviewed"].astype(str)))
        out["phenotype_reviewed"] = pd.Series(out["cell_id"].astype(np.int64).map(mapping), index=out.index,
                                              dtype="object")
    else:
        out["phenotype_reviewed"] = pd.Series([None] * len(out), index=out.index, dtype="object")
    base = next((c for c in ("phenotype", "cell_type") if c in out.columns), None)
    if base is not None:
        out["phenotype_display"] = out["phenotype_reviewed"].where(out["phenotype_reviewed"].notna(),
                                                                   out[base].astype(str))
    return out


# ---------------------------------------------------------------------------------------------- gates
def update_gates_file(path: str | Path, marker: str, threshold: float, *, sample_id: str | None = None) -> Path:
    """Set one reviewed gate in a gates YAML (created if missing; other entries kept).

    ``sample_id=None`` writes the cohort-wide entry ``'*'``.
    """
    from chemozone.config import load_gates_file, save_gates_file

    path = Path(path)
    gates = load_gates_file(path) if path.is_file() else {}
    gates.setdefault(marker, {})[sample_id or "*"] = float(threshold)
    return save_gates_file(gates, path)


def marker_names(cells, cfg=None) -> list[str]:
    """Gated markers: the config's ``phenotypes.markers``, else markers with a ``{marker}_pos`` column."""
    if cfg is not None and cfg.phenotypes.markers:
        return [m for m in cfg.phenotypes.markers
                if any(c.startswith(f"{m}_") for c in cells.columns)]
    return sorted(c[:-4] for c in cells.columns if c.endswith("_pos"))


def marker_setup(cells, marker: str, *, cfg=None, gates=None, sample_id: str | None = None,
                 gates_file: str | Path | None = None) -> dict[str, Any]:
    """What the gate review needs for one marker: measured and transformed values and the gate in use.

    Gates are shown on the transformed scale (like :func:`chemozone.phenotype.plot_gates`) but kept and saved
    in measured intensity units (``threshold_raw``), as :func:`chemozone.phenotype.apply_gates` applies them,
    so a saved gate replays exactly whatever cofactor a later run derives. The gate in use is the one
    :func:`chemozone.phenotype.resolve_gate` picks (reviewed gate of the sample, reviewed ``'*'``, the run's
    gate of the sample, its ``'*'``); without any, the midway between the current ``{marker}_pos`` classes,
    else the median.

    Parameters
    ----------
    cells : DataFrame
        One sample's cells (``{marker}_{compartment}`` columns).
    cfg : chemozone.config.Config, optional
        The run's config (marker compartment, transform, cofactor).
    gates : DataFrame, optional
        ``OUT/gates.parquet`` (``sample_id, marker, threshold_raw, transform, cofactor``).
    sample_id : str, optional
        The sample of ``cells``; None = only the ``'*'`` gates apply.
    gates_file : path, optional
        A reviewed-gates YAML whose entry for this marker (sample or ``'*'``) wins over ``gates``.

    Returns
    -------
    dict
        ``column``, ``raw`` (measured, float64 (N,)), ``values`` (transformed, (N,)), ``threshold``
        (transformed scale), ``transform``, ``cofactor``.
    """
    from chemozone.config import MarkerConfig, load_gates_file
    from chemozone.phenotype import default_cofactor, marker_column, resolve_gate, transform_values

    mcfg = (cfg.phenotypes.markers.get(marker) if cfg is not None else None) or MarkerConfig()
    column = marker_column(cells, marker, mcfg.compartment)
    rows = gates[gates["marker"] == marker] if gates is not None and len(gates) else None
    raw = cells[column].to_numpy(dtype=float)
    # the run's cohort-wide cofactor, from the gates row that applies to this sample
    cofactor, _ = resolve_gate(sample_id, computed=_per_sample(rows, "cofactor"))
    if not np.isfinite(cofactor):
        cofactor = mcfg.cofactor if mcfg.cofactor is not None else default_cofactor(raw)
    values = np.asarray(transform_values(raw, transform=mcfg.transform, cofactor=cofactor), dtype=float)
    reviewed = None
    if gates_file is not None and Path(gates_file).is_file():
        reviewed = load_gates_file(gates_file).get(marker)
    thr_raw, _ = resolve_gate(sample_id, reviewed=reviewed, computed=_per_sample(rows, "threshold_raw"))
    if np.isfinite(thr_raw):
        thr = float(transform_values([thr_raw], transform=mcfg.transform, cofactor=cofactor)[0])
    elif f"{marker}_pos" in cells.columns and 0 < int(cells[f"{marker}_pos"].sum()) < len(cells):
        pos_mask = cells[f"{marker}_pos"].to_numpy(dtype=bool)  # midway between the existing classes
        thr = float((np.nanmax(values[~pos_mask]) + np.nanmin(values[pos_mask])) / 2)
    else:
        thr = float(np.nanmedian(values)) if values.size else 0.0
    return {"column": column, "raw": raw, "values": values, "threshold": thr, "transform": mcfg.transform,
            "cofactor": float(cofactor)}


def _per_sample(rows, column: str) -> dict[str, float] | None:
    """``{sample_id or '*': value}`` of one column of a marker's gates rows (None when absent)."""
    if rows is None or "sample_id" not in rows.columns or column not in rows.columns:
        return None
    return dict(zip(rows["sample_id"].astype(str), rows[column].astype(float)))


def to_raw(threshold: float, setup: dict[str, Any]) -> float:
    """A gate on the transformed scale in measured units (``threshold_raw``)."""
    from chemozone.phenotype import inverse_transform

    return float(inverse_transform(threshold, transform=setup["transform"], cofactor=setup["cofactor"]))


# ---------------------------------------------------------------------------------------------- zones
def update_zone_config(config_path: str | Path, zone: str, *, threshold: float | None = None,
                       smooth_um: float | None = None, offsets: tuple[float, float] | None = None) -> Path:
    """Write a reviewed zone threshold (``threshold: {mode: absolute, value}``) and smoothing into a config YAML.

    ``offsets``: the (tumor, stroma) background offsets the reviewed preview subtracted, written with the value
    (``tumor_offset``, ``stroma_offset``) so that the run builds the zone that was reviewed.
    Other keys and zones are kept; the result is validated before it replaces the file.

    Raises
    ------
    ConfigError
        The file is missing, not a config, or has no zone of that name (lists the zones).
    """
    import yaml

    from chemozone.config import config_from_dict
    from chemozone.errors import ConfigError
    from chemozone.layout import atomic_write_text

    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; choose the experiment config to save the zone into")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    zones = data.get("zones") if isinstance(data, dict) else None
    names = [z.get("name") for z in zones or [] if isinstance(z, dict)]
    if zone not in names:
        raise ConfigError(f"{path}: zones has no zone named '{zone}' (zones: {names}); add it to the config first")
    entry = zones[names.index(zone)]
    if smooth_um is not None:
        entry["smooth_um"] = float(smooth_um)
    if threshold is not None:
        entry["threshold"] = {"mode": "absolute", "value": float(threshold)}
        if offsets is not None:
            entry["threshold"].update(tumor_offset=float(offsets[0]), stroma_offset=float(offsets[1]))
    config_from_dict(data, source=str(path), base_dir=path.parent)  # validate before writing
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path
