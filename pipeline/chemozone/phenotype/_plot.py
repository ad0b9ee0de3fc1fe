"""The gate QC figure: per marker, each sample's distribution on the gating scale with its gate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import MissingStepError, require_columns
from ._gates import _sample_ids, marker_column
from ._transform import transform_values


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

    require_columns(gates, ["sample_id", "marker", "compartment", "transform", "cofactor", "threshold"], "gates table",
                    "chemozone.phenotype.compute_gates")
    sub = gates[gates["marker"] == marker].copy()
    if sub.empty:
        raise MissingStepError(f"gates table has no gates for marker '{marker}'; run compute_gates with it configured")
    sub["sample_id"] = sub["sample_id"].astype(str)
    first = sub.iloc[0]
    col = marker_column(cells, marker, str(first["compartment"]))
    cof = None if not np.isfinite(first["cofactor"]) else float(first["cofactor"])
    sid = _sample_ids(cells)
    tv = transform_values(cells[col].to_numpy(dtype=float), transform=str(first["transform"]), cofactor=cof)
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
