"""Cognate enrichment from hard calls, soft calls (probabilities) or truth, with the calls' uncertainty in the CI.

A cell classifier gives each cell a probability ``p`` of carrying a receptor (``{receptor}_prob``); a gate
gives a hard call (``{receptor}_pos``). :func:`cognate_call_bootstrap` computes the cognate receptor+ vs
receptor− log2 specificity of every pair and lineage from either:

* **expected counts** (``calls="soft"``): receptor+ = Σ p, receptor− = Σ (1 − p) per sample and region;
* **hard counts** (``calls="hard"``): the 0/1 calls (a soft column with p ∈ {0, 1} gives the same numbers).

Per sample, ``log2 specificity = log2 enrichment(receptor+) − log2 enrichment(receptor−)`` with the
enrichment inside/outside the zone of :func:`chemozone.spatial.cognate_specificity` (same cells, same
pseudocount); the estimate is the mean over samples. The confidence interval comes from a bootstrap over
patients; with soft calls each draw also **resamples every cell's call** as Bernoulli(p), so intervals widen
when the classifier is unsure (p near 0.5) and do not when it is sure. Patient resamples and call draws use
two seeded streams, so hard and soft results of the same cohort share the patient resamples.

:func:`compare_cognate_calls` runs it for several call sources of the same cells (truth, a gate, a
classifier) and reports each one's distance to a reference (the truth).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, MissingStepError, require_columns
from ._intervals import CI_METHODS, bootstrap_interval
from ._tables import _pair

__all__ = ["cognate_call_bootstrap", "compare_cognate_calls"]

_COLUMNS = ["zone", "receptor", "cell_type", "calls", "column", "n_samples", "n_patients", "n_cells", "n_pos",
            "estimate", "ci_lo", "ci_hi", "density_pos_inside_per_mm2", "density_neg_inside_per_mm2", "n_bootstrap"]


def _zone_areas(infiltration: pd.DataFrame, zone: str) -> pd.DataFrame:
    """``sample_id, a_in, a_out`` (mm²) of one zone, samples with both areas > 0 (as strings, sorted)."""
    inf = infiltration[(infiltration["zone"] == zone) & (infiltration["population_type"] == "all")]
    if inf.empty:
        raise MissingStepError(f"spatial.cognate_pairs: zone '{zone}' is not in the infiltration table; "
                               "run infiltration_metrics with its mask")
    w = inf.assign(sample_id=inf["sample_id"].astype(str)).pivot_table(
        index="sample_id", columns="region", values="area_mm2", aggfunc="first")
    w = w.reindex(columns=["inside", "outside"]).rename(columns={"inside": "a_in", "outside": "a_out"})
    return w[(w["a_in"] > 0) & (w["a_out"] > 0)].reset_index()


def _log2_enrichment(n_in: np.ndarray, n_out: np.ndarray, a_in: np.ndarray, a_out: np.ndarray) -> np.ndarray:
    """:func:`chemozone.spatial._enrichment` vectorised (pseudocount split by area)."""
    from ..spatial import PSEUDOCOUNT

    p_in = PSEUDOCOUNT * a_in / (a_in + a_out)
    return np.log2(((n_in + p_in) / a_in) / ((n_out + PSEUDOCOUNT - p_in) / a_out))


def _per_sample(calls: np.ndarray, key: np.ndarray, total: np.ndarray, a_in: np.ndarray, a_out: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample log2 specificity and receptor+ count inside, from calls (weights) per cell.

    ``key = 2 * sample + inside``; ``total`` = cells per key. Shapes: calls (n,) or (B, n) → (S,) or (B, S).
    """
    s = len(a_in)
    if calls.ndim == 1:
        pos = np.bincount(key, weights=calls, minlength=2 * s)
    else:
        pos = np.stack([np.bincount(key, weights=c, minlength=2 * s) for c in calls])
    pos = pos.reshape(pos.shape[:-1] + (s, 2))
    neg = total.reshape(s, 2) - pos
    e_pos = _log2_enrichment(pos[..., 1], pos[..., 0], a_in, a_out)
    e_neg = _log2_enrichment(neg[..., 1], neg[..., 0], a_in, a_out)
    return e_pos - e_neg, pos[..., 1]


def _patients(cells: pd.DataFrame, infiltration: pd.DataFrame, samples: np.ndarray, patient: str) -> np.ndarray:
    """Patient of each sample (from the infiltration table, else the cells; the sample itself when absent)."""
    for tab in (infiltration, cells):
        if patient in tab.columns and "sample_id" in tab.columns:
            m = tab.assign(sample_id=tab["sample_id"].astype(str)).drop_duplicates("sample_id")
            m = m.set_index("sample_id")[patient].astype(str)
            return np.array([m.get(s, s) for s in samples], dtype=object)
    return samples.astype(object)


def _group_cells(cells: pd.DataFrame, zone: str, lineage: str, column: str, samples: np.ndarray, *,
                 soft: bool, edge_exclusion_um: float) -> tuple[np.ndarray, np.ndarray]:
    """``key`` (2 · sample index + inside) and the weight (call or probability) of the lineage's counted cells."""
    sid = cells["sample_id"].astype(str).to_numpy() if "sample_id" in cells.columns else np.full(len(cells), "")
    depth = cells["dist_tissue_edge_um"].to_numpy(np.float64)
    keep = (depth > 0) & (depth >= edge_exclusion_um) & (cells["cell_type"].astype(str).to_numpy() == lineage)
    index = pd.Index(samples)
    si = index.get_indexer(sid)
    keep &= si >= 0
    w = cells[column].to_numpy(np.float64)[keep]
    if soft and not (np.all(np.isfinite(w)) and np.all((w >= 0) & (w <= 1))):
        raise ValueError(f"cells column '{column}' must hold probabilities in [0, 1] (no NaN)")
    if not soft:
        w = (w > 0).astype(np.float64)
    return 2 * si[keep] + cells[f"in_{zone}"].astype(bool).to_numpy()[keep], w


def _check(cells: pd.DataFrame, calls: str, ci_method: str) -> None:
    if calls not in ("hard", "soft"):
        raise ConfigError(f"calls must be 'hard' or 'soft', got {calls!r}")
    if ci_method not in CI_METHODS:
        raise ConfigError(f"ci_method must be one of {list(CI_METHODS)}, got {ci_method!r}")
    require_columns(cells, ["sample_id", "cell_type", "dist_tissue_edge_um"], "cells table",
                    "the spatial step (annotate_cells)")


def cognate_call_bootstrap(cells: pd.DataFrame, infiltration: pd.DataFrame, *, pairs: Sequence[Any],
                           calls: str = "soft", column: str | None = None, patient: str = "patient",
                           n_bootstrap: int = 200, seed: int = 0, resample_calls: bool = True,
                           edge_exclusion_um: float = 0.0, alpha: float = 0.05,
                           ci_method: str = "student-t") -> pd.DataFrame:
    """Cognate log2 specificity per pair and lineage from hard or soft calls, with a patient-bootstrap CI.

    Parameters
    ----------
    cells : DataFrame
        Annotated cells of the cohort (``cells.parquet``): ``sample_id, cell_type, in_{zone},
        dist_tissue_edge_um`` and the call column.
    infiltration : DataFrame
        The cohort infiltration table (its ``population_type == "all"`` rows give the areas inside and outside
        each zone; its ``patient`` column the patients).
    pairs : sequence
        ``(zone, receptor, cell_types)`` tuples, dicts or ``CognatePair`` (empty cell types: every lineage with
        a receptor+ call / p > 0.5).
    calls : {"soft", "hard"}
        ``soft``: the column holds probabilities (expected counts; Bernoulli resampling in the bootstrap);
        ``hard``: a 0/1 or boolean call (values > 0 are receptor+).
    column : str, optional
        Call column, ``{receptor}`` filled in (default ``{receptor}_prob`` for soft, ``{receptor}_pos`` for
        hard); e.g. ``"truth_{receptor}_pos"`` for truth calls.
    patient : str
        Patient column (bootstrap unit); samples are their own patients when absent.
    n_bootstrap, seed : int
        Bootstrap draws and seed (``numpy.random.SeedSequence(seed)``: one stream for the patient resamples,
        one for the call draws, restarted for every pair and lineage).
    resample_calls : bool
        Soft calls only: draw each cell's call from Bernoulli(p) in every bootstrap draw (False: expected
        counts in every draw, i.e. the classifier's uncertainty left out).
    edge_exclusion_um : float
        Rim left out, as in the run (``spatial.edge_exclusion_um``).
    alpha, ci_method
        Interval level and method (:func:`chemozone.stats.bootstrap_interval`; ``student-t`` uses the
        number of patients).

    Returns
    -------
    DataFrame
        One row per pair × lineage: ``zone, receptor, cell_type, calls, column, n_samples, n_patients, n_cells,
        n_pos`` (receptor+ count, expected for soft), ``estimate`` (mean over samples of the per-sample log2
        specificity), ``ci_lo, ci_hi``, ``density_pos_inside_per_mm2, density_neg_inside_per_mm2`` (mean over
        samples of the receptor+ / receptor− density inside the zone, expected for soft), ``n_bootstrap``.

    Examples
    --------
    >>> inf = pd.DataFrame({"sample_id": ["a", "a"], "population_type": "all", "zone": "Z",
    ...                     "region": ["inside", "outside"], "area_mm2": [1.0, 1.0]})
    >>> cells = pd.DataFrame({"sample_id": "a", "cell_type": "NK", "in_Z": [True, True, False, False],
    ...                       "dist_tissue_edge_um": 5.0, "CXCR2_prob": [0.9, 0.6, 0.2, 0.1]})
    >>> r = cognate_call_bootstrap(cells, inf, pairs=[("Z", "CXCR2", ["NK"])], n_bootstrap=0).iloc[0]
    >>> round(float(r["n_pos"]), 2), round(float(r["density_pos_inside_per_mm2"]), 2)
    (1.8, 1.5)
    """
    _check(cells, calls, ci_method)
    soft = calls == "soft"
    template = column or ("{receptor}_prob" if soft else "{receptor}_pos")
    rows = []
    for pair in pairs:
        zone, receptor, cts = _pair(pair)
        col = template.format(receptor=receptor)
        require_columns(cells, [col, f"in_{zone}"], "cells table",
                        "a classifier (soft calls) or the phenotype step (hard calls), and the spatial step")
        areas = _zone_areas(infiltration, zone)
        samples = areas["sample_id"].to_numpy(str)
        pats = _patients(cells, infiltration, samples, patient)
        if not cts:
            w = cells[col].to_numpy(np.float64)
            cts = sorted(cells.loc[w > (0.5 if soft else 0), "cell_type"].astype(str).unique())
        for lin in cts:
            key, w = _group_cells(cells, zone, lin, col, samples, soft=soft, edge_exclusion_um=edge_exclusion_um)
            rows.append(_one_group(key, w, areas, pats, soft=soft and resample_calls, n_bootstrap=n_bootstrap,
                                   seed=seed, alpha=alpha, ci_method=ci_method)
                        | {"zone": zone, "receptor": receptor, "cell_type": lin, "calls": calls, "column": col})
    return pd.DataFrame(rows, columns=_COLUMNS)


def _one_group(key: np.ndarray, w: np.ndarray, areas: pd.DataFrame, pats: np.ndarray, *, soft: bool,
               n_bootstrap: int, seed: int, alpha: float, ci_method: str) -> dict[str, Any]:
    """Estimate, densities and the patient (+ Bernoulli) bootstrap interval of one pair × lineage."""
    a_in, a_out = areas["a_in"].to_numpy(float), areas["a_out"].to_numpy(float)
    s = len(a_in)
    total = np.bincount(key, minlength=2 * s).astype(np.float64)
    spec, pos_in = _per_sample(w, key, total, a_in, a_out)
    neg_in = total.reshape(s, 2)[:, 1] - pos_in
    ok = np.isfinite(spec)
    est = float(spec[ok].mean()) if ok.any() else np.nan
    pcodes, pnames = pd.factorize(pd.Series(pats, dtype=object))
    n_pat = len(pnames)
    out = {"n_samples": int(s), "n_patients": int(n_pat), "n_cells": int(len(w)), "n_pos": float(w.sum()),
           "estimate": est, "ci_lo": np.nan, "ci_hi": np.nan,
           "density_pos_inside_per_mm2": float(np.mean(pos_in / a_in)) if s else np.nan,
           "density_neg_inside_per_mm2": float(np.mean(neg_in / a_in)) if s else np.nan, "n_bootstrap": 0}
    if not n_bootstrap or n_pat < 2 or not np.isfinite(est):
        return out
    ss_pat, ss_call = np.random.SeedSequence(seed).spawn(2)
    rng_pat, rng_call = np.random.default_rng(ss_pat), np.random.default_rng(ss_call)
    draws = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        picked = np.bincount(rng_pat.integers(0, n_pat, n_pat), minlength=n_pat)
        mult = picked[pcodes].astype(np.float64)  # each sample counted as often as its patient was drawn
        c = (rng_call.random(len(w)) < w).astype(np.float64) if soft else w
        sb, _ = _per_sample(c, key, total, a_in, a_out)
        good = np.isfinite(sb) & (mult > 0)
        draws[b] = float(np.sum(mult[good] * sb[good]) / np.sum(mult[good])) if good.any() else np.nan
    lo, hi = bootstrap_interval(est, draws, alpha=alpha, method=ci_method, n_units=n_pat)
    out.update(ci_lo=lo, ci_hi=hi, n_bootstrap=int(np.isfinite(draws).sum()))
    return out


def compare_cognate_calls(cells: pd.DataFrame, infiltration: pd.DataFrame, *, pairs: Sequence[Any],
                          sources: Mapping[str, tuple[str, str]], reference: str | None = "truth",
                          **options: Any) -> pd.DataFrame:
    """Cognate specificity of the same cells from several call sources, and each one's distance to a reference.

    Parameters
    ----------
    cells, infiltration, pairs
        As for :func:`cognate_call_bootstrap`.
    sources : mapping
        ``{name: (calls, column template)}``, e.g. ``{"truth": ("hard", "truth_{receptor}_pos"), "best gate":
        ("hard", "{receptor}_pos"), "classifier": ("soft", "{receptor}_prob")}``.
    reference : str, optional
        The source the others are compared with (None: no comparison).
    **options
        Passed to :func:`cognate_call_bootstrap` (``n_bootstrap``, ``seed``, ``patient``, ...).

    Returns
    -------
    DataFrame
        The rows of :func:`cognate_call_bootstrap` with a ``source`` column first and, with a reference,
        ``reference_estimate``, ``abs_error`` (|estimate − reference|) and ``ci_covers_reference``.

    Examples
    --------
    >>> inf = pd.DataFrame({"sample_id": "a", "population_type": "all", "zone": "Z",
    ...                     "region": ["inside", "outside"], "area_mm2": [1.0, 1.0]})
    >>> cells = pd.DataFrame({"sample_id": "a", "cell_type": "NK", "in_Z": [True, True, False, False],
    ...                       "dist_tissue_edge_um": 5.0, "t": [1, 1, 0, 0], "g": [1, 1, 1, 0]})
    >>> res = compare_cognate_calls(cells, inf, pairs=[("Z", "R", ["NK"])], n_bootstrap=0,
    ...                             sources={"truth": ("hard", "t"), "gate": ("hard", "g")})
    >>> res[["source", "abs_error"]].round(3).values.tolist()
    [['truth', 0.0], ['gate', 2.322]]
    """
    if reference is not None and reference not in sources:
        raise ConfigError(f"compare_cognate_calls: reference '{reference}' is not among the sources {list(sources)}")
    parts = [cognate_call_bootstrap(cells, infiltration, pairs=pairs, calls=calls, column=col, **options)
             .assign(source=name) for name, (calls, col) in sources.items()]
    out = pd.concat(parts, ignore_index=True)
    out = out[["source"] + [c for c in out.columns if c != "source"]]
    if reference is None:
        return out
    keys = ["zone", "receptor", "cell_type"]
    ref = out[out["source"] == reference].set_index(keys)["estimate"].rename("reference_estimate")
    out = out.join(ref, on=keys)
    out["abs_error"] = (out["estimate"] - out["reference_estimate"]).abs()
    out["ci_covers_reference"] = (out["ci_lo"] <= out["reference_estimate"]) & (out["reference_estimate"] <= out["ci_hi"])
    return out
