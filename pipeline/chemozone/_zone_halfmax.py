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
2. the cohort step gates the producer marker (the zone's ``producer_marker``, or the channel's own name),
   keeps one producer per footprint (a producer within σ = ``smooth_um`` of a brighter one is not counted:
   spillover, blur and the diffuse chemokine make neighbours of a producer gate positive too) and, for every
   counted producer ``i`` of the non-reference samples, divides its excess over the reference background
   ``b`` (median of the same patient's sham tissue pixels) by the summed Gaussian weight of the counted
   producers around it (itself 1): ``r_i = (S_i - b) / sum_j exp(-d_ij² / 2σ²)`` (:func:`producer_levels`),
   i.e. the level of one producer once its neighbours' share is taken out;
3. the cohort's level ``A`` is the median of ``r_i`` over all those producers (one stain, one scanner: one
   level per channel), and the threshold of every sample is ``b + fraction * A``.

Producers missed by the gate make ``A`` larger (zones smaller), cells falsely gated make it smaller; the median
limits both. Fewer than ``MIN_PRODUCERS`` producers: a warning in the thresholds table; none: the ``background``
mode is used instead, with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

__all__ = ["signal_at_cells", "producer_levels", "MIN_PRODUCERS", "CELL_SIGNAL_COLUMNS"]

MIN_PRODUCERS = 30
"""Below this many producer cells in the non-reference samples, ``halfmax`` thresholds carry a warning."""

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


def producer_levels(x_um: Any, y_um: Any, signal: Any, *, background: float, smooth_um: float) -> np.ndarray:
    """The signal of one producer at its own position, its neighbours' share taken out.

    One producer per footprint first: a producer within ``smooth_um`` of a brighter one (higher ``signal``) is
    not counted, because the smoothed signal at its centre is mostly that producer's footprint (a neighbour that
    picked up the stain by spillover or blur, or the diffuse chemokine around a producer, is gated positive too).
    Then, for every remaining producer ``i``, ``r_i = (S_i - background) / sum_j exp(-d_ij² / (2 smooth_um²))``
    over the remaining producers ``j`` within ``4 * smooth_um`` (``j = i`` included, weight 1).

    Parameters
    ----------
    x_um, y_um, signal : array-like (n_producers,)
        Positions (µm) of one sample's producer cells and the smoothed signal at each.
    background : float
        The reference background of this sample (same units as ``signal``).
    smooth_um : float
        Gaussian sigma of the zone's smoothing, µm.

    Returns
    -------
    ndarray (n_counted,)
        One level per counted producer (equal signals within ``smooth_um`` are all counted).

    Examples
    --------
    Two producers at the same spot share the signal; a dimmer one 5 µm from a brighter one is not counted; a
    lone producer keeps its own:

    >>> producer_levels([0, 0, 100, 105, 300], [0] * 5, [12, 12, 20, 15, 6], background=2.0, smooth_um=10.0).tolist()
    [5.0, 5.0, 18.0, 4.0]
    """
    xy = np.column_stack([np.asarray(x_um, float), np.asarray(y_um, float)])
    s = np.asarray(signal, float)
    if len(s) == 0:
        return np.empty(0)
    tree = cKDTree(xy)
    near = tree.query_pairs(smooth_um, output_type="ndarray")
    keep = np.ones(len(s), bool)
    if len(near):
        keep[near[:, 0][s[near[:, 0]] < s[near[:, 1]]]] = False
        keep[near[:, 1][s[near[:, 1]] < s[near[:, 0]]]] = False
    xy, s = xy[keep], s[keep]
    pairs = cKDTree(xy).query_pairs(4.0 * smooth_um, output_type="ndarray")
    w = np.ones(len(s))
    if len(pairs):
        d2 = ((xy[pairs[:, 0]] - xy[pairs[:, 1]]) ** 2).sum(axis=1)
        k = np.exp(-d2 / (2.0 * smooth_um * smooth_um))
        np.add.at(w, pairs[:, 0], k)
        np.add.at(w, pairs[:, 1], k)
    return (s - background) / w


def cohort_producer_level(
    cell_signals: pd.DataFrame, background: dict[str, float], sample_ids: Sequence[str], *, smooth_um: float
) -> tuple[float, int]:
    """Median producer level over the given samples' producers (``producer`` column) and how many counted (samples
    with an unknown, NaN, background are left out)."""
    levels = []
    for sid in sample_ids:
        p = cell_signals[(cell_signals["sample_id"].astype(str) == sid) & cell_signals["producer"].astype(bool)]
        if len(p):
            levels.append(producer_levels(p["x_um"], p["y_um"], p["signal"], background=background[sid],
                                          smooth_um=smooth_um))
    r = np.concatenate(levels) if levels else np.empty(0)
    r = r[np.isfinite(r)]  # a sample whose reference background is unknown (e.g. an empty sham) gives no level
    return (float(np.median(r)) if r.size else float("nan")), int(r.size)
