"""Colours of channels, cell types and phenotypes (display only)."""

from __future__ import annotations

import numpy as np

CHANNEL_CYCLE = ["green", "magenta", "cyan", "yellow", "red", "bop orange", "bop purple", "gray"]
NUCLEAR_NAMES = ("dapi", "hoechst", "nuclei", "nuclear", "dna")

# Tableau-like categorical palette (RGB 0..1); "Other" / missing values are grey.
PALETTE = np.array(
    [
        [0.12, 0.47, 0.71], [1.00, 0.50, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16],
        [0.58, 0.40, 0.74], [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.74, 0.74, 0.13],
        [0.09, 0.75, 0.81], [0.68, 0.78, 0.91], [1.00, 0.73, 0.47], [0.60, 0.87, 0.54],
        [1.00, 0.60, 0.59], [0.77, 0.69, 0.84], [0.77, 0.61, 0.58], [0.97, 0.71, 0.82],
    ]
)
GREY = np.array([0.6, 0.6, 0.6, 1.0])
POS_COLOR = np.array([1.0, 0.2, 0.2, 1.0])
NEG_COLOR = np.array([0.35, 0.35, 0.35, 0.6])
ZONE_COLORS = ["#ff7f0e", "#d62728", "#9467bd", "#e377c2", "#bcbd22", "#17becf", "#8c564b", "#2ca02c"]


def channel_colormap(name: str, index_among_others: int) -> str:
    """napari colormap name of a channel: nuclear stains blue, others from a cycle."""
    low = str(name).lower()
    if any(low.startswith(n) or low == n for n in NUCLEAR_NAMES):
        return "blue"
    return CHANNEL_CYCLE[index_among_others % len(CHANNEL_CYCLE)]


def category_color_map(categories, *, other: str = "Other") -> dict[str, np.ndarray]:
    """A stable ``{category: RGBA}`` mapping (sorted categories; ``other`` and missing are grey)."""
    cats = sorted({str(c) for c in categories if c is not None and str(c) not in ("nan", "None", other)})
    out = {c: np.r_[PALETTE[i % len(PALETTE)], 1.0] for i, c in enumerate(cats)}
    out[other] = GREY
    return out


def category_colors(values, mapping: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``(N, 4)`` RGBA colours of categorical values (vectorised through pandas codes)."""
    import pandas as pd

    s = pd.Series(values, dtype="object").astype(str)
    mapping = mapping or category_color_map(s.unique())
    cat = pd.Categorical(s)
    table = np.array([mapping.get(c, GREY) for c in cat.categories] + [GREY], dtype=float).reshape(-1, 4)
    codes = np.asarray(cat.codes)
    codes = np.where(codes < 0, len(cat.categories), codes)
    return table[codes]


def binary_colors(pos: np.ndarray) -> np.ndarray:
    """``(N, 4)`` RGBA: positive cells red, negative cells dim grey."""
    pos = np.asarray(pos, dtype=bool)
    return np.where(pos[:, None], POS_COLOR[None, :], NEG_COLOR[None, :])


PROBABILITY_CMAP = "coolwarm"
"""Colormap of a marker's probability preview: negative blue, uncertain grey-white, positive red."""


def _probability_lut(n: int = 256) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps[PROBABILITY_CMAP](np.linspace(0.0, 1.0, n))


_LUT: list[np.ndarray] = []


def probability_colors(prob: np.ndarray) -> np.ndarray:
    """``(N, 4)`` RGBA of probabilities in [0, 1] through :data:`PROBABILITY_CMAP` (one table lookup; NaN grey)."""
    if not _LUT:
        _LUT.append(_probability_lut())
    lut = _LUT[0]
    p = np.asarray(prob, dtype=float)
    idx = np.rint(np.nan_to_num(p, nan=0.0).clip(0.0, 1.0) * (len(lut) - 1)).astype(np.intp)
    out = lut[idx]
    out[~np.isfinite(p)] = GREY
    return out


def class_probability_colors(classes, proba: np.ndarray) -> np.ndarray:
    """``(N, 4)`` RGBA: the colour of each cell's most probable class, its opacity the probability (NaN rows grey)."""
    proba = np.asarray(proba, dtype=float)
    ok = np.isfinite(proba).all(axis=1) if proba.size else np.zeros(len(proba), bool)
    best = np.argmax(np.nan_to_num(proba, nan=-1.0), axis=1) if proba.size else np.zeros(0, int)
    names = np.asarray([str(c) for c in classes], dtype=object)[best]
    out = category_colors(names, category_color_map(classes))
    out[:, 3] = np.where(ok, 0.25 + 0.75 * np.nan_to_num(np.max(proba, axis=1) if proba.size else 0.0), 1.0)
    out[~ok] = GREY
    return out


def mask_colormap(color):
    """One colour for every nonzero value of a 0/1 mask, transparent 0: a two-colour cyclic labels colormap (napari
    maps it with its cached modulo kernel; a direct ``{1: colour}`` map recompiles a numba kernel in every new
    process, about 1 s per napari session)."""
    from napari.utils.colormaps import CyclicLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    return CyclicLabelColormap(colors=[[0.0, 0.0, 0.0, 0.0], transform_color(color)[0]], name="chemozone mask")
