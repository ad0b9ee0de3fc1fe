"""Phenotyping: per-marker gates, an ordered rule table, and receptor flags.

Pure functions on per-cell DataFrames (one row per cell, columns ``sample_id``, ``cell_id`` and
``{marker}_{compartment}`` mean intensities from :func:`chemozone.quantify.quantify_cells`).

Pipeline::

    gates = compute_gates(cells, samples, config=cfg.phenotypes)      # one row per (sample, marker)
    cells = phenotype_cells(cells, gates, config=cfg.phenotypes)      # + {marker}_pos, cell_type, phenotype

Conventions
-----------
- **Transform.** Each marker is gated on ``arcsinh(x / c)`` (default), ``log1p(max(x, 0) / c)`` or the raw
  value ``x``. The cofactor ``c`` is in intensity units; when the config leaves it unset it is derived from the
  data (:func:`default_cofactor`: the 5th percentile of the marker's positive values, pooled over all cells
  passed to :func:`compute_gates`), so the transformed values, and therefore every automatic gate, are the
  same whether the image is uint8, uint16 or float in any unit (multiplying the intensities by ``k``
  multiplies ``c`` and the raw thresholds by ``k``). One cofactor per marker for the whole table, so that
  thresholds of different samples are comparable.
- **Thresholds.** The gates table holds ``threshold`` (transformed scale, the scale of the QC figure) and
  ``threshold_raw`` (measured intensity units). A cell is positive when its measured value is
  ``> threshold_raw``; NaN values are negative. Manual values (``gate.value``) and gates files are in
  measured intensity units, so a reviewed gate replays exactly whatever the cofactor of a later run.
- **Methods.** ``manual``; per sample ``gmm`` (Gaussian mixture of 2 to ``gate.max_components``
  components chosen by BIC, threshold where the posteriors of the negative and positive groups cross
  between their means, see :func:`threshold_gmm`; ``gate.fallback`` with a warning when not bimodal),
  ``otsu``, ``valley``; ``pooled`` (``gate.pooled_method`` over all samples pooled, every sample
  contributing at most ``max_cells_per_sample`` random cells, one gate for all); ``reference`` (the
  ``gate.quantile`` of the reference samples, e.g. sham / 0 Gy, of the same ``group_by`` value; all
  reference samples with a warning when a group has none). A gates file then overrides (method ``file``).
- **Cell types.** Rules are tried in order; the first whose markers are all ``pos`` positive, no ``neg``
  positive and at least one ``any`` positive names the cell type; ``default_cell_type`` (``Other``) when none
  matches.
- **Phenotype.** ``phenotype`` is the cell type followed by ``" {receptor}+"`` for each configured receptor
  (in config order) that the cell carries, e.g. ``"CD8 T CXCR3+ CCR5+"``; a receptor-negative cell keeps the
  bare cell type (``"NK"``), so ``"NK CXCR2+"`` vs ``"NK"`` compares receptor-positive with
  receptor-negative NK cells when CXCR2 is the only receptor. Flags are added only for
  ``receptor_cell_types`` (None = every cell type except the default and those whose name starts with
  "tumor" or "stroma", case-insensitive). The per-cell ``{receptor}_pos`` booleans are always present.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import MarkerConfig, PhenotypesConfig, RuleConfig, load_gates_file, save_gates_file
from .errors import ChannelError, ConfigError, MissingStepError, require_columns
from .samples import select_reference

__all__ = [
    "validate_phenotypes",
    "default_cofactor",
    "transform_values",
    "inverse_transform",
    "threshold_gmm",
    "threshold_otsu",
    "threshold_valley",
    "compute_gates",
    "apply_gates",
    "assign_cell_types",
    "phenotype_cells",
    "gates_to_file",
    "gates_from_file",
    "plot_gates",
    "marker_column",
    "GATE_COLUMNS",
]

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

_MIN_SEPARATION = 2.0
"""Ashman's D between the two mixture components below which values count as not bimodal."""
_MIN_WEIGHT = 0.002
"""Smallest mixture weight of a component that counts as a population."""
_NON_IMMUNE_PREFIXES = ("tumor", "stroma")


# ------------------------------------------------------------------------------------------ validation
def _rule_name(i: int, rule: RuleConfig) -> str:
    return f"phenotypes.rules[{i}] '{rule.cell_type}'"


def _implies(later: RuleConfig, earlier: RuleConfig) -> bool:
    """True when every cell matching ``later`` also matches ``earlier`` (so ``later`` is unreachable)."""
    if not set(earlier.pos) <= set(later.pos) or not set(earlier.neg) <= set(later.neg):
        return False
    if not earlier.any:
        return True
    if set(earlier.any) & set(later.pos):
        return True
    later_any = set(later.any) - set(later.neg)
    return bool(later.any) and later_any <= set(earlier.any)


def validate_phenotypes(
    config: PhenotypesConfig,
    channels: Sequence[str],
    *,
    aliases: dict[str, list[str]] | None = None,
) -> None:
    """Check the phenotypes section against itself and the image's channels.

    Parameters
    ----------
    config : PhenotypesConfig
    channels : list of str
        Channel names of the image (or the panel); matched with :func:`chemozone.io.resolve_channels`
        (case, spacing, fluorophore suffixes and ``aliases``).
    aliases : dict, optional
        ``panel.aliases``.

    Raises
    ------
    ConfigError
        One line naming the rule or marker: a rule marker that is not under ``phenotypes.markers``, a
        gated marker that the image lacks, a contradictory rule (a marker both positive and negative, or
        every ``any`` marker also negative), a rule that an earlier rule shadows completely, a receptor that
        is not a gated marker, or a ``receptor_cell_types`` entry that no rule produces.
    """
    from .io import resolve_channels

    markers = list(config.markers)
    for i, rule in enumerate(config.rules):
        name = _rule_name(i, rule)
        for key in ("pos", "neg", "any"):
            for m in getattr(rule, key):
                if m not in config.markers:
                    raise ConfigError(
                        f"{name}: {key} marker '{m}' is not under phenotypes.markers (gated markers: {markers}); "
                        "add it there or fix the rule"
                    )
        both = sorted(set(rule.pos) & set(rule.neg))
        if both:
            raise ConfigError(f"{name} is contradictory: {both} must be both positive and negative; fix the rule")
        if rule.any and set(rule.any) <= set(rule.neg):
            raise ConfigError(
                f"{name} is contradictory: every 'any' marker {rule.any} is also in 'neg', so it never matches"
            )
        if not (rule.pos or rule.neg or rule.any):
            raise ConfigError(f"{name} has no markers; give pos, neg or any")
        for j, earlier in enumerate(config.rules[:i]):
            if _implies(rule, earlier):
                raise ConfigError(
                    f"{name} never matches: every cell it selects is taken first by {_rule_name(j, earlier)} "
                    "(first match wins); reorder the rules or make them exclusive"
                )
    for r in config.receptors:
        if r not in config.markers:
            raise ConfigError(
                f"phenotypes.receptors: '{r}' is not a gated marker (gated markers: {markers}); "
                "add it under phenotypes.markers"
            )
    if config.receptor_cell_types is not None:
        known = {r.cell_type for r in config.rules} | {config.default_cell_type}
        for ct in config.receptor_cell_types:
            if ct not in known:
                raise ConfigError(
                    f"phenotypes.receptor_cell_types: '{ct}' is not a cell type of any rule "
                    f"(cell types: {sorted(known)}); fix the name"
                )
    for m in markers:
        try:
            resolve_channels(list(channels), [m], aliases=aliases, source="image")
        except ChannelError:
            users = [_rule_name(i, r) for i, r in enumerate(config.rules) if m in (*r.pos, *r.neg, *r.any)]
            used = f" (used by {', '.join(users)})" if users else ""
            raise ConfigError(
                f"phenotypes.markers.{m}{used}: no channel '{m}' in the panel {list(channels)}; "
                "fix the marker name or map it with panel.aliases"
            ) from None


# ------------------------------------------------------------------------------------------ transforms
def default_cofactor(values: Any) -> float:
    """Scale-free default cofactor: the 5th percentile of the finite values > 0.

    Scales with the data (``default_cofactor(k * v) == k * default_cofactor(v)``), so the transformed
    values do not depend on the bit depth or units of the image. Returns 1.0 when no value is > 0.

    >>> default_cofactor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    1.45
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 1.0
    c = float(np.percentile(v, 5))
    return c if c > 0 else 1.0


def transform_values(values: Any, *, marker_config: MarkerConfig, cofactor: float | None = None) -> np.ndarray:
    """Transform measured intensities for gating.

    Parameters
    ----------
    values : array-like, shape (n,)
        Measured intensities (any dtype; never modified).
    marker_config : MarkerConfig
        ``transform``: ``none`` (x), ``arcsinh`` (arcsinh(x / c)) or ``log1p`` (log1p(max(x, 0) / c)).
    cofactor : float, optional
        ``c``; None = ``marker_config.cofactor``, else :func:`default_cofactor` of ``values``.

    Returns
    -------
    ndarray of float64, shape (n,)
        NaN where the input is NaN.

    >>> transform_values([0.0, 5.0], marker_config=MarkerConfig(transform="arcsinh"), cofactor=5.0).round(4)
    array([0.    , 0.8814])
    """
    v = np.asarray(values, dtype=float)
    if marker_config.transform == "none":
        return v.copy()
    c = cofactor if cofactor is not None else marker_config.cofactor
    if c is None:
        c = default_cofactor(v)
    if marker_config.transform == "arcsinh":
        return np.arcsinh(v / c)
    return np.log1p(np.maximum(v, 0.0) / c)


def inverse_transform(values: Any, *, transform: str, cofactor: float) -> np.ndarray:
    """Measured intensity of transformed values (inverse of :func:`transform_values`)."""
    t = np.asarray(values, dtype=float)
    if transform == "none":
        return t.copy()
    if transform == "arcsinh":
        return np.sinh(t) * cofactor
    if transform == "log1p":
        return np.expm1(t) * cofactor
    raise ValueError(f"unknown transform {transform!r}")


# ------------------------------------------------------------------------------------ 1-D thresholds
def _smoothed_density(x: np.ndarray, n_bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter1d

    lo, hi = np.percentile(x, [0.1, 99.9])
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max())
    hist, edges = np.histogram(x, bins=n_bins, range=(lo, hi))
    centers = 0.5 * (edges[1:] + edges[:-1])
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    sd = min(float(np.std(x)), iqr / 1.349) if iqr > 0 else float(np.std(x))
    bw = 0.9 * sd * x.size ** (-0.2)  # Silverman's rule
    sigma_bins = max(bw / (centers[1] - centers[0]), 1.0)
    return centers, gaussian_filter1d(hist.astype(float), sigma_bins, mode="constant")


def _tail_threshold(x: np.ndarray) -> float:
    """Mode + 3 SD of the half of the distribution below the mode (background-only data)."""
    centers, dens = _smoothed_density(x)
    mode = centers[int(np.argmax(dens))]
    below = x[x <= mode] - mode
    sd = float(np.sqrt(np.mean(below**2))) if below.size > 1 else float(np.std(x))
    return float(mode + 3.0 * sd)


def threshold_valley(x: Any) -> tuple[float, str]:
    """Deepest density valley between the two most prominent modes of ``x``.

    Returns ``(threshold, warning)``; when the density has a single mode the threshold is mode + 3 SD of
    the values below the mode, and the warning says so.
    """
    from scipy.signal import find_peaks

    x = _finite(x)
    centers, dens = _smoothed_density(x)
    peaks, props = find_peaks(np.r_[0.0, dens, 0.0], prominence=0.05 * dens.max())
    peaks = peaks - 1
    if peaks.size < 2:
        return _tail_threshold(x), "unimodal: threshold = mode + 3 SD of the lower half"
    top = np.sort(peaks[np.argsort(props["prominences"])[-2:]])
    seg = dens[top[0] : top[1] + 1]
    return float(centers[top[0] + int(np.argmin(seg))]), ""


def threshold_otsu(x: Any) -> tuple[float, str]:
    """Otsu's threshold of ``x`` (256-bin histogram). Returns ``(threshold, warning)``."""
    from skimage.filters import threshold_otsu as _otsu

    return float(_otsu(_finite(x), nbins=256)), ""


def threshold_gmm(x: Any, *, fallback: str = "valley", seed: int = 0, max_components: int = 3) -> tuple[float, str]:
    """Gaussian-mixture threshold between the negative and the positive populations.

    Mixtures of 2 to ``max_components`` Gaussians are fitted to the standardised values and the one with
    the lowest BIC is kept (a third component absorbs a skewed or two-level background, e.g. tumor vs
    stroma autofluorescence, or the spillover tail next to positive cells). Components sorted by mean are
    split into a lower (negative) and an upper (positive) group at the adjacent pair with the largest
    separation (Ashman's D); the threshold is where the posterior of the upper group crosses 0.5 between
    the two groups' neighbouring means. With ``max_components=2`` this is the classic two-component rule:
    where the two posteriors cross between the means. When the split is not bimodal (D < 2, an upper
    weight < 0.2 %, or no crossing), the ``fallback`` (``valley`` or ``otsu``) is used and the warning says
    why.

    Parameters
    ----------
    x : array-like, shape (n,)
        Transformed values (non-finite values ignored).
    fallback : {"valley", "otsu"}
    seed : int
        Seed of the mixtures' initialisation.
    max_components : int
        2 or more.

    Returns
    -------
    threshold : float
    warning : str
        Empty when the mixture gave the threshold.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = _finite(x)
    fall = threshold_valley if fallback == "valley" else threshold_otsu
    if np.unique(x).size < 3:
        t, w = fall(x)
        return t, _join(f"fewer than 3 distinct values: {fallback} fallback", w)
    mu, sd = float(np.mean(x)), float(np.std(x))
    z = ((x - mu) / sd).reshape(-1, 1)
    best = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for k in range(2, max(2, int(max_components)) + 1):
            if np.unique(x).size <= k:
                break
            gm = GaussianMixture(
                k, covariance_type="full", random_state=seed, reg_covar=1e-4, max_iter=200, init_params="k-means++"
            ).fit(z)
            bic = gm.bic(z)
            if best is None or bic < best[0]:
                best = (bic, gm)
    note = "mixture fit did not converge" if any(issubclass(c.category, ConvergenceWarning) for c in caught) else ""
    gm = best[1]
    order = np.argsort(gm.means_.ravel())
    m = gm.means_.ravel()[order]
    s = np.sqrt(gm.covariances_.ravel()[order])
    w = gm.weights_[order]
    dpair = np.sqrt(2.0) * np.diff(m) / np.sqrt(s[:-1] ** 2 + s[1:] ** 2)
    j = int(np.argmax(dpair)) + 1  # components j.. are the positive group
    d = float(dpair[j - 1])
    reason = ""
    if d < _MIN_SEPARATION:
        reason = f"not bimodal (Ashman's D = {d:.2f} < {_MIN_SEPARATION:g})"
    elif w[j:].sum() < _MIN_WEIGHT:
        reason = f"not bimodal (upper mixture weight {w[j:].sum():.4f})"
    else:
        grid = np.linspace(m[j - 1], m[j], 1025)
        logp = np.log(w)[:, None] - np.log(s)[:, None] - 0.5 * ((grid[None, :] - m[:, None]) / s[:, None]) ** 2
        from scipy.special import logsumexp

        diff = logsumexp(logp[j:], axis=0) - logsumexp(logp[:j], axis=0)  # > 0 where the upper group wins
        cross = np.nonzero((diff[:-1] <= 0) & (diff[1:] > 0))[0]
        if cross.size == 0:
            reason = "not bimodal (posteriors do not cross between the means)"
        else:
            k = int(cross[0])
            # linear interpolation of the crossing on the fine grid
            t = grid[k] + (grid[k + 1] - grid[k]) * (-diff[k]) / (diff[k + 1] - diff[k])
            return float(t * sd + mu), note
    t, wmsg = fall(x)
    return t, _join(note, f"{reason}: {fallback} fallback", wmsg)


def _finite(x: Any) -> np.ndarray:
    v = np.asarray(x, dtype=float).ravel()
    return v[np.isfinite(v)]


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _robust_threshold(
    x: np.ndarray, method: str, *, fallback: str, seed: int, max_components: int = 3
) -> tuple[float, str]:
    """Any automatic method, guarded against empty, tiny and constant inputs."""
    x = _finite(x)
    if x.size == 0:
        return float("nan"), "no finite values: no cell is positive"
    if x.size < 10 or float(np.ptp(x)) == 0.0:
        why = "constant values" if float(np.ptp(x)) == 0.0 else f"only {x.size} values"
        return float(np.max(x)), f"{why}: threshold = maximum, no cell is positive"
    if method == "gmm":
        return threshold_gmm(x, fallback=fallback, seed=seed, max_components=max_components)
    if method == "otsu":
        return threshold_otsu(x)
    if method == "valley":
        return threshold_valley(x)
    raise ValueError(f"unknown automatic method {method!r}")


# ----------------------------------------------------------------------------------------- gating
def marker_column(cells: pd.DataFrame, marker: str, compartment: str) -> str:
    """Name of the ``{marker}_{compartment}`` column of ``cells`` (exact, else by normalised name).

    Raises
    ------
    MissingStepError
        When the table has no such column (names the quantification step).
    """
    from .io import normalize_channel_name

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


def compute_gates(
    cells: pd.DataFrame,
    samples: pd.DataFrame | None = None,
    *,
    config: PhenotypesConfig,
    seed: int = 0,
    max_cells_per_sample: int = 20_000,
) -> pd.DataFrame:
    """Positivity threshold per sample and marker.

    Parameters
    ----------
    cells : DataFrame
        One row per cell of one or many samples: ``sample_id`` and the ``{marker}_{compartment}`` columns of
        every gated marker.
    samples : DataFrame, optional
        The sample sheet (``sample_id`` + metadata); needed by ``reference`` gates.
    config : PhenotypesConfig
    seed : int
        Seeds the subsampling and the mixture fits (same inputs and seed → identical gates).
    max_cells_per_sample : int
        Automatic methods use at most this many random cells per sample (pooled: from each sample).

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
    """
    sid = _sample_ids(cells)
    sample_list = sorted(sid.unique())
    file_gates = load_gates_file(config.gates_file) if config.gates_file is not None else {}
    for m in file_gates:
        if m not in config.markers:
            raise ConfigError(
                f"{config.gates_file}: gates for '{m}', which is not under phenotypes.markers "
                f"({list(config.markers)}); remove it or add the marker"
            )
    rows: list[dict[str, Any]] = []
    for marker, mc in config.markers.items():
        col = marker_column(cells, marker, mc.compartment)
        raw = cells[col].to_numpy(dtype=float)
        cof = float(mc.cofactor) if mc.cofactor is not None else default_cofactor(raw)
        cof_out = float("nan") if mc.transform == "none" else cof
        tv = transform_values(raw, marker_config=mc, cofactor=cof)
        per_sample = {s: tv[(sid == s).to_numpy()] for s in sample_list}
        g = mc.gate
        # sample -> (threshold on the transformed scale, method, warning, threshold in raw units or None)
        result: dict[str, tuple[float, str, str, float | None]] = {}
        if g.method == "manual":
            t = float(transform_values([g.value], marker_config=mc, cofactor=cof)[0])
            result = {s: (t, "manual", "", float(g.value)) for s in sample_list}
        elif g.method in ("gmm", "otsu", "valley"):
            for s in sample_list:
                x = _cap(_finite(per_sample[s]), max_cells_per_sample, _rng(seed, marker, s))
                t, w = _robust_threshold(x, g.method, fallback=g.fallback, seed=seed, max_components=g.max_components)
                result[s] = (t, g.method, w, None)
        elif g.method == "pooled":
            parts = [_cap(_finite(per_sample[s]), max_cells_per_sample, _rng(seed, marker, s)) for s in sample_list]
            x = np.concatenate(parts) if parts else np.empty(0)
            t, w = _robust_threshold(
                x, g.pooled_method, fallback=g.fallback, seed=seed, max_components=g.max_components
            )
            result = {s: (t, "pooled", w, None) for s in sample_list}
        elif g.method == "reference":
            raw_per_sample = {s: raw[(sid == s).to_numpy()] for s in sample_list}
            result = _reference_gates(raw_per_sample, samples, marker=marker, mc=mc, cofactor=cof)
        else:  # pragma: no cover - the config model forbids it
            raise ConfigError(f"phenotypes.markers.{marker}.gate.method: unknown method {g.method!r}")
        override = file_gates.get(marker, {})
        for s in sample_list:
            t, method, w, t_raw = result[s]
            if t_raw is None:
                t_raw = float(inverse_transform(t, transform=mc.transform, cofactor=cof)) if np.isfinite(t) else t
            if s in override or "*" in override:
                t_raw = override.get(s, override.get("*"))
                t = float(transform_values([t_raw], marker_config=mc, cofactor=cof)[0])
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
    out = pd.DataFrame(rows, columns=GATE_COLUMNS)
    return out.sort_values(["sample_id", "marker"], kind="stable").reset_index(drop=True)


def _reference_gates(
    per_sample: dict[str, np.ndarray],
    samples: pd.DataFrame | None,
    *,
    marker: str,
    mc: MarkerConfig,
    cofactor: float,
) -> dict[str, tuple[float, str, str, float | None]]:
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

    out: dict[str, tuple[float, str, str, float | None]] = {}
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
        t = float(transform_values([t_raw], marker_config=mc, cofactor=cofactor)[0])
        out[s] = (t, "reference", _join(warn, w), t_raw)
    return out


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


def apply_gates(cells: pd.DataFrame, gates: pd.DataFrame, *, config: PhenotypesConfig) -> pd.DataFrame:
    """Add a ``{marker}_pos`` boolean column for every gated marker (value > ``threshold_raw``).

    Parameters
    ----------
    cells : DataFrame
        ``sample_id`` and the marker columns.
    gates : DataFrame
        From :func:`compute_gates` (``sample_id``, ``marker``, ``threshold_raw``); a ``sample_id`` of ``'*'``
        applies to every sample without its own row.
    config : PhenotypesConfig

    Returns
    -------
    DataFrame
        A copy of ``cells`` with the ``_pos`` columns (NaN values are negative).

    Raises
    ------
    MissingStepError
        A sample or marker without a gate.
    """
    require_columns(gates, ["sample_id", "marker", "threshold_raw"], "gates table", "chemozone.phenotype.compute_gates")
    sid = _sample_ids(cells)
    out = cells.copy()
    g = gates.assign(sample_id=gates["sample_id"].astype(str))
    for marker, mc in config.markers.items():
        col = marker_column(cells, marker, mc.compartment)
        sub = g[g["marker"] == marker]
        table = dict(zip(sub["sample_id"], sub["threshold_raw"].astype(float)))
        missing = sorted(set(sid.unique()) - set(table)) if "*" not in table else []
        if missing:
            raise MissingStepError(
                f"no gate for marker '{marker}' in samples {missing[:5]}; run compute_gates on a table "
                "that includes them"
            )
        thr = sid.map(table).fillna(table.get("*", np.nan)).to_numpy(dtype=float)
        vals = cells[col].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            out[f"{marker}_pos"] = vals > thr
    return out


def _flagged_types(config: PhenotypesConfig) -> set[str] | None:
    if config.receptor_cell_types is not None:
        return set(config.receptor_cell_types)
    return None


def _gets_flags(cell_type: str, config: PhenotypesConfig) -> bool:
    chosen = _flagged_types(config)
    if chosen is not None:
        return cell_type in chosen
    low = cell_type.lower()
    return cell_type != config.default_cell_type and not low.startswith(_NON_IMMUNE_PREFIXES)


def assign_cell_types(cells: pd.DataFrame, *, config: PhenotypesConfig) -> pd.DataFrame:
    """Add ``cell_type`` (first matching rule, else ``default_cell_type``) and ``phenotype``.

    Parameters
    ----------
    cells : DataFrame
        With the ``{marker}_pos`` columns of every marker the rules and receptors name.
    config : PhenotypesConfig

    Returns
    -------
    DataFrame
        A copy with ``cell_type`` and ``phenotype`` (cell type + ``" {receptor}+"`` for each positive
        configured receptor, for cell types that get flags; see the module notes).

    Raises
    ------
    MissingStepError
        A ``{marker}_pos`` column is missing (run :func:`apply_gates`).

    Examples
    --------
    >>> from chemozone.config import PhenotypesConfig
    >>> cfg = PhenotypesConfig(markers={"CD3": {}, "CXCR3": {}}, rules=[{"cell_type": "T", "pos": ["CD3"]}],
    ...                        receptors=["CXCR3"])
    >>> df = pd.DataFrame({"CD3_pos": [True, True, False], "CXCR3_pos": [True, False, True]})
    >>> assign_cell_types(df, config=cfg)["phenotype"].tolist()
    ['T CXCR3+', 'T', 'Other']
    """
    needed = sorted({m for r in config.rules for m in (*r.pos, *r.neg, *r.any)} | set(config.receptors))
    require_columns(cells, [f"{m}_pos" for m in needed], "cells table", "chemozone.phenotype.apply_gates")
    n = len(cells)
    pos = {m: cells[f"{m}_pos"].to_numpy(dtype=bool) for m in needed}
    cell_type = np.full(n, config.default_cell_type, dtype=object)
    free = np.ones(n, dtype=bool)
    for rule in config.rules:
        hit = free.copy()
        for m in rule.pos:
            hit &= pos[m]
        for m in rule.neg:
            hit &= ~pos[m]
        if rule.any:
            hit &= np.logical_or.reduce([pos[m] for m in rule.any])
        cell_type[hit] = rule.cell_type
        free &= ~hit
    phenotype = cell_type.copy()
    if config.receptors:
        types = pd.unique(cell_type)
        flag_rows = np.isin(cell_type, [t for t in types if _gets_flags(str(t), config)])
        suffix = np.full(n, "", dtype=object)
        for r in config.receptors:
            suffix = np.where(pos[r] & flag_rows, suffix + f" {r}+", suffix)
        phenotype = (pd.Series(cell_type, dtype=object) + pd.Series(suffix, dtype=object)).to_numpy(dtype=object)
    out = cells.copy()
    out["cell_type"] = pd.Series(cell_type, index=cells.index, dtype=object)
    out["phenotype"] = pd.Series(phenotype, index=cells.index, dtype=object)
    return out


def phenotype_cells(cells: pd.DataFrame, gates: pd.DataFrame, *, config: PhenotypesConfig) -> pd.DataFrame:
    """:func:`apply_gates` then :func:`assign_cell_types`."""
    return assign_cell_types(apply_gates(cells, gates, config=config), config=config)


# ------------------------------------------------------------------------------------------- figure
def plot_gates(
    cells: pd.DataFrame,
    gates: pd.DataFrame,
    *,
    marker: str,
    ax: Any = None,
    max_samples: int = 40,
):
    """Gate QC figure: one offset histogram per sample on the transformed scale, with its gate.

    Parameters
    ----------
    cells : DataFrame
        ``sample_id`` and the marker's ``{marker}_{compartment}`` column.
    gates : DataFrame
        From :func:`compute_gates` (uses ``compartment``, ``transform``, ``cofactor``, ``threshold``).
    marker : str
    ax : matplotlib Axes, optional
        Draw into it; else a new :class:`matplotlib.figure.Figure` (no pyplot state) is made.
    max_samples : int
        At most this many samples are drawn (the first in sorted order).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    require_columns(gates, ["sample_id", "marker", "compartment", "transform", "cofactor", "threshold"], "gates table", "chemozone.phenotype.compute_gates")
    sub = gates[gates["marker"] == marker].copy()
    if sub.empty:
        raise MissingStepError(f"gates table has no gates for marker '{marker}'; run compute_gates with it configured")
    sub["sample_id"] = sub["sample_id"].astype(str)
    first = sub.iloc[0]
    col = marker_column(cells, marker, str(first["compartment"]))
    mc = MarkerConfig(compartment=str(first["compartment"]), transform=str(first["transform"]))
    cof = None if not np.isfinite(first["cofactor"]) else float(first["cofactor"])
    sid = _sample_ids(cells)
    tv = transform_values(cells[col].to_numpy(dtype=float), marker_config=mc, cofactor=cof)
    ids = [s for s in sorted(sid.unique()) if s in set(sub["sample_id"])][:max_samples]
    fin = tv[np.isfinite(tv)]
    lo, hi = (np.percentile(fin, [0.1, 99.9]) if fin.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    bins = np.linspace(lo, hi, 81)
    if ax is None:
        fig = Figure(figsize=(6.0, 1.0 + 0.45 * max(len(ids), 1)))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    thr = dict(zip(sub["sample_id"], sub["threshold"].astype(float)))
    for k, s in enumerate(ids):
        x = tv[(sid == s).to_numpy()]
        x = x[np.isfinite(x)]
        h, _ = np.histogram(np.clip(x, lo, hi), bins=bins)
        h = h / h.max() * 0.9 if h.max() > 0 else h.astype(float)
        ax.fill_between(bins[:-1], k, k + h, step="post", color="0.6", lw=0)
        t = thr.get(s, np.nan)
        if np.isfinite(t):
            ax.plot([t, t], [k, k + 0.95], color="crimson", lw=1.5)
            frac = float(np.mean(x > t)) if x.size else float("nan")
            ax.text(hi, k + 0.45, f"{frac:.1%}", ha="right", va="center", fontsize=7)
    ax.set_yticks(np.arange(len(ids)) + 0.45)
    ax.set_yticklabels(ids, fontsize=7)
    scale = {"none": "", "arcsinh": "arcsinh", "log1p": "log1p"}[str(first["transform"])]
    ax.set_xlabel(f"{scale}({col})" if scale else col)
    methods = ", ".join(sorted(sub["method"].astype(str).unique()))
    ax.set_title(f"{marker}: gate per sample ({methods}); % positive at right", fontsize=9)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.1, max(len(ids), 1))
    return fig
