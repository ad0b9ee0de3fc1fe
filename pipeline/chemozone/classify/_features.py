"""Per-cell features for the classifiers, from the columns quantification (or a table import) writes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import ChannelError, MissingStepError

FEATURE_COMPARTMENTS = ("nucleus", "cytoplasm", "membrane", "cell")
"""Compartment means used as features, in this order (``{channel}_{compartment}``), when present."""
FEATURE_STATISTICS = ("p90", "median", "std")
"""Further per-compartment statistics used when quantified (``{channel}_{compartment}_{stat}``)."""
MORPHOLOGY_COLUMNS = ("area_um2", "cell_area_um2", "nucleus_area_um2", "eccentricity", "solidity",
                      "major_axis_length_um", "minor_axis_length_um")
"""Shape columns used as features when present (quantification's, or an import's areas)."""
DEFAULT_K_NEIGHBORS = 6


def feature_channels(cells: pd.DataFrame) -> list[str]:
    """Channels of a cells table that have at least one compartment mean (``{channel}_{compartment}``).

    Parameters
    ----------
    cells : DataFrame
        Per-cell table (``measurements.parquet``, ``cells.parquet`` or an imported table).

    Returns
    -------
    list of str
        In the order of the table's columns.

    Examples
    --------
    >>> feature_channels(pd.DataFrame(columns=["x_um", "CD3_cell", "CK_nucleus", "CK_cell", "CD8_pos"]))
    ['CD3', 'CK']
    """
    out: list[str] = []
    for c in map(str, cells.columns):
        for comp in FEATURE_COMPARTMENTS:
            if c.endswith(f"_{comp}") and c not in MORPHOLOGY_COLUMNS:
                ch = c[: -len(comp) - 1]
                if ch and ch not in out:
                    out.append(ch)
    return out


def _own_column(cells: pd.DataFrame, ch: str) -> str:
    """The compartment whose signal a positive cell carries itself: membrane, else cytoplasm, else cell, else nucleus."""
    for comp in ("membrane", "cytoplasm", "cell", "nucleus"):
        if f"{ch}_{comp}" in cells.columns:
            return f"{ch}_{comp}"
    raise ChannelError(f"cells table has no compartment mean of channel '{ch}' (columns {ch}_nucleus/_cytoplasm/"
                       f"_membrane/_cell); pick channels from {feature_channels(cells)}")


def _whole_column(cells: pd.DataFrame, ch: str) -> str:
    """The whole-cell mean (``_cell``), else the first compartment mean present."""
    for comp in ("cell", "membrane", "cytoplasm", "nucleus"):
        if f"{ch}_{comp}" in cells.columns:
            return f"{ch}_{comp}"
    return _own_column(cells, ch)


def neighbour_indices(x_um, y_um, *, k: int) -> np.ndarray:
    """Indices of each cell's ``k`` nearest other cells (scipy ``cKDTree``; fewer cells: repeated nearest).

    Parameters
    ----------
    x_um, y_um : array-like of float, shape (n_cells,)
    k : int
        Number of neighbours (>= 1).

    Returns
    -------
    int ndarray, shape (n_cells, min(k, n_cells - 1)); empty second axis for a single cell.

    Examples
    --------
    >>> neighbour_indices([0.0, 1.0, 5.0], [0.0, 0.0, 0.0], k=1).ravel().tolist()
    [1, 0, 1]
    """
    from scipy.spatial import cKDTree

    xy = np.column_stack([np.asarray(x_um, float), np.asarray(y_um, float)])
    kk = min(int(k), len(xy) - 1)
    if kk < 1:
        return np.zeros((len(xy), 0), dtype=np.int64)
    _, idx = cKDTree(xy).query(xy, k=kk + 1)
    return np.asarray(idx[:, 1:], dtype=np.int64)


def _contrast(own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(own - other) / (|own| + |other|): the membrane/neighbour ratio r as (r - 1) / (r + 1), in [-1, 1]."""
    den = np.abs(own) + np.abs(other)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (own - other) / np.where(den > 0, den, 1.0), 0.0)


def _neighbour_block(cells: pd.DataFrame, channels: Sequence[str], k: int) -> dict[str, np.ndarray]:
    """``{ch}_nbr`` (mean whole-cell signal of the k nearest cells of the same sample) and ``{ch}_own_nbr``."""
    from ..errors import require_columns

    require_columns(cells, ["x_um", "y_um"], "cells table", "quantification or a table import (cell positions)")
    n = len(cells)
    sid = cells["sample_id"].astype(str).to_numpy() if "sample_id" in cells.columns else np.zeros(n, dtype=object)
    whole = {ch: cells[_whole_column(cells, ch)].to_numpy(float) for ch in channels}
    nbr = {ch: np.full(n, np.nan) for ch in channels}
    x, y = cells["x_um"].to_numpy(float), cells["y_um"].to_numpy(float)
    for s in sorted(pd.unique(sid)):
        rows = np.flatnonzero(sid == s)
        idx = neighbour_indices(x[rows], y[rows], k=k)
        if idx.shape[1] == 0:
            continue
        for ch in channels:
            nbr[ch][rows] = np.nanmean(whole[ch][rows][idx], axis=1)
    out: dict[str, np.ndarray] = {}
    for ch in channels:
        own = cells[_own_column(cells, ch)].to_numpy(float)
        out[f"{ch}_nbr"] = nbr[ch]
        out[f"{ch}_own_nbr"] = _contrast(own, nbr[ch])
    return out


def cell_features(cells: pd.DataFrame, channels: Sequence[str] | None = None, *,
                  k_neighbors: int = DEFAULT_K_NEIGHBORS) -> pd.DataFrame:
    """Per-cell features for the classifiers (deterministic: the same table gives the same features).

    For every channel, in this order: its compartment means present in the table (``{ch}_nucleus``,
    ``{ch}_cytoplasm``, ``{ch}_membrane``, ``{ch}_cell``) and their quantified upper percentile, median and
    standard deviation (``{ch}_{compartment}_p90`` / ``_median`` / ``_std``) when present; then, when
    ``k_neighbors > 0``, ``{ch}_nbr``: the mean whole-cell signal (``{ch}_cell``, else the first compartment
    present) of the cell's ``k_neighbors`` nearest cells of the same sample (centroids ``x_um, y_um``,
    scipy ``cKDTree``), and ``{ch}_own_nbr``: the cell's own membrane signal (``_membrane``, else
    ``_cytoplasm``, ``_cell``, ``_nucleus``) against that neighbour mean, as ``(own - nbr) / (|own| + |nbr|)``
    (= (r - 1) / (r + 1) for the ratio r = own / nbr; in [-1, 1], 0 when both are 0). Spillover from a bright
    neighbour raises ``{ch}_cytoplasm`` but leaves ``{ch}_own_nbr`` near or below 0. Finally the morphology
    columns present (:data:`MORPHOLOGY_COLUMNS`). Values are raw intensities (gradient boosting is invariant
    to monotone rescaling of a feature); NaN stays NaN (the classifier handles missing values).

    Parameters
    ----------
    cells : DataFrame, shape (n_cells, ...)
        Per-cell table: compartment means, ``x_um``, ``y_um`` (for neighbour features), ``sample_id``
        (neighbours are taken within a sample; one sample when absent).
    channels : sequence of str, optional
        Channels to use (default: :func:`feature_channels`, every channel with a compartment mean).
    k_neighbors : int
        Neighbours averaged per cell; 0 = no neighbour features.

    Returns
    -------
    DataFrame, shape (n_cells, n_features)
        float64 columns, the index of ``cells``.

    Raises
    ------
    ChannelError
        A requested channel without any compartment mean in the table.
    MissingStepError
        ``k_neighbors > 0`` but no ``x_um`` / ``y_um`` columns.

    Examples
    --------
    >>> cells = pd.DataFrame({"sample_id": "s", "x_um": [0.0, 10.0, 20.0], "y_um": 0.0,
    ...                       "CD3_cell": [1.0, 3.0, 1.0], "CD3_cytoplasm": [1.0, 3.0, 1.0]})
    >>> f = cell_features(cells, k_neighbors=1)
    >>> list(f.columns)
    ['CD3_cytoplasm', 'CD3_cell', 'CD3_nbr', 'CD3_own_nbr']
    >>> f["CD3_own_nbr"].round(2).tolist()
    [-0.5, 0.5, -0.5]
    """
    chans = list(channels) if channels is not None else feature_channels(cells)
    if not chans:
        raise MissingStepError("cells table has no compartment means ({channel}_cell, _nucleus, ...); run "
                               "quantification or import a table with intensities first")
    cols: dict[str, np.ndarray] = {}
    for ch in chans:
        _own_column(cells, ch)  # a channel without any mean: one-line error
        for comp in FEATURE_COMPARTMENTS:
            for name in (f"{ch}_{comp}", *(f"{ch}_{comp}_{s}" for s in FEATURE_STATISTICS)):
                if name in cells.columns:
                    cols[name] = cells[name].to_numpy(float)
    if k_neighbors > 0:
        cols.update(_neighbour_block(cells, chans, int(k_neighbors)))
    for name in MORPHOLOGY_COLUMNS:
        if name in cells.columns:
            cols[name] = cells[name].to_numpy(float)
    out = pd.DataFrame(cols, index=cells.index, dtype=float)
    out.attrs.update(channels=chans, k_neighbors=int(k_neighbors))  # how to remake them (read by training)
    return out
