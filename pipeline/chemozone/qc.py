"""QC overview figure of one sample: composite, cell outlines, tissue edge and zone contours.

Display only: intensities are scaled for viewing here (1st–99.5th percentile), never in the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["composite_rgb", "write_qc"]

_COLOURS = {"blue": (0.2, 0.4, 1.0), "green": (0.1, 1.0, 0.2), "red": (1.0, 0.2, 0.2), "magenta": (1.0, 0.2, 1.0)}


def _display_level(img, max_side: int):
    """The coarsest pyramid level with a side >= max_side, else a strided view of level 0 (lazy)."""
    best, step = img.levels[0], 1
    for lvl in img.levels:
        if max(lvl.shape[1:]) >= max_side:
            best = lvl
    side = max(best.shape[1:])
    step = max(1, int(np.ceil(side / max_side)))
    return best[:, ::step, ::step], img.data.shape[1] / best[:, ::step, ::step].shape[1]


def composite_rgb(img, *, channels: dict[str, str] | None = None, max_side: int = 1024,
                  aliases: dict[str, list[str]] | None = None) -> tuple[np.ndarray, float]:
    """An RGB display composite (float, 0–1) of up to four channels, and its downsampling factor.

    Parameters
    ----------
    img : ImageData
    channels : dict, optional
        ``{channel name: colour}`` with colours blue/green/red/magenta; default DAPI blue, panCK green,
        CD45 red (those present).
    """
    from .errors import ChannelError
    from .io import resolve_channels

    wanted = channels or {"DAPI": "blue", "panCK": "green", "CD45": "red"}
    small, factor = _display_level(img, max_side)
    rgb = np.zeros(small.shape[1:] + (3,), np.float32)
    used = 0
    for name, colour in wanted.items():
        try:
            (idx,) = resolve_channels(img.channels, [name], aliases=aliases, source=img.path)
        except ChannelError:
            continue
        plane = np.asarray(small[idx], dtype=np.float32)
        lo, hi = np.percentile(plane, [1, 99.5])
        plane = np.clip((plane - lo) / (hi - lo + 1e-9), 0, 1)
        rgb += plane[..., None] * np.asarray(_COLOURS[colour], np.float32)
        used += 1
    if used == 0:  # no known channel: the first one in grey
        plane = np.asarray(small[0], dtype=np.float32)
        lo, hi = np.percentile(plane, [1, 99.5])
        rgb[:] = np.clip((plane - lo) / (hi - lo + 1e-9), 0, 1)[..., None]
    return np.clip(rgb, 0, 1), factor


def write_qc(path: str | Path, img, masks_store: str | Path, zone_masks: dict[str, np.ndarray], *,
             cfg: Any = None, max_side: int = 1024) -> Path:
    """Write ``qc.png``: composite with cell outlines (yellow), tissue edge (white), zone contours."""
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries

    from .io import labels_pixel_size_um, list_labels_zarr, read_labels_zarr
    from .layout import atomic_path

    aliases = cfg.panel.aliases if cfg is not None else None
    rgb, factor = composite_rgb(img, max_side=max_side, aliases=aliases)
    h, w = rgb.shape[:2]
    px = img.pixel_size_um
    extent_um = (0, img.data.shape[2] * px, img.data.shape[1] * px, 0)
    if "cells" in list_labels_zarr(masks_store):
        step = max(1, int(round(factor)))
        cells = read_labels_zarr(masks_store, "cells", lazy=True)[::step, ::step].compute()
        edges = find_boundaries(cells, mode="inner")
        rgb = rgb.copy()
        rgb[edges[:h, :w]] = rgb[edges[:h, :w]] * 0.3 + np.array([1.0, 0.85, 0.0]) * 0.7
    fig = Figure(figsize=(8, 8 * h / max(w, 1) + 0.6), dpi=110)
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.9])
    ax.imshow(rgb, extent=extent_um, interpolation="nearest")
    palette = ["#ff4fd8", "#00e5ff", "#ffa600", "#7cff4f", "#ff5e5e", "#b18cff"]
    handles = []
    if "tissue" in list_labels_zarr(masks_store):
        tissue = read_labels_zarr(masks_store, "tissue")
        g = labels_pixel_size_um(masks_store, "tissue") or px
        _contour(ax, tissue.astype(float), g, "white", 0.8)
    from matplotlib.lines import Line2D

    for i, (name, m) in enumerate(sorted(zone_masks.items())):
        if not np.any(m) or name.endswith(("_distal", "_margin", "_peritumoral")):
            continue
        g = labels_pixel_size_um(masks_store, "tissue") or px
        colour = palette[i % len(palette)]
        _contour(ax, np.asarray(m, float), g, colour, 1.2)
        handles.append(Line2D([0], [0], color=colour, label=name))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    ax.set_xlim(extent_um[0], extent_um[1])
    ax.set_ylim(extent_um[2], extent_um[3])
    ax.set_xlabel("x (µm)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(f"{Path(str(img.path)).name}: composite, cells (yellow), tissue (white), zones", fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _contour(ax, mask: np.ndarray, grid_um: float, colour: str, lw: float) -> None:
    if mask.size == 0 or mask.min() == mask.max():
        return
    ys = (np.arange(mask.shape[0]) + 0.5) * grid_um
    xs = (np.arange(mask.shape[1]) + 0.5) * grid_um
    ax.contour(xs, ys, mask, levels=[0.5], colors=[colour], linewidths=lw)
