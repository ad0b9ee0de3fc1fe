"""Cohort step of the zones: the threshold of every (sample, pixel/tumor zone, channel).

Re-exported as :func:`chemozone.zones.compute_zone_thresholds`; the threshold modes are described in
:mod:`chemozone.zones`. Works on the small per-sample summaries of pass A (:func:`chemozone.zones.signal_summary`),
never on images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._zone_compartments import compartment_offsets
from ._zone_halfmax import MIN_PRODUCERS, cohort_producer_level
from .config import ThresholdConfig, ZoneConfig
from .errors import ConfigError, MissingStepError
from .samples import select_reference, select_samples

__all__ = ["compute_zone_thresholds", "background_threshold"]

THRESHOLD_COLUMNS = ["sample_id", "zone", "channel", "threshold", "mode", "warning", "tumor_offset", "stroma_offset"]
"""``tumor_offset``, ``stroma_offset``: the background's offsets in tumor and stroma (``halfmax`` with a tumor marker,
:mod:`chemozone._zone_compartments`, or an ``absolute`` threshold's own; 0 otherwise): the zone is where the signal
minus the offset map reaches ``threshold``."""


def _pooled_values(rows: pd.DataFrame, n: int = 4001) -> np.ndarray:
    """Equally weighted values representing the tissue-area-weighted mixture of several samples' quantiles."""
    vals, wts = [], []
    for q, npx in zip(rows["quantiles"], rows["n_pixels"]):
        q = np.asarray(q, dtype=np.float64)
        if npx <= 0 or not np.isfinite(q).all():
            continue
        # each stored quantile stands for an equal share of the sample's pixels
        vals.append(q)
        wts.append(np.full(q.size, npx / q.size))
    if not vals:
        return np.empty(0)
    v = np.concatenate(vals)
    w = np.concatenate(wts)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w) - 0.5 * w
    cw /= w.sum()
    return np.interp(np.linspace(0, 1, n), cw, v)


def _auto_threshold(values: np.ndarray, method: str) -> float:
    from skimage import filters  # noqa: PLC0415

    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else float("nan")
    fn = {"otsu": filters.threshold_otsu, "triangle": filters.threshold_triangle, "li": filters.threshold_li}[method]
    return float(fn(values))


def background_threshold(values: Any, *, error_rate: float) -> float:
    """Threshold of a robust background model: ``median + z(1 - error_rate) * sd`` of the values.

    The spread is measured on the lower half only (``median - quantile(Φ(-1))``, the SD of a normal
    distribution; MAD-based when the lower half is flat), and values above ``median + 3 SD`` are clipped
    and the model refitted until nothing changes, so the upper tail (chemokine zones, producers) neither
    inflates the spread nor shifts the median. Valid while zones cover less than half of the tissue.

    Parameters
    ----------
    values : array-like, shape (n,)
        Background-corrected smoothed tissue-pixel values (e.g. of the sham samples).
    error_rate : float
        Fraction of background pixels expected above the threshold under a normal background (0–0.5).

    Returns
    -------
    float

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v = np.r_[rng.normal(10, 2, 9000), rng.normal(60, 5, 1000)]  # 10 % zone pixels
    >>> round(background_threshold(v, error_rate=0.001))  # 10 + 3.09 * 2 = 16.2: the zone pixels do not count
    16
    """
    from scipy.stats import norm

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    keep = v
    for _ in range(10):  # upper sigma clipping (as astronomers estimate a sky background under sources)
        loc = float(np.median(keep))
        sd = loc - float(np.quantile(keep, norm.cdf(-1.0)))
        if sd <= 0:
            sd = 1.4826 * float(np.median(np.abs(keep - loc)))
        clipped = v[v <= loc + 3.0 * sd]
        if clipped.size == keep.size or sd <= 0:
            break
        keep = clipped
    return loc + float(norm.isf(error_rate)) * sd


def _statistic(tc: ThresholdConfig):
    if tc.mode == "background":
        return lambda v: background_threshold(v, error_rate=tc.error_rate)
    return lambda v: float(np.quantile(v, tc.quantile))


def _no_reference_fallback(csum: pd.DataFrame, tc: ThresholdConfig, n: int) -> list[tuple[float, str]]:
    """background mode without any reference sample: the same model over every sample (pooled), with a warning."""
    t = background_threshold(_pooled_values(csum), error_rate=tc.error_rate)
    warn = (f"no sample matches the reference {dict(tc.reference)}: background model of all samples pooled "
            "(valid while zones cover less than half of the tissue)")
    return [(t, warn)] * n


def _reference_groups(samples: pd.DataFrame, sids: list[str], is_ref: np.ndarray, group_by: str | None
                      ) -> list[tuple[tuple[str, ...], str]]:
    """Per sample, the reference samples whose background it takes (those of its ``group_by`` value, else all of
    them, with a warning) and the warning."""
    out = []
    for i in range(len(sids)):
        sel, warn = is_ref, ""
        if group_by is not None:
            key = samples.at[i, group_by]
            sel = is_ref & (samples[group_by] == key).to_numpy()
            if not sel.any():
                sel, warn = is_ref, f"no reference sample with {group_by}={key}; used all reference samples"
        out.append((tuple(sids[j] for j in np.flatnonzero(sel)), warn))
    return out


def _reference_thresholds(
    csum: pd.DataFrame, samples: pd.DataFrame, sids: list[str], tc: ThresholdConfig, *, where: str
) -> list[tuple[float, str]]:
    """``(threshold, warning)`` per sample from its reference samples (same ``group_by`` value): their
    ``quantile`` (reference mode) or their background model (background mode)."""
    if tc.mode == "background" and not select_samples(samples, tc.reference, where=f"{where}.reference").any():
        return _no_reference_fallback(csum, tc, len(sids))
    is_ref = select_reference(samples, tc.reference, tc.group_by, where=where).to_numpy()
    stat = _statistic(tc)
    cache: dict[Any, tuple[float, str]] = {}
    out = []
    for i, (refs, warn) in enumerate(_reference_groups(samples, sids, is_ref, tc.group_by)):
        key = (refs, warn)
        if key not in cache:
            pooled = _pooled_values(csum[csum["sample_id"].astype(str).isin(refs)])
            if not pooled.size and tc.group_by is not None:  # e.g. the patient's sham has no tissue
                refs_all = [sids[j] for j in np.flatnonzero(is_ref)]
                pooled = _pooled_values(csum[csum["sample_id"].astype(str).isin(refs_all)])
                warn = (f"the reference samples of {tc.group_by}={samples.at[i, tc.group_by]} ({', '.join(refs)}) "
                        "have no tissue pixels; used all reference samples")
            if not pooled.size:
                warn = (f"no tissue pixels in any reference sample {dict(tc.reference)}: no threshold, the zone is "
                        "empty; check the reference samples' tissue masks")
            t = stat(pooled) if pooled.size else float("nan")
            cache[key] = (t, warn)
        out.append(cache[key])
    return out


def _compartment_offsets(cells: pd.DataFrame, samples: pd.DataFrame, sids: list[str], tc: ThresholdConfig, *,
                         where: str) -> tuple[dict[str, tuple[float, float, float]], dict[str, str]]:
    """Per sample with compartment backgrounds, its reference cells' (median, tumor offset, stroma offset); and per
    sample any warning (a sample without enough reference cells in a compartment keeps the tissue-wide background)."""
    sid_col = cells["sample_id"].astype(str)
    if select_samples(samples, tc.reference, where=f"{where}.reference").any():
        groups = _reference_groups(samples, sids, select_reference(samples, tc.reference, tc.group_by,
                                                                   where=where).to_numpy(), tc.group_by)
    else:  # no reference sample: every sample's cells (as the background is then every sample's median)
        groups = [(tuple(sids), "")] * len(sids)
    cache: dict[tuple[str, ...], tuple[float, float, float, str]] = {}
    offsets, warns = {}, {}
    for sid, (refs, _) in zip(sids, groups):
        if refs not in cache:
            c = cells[sid_col.isin(refs)]
            cache[refs] = compartment_offsets(c["signal"], c["tumor_fraction"])
        m, off_t, off_s, warn = cache[refs]
        if not warn:
            offsets[sid] = (m, off_t, off_s)
        warns[sid] = warn
    return offsets, warns


def _halfmax_thresholds(
    csum: pd.DataFrame, cells: pd.DataFrame | None, samples: pd.DataFrame, sids: list[str], tc: ThresholdConfig,
    *, smooth_um: float, where: str
) -> list[tuple]:
    """``halfmax`` mode (:mod:`chemozone._zone_halfmax`): reference median + ``fraction`` × one producer's level;
    with a ``tumor_fraction`` column in ``cells``, the background's tumor and stroma offsets too
    (:mod:`chemozone._zone_compartments`): ``(threshold, warning, tumor_offset, stroma_offset)`` per sample."""
    if cells is None:
        raise MissingStepError(f"{where}: mode 'halfmax' needs the signal at every cell with its producer call "
                               "(signal_at_cells in pass A, then the gates); pass cell_signals= to compute_zone_thresholds")
    if not select_samples(samples, tc.reference, where=f"{where}.reference").any():
        b = float(np.median(_pooled_values(csum)))
        base = [(b, f"no sample matches the reference {dict(tc.reference)}: background = median of all samples")] * len(sids)
        is_ref = np.zeros(len(sids), bool)
    else:
        base = _reference_thresholds(csum, samples, sids, tc.model_copy(update={"mode": "reference", "quantile": 0.5}),
                                     where=where)
        is_ref = select_reference(samples, tc.reference, tc.group_by, where=where).to_numpy()
    offsets, cwarn = {}, {}
    if tc.compartments and "tumor_fraction" in cells.columns and cells["tumor_fraction"].notna().any():
        comp, cwarn = _compartment_offsets(cells, samples, sids, tc, where=where)
        # with compartments, the background is the reference cells' median plus the offset of each compartment
        base = [(comp[s][0], w) if s in comp else (b, w) for s, (b, w) in zip(sids, base)]
        offsets = {s: v[1:] for s, v in comp.items()}
    background = {s: b for s, (b, _) in zip(sids, base)}
    targets = [s for s, r in zip(sids, is_ref) if not r] or sids
    level, n = cohort_producer_level(cells, background, targets, smooth_um=smooth_um, offsets=offsets)
    if n == 0 or not np.isfinite(level) or level <= 0:
        why = (f"no gated producer cell in {len(targets)} non-reference samples" if n == 0 else
               f"the median signal of {n} producer cells is not above the reference background")
        warn = f"halfmax: {why}; used the background mode (error_rate {tc.error_rate:g}) instead"
        return [(t, "; ".join(w for w in (w0, warn) if w)) for t, w0 in _reference_thresholds(
            csum, samples, sids, tc.model_copy(update={"mode": "background"}), where=where)]
    warn = (f"halfmax: only {n} producer cells (< {MIN_PRODUCERS}) set the level of one producer; zone edges are "
            "uncertain") if n < MIN_PRODUCERS else ""
    if "intensity" not in cells.columns or not cells["intensity"].notna().any():
        warn = "; ".join(w for w in (warn, "halfmax: the cells table has no intensity of the producer marker; gated "
                                     "producers counted as equal stains and other cells as none") if w)
    return [(b + tc.fraction * level, "; ".join(w for w in (w0, warn, cwarn.get(s, "")) if w),
             *offsets.get(s, (0.0, 0.0))) for s, (b, w0) in zip(sids, base)]


def _channel_thresholds(
    csum: pd.DataFrame, samples: pd.DataFrame, sids: list[str], tc: ThresholdConfig, *, where: str,
    cells: pd.DataFrame | None = None, smooth_um: float = 10.0,
) -> tuple[list[tuple[float, str]], str]:
    """``(threshold, warning)`` per sample of one channel's summaries, and the mode label."""
    if tc.mode == "halfmax":
        return (_halfmax_thresholds(csum, cells, samples, sids, tc, smooth_um=smooth_um, where=where),
                f"halfmax_f{tc.fraction:g}")
    if tc.mode == "absolute":
        return [(float(tc.value), "", *(tc.offsets or (0.0, 0.0)))] * len(sids), "absolute"
    if tc.mode == "pooled":
        t = _auto_threshold(_pooled_values(csum), tc.method)
        return [(t, "")] * len(sids), f"pooled_{tc.method}"
    if tc.mode == "per_sample":
        by_sample = {str(s): r for s, r in csum.groupby(csum["sample_id"].astype(str))}
        warn = "per-sample relative threshold: zone areas are not comparable between samples"
        return [(_auto_threshold(_pooled_values(by_sample[s]), tc.method), warn) for s in sids], f"per_sample_{tc.method}"
    label = f"background_a{tc.error_rate:g}" if tc.mode == "background" else f"reference_q{tc.quantile:g}"
    return _reference_thresholds(csum, samples, sids, tc, where=where), label


def compute_zone_thresholds(
    summaries: pd.DataFrame, samples: pd.DataFrame, *, zones: Sequence[ZoneConfig],
    cell_signals: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Cohort step: the threshold of every (sample, pixel/tumor zone, channel).

    Parameters
    ----------
    summaries : DataFrame
        Concatenated :func:`chemozone.zones.signal_summary` outputs of all samples.
    samples : DataFrame
        The sample sheet (``sample_id`` + the columns used by ``threshold.reference`` / ``group_by``).
    zones : list of ZoneConfig
        The zone definitions (``name``, ``source``, ``channels``, ``threshold``); zones of other sources than
        ``pixels`` and ``tumor`` are skipped (they have no threshold). Errors name a zone by its index in this
        list (``zones[1].threshold...``): pass the config's whole list.
    cell_signals : DataFrame, optional
        Needed by ``halfmax`` zones only: :func:`chemozone._zone_halfmax.signal_at_cells` rows of every sample
        plus a boolean ``producer`` column (the cell is positive for the zone's producer marker) and, optionally,
        ``intensity`` (the cell's producer-marker mean in its gate compartment; it takes the neighbours' share
        out of each producer's level, :func:`chemozone._zone_halfmax.producer_levels`) and ``tumor_fraction``
        (:func:`chemozone._zone_compartments.tumor_fraction_at`: the background then has a tumor and a stroma
        offset, unless ``threshold.compartments`` is false).

    Returns
    -------
    DataFrame
        ``sample_id, zone, channel, threshold, mode, warning, tumor_offset, stroma_offset`` (threshold in
        background-corrected image units of that channel; ``warning`` is ``""`` or says why a fallback was used;
        the offsets are 0 unless a ``halfmax`` zone has compartment backgrounds or an ``absolute`` one gives them).

    Raises
    ------
    ConfigError
        When reference samples are requested but none match (names the zone and the query).
    MissingStepError
        When a sample or zone has no summary.
    """
    rows: list[dict[str, Any]] = []
    if "sample_id" not in samples.columns:
        raise ConfigError("samples: the sample sheet has no 'sample_id' column")
    samples = samples.reset_index(drop=True)
    sids = samples["sample_id"].astype(str).tolist()
    for zi, zone in enumerate(zones):  # zi: the zone's index in the list given (the config's: errors name zones[zi])
        if zone.source not in ("pixels", "tumor"):  # producer, tumor-cell and region zones have no threshold
            continue
        zsum = summaries[summaries["zone"] == zone.name] if len(summaries) else summaries
        missing = sorted(set(sids) - set(zsum["sample_id"].astype(str))) if len(zsum) else sids
        if missing:
            raise MissingStepError(
                f"zones '{zone.name}': no signal summary for samples {missing[:5]}; run zone_signal + signal_summary "
                "(pass A) for every sample before compute_zone_thresholds"
            )
        for ch in zone.channels:
            csum = zsum[zsum["channel"] == ch]
            cells = None
            if cell_signals is not None and zone.threshold.mode == "halfmax":
                cells = cell_signals[(cell_signals["zone"] == zone.name) & (cell_signals["channel"] == ch)]
            per_sample, mode = _channel_thresholds(csum, samples, sids, zone.threshold, where=f"zones[{zi}].threshold",
                                                   cells=cells, smooth_um=zone.smooth_um)
            for s, (t, warn, *off) in zip(sids, per_sample):
                off_t, off_s = off or (0.0, 0.0)
                rows.append(dict(sample_id=s, zone=zone.name, channel=ch, threshold=t, mode=mode, warning=warn,
                                 tumor_offset=float(off_t), stroma_offset=float(off_s)))
    return pd.DataFrame(rows, columns=THRESHOLD_COLUMNS)
