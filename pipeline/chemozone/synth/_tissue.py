"""Tissue layout of a scene on a coarse 4 µm grid: explant outline, optional tear, tumor nests and an
optional out-of-focus patch.

The pieces are drawn in this order from the scene's generator (outline, tear, nests, out-of-focus);
:func:`lay_out_tissue` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ._draws import smooth_field
from ._params import PIXEL_SIZE_UM

TISSUE_GRID_PX = 8
"""Image pixels per tissue-grid cell (per side): 4 µm at 0.5 µm/px."""


@dataclass
class Tissue:
    """Coarse tissue layout; every grid is (gh, gw) = ceil(shape / :data:`TISSUE_GRID_PX`)."""

    grid_px: int
    """Image pixels per grid cell (:data:`TISSUE_GRID_PX`)."""
    grid_um: float
    """Grid cell side, µm."""
    score: np.ndarray
    """float32: > 0 inside the tissue (bilinearly interpolated to pixels by the renderer)."""
    mask: np.ndarray
    """bool: ``score > 0``."""
    edge_dist_um: np.ndarray
    """float64: distance to the tissue edge, µm (the damaged rim)."""
    nest_score: np.ndarray
    """float32: > 0 in tumor nests."""
    nest_fraction: float
    """Target fraction of the tissue in nests."""
    oof: np.ndarray | None
    """float32 weight of the out-of-focus blur in [0, 1], or None."""
    tear_info: dict[str, float] | None
    oof_info: dict[str, Any] | None


def outline_score(rng: np.random.Generator, shape: tuple[int, int], g: int) -> tuple[np.ndarray, float, float]:
    """Irregular explant outline: ``1 - ellipse radius + 0.12 * smooth field`` on the tissue grid.

    Returns
    -------
    score : ndarray
        float64 (gh, gw), > 0 inside the tissue.
    cy, cx : float
        Ellipse centre (px).
    """
    H, W = shape
    px = PIXEL_SIZE_UM
    gh, gw = -(-H // g), -(-W // g)
    gyy, gxx = np.meshgrid((np.arange(gh) + 0.5) * g, (np.arange(gw) + 0.5) * g, indexing="ij")
    cy, cx = H * (0.5 + rng.normal(0, 0.04)), W * (0.5 + rng.normal(0, 0.04))
    ry, rx = 0.47 * H * rng.uniform(0.92, 1.1), 0.47 * W * rng.uniform(0.92, 1.1)
    d = np.sqrt(((gyy - cy) / ry) ** 2 + ((gxx - cx) / rx) ** 2)
    side_um = min(H, W) * px
    corr_outline = max(30.0, 0.1 * side_um) / (g * px)
    score = (1.0 - d) + 0.12 * smooth_field(rng, (gh, gw), corr_outline)
    return score, cy, cx


def cut_tear(rng: np.random.Generator, score: np.ndarray, shape: tuple[int, int], g: int, cy: float,
             cx: float) -> tuple[np.ndarray, dict[str, float]]:
    """A random-walk crack, 8-14 µm wide, across part of the tissue: ``score`` lowered along it.

    Returns
    -------
    score : ndarray
        (gh, gw), the tear excluded (<= 0).
    info : dict
        ``half_width_um``, ``length_um``.
    """
    H, W = shape
    px = PIXEL_SIZE_UM
    gh, gw = score.shape
    grid_um = g * px
    n_steps = 60
    length = rng.uniform(0.4, 0.7) * min(H, W)
    ang = rng.uniform(0, 2 * np.pi)
    turn = np.cumsum(rng.normal(0, 0.08, n_steps)) + ang
    start = np.array([cy, cx]) + rng.normal(0, 0.15, 2) * np.array([H, W])
    steps = np.stack([np.sin(turn), np.cos(turn)], 1) * (length / n_steps)
    pts = start + np.cumsum(steps, 0) - steps.sum(0) / 2
    line = np.zeros((gh, gw), bool)
    fine = np.concatenate([np.linspace(pts[i], pts[i + 1], 6) for i in range(n_steps - 1)])
    iy = np.clip((fine[:, 0] / g).astype(int), 0, gh - 1)
    ix = np.clip((fine[:, 1] / g).astype(int), 0, gw - 1)
    line[iy, ix] = True
    dist_um = ndi.distance_transform_edt(~line) * grid_um
    half = rng.uniform(4.0, 7.0)
    score = np.minimum(score, (dist_um - half - grid_um / 2) / 60.0)
    return score, {"half_width_um": float(half), "length_um": float(length * px)}


def nest_score(rng: np.random.Generator, tissue_mask: np.ndarray, grid_um: float,
               nest_fraction: Sequence[float]) -> tuple[np.ndarray, float]:
    """Tumor nests: a smooth field thresholded so that a fraction (drawn in ``nest_fraction``) of the tissue is nest.

    Returns
    -------
    score : ndarray
        float32 (gh, gw), > 0 in nests.
    fraction : float
        The drawn target fraction.
    """
    nest_field = smooth_field(rng, tissue_mask.shape, 22.0 / grid_um)
    nest_frac = rng.uniform(*nest_fraction)
    q = float(np.quantile(nest_field[tissue_mask], 1 - nest_frac)) if tissue_mask.any() else 0.0
    return (nest_field - q).astype(np.float32), nest_frac


def out_of_focus_patch(rng: np.random.Generator, tissue_mask: np.ndarray,
                       grid_um: float) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """A blurred patch centred on a random tissue cell: weight (float32 (gh, gw)) and info, or (None, None)."""
    gh, gw = tissue_mask.shape
    iy, ix = np.nonzero(tissue_mask)
    if not len(iy):
        return None, None
    k = rng.integers(len(iy))
    r = rng.uniform(0.1, 0.18) * min(gh, gw)
    dd = np.sqrt((np.arange(gh)[:, None] - iy[k]) ** 2 + (np.arange(gw)[None, :] - ix[k]) ** 2)
    oof = np.clip(1.6 * np.exp(-(dd**2) / (2 * r**2)) - 0.3, 0, 1).astype(np.float32)
    info = {"center_um": [float((ix[k] + 0.5) * grid_um), float((iy[k] + 0.5) * grid_um)],
            "radius_um": float(r * grid_um)}
    return oof, info


def lay_out_tissue(rng: np.random.Generator, shape: tuple[int, int], *, nest_fraction: Sequence[float],
                   tear: bool, out_of_focus: bool) -> Tissue:
    """Outline, tear (optional), nests and out-of-focus patch (optional), drawn in that order.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scene's generator.
    shape : (int, int)
        Image shape (Y, X), px.
    nest_fraction : (float, float)
        Range of the fraction of the tissue in nests.
    tear, out_of_focus : bool
        Add a tear / an out-of-focus patch.
    """
    g = TISSUE_GRID_PX
    grid_um = g * PIXEL_SIZE_UM
    score, cy, cx = outline_score(rng, shape, g)
    tear_info = None
    if tear:
        score, tear_info = cut_tear(rng, score, shape, g, cy, cx)
    tissue_score = score.astype(np.float32)
    tissue_mask = tissue_score > 0
    edge_dist_um = ndi.distance_transform_edt(tissue_mask) * grid_um
    nests, nest_frac = nest_score(rng, tissue_mask, grid_um, nest_fraction)
    oof, oof_info = out_of_focus_patch(rng, tissue_mask, grid_um) if out_of_focus else (None, None)
    return Tissue(grid_px=g, grid_um=grid_um, score=tissue_score, mask=tissue_mask, edge_dist_um=edge_dist_um,
                  nest_score=nests, nest_fraction=nest_frac, oof=oof, tear_info=tear_info, oof_info=oof_info)
