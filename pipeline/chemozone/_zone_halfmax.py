"""Threshold mode ``halfmax``: a zone is where the smoothed chemokine reaches a set fraction (default one half) of
what one typical producer cell makes at its own position, above the reference background.

Why: the other modes put the zone edge where the signal leaves the *noise* of the sham (a quantile or an error
rate), so the edge moves with the stain's signal-to-noise ratio, and with how much zone the sham itself holds.
A chemokine milieu is defined by its producers (Hoch et al. 2022 call CXCL9/10/13 milieus around producer
cells); ``halfmax`` scales the threshold by the producers' own signal instead: the zone around a lone producer
is its half-maximum footprint at the configured smoothing (radius ``smooth_um * sqrt(2 ln 2)`` ≈ 1.18 σ), and
clusters of producers merge into one zone where their footprints add up to that level.

How the level of one producer is measured, from the images and the gates alone:

1. pass A samples the smoothed, background-corrected signal ``S`` at every cell (:func:`signal_at_cells`);
2. the cohort step gates the producer marker (the zone's ``producer_marker``, or the channel's own name) and
   takes each cell's mean intensity ``I`` in the marker's gate compartment; a cell's *stain* is its excess
   ``e = max(0, I - median I)`` over the sample's median cell;
3. a gated producer counts only where it is the main source around it: its stain is at least half the largest
   stain within ``2 * smooth_um`` (where its own smoothed footprint has fallen to e⁻² ≈ 14 %). A gated cell
   that is much dimmer than a neighbour is lit by that neighbour (secreted halo, spillover, blur), not a
   producer of its own weight;
4. every counted producer ``i`` of the non-reference samples gets the share of its excess over the reference
   background ``b`` (median of the same patient's sham tissue pixels) that its own stain explains:
   ``r_i = (S_i - b) * e_i / sum_j exp(-d_ij² / 2σ²) e_j`` over **all** cells ``j`` within ``4σ``
   (σ = ``smooth_um``; :func:`producer_levels`). The neighbours' share is taken out by what they show, gated or
   not, so producers that the gate missed (dim ones, next to brighter ones) do not inflate the level;
5. the cohort's level ``A`` is the median of ``r_i`` over all those producers (one stain, one scanner: one
   level per channel), and the threshold of every sample is ``b + fraction * A``.

Without intensities (a cell table that has no column for the marker) every gated producer counts as one equal
stain and every other cell as none (the neighbours' share is then the producers' summed Gaussian weight).
Fewer than ``MIN_PRODUCERS`` counted producers: a warning in the thresholds table; none: the ``background``
mode is used instead, with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

__all__ = ["signal_at_cells", "producer_levels", "MIN_PRODUCERS", "DOMINANCE", "CELL_SIGNAL_COLUMNS"]

MIN_PRODUCERS = 30
"""Below this many producer cells in the non-reference samples, ``halfmax`` thresholds carry a warning."""

DOMINANCE = 0.5
"""A gated producer counts when its stain is at least this fraction of the largest stain within 2 σ."""

CELL_SIGNAL_COLUMNS = ["sample_id", "zone", "channel", "cell_id", "x_um", "y_um", "signal"]


def signal_at_cells(
    signal: np.ndarray, cells: pd.DataFrame, *, grid_um: float, sample_id: str, zone: str,
    channels: Sequence[str],
) -> pd.DataFrame:
    """The smoothed zone signal at each cell's centre (pass A of the ``halfmax`` threshold mode).

    Parameters
    ----------
    signal : ndarray (n_channels, Ygrid, Xgrid)
        From :func:`chemozone.zones.zone_signal`.
    cells : DataFrame
        ``cell_id, x_um, y_um`` (µm from the image origin).
    grid_um : float
        Pixel size of the analysis grid, µm.
    sample_id, zone : str
    channels : sequence of str
        Name of each signal channel.

    Returns
    -------
    DataFrame
        :data:`CELL_SIGNAL_COLUMNS`, one row per cell and channel (value of the grid pixel holding the centre).

    Examples
    --------
    >>> sig = np.arange(4.0).reshape(1, 2, 2)
    >>> cells = pd.DataFrame({"cell_id": [1, 2], "x_um": [1.0, 3.0], "y_um": [3.0, 1.0]})
    >>> signal_at_cells(sig, cells, grid_um=2.0, sample_id="s", zone="Z", channels=["C"])["signal"].tolist()
    [2.0, 1.0]
    """
    sig = np.asarray(signal)
    if sig.ndim == 2:
        sig = sig[None]
    iy = np.clip((cells["y_um"].to_numpy() / grid_um).astype(np.int64), 0, sig.shape[1] - 1)
    ix = np.clip((cells["x_um"].to_numpy() / grid_um).astype(np.int64), 0, sig.shape[2] - 1)
    frames = [pd.DataFrame({"sample_id": str(sample_id), "zone": zone, "channel": ch,
                            "cell_id": cells["cell_id"].to_numpy(), "x_um": cells["x_um"].to_numpy(float),
                            "y_um": cells["y_um"].to_numpy(float), "signal": sig[k][iy, ix].astype(float)})
              for k, ch in enumerate(channels)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CELL_SIGNAL_COLUMNS)


def producer_levels(
    x_um: Any, y_um: Any, signal: Any, producer: Any, *, background: float, smooth_um: float,
    intensity: Any = None,
) -> np.ndarray:
    """The signal of one producer at its own position, its neighbours' share taken out.

    Every cell of one sample goes in. A cell's stain is ``e = max(0, intensity - median(intensity))``. A gated
    producer ``i`` is counted when ``e_i > 0`` and ``e_i >= DOMINANCE * max(e_j)`` over the cells within
    ``2 * smooth_um``; its level is ``r_i = (S_i - background) * e_i / sum_j exp(-d_ij² / (2 smooth_um²)) e_j``
    over the cells within ``4 * smooth_um`` (``j = i`` included, weight 1).

    Parameters
    ----------
    x_um, y_um, signal : array-like (n_cells,)
        Positions (µm) of one sample's cells and the smoothed zone signal at each.
    producer : array-like of bool (n_cells,)
        The producer call of each cell (the cohort's gate).
    background : float or array-like (n_cells,)
        The reference background of this sample (same units as ``signal``), or of each cell (with compartment
        offsets, :mod:`chemozone._zone_compartments`).
    smooth_um : float
        Gaussian sigma of the zone's smoothing, µm.
    intensity : array-like (n_cells,), optional
        Each cell's mean intensity of the producer marker in its gate compartment (NaN: no stain). None: every
        producer counts as one equal stain, every other cell as none.

    Returns
    -------
    ndarray (n_counted,)
        One level per counted producer, in the order of the cells.

    Examples
    --------
    Two equal producers 10 µm apart share the signal at each (weights 1 and e^-0.5); a gated cell lit by its
    neighbour (stain 2 within 2 σ of a stain of 10) is not counted, and takes its small share of its neighbour's
    signal; five unstained cells (intensity 3, the median) change nothing:

    >>> x, y = [0, 10, 400, 405, 200, 600, 700, 800, 900], [0] * 9
    >>> producer_levels(x, y, [30, 30, 40, 30, 5, 0, 0, 0, 0], [True] * 4 + [False] * 5, background=0.0,
    ...                 smooth_um=10.0, intensity=[13, 13, 13, 5] + [3] * 5).round(2).tolist()
    [18.67, 18.67, 34.0]
    """
    xy = np.column_stack([np.asarray(x_um, float), np.asarray(y_um, float)])
    s = np.asarray(signal, float)
    p = np.asarray(producer, bool)
    if intensity is None:
        e = p.astype(float)
    else:
        i = np.asarray(intensity, float)
        e = np.nan_to_num(np.clip(i - np.nanmedian(i), 0.0, None), nan=0.0) if np.isfinite(i).any() else p.astype(float)
    cand = np.flatnonzero(p & (e > 0))
    if cand.size == 0:
        return np.empty(0)
    pairs = cKDTree(xy[cand]).sparse_distance_matrix(cKDTree(xy), 4.0 * smooth_um, output_type="ndarray")
    pi, pj, d = pairs["i"], pairs["j"], pairs["v"]
    near = d <= 2.0 * smooth_um
    brightest = np.zeros(cand.size)
    np.maximum.at(brightest, pi[near], e[pj[near]])
    shared = np.zeros(cand.size)
    np.add.at(shared, pi, np.exp(-(d * d) / (2.0 * smooth_um * smooth_um)) * e[pj])
    ec = e[cand]
    keep = ec >= DOMINANCE * brightest
    bg = np.broadcast_to(np.asarray(background, float), s.shape)[cand]
    return ((s[cand] - bg) * ec / shared)[keep]


def cohort_producer_level(
    cell_signals: pd.DataFrame, background: dict[str, float], sample_ids: Sequence[str], *, smooth_um: float,
    offsets: dict[str, tuple[float, float]] | None = None,
) -> tuple[float, int]:
    """Median producer level over the given samples (every cell of each: ``x_um, y_um, signal, producer`` and
    optionally ``intensity``) and how many producers counted (samples with an unknown, NaN, background are left
    out). ``offsets``: per sample the (tumor, stroma) offsets of the background (:mod:`chemozone._zone_compartments`),
    applied with each cell's ``tumor_fraction``."""
    levels = []
    sid_col = cell_signals["sample_id"].astype(str)
    for sid in sample_ids:
        c = cell_signals[sid_col == sid]
        if not c["producer"].astype(bool).any():
            continue
        inten = c["intensity"] if "intensity" in c.columns and c["intensity"].notna().any() else None
        bg: Any = background[sid]
        if offsets is not None and sid in offsets:
            t = c["tumor_fraction"].to_numpy(float)
            bg = bg + t * offsets[sid][0] + (1.0 - t) * offsets[sid][1]
        levels.append(producer_levels(c["x_um"], c["y_um"], c["signal"], c["producer"].astype(bool),
                                      background=bg, smooth_um=smooth_um, intensity=inten))
    r = np.concatenate(levels) if levels else np.empty(0)
    r = r[np.isfinite(r)]  # a sample whose reference background is unknown (e.g. an empty sham) gives no level
    return (float(np.median(r)) if r.size else float("nan")), int(r.size)
