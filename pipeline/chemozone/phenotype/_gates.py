"""Gates: one positivity threshold per (sample, marker), which gate wins, gates files, and ``{marker}_pos``."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import MarkerConfig, load_gates_file, save_gates_file
from ..errors import ConfigError, MissingStepError, require_columns
from ..samples import select_reference
from ._thresholds import _finite, _join, _robust_threshold
from ._transform import default_cofactor, inverse_transform, transform_values

GATE_COLUMNS = [
    "sample_id",
    "marker",
    "compartment",
    "threshold",
    "threshold_raw",
    "method",
    "transform",
    "cofactor",
    "warning",
]
"""Columns of the gates table returned by :func:`compute_gates`."""

GateResult = tuple[float, str, str, "float | None"]
"""Per sample: (threshold on the transformed scale, method, warning, threshold in raw units or None)."""


# ------------------------------------------------------------------------------------------ columns
def marker_column(cells: pd.DataFrame, marker: str, compartment: str) -> str:
    """Name of the ``{marker}_{compartment}`` column of ``cells`` (exact, else by normalised name).

    Raises
    ------
    MissingStepError
        When the table has no such column (names the quantification step).

    >>> import pandas as pd
    >>> marker_column(pd.DataFrame(columns=["cell_id", "CD3_cell"]), "CD3", "cell")
    'CD3_cell'
    """
    from ..io import normalize_channel_name

    col = f"{marker}_{compartment}"
    if col in cells.columns:
        return col
    key = normalize_channel_name(marker)
    suffix = f"_{compartment}"
    hits = [c for c in cells.columns if str(c).endswith(suffix) and normalize_channel_name(str(c)[: -len(suffix)]) == key]
    if len(hits) == 1:
        return hits[0]
    raise MissingStepError(
        f"cells table has no column '{col}' for marker '{marker}' ({compartment} mean); run "
        "chemozone.quantify.quantify_cells with that channel and compartment, or fix phenotypes.markers"
    )


def _sample_ids(cells: pd.DataFrame) -> pd.Series:
    if "sample_id" not in cells.columns:
        raise MissingStepError(
            "cells table has no 'sample_id' column; add one (cells['sample_id'] = name) before gating"
        )
    return cells["sample_id"].astype(str)


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _cap(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if x.size <= n else rng.choice(x, n, replace=False)


# -------------------------------------------------------------------------------------- which gate
def resolve_gate(
    sample_id: str | None,
    *,
    reviewed: Mapping[str, float] | None = None,
    computed: Mapping[str, float] | None = None,
) -> tuple[float, str]:
    """The gate of one marker in one sample (measured intensity units), and where it comes from.

    The one rule for which gate wins, used by :func:`compute_gates` (gates-file overrides),
    :func:`apply_gates` and napari's gate review:

    1. the reviewed gate of the sample, ``reviewed[sample_id]``;
    2. the reviewed cohort-wide gate, ``reviewed['*']``;
    3. the computed gate of the sample, ``computed[sample_id]``;
    4. the computed cohort-wide gate, ``computed['*']``;
    5. none.

    An entry that is present wins even when it is NaN (a NaN gate: no cell is positive).

    Parameters
    ----------
    sample_id : str or None
        The sample; None = no particular sample (only the ``'*'`` entries apply).
    reviewed : mapping, optional
        One marker's entry of a gates file, ``{sample_id or '*': threshold_raw}``, e.g.
        ``gates_from_file(path).get(marker)``.
    computed : mapping, optional
        One marker's computed gates, ``{sample_id or '*': threshold_raw}``, e.g. the ``sample_id`` and
        ``threshold_raw`` columns of that marker's rows of the :func:`compute_gates` table.

    Returns
    -------
    threshold_raw : float
        NaN when no entry applies.
    source : {"file", "computed", "none"}
        ``file`` for a reviewed gate, ``none`` when no entry applies.

    Examples
    --------
    >>> resolve_gate("s1", reviewed={"*": 300.0}, computed={"s1": 250.0})
    (300.0, 'file')
    >>> resolve_gate("s2", reviewed={"s1": 320.0}, computed={"s2": 250.0, "*": 280.0})
    (250.0, 'computed')
    >>> resolve_gate("s3", computed={"s2": 250.0})
    (nan, 'none')
    """
    keys = ("*",) if sample_id is None else (str(sample_id), "*")
    for source, table in (("file", reviewed), ("computed", computed)):
        if not table:
            continue
        for key in keys:
            if key in table:
                return float(table[key]), source
    return float("nan"), "none"


# ---------------------------------------------------------------------------------------- computing
def compute_gates(
    cells: pd.DataFrame,
    samples: pd.DataFrame | None = None,
    *,
    markers: Mapping[str, MarkerConfig],
    gates_file: str | Path | None = None,
    seed: int = 0,
    max_cells_per_sample: int = 20_000,
    executor: Any = None,
) -> pd.DataFrame:
    """Positivity threshold per sample and marker.

    Parameters
    ----------
    cells : DataFrame
        One row per cell of one or many samples: ``sample_id`` and the ``{marker}_{compartment}`` columns of
        every gated marker.
    samples : DataFrame, optional
        The sample sheet (``sample_id`` + metadata); needed by ``reference`` gates.
    markers : mapping of str to MarkerConfig
        ``phenotypes.markers``: per gated marker its compartment, transform, cofactor and gate method.
    gates_file : path, optional
        ``phenotypes.gates_file``: reviewed gates ``{marker: {sample_id or '*': threshold}}`` (measured
        units) that override the computed ones (method ``file``; precedence of :func:`resolve_gate`).
    seed : int
        Seeds the subsampling and the mixture fits (same inputs and seed → identical gates).
    max_cells_per_sample : int
        Automatic methods use at most this many random cells per sample (pooled: from each sample).
    executor : optional
        Fits each gated marker as its own task: anything with ``submit(fn, *args, **kwargs)`` returning a future with
        ``result()`` (a ``concurrent.futures`` executor, or :func:`chemozone.scheduler.task_executor` of the run's
        Dask client). Each task gets only its marker's column; the gates are the same as without (each marker's
        subsampling and fits are seeded by the marker and sample).

    Returns
    -------
    DataFrame
        Columns :data:`GATE_COLUMNS`, one row per (sample, marker) in ``cells`` (sorted). ``threshold`` is on
        the transformed scale, ``threshold_raw`` in measured units; ``method`` is the gate method used
        (``file`` for gates-file overrides); ``warning`` is empty or says what went wrong (e.g. a fallback).

    Raises
    ------
    ConfigError
        A reference query with an unknown column or no matching sample, a gates file for an unknown marker.
    MissingStepError
        Missing ``sample_id`` / marker columns, or reference gates without a sample sheet.

    Examples
    --------
    >>> import pandas as pd
    >>> from chemozone.config import MarkerConfig
    >>> cells = pd.DataFrame({"sample_id": "s1", "CD3_cell": [10.0, 20.0, 900.0]})
    >>> g = compute_gates(cells, markers={"CD3": MarkerConfig(gate={"method": "manual", "value": 100.0})})
    >>> g[["sample_id", "marker", "threshold_raw", "method"]].to_dict("records")
    [{'sample_id': 's1', 'marker': 'CD3', 'threshold_raw': 100.0, 'method': 'manual'}]
    """
    sid = _sample_ids(cells).astype("category")  # per-sample masks compare integer codes, not one string per cell
    sample_list = sorted(str(s) for s in sid.unique())
    file_gates = _reviewed_gates(gates_file, markers)
    rows: list[dict[str, Any]] = []
    jobs = []
    for marker, mc in markers.items():
        kw = dict(marker=marker, mc=mc, reviewed=file_gates.get(marker, {}), seed=seed,
                  max_cells_per_sample=max_cells_per_sample)
        if executor is None or mc.gate.method in ("vendor", "classifier"):
            jobs.append(_marker_gates(cells, sid, sample_list, samples, **kw))
        else:  # the marker's column only (a name error is raised here, as without an executor)
            one = pd.DataFrame({"_sid": sid.array,  # categorical: codes travel, not one string per cell
                                "_value": cells[marker_column(cells, marker, mc.compartment)].to_numpy()})
            jobs.append(executor.submit(_marker_gates_task, one, sample_list, samples, **kw))
    for job in jobs:
        rows += job if isinstance(job, list) else job.result()
    out = pd.DataFrame(rows, columns=GATE_COLUMNS)
    return out.sort_values(["sample_id", "marker"], kind="stable").reset_index(drop=True)


def _reviewed_gates(gates_file: str | Path | None, markers: Mapping[str, MarkerConfig]) -> dict[str, dict[str, float]]:
    """The gates file's thresholds; each marker in it must be gated."""
    file_gates = load_gates_file(gates_file) if gates_file is not None else {}
    for m in file_gates:
        if m not in markers:
            raise ConfigError(
                f"{gates_file}: gates for '{m}', which is not under phenotypes.markers "
                f"({list(markers)}); remove it or add the marker"
            )
    return file_gates


def _marker_gates_task(one: pd.DataFrame, sample_list: list[str], samples: pd.DataFrame | None, **kw: Any
                       ) -> list[dict[str, Any]]:
    """:func:`_marker_gates` on a two-column frame (``_sid``, ``_value``: one marker's column), as a task."""
    mc = kw["mc"]
    col = f"{kw['marker']}_{mc.compartment}"
    cells = pd.DataFrame({col: one["_value"].to_numpy()})
    return _marker_gates(cells, one["_sid"], sample_list, samples, **kw)


def _marker_gates(
    cells: pd.DataFrame,
    sid: pd.Series,
    sample_list: list[str],
    samples: pd.DataFrame | None,
    *,
    marker: str,
    mc: MarkerConfig,
    reviewed: Mapping[str, float],
    seed: int,
    max_cells_per_sample: int,
) -> list[dict[str, Any]]:
    """Gates-table rows of one marker: its computed gates, overridden by the reviewed ones."""
    if mc.gate.method in ("vendor", "classifier"):  # positivity from elsewhere: no threshold (apply_gates keeps it)
        if mc.gate.method == "vendor":
            _vendor_column(cells, marker)
        return [{"sample_id": s, "marker": marker, "compartment": mc.compartment, "threshold": float("nan"),
                 "threshold_raw": float("nan"), "method": mc.gate.method, "transform": mc.transform,
                 "cofactor": float("nan"), "warning": ""} for s in sample_list]
    col = marker_column(cells, marker, mc.compartment)
    raw = cells[col].to_numpy(dtype=float)
    cof = float(mc.cofactor) if mc.cofactor is not None else default_cofactor(raw)
    cof_out = float("nan") if mc.transform == "none" else cof
    tv = transform_values(raw, transform=mc.transform, cofactor=cof)
    masks = {s: (sid == s).to_numpy() for s in sample_list}
    result = _computed_gates(
        {s: tv[masks[s]] for s in sample_list}, {s: raw[masks[s]] for s in sample_list}, samples,
        marker=marker, mc=mc, cofactor=cof, seed=seed, max_cells_per_sample=max_cells_per_sample,
    )
    rows = []
    for s in sample_list:
        t, method, w, t_raw = result[s]
        if t_raw is None:
            t_raw = float(inverse_transform(t, transform=mc.transform, cofactor=cof)) if np.isfinite(t) else t
        file_raw, source = resolve_gate(s, reviewed=reviewed, computed={s: t_raw})
        if source == "file":
            t_raw = file_raw
            t = float(transform_values([t_raw], transform=mc.transform, cofactor=cof)[0])
            method, w = "file", ""
        rows.append(
            {
                "sample_id": s,
                "marker": marker,
                "compartment": mc.compartment,
                "threshold": float(t),
                "threshold_raw": float(t_raw),
                "method": method,
                "transform": mc.transform,
                "cofactor": cof_out,
                "warning": w,
            }
        )
    return rows


def _computed_gates(
    per_sample: dict[str, np.ndarray],
    raw_per_sample: dict[str, np.ndarray],
    samples: pd.DataFrame | None,
    *,
    marker: str,
    mc: MarkerConfig,
    cofactor: float,
    seed: int,
    max_cells_per_sample: int,
) -> dict[str, GateResult]:
    """The configured method's gate of every sample (``per_sample``: transformed values; ``raw_per_sample``:
    measured values, used by reference gates)."""
    g = mc.gate
    sample_list = list(per_sample)
    if g.method == "manual":
        t = float(transform_values([g.value], transform=mc.transform, cofactor=cofactor)[0])
        return {s: (t, "manual", "", float(g.value)) for s in sample_list}
    opts = {"fallback": g.fallback, "seed": seed, "max_components": g.max_components, "split": g.gmm_split,
            "place": g.gmm_threshold}
    if g.method in ("gmm", "otsu", "valley", "multiotsu"):
        result: dict[str, GateResult] = {}
        for s in sample_list:
            x = _cap(_finite(per_sample[s]), max_cells_per_sample, _rng(seed, marker, s))
            t, w = _robust_threshold(x, g.method, **opts)
            result[s] = (t, g.method, w, None)
        return result
    if g.method == "pooled":
        parts = [_cap(_finite(per_sample[s]), max_cells_per_sample, _rng(seed, marker, s)) for s in sample_list]
        x = np.concatenate(parts) if parts else np.empty(0)
        t, w = _robust_threshold(x, g.pooled_method, **opts)
        return {s: (t, "pooled", w, None) for s in sample_list}
    if g.method == "reference":
        return _reference_gates(raw_per_sample, samples, marker=marker, mc=mc, cofactor=cofactor)
    # pragma: no cover - the config model forbids it
    raise ConfigError(f"phenotypes.markers.{marker}.gate.method: unknown method {g.method!r}")


def _reference_gates(
    per_sample: dict[str, np.ndarray],
    samples: pd.DataFrame | None,
    *,
    marker: str,
    mc: MarkerConfig,
    cofactor: float,
) -> dict[str, GateResult]:
    """Reference gates from the raw values per sample: the quantile is taken in measured units."""
    g = mc.gate
    where = f"phenotypes.markers.{marker}.gate"
    if samples is None or "sample_id" not in samples.columns:
        raise MissingStepError(
            f"{where}: method 'reference' needs the sample sheet (chemozone.samples.load_samples) to find "
            f"the reference samples {g.reference}"
        )
    sheet = samples.assign(sample_id=samples["sample_id"].astype(str)).drop_duplicates("sample_id")
    sheet = sheet.set_index("sample_id", drop=False)
    missing = [s for s in per_sample if s not in sheet.index]
    if missing:
        raise MissingStepError(f"{where}: samples {missing[:5]} of the cells table are not in the sample sheet")
    sheet = sheet.loc[list(per_sample)]
    is_ref = select_reference(sheet, g.reference, g.group_by, where=where)
    refs = [s for s in per_sample if is_ref.loc[s]]
    cache: dict[tuple[str, ...], tuple[float, str]] = {}

    def gate_of(ref_ids: list[str]) -> tuple[float, str]:  # raw-unit quantile
        key = tuple(ref_ids)
        if key not in cache:
            x = np.concatenate([_finite(per_sample[r]) for r in ref_ids])
            if x.size == 0:
                cache[key] = (float("nan"), "reference samples have no finite values: no cell is positive")
            else:
                cache[key] = (float(np.quantile(x, g.quantile)), "")
        return cache[key]

    out: dict[str, GateResult] = {}
    for s in per_sample:
        if g.group_by is None:
            group_refs, warn = refs, ""
        else:
            gv = sheet.loc[s, g.group_by]
            group_refs = [r for r in refs if sheet.loc[r, g.group_by] == gv]
            warn = ""
            if not group_refs:
                group_refs = refs
                warn = f"no reference sample with {g.group_by}={gv}: all {len(refs)} reference samples used"
        t_raw, w = gate_of(group_refs)
        t = float(transform_values([t_raw], transform=mc.transform, cofactor=cofactor)[0])
        out[s] = (t, "reference", _join(warn, w), t_raw)
    return out


# -------------------------------------------------------------------------------------- gates files
def gates_to_file(gates: pd.DataFrame, path: str | Path) -> Path:
    """Write the thresholds of a gates table (measured units) as a gates file that replays exactly.

    A marker whose samples all share one threshold is written as ``{'*': value}``, others per sample.
    Point ``phenotypes.gates_file`` at the file; :func:`compute_gates` then reproduces ``threshold_raw``.
    """
    require_columns(gates, ["sample_id", "marker", "threshold_raw"], "gates table", "chemozone.phenotype.compute_gates")
    out: dict[str, dict[str, float]] = {}
    for marker, sub in gates.groupby("marker", sort=True):
        vals = sub["threshold_raw"].to_numpy(dtype=float)
        if np.isnan(vals).any():
            bad = sub.loc[np.isnan(vals), "sample_id"].tolist()
            raise ValueError(f"gates for '{marker}' are NaN in samples {bad}; set them before writing a gates file")
        if np.all(vals == vals[0]):
            out[str(marker)] = {"*": float(vals[0])}
        else:
            out[str(marker)] = {str(s): float(v) for s, v in zip(sub["sample_id"], vals)}
    return save_gates_file(out, path)


def gates_from_file(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a gates file (``{marker: {sample_id or '*': threshold}}``, measured units)."""
    return load_gates_file(path)


# ----------------------------------------------------------------------------------------- applying
def apply_gates(cells: pd.DataFrame, gates: pd.DataFrame, *, markers: Mapping[str, MarkerConfig]) -> pd.DataFrame:
    """Add a ``{marker}_pos`` boolean column for every gated marker (value > ``threshold_raw``); a marker whose
    gate method is ``vendor`` keeps the imported table's ``{marker}_pos`` (missing values negative); one whose
    method is ``classifier`` keeps the ``{marker}_pos`` of :func:`chemozone.classify.predict_cells`.

    Parameters
    ----------
    cells : DataFrame
        ``sample_id`` and the marker columns.
    gates : DataFrame
        From :func:`compute_gates` (``sample_id``, ``marker``, ``threshold_raw``); a ``sample_id`` of ``'*'``
        applies to every sample without its own row (:func:`resolve_gate`).
    markers : mapping of str to MarkerConfig
        ``phenotypes.markers`` (the marker names and their ``compartment``).

    Returns
    -------
    DataFrame
        A copy of ``cells`` with the ``_pos`` columns (NaN values are negative).

    Raises
    ------
    MissingStepError
        A sample or marker without a gate.

    Examples
    --------
    >>> import pandas as pd
    >>> from chemozone.config import MarkerConfig
    >>> cells = pd.DataFrame({"sample_id": ["a", "a", "b"], "CD3_cell": [5.0, 50.0, 50.0]})
    >>> gates = pd.DataFrame({"sample_id": ["a", "*"], "marker": "CD3", "threshold_raw": [10.0, 60.0]})
    >>> apply_gates(cells, gates, markers={"CD3": MarkerConfig()})["CD3_pos"].tolist()
    [False, True, False]
    """
    require_columns(gates, ["sample_id", "marker", "threshold_raw"], "gates table", "chemozone.phenotype.compute_gates")
    sid = _sample_ids(cells)
    out = cells.copy()
    g = gates.assign(sample_id=gates["sample_id"].astype(str))
    for marker, mc in markers.items():
        if mc.gate.method == "vendor":
            out[f"{marker}_pos"] = cells[_vendor_column(cells, marker)].fillna(False).astype(bool).to_numpy()
            continue
        if mc.gate.method == "classifier":  # chemozone.classify.predict_cells wrote {marker}_prob and _pos
            require_columns(cells, [f"{marker}_prob", f"{marker}_pos"], "cells table",
                            f"chemozone.classify.predict_cells with a classifier of '{marker}' (phenotypes.classifier_file)")
            continue
        col = marker_column(cells, marker, mc.compartment)
        sub = g[g["marker"] == marker]
        table = dict(zip(sub["sample_id"], sub["threshold_raw"].astype(float)))
        resolved = {s: resolve_gate(s, computed=table) for s in sid.unique()}
        missing = sorted(s for s, (_, source) in resolved.items() if source == "none")
        if missing:
            raise MissingStepError(
                f"no gate for marker '{marker}' in samples {missing[:5]}; run compute_gates on a table "
                "that includes them"
            )
        thr = sid.map({s: t for s, (t, _) in resolved.items()}).to_numpy(dtype=float)
        out[f"{marker}_pos"] = is_positive(cells[col].to_numpy(dtype=float), thr)
    return out


def _vendor_column(cells: pd.DataFrame, marker: str) -> str:
    """The ``{marker}_pos`` column an imported table brought (gate method ``vendor``)."""
    col = f"{marker}_pos"
    if col not in cells.columns:
        have = [c for c in cells.columns if str(c).endswith("_pos")]
        raise ConfigError(
            f"phenotypes.markers.{marker}.gate.method is 'vendor' but the cells table has no '{col}' column (vendor "
            f"positivity found: {have}); import a table with {marker} positivity or gate the marker's intensities"
        )
    return col


def is_positive(values, threshold_raw) -> np.ndarray:
    """The positivity rule: measured value > ``threshold_raw`` (both in measured units); NaN is negative.

    Parameters
    ----------
    values : array-like of float, shape (n_cells,)
    threshold_raw : float or array-like of float, broadcastable to ``values``

    Returns
    -------
    bool ndarray, shape (n_cells,)

    Examples
    --------
    >>> is_positive([5.0, 10.0, 11.0, float("nan")], 10.0).tolist()
    [False, False, True, False]
    """
    with np.errstate(invalid="ignore"):
        return np.asarray(np.asarray(values, dtype=float) > threshold_raw, dtype=bool)
