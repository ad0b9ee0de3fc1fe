"""Marker truth and expression of a scene's cells: which cells are positive for each channel, their
expression levels, the per-sample channel spec and staining scale, and the chemokine dots of producers."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ._params import CELL_TYPES, CHANNEL_SPEC, DAPI_LEVEL, GENERIC_SPEC, MODULES, RECEPTORS, TYPE_INDEX

DOTS_PER_CELL = 24
"""Perinuclear chemokine dots per producer cell."""


def marker_truth(rng: np.random.Generator, ctype: np.ndarray, senescent: np.ndarray,
                 receptors: dict[str, np.ndarray], amount: dict[str, np.ndarray], channels: Sequence[str], *,
                 d_eff: float) -> dict[str, np.ndarray]:
    """``{marker: bool (n,)}`` for every default marker and every extra panel channel.

    One ``random(n)`` draw per extra channel (known extras by type; unknown names: 15 % of immune cells).
    """
    t = {name: ctype == i for name, i in TYPE_INDEX.items()}
    lymph = t["CD8 T"] | t["CD4 T"]
    immune = lymph | t["NK"] | t["Macrophage"] | t["Other immune"]
    n = len(ctype)
    pos = {
        "panCK": t["Tumor"].copy(), "CD45": immune, "CD3": lymph, "CD8": t["CD8 T"].copy(), "CD4": t["CD4 T"].copy(),
        "CD56": t["NK"].copy(), "CD68": t["Macrophage"].copy(), "p21": senescent.copy(),
        **{r: receptors[r].copy() for r in RECEPTORS}, **{m: amount[m] > 0 for m in MODULES},
    }
    extra = [c for c in channels if c != "DAPI" and c not in pos]
    for name in extra:
        u = rng.random(n)
        if name == "aSMA":
            pos[name] = t["Stroma"] & (u < 0.8)
        elif name == "NKp46":
            pos[name] = t["NK"] & (u < 0.9)
        elif name == "CD16":
            pos[name] = (t["NK"] & (u < 0.6)) | (t["Macrophage"] & (u < 0.5))
        elif name == "Ki67":
            pos[name] = t["Tumor"] & ~senescent & (u < 0.25 * math.exp(-0.12 * d_eff))
        elif name == "FOXP3":
            pos[name] = t["CD4 T"] & (u < 0.2)
        else:  # an unknown marker: a random 15 % of immune cells
            pos[name] = immune & (u < 0.15)
    return pos


def marker_levels(rng: np.random.Generator, ctype: np.ndarray, damaged: np.ndarray, pos: dict[str, np.ndarray],
                  channels: Sequence[str]) -> dict[str, np.ndarray]:
    """Expression level per cell and channel (1 = the channel's amplitude; chemokines 0, they are dots).

    Returns
    -------
    dict
        {channel: float64 (n,)}, drawn in panel order.
    """
    n = len(ctype)
    level: dict[str, np.ndarray] = {}
    dmg = np.where(damaged, 0.5, 1.0)
    for name in channels:
        if name == "DAPI":
            lv = np.array([DAPI_LEVEL[CELL_TYPES[t]] for t in ctype]) * np.exp(0.12 * rng.standard_normal(n))
            level[name] = lv * np.where(damaged, 1.6, 1.0)
            continue
        if name in MODULES:
            level[name] = np.zeros(n)
            continue
        p = pos[name]
        lv = np.where(p, np.exp(0.3 * rng.standard_normal(n) - 0.045), 0.04 * np.exp(0.3 * rng.standard_normal(n)))
        if name == "CD4":
            lv = np.where(ctype == TYPE_INDEX["Macrophage"], 0.15 * np.exp(0.2 * rng.standard_normal(n)), lv)
        level[name] = lv * dmg
    return level


def channel_specs(rng: np.random.Generator, channels: Sequence[str], *, stain_sd_log: float,
                  chemokine_amplitude: float) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Compartment, peak, autofluorescence and background per channel, and a per-sample staining scale.

    Returns
    -------
    spec : dict
        {channel: {compartment, peak, af, background}} for the panel plus every chemokine module.
    stain : dict
        {channel: log-normal staining scale}, one draw per panel channel.
    """
    spec = {}
    stain_sd = stain_sd_log
    stain = {}
    for name in channels:
        comp_, peak, af, bg = CHANNEL_SPEC.get(name, GENERIC_SPEC)
        spec[name] = {"compartment": comp_, "peak": float(peak), "af": float(af), "background": float(bg)}
        stain[name] = float(np.exp(stain_sd * rng.standard_normal()))
    for m in MODULES:
        spec.setdefault(m, {"compartment": "dots", "peak": chemokine_amplitude, "af": 60.0, "background": 100.0})
    return spec, stain


def chemokine_dots(rng: np.random.Generator, amount: dict[str, np.ndarray], shapes: dict[str, np.ndarray], *,
                   dots_per_cell: int = DOTS_PER_CELL) -> dict[str, tuple[np.ndarray, ...]]:
    """Perinuclear dots of each module's producers, between the nucleus and the cell edge.

    Parameters
    ----------
    shapes : dict
        ``a``, ``b``, ``ac``, ``bc`` half axes (px) per cell (:func:`draw_shapes`).

    Returns
    -------
    dict
        {module: (idx int64 (k,), dx, dy (k, dots) px offsets, mass (k, dots) summing to 1 per cell)}.
    """
    nd = dots_per_cell
    a_px, b_px, ac_px, bc_px = shapes["a"], shapes["b"], shapes["ac"], shapes["bc"]
    dots = {}
    for m in MODULES:
        idx = np.nonzero(amount[m] > 0)[0]
        ang = rng.uniform(0, 2 * np.pi, (len(idx), nd))
        rn = ((a_px[idx] + b_px[idx]) / 2)[:, None]
        rc = ((ac_px[idx] + bc_px[idx]) / 2)[:, None]
        rad = rn + rng.uniform(0.1, 0.9, (len(idx), nd)) * (rc - rn)
        dm = rng.uniform(0.5, 1.5, (len(idx), nd))
        dots[m] = (idx, rad * np.cos(ang), rad * np.sin(ang), dm / dm.sum(1, keepdims=True))
    return dots
