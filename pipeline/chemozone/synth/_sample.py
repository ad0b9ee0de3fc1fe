"""One synthetic sample in memory (:func:`generate_sample`): a scene rendered tile by tile into full
arrays, and the per-cell truth table measured on the rendered labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ConfigError
from ._params import CELL_TYPES, DEFAULT_CHANNELS, MODULES, PIXEL_SIZE_UM, check_channels, truth_parameters
from ._render import render_region
from ._scene import build_scene

if TYPE_CHECKING:
    import pandas as pd

RENDER_TILE_PX = 1024
"""Side of the tiles a scene is rendered in (each tile's noise has its own seed)."""
IN_MEMORY_MAX_PX = 4096 * 4096
"""Largest image :func:`generate_sample` builds in memory (larger: :func:`generate_cohort`, tiled)."""


def render_all(sc: dict[str, Any], sink) -> dict[str, np.ndarray]:
    """Render a scene tile by tile, handing each tile to ``sink(y0, x0, tile)``; returns per-cell sums."""
    H, W = sc["shape"]
    n = len(sc["cells"]["x"])
    cnt = np.zeros(n + 1)
    ncnt = np.zeros(n + 1)
    sx = np.zeros(n + 1)
    sy = np.zeros(n + 1)
    T = RENDER_TILE_PX
    for ty in range(-(-H // T)):
        for tx in range(-(-W // T)):
            y0, x0 = ty * T, tx * T
            y1, x1 = min(y0 + T, H), min(x0 + T, W)
            tile = render_region(sc, y0, y1, x0, x1, seed=np.random.SeedSequence(list(sc["seed_entropy_list"]) + [7, ty, tx]))
            cel = tile["cells"].ravel()
            yy, xx = np.divmod(np.arange(cel.size), x1 - x0)
            cnt += np.bincount(cel, minlength=n + 1)
            ncnt += np.bincount(tile["nuclei"].ravel(), minlength=n + 1)
            sx += np.bincount(cel, weights=xx + x0, minlength=n + 1)
            sy += np.bincount(cel, weights=yy + y0, minlength=n + 1)
            sink(y0, x0, tile)
    return {"count": cnt, "ncount": ncnt, "sx": sx, "sy": sy}


def truth_table(sc: dict[str, Any], sums: dict[str, np.ndarray], sample_id: str) -> pd.DataFrame:
    """One row per cell with a nucleus in the image: centroid, areas (from the rendered ``sums``), type and truth flags.

    Columns: ``sample_id, cell_id`` (uint32), ``x_um, y_um, cell_type, nucleus_area_um2, area_um2, senescent,
    exogenous, damaged, in_tumor``, ``{marker}_pos`` (panel order, extras last), ``{module}_amount``,
    ``in_{module}``.
    """
    import pandas as pd

    c = sc["cells"]
    n = len(c["x"])
    ids = np.arange(1, n + 1)
    keep = sums["ncount"][1:] > 0
    area = sums["count"][1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = sums["sx"][1:] / area
        cy = sums["sy"][1:] / area
    px = PIXEL_SIZE_UM
    df = pd.DataFrame({
        "sample_id": sample_id,
        "cell_id": ids.astype(np.uint32),
        "x_um": cx * px,
        "y_um": cy * px,
        "cell_type": np.array(CELL_TYPES, dtype=object)[c["type"]],
        "nucleus_area_um2": sums["ncount"][1:] * px * px,
        "area_um2": area * px * px,
        "senescent": c["senescent"],
        "exogenous": c["exogenous"],
        "damaged": c["damaged"],
        "in_tumor": c["in_nest"],
    })
    def panel_order(s):
        return (s not in DEFAULT_CHANNELS, DEFAULT_CHANNELS.index(s) if s in DEFAULT_CHANNELS else 0, s)

    for name in sorted(c["pos"], key=panel_order):
        df[f"{name}_pos"] = c["pos"][name]
    for m in MODULES:
        df[f"{m}_amount"] = c["amount"][m]
    for m in MODULES:
        df[f"in_{m}"] = c["in_zone"][m]
    return df[keep].reset_index(drop=True)


def generate_sample(*, size_px: int | tuple[int, int] = 512, dose_gy: float = 0.0, radiation: str = "photon",
                    patient_effects: dict[str, float] | None = None, seed: int = 0,
                    channels: Sequence[str] | None = None, tear: bool = False, out_of_focus: bool = False,
                    sample_id: str = "sample", params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One synthetic explant image with its ground truth, in memory.

    Parameters
    ----------
    size_px : int or (int, int)
        Image side (or (Y, X)) in pixels at 0.5 µm/px; at most 4096² px in memory.
    dose_gy : float
        Physical dose.
    radiation : str
        ``sham``, ``photon``, ``proton`` or ``carbon`` (sets the effectiveness and module conservation).
    patient_effects : dict, optional
        Random effects from :func:`patient_effects` (default: none, all multipliers 1).
    seed : int
        Same seed, same everything.
    channels : sequence of str, optional
        Panel (default :data:`DEFAULT_CHANNELS`); must contain ``DAPI``.
    tear, out_of_focus : bool
        Add a tear (excluded from the tissue) / a blurred patch.
    sample_id : str
        Written into the truth table.
    params : dict, optional
        Truth parameters (default :func:`truth_parameters`).

    Returns
    -------
    dict
        ``image`` uint16 (C, Y, X); ``channels`` list; ``nuclei``, ``cells`` uint32 (Y, X);
        ``tissue``, ``tumor`` uint8 (Y, X); ``zones`` {module: uint8 (Y, X)}; ``truth`` DataFrame (one row
        per cell, see the module docstring); ``info`` dict (realised parameters); ``pixel_size_um``.

    Examples
    --------
    >>> s = generate_sample(size_px=128, dose_gy=10, seed=1)
    >>> s["image"].shape[0] == len(s["channels"]) and s["cells"].dtype.name
    'uint32'
    """
    shape = (int(size_px), int(size_px)) if np.isscalar(size_px) else tuple(int(v) for v in size_px)
    if shape[0] * shape[1] > IN_MEMORY_MAX_PX:
        raise ConfigError(f"generate_sample: size {shape} is larger than 4096² px; use generate_cohort (tiled)")
    ch = check_channels(channels)
    params = params or truth_parameters()
    sc = build_scene(shape, dose_gy=dose_gy, radiation=radiation, patient=patient_effects or {}, seed=seed,
                     channels=ch, params=params, tear=tear, out_of_focus=out_of_focus)
    sc["seed_entropy_list"] = [int(seed)] if isinstance(seed, (int, np.integer)) else list(seed)
    out = {"image": np.zeros((len(ch),) + shape, np.uint16), "nuclei": np.zeros(shape, np.uint32),
           "cells": np.zeros(shape, np.uint32), "tissue": np.zeros(shape, np.uint8),
           "tumor": np.zeros(shape, np.uint8), "zones": {m: np.zeros(shape, np.uint8) for m in MODULES}}

    def sink(y0, x0, t):
        h, w = t["nuclei"].shape
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        out["image"][(slice(None),) + sl] = t["image"]
        for k in ("nuclei", "cells", "tissue", "tumor"):
            out[k][sl] = t[k]
        for m in MODULES:
            out["zones"][m][sl] = t["zones"][m]

    sums = render_all(sc, sink)
    out["truth"] = truth_table(sc, sums, sample_id)
    out["channels"] = ch
    out["info"] = sc["info"]
    out["pixel_size_um"] = PIXEL_SIZE_UM
    return out
