"""QC overview figure of one sample: a lineage composite, cell outlines, tissue edge and zone contours.

The composite is the nuclear channel plus lineage channels chosen from the config
(:func:`choose_qc_channels`: tumour/epithelium, leukocytes, a chemokine), or the channels the user
names in ``run.qc_channels``. Each channel is scaled by its own percentiles of the tissue pixels and the
channels are added in distinct colours; the legend names them. Display only: intensities are scaled
for viewing here, never in the data. The full-resolution image is never read at once: the composite
comes from the coarsest pyramid level that is large enough, block-averaged (:func:`chemozone.grid.block_mean`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["QC_COLOURS", "QcChannel", "choose_qc_channels", "composite_rgb", "qc_figure", "write_qc"]

QC_COLOURS: dict[str, tuple[float, float, float]] = {
    "blue": (0.15, 0.35, 1.0), "green": (0.1, 0.9, 0.1), "red": (1.0, 0.12, 0.12), "magenta": (0.9, 0.15, 0.9),
}
"""Display colours (RGB, 0–1), in the order channels get them."""
_ROLE_COLOUR = {"nuclear": "blue", "tumour": "green", "leukocyte": "red", "chemokine": "magenta"}
TUMOUR_DEFAULTS = ("panCK", "PanKeratin", "Pan-Cytokeratin", "Keratin", "CK", "ECadherin", "EpCAM")
"""Epithelial channels tried (in order) after the config's tumour markers."""
PAN_LEUKOCYTE = ("CD45", "PTPRC")
"""Leukocyte channels tried before the config's immune markers."""
LEUKOCYTE_DEFAULTS = ("CD3", "CD3e")
"""Leukocyte channels tried after the config's immune markers: CD45, else the config's, else CD3."""


class QcChannel(NamedTuple):
    """One channel of the QC composite: its name in the image, its role, and its colour."""

    channel: str
    role: str
    colour: str


def choose_qc_channels(channels: Sequence[str], *, nuclear_channel: str = "DAPI",
                       tumour_markers: Sequence[str] = (), leukocyte_markers: Sequence[str] = (),
                       chemokine_markers: Sequence[str] = (), override: Sequence[str] | None = None,
                       aliases: dict[str, list[str]] | None = None) -> list[QcChannel]:
    """The channels of the QC composite: nuclear (blue), tumour (green), leukocyte (red), chemokine (magenta).

    Each role takes the first of its candidates the image has: tumour, the config's markers then
    :data:`TUMOUR_DEFAULTS`; leukocyte, CD45/PTPRC, then the config's immune markers, then CD3; chemokine,
    the config's pixel zones. A role with no channel in the image is left out; a channel is used once.
    ``override`` (``run.qc_channels``) replaces the choice: those channels, in that order, coloured blue,
    green, red, magenta.

    Parameters
    ----------
    channels : sequence of str
        The image's channel names.
    nuclear_channel : str
        ``panel.nuclear_channel``.
    tumour_markers, leukocyte_markers, chemokine_markers : sequence of str
        Candidates from the config (:func:`chemozone.options.qc_options`).
    override : sequence of str, optional
        ``run.qc_channels``: at most four channel names.
    aliases : dict, optional
        ``panel.aliases``.

    Returns
    -------
    list of QcChannel
        ``(channel name as in the image, role, colour)``.

    Raises
    ------
    ConfigError
        If a channel of ``override`` is not in the image (names ``run.qc_channels`` and the channel).

    Examples
    --------
    >>> ch = ["Background", "CD3", "HH3", "PanKeratin", "CD45"]
    >>> [c.channel for c in choose_qc_channels(ch, nuclear_channel="HH3")]
    ['HH3', 'PanKeratin', 'CD45']
    """
    from .errors import ChannelError, ConfigError
    from .io import resolve_channels

    def find(name: str) -> str | None:
        try:
            (i,) = resolve_channels(channels, [name], aliases=aliases)
        except ChannelError:
            return None
        return channels[i]

    if override:
        out = []
        for name, colour in zip(override, QC_COLOURS):
            hit = find(name)
            if hit is None:
                raise ConfigError(f"run.qc_channels: channel '{name}' is not in the image (channels: "
                                  f"{list(channels)}); fix the name or map it with panel.aliases")
            out.append(QcChannel(hit, "chosen", colour))
        return out
    roles = {"nuclear": [nuclear_channel], "tumour": [*tumour_markers, *TUMOUR_DEFAULTS],
             "leukocyte": [*PAN_LEUKOCYTE, *leukocyte_markers, *LEUKOCYTE_DEFAULTS], "chemokine": list(chemokine_markers)}
    out: list[QcChannel] = []
    for role, candidates in roles.items():
        for name in candidates:
            hit = find(name)
            if hit is not None and hit not in [c.channel for c in out]:
                out.append(QcChannel(hit, role, _ROLE_COLOUR[role]))
                break
    return out


def _display_planes(img, indices: list[int], max_side: int) -> tuple[np.ndarray, float]:
    """``(C', y, x)`` float planes of these channels, at most ~``max_side`` on the longer side, and the
    downsampling factor relative to the full-resolution image. Read lazily (pyramid level, block mean)."""
    from .grid import block_mean

    levels = list(getattr(img, "levels", None) or [img.data])
    best = levels[0]
    for lvl in levels:
        if max(lvl.shape[1:]) >= max_side:
            best = lvl
    step = max(1, int(np.ceil(max(best.shape[1:]) / max_side)))
    planes = block_mean(best, step, channel_indices=indices, dtype=np.float32)
    return planes, img.data.shape[1] / planes.shape[1]


def _display_range(plane: np.ndarray, inside: np.ndarray | None) -> tuple[np.ndarray, float, float]:
    """A plane for display and its (lo, hi): 1st–99.5th percentile of the tissue pixels. Count data (most
    pixels zero) is smoothed (sigma 1 display pixel) and shown from its median, so that scattered single
    counts do not fill the field; a higher percentile or the maximum is used when the 99.5th is no higher."""
    from scipy import ndimage as ndi

    vals = plane[inside] if inside is not None and inside.any() else plane.ravel()
    sparse = bool(vals.size) and np.mean(vals <= 0) > 0.5
    if sparse:  # counts (MIBI, IMC): a few counts per cell, so smooth, and start at the median count level
        plane = ndi.gaussian_filter(plane, 1.0)
        vals = plane[inside] if inside is not None and inside.any() else plane.ravel()
    if not vals.size:
        return plane, 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, [50 if sparse else 1, 99.5]))
    if hi <= lo:
        hi = float(np.percentile(vals, 99.9))
    if hi <= lo:
        hi = float(vals.max())
    return plane, lo, hi


def composite_rgb(img, *, channels: Sequence[QcChannel], tissue: np.ndarray | None = None,
                  max_side: int = 1024) -> tuple[np.ndarray, float, list[dict[str, Any]]]:
    """An RGB display composite (float, 0–1): each channel scaled by its own range, added in its colour.

    Parameters
    ----------
    img : ImageData
    channels : sequence of QcChannel
        From :func:`choose_qc_channels`.
    tissue : ndarray of bool, optional
        The tissue mask (any grid); percentiles are taken over tissue pixels.
    max_side : int
        The composite's longer side, about.

    Returns
    -------
    rgb : ndarray, shape (y, x, 3), float32
    factor : float
        Full-resolution pixels per composite pixel.
    scales : list of dict
        Per channel: ``channel``, ``role``, ``colour``, ``lo``, ``hi`` (display range, image units; ``hi``
        equal to ``lo`` means the channel is empty).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> data = np.zeros((2, 40, 40)); data[0, 10:20, 10:20] = 5; data[1, 25:35, 5:15] = 9
    >>> img = SimpleNamespace(data=data, levels=[data], channels=["DAPI", "CD45"])
    >>> rgb, f, s = composite_rgb(img, channels=[QcChannel("DAPI", "nuclear", "blue"), QcChannel("CD45", "leukocyte", "red")])
    >>> rgb.shape, f, [x["channel"] for x in s]
    ((40, 40, 3), 1.0, ['DAPI', 'CD45'])
    """
    idx = [list(img.channels).index(c.channel) for c in channels]
    if not idx:  # nothing chosen: the first channel in grey
        idx, channels = [0], [QcChannel(img.channels[0], "first channel", "grey")]
    planes, factor = _display_planes(img, idx, max_side)
    inside = None
    if tissue is not None and np.asarray(tissue).size:
        t = np.asarray(tissue, bool)
        ry = np.minimum((np.arange(planes.shape[1]) * t.shape[0] / planes.shape[1]).astype(int), t.shape[0] - 1)
        rx = np.minimum((np.arange(planes.shape[2]) * t.shape[1] / planes.shape[2]).astype(int), t.shape[1] - 1)
        inside = t[np.ix_(ry, rx)]
    rgb = np.zeros(planes.shape[1:] + (3,), np.float32)
    scales = []
    for plane, ch in zip(planes, channels):
        plane, lo, hi = _display_range(plane, inside)
        colour = np.asarray(QC_COLOURS.get(ch.colour, (0.8, 0.8, 0.8)), np.float32)
        if hi > lo:
            rgb += np.clip((plane - lo) / (hi - lo), 0, 1)[..., None] * colour
        scales.append({"channel": ch.channel, "role": ch.role, "colour": ch.colour, "lo": lo, "hi": max(hi, lo)})
    return np.clip(rgb, 0, 1), factor, scales


def qc_figure(img, masks_store: str | Path, zone_masks: dict[str, np.ndarray], *, nuclear_channel: str = "DAPI",
              tumour_markers: Sequence[str] = (), leukocyte_markers: Sequence[str] = (),
              chemokine_markers: Sequence[str] = (), override: Sequence[str] | None = None,
              aliases: dict[str, list[str]] | None = None, max_side: int = 1024):
    """The QC figure (a matplotlib ``Figure``): the lineage composite with a legend of its channels, cell
    outlines (yellow), tissue edge (white) and zone contours.

    Parameters
    ----------
    img : ImageData
    masks_store : path
        The sample's ``masks.zarr`` (``cells`` and ``tissue`` are drawn when present).
    zone_masks : dict of str to ndarray
        Zone masks on the tissue mask's grid.
    nuclear_channel, tumour_markers, leukocyte_markers, chemokine_markers, override, aliases
        As for :func:`choose_qc_channels` (:func:`chemozone.options.qc_options` builds them from the config).
    max_side : int
        The composite's longer side, about (display pixels).
    """
    from .io import labels_pixel_size_um, list_labels_zarr, read_labels_zarr

    chosen = choose_qc_channels(img.channels, nuclear_channel=nuclear_channel, tumour_markers=tumour_markers,
                                leukocyte_markers=leukocyte_markers, chemokine_markers=chemokine_markers,
                                override=override, aliases=aliases)
    stored = list_labels_zarr(masks_store)
    tissue = read_labels_zarr(masks_store, "tissue").astype(bool) if "tissue" in stored else None
    rgb, factor, scales = composite_rgb(img, channels=chosen, tissue=tissue, max_side=max_side)
    if "cells" in stored:
        step = max(1, int(round(factor)))
        rgb = _outline(rgb, strided_labels(masks_store, "cells", step))
    grid_um = (labels_pixel_size_um(masks_store, "tissue") or img.pixel_size_um) if tissue is not None else None
    return _figure(rgb, img, tissue, grid_um, zone_masks, scales)


def strided_labels(masks_store: str | Path, name: str, step: int) -> np.ndarray:
    """``labels[::step, ::step]`` of a stored label image, read from the coarsest pyramid level that holds
    exactly those pixels (level ``k`` is ``labels[::2**k, ::2**k]``, so level ``k`` with ``2**k`` dividing
    ``step``, strided by ``step / 2**k``): a whole section's outline costs a small level, not the full one.

    Examples
    --------
    >>> import tempfile
    >>> from chemozone.io import write_labels_zarr
    >>> lab = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64)
    >>> d = tempfile.mkdtemp()
    >>> _ = write_labels_zarr(f"{d}/m.zarr", "cells", lab, pixel_size_um=1.0)
    >>> bool(np.array_equal(strided_labels(f"{d}/m.zarr", "cells", 6), lab[::6, ::6]))
    True
    """
    from .io import read_labels_pyramid

    levels = read_labels_pyramid(masks_store, name)
    k = 0
    while k + 1 < len(levels) and step % (2 ** (k + 1)) == 0:
        k += 1
    sub = step // 2 ** k
    return np.asarray(levels[k][::sub, ::sub].compute())


def write_qc(path: str | Path, img, masks_store: str | Path, zone_masks: dict[str, np.ndarray],
             **options: Any) -> Path:
    """Write ``qc.png`` (:func:`qc_figure`; ``options`` are its keywords) atomically; returns the path."""
    from .layout import atomic_path

    fig = qc_figure(img, masks_store, zone_masks, **options)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _outline(rgb: np.ndarray, cells: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    h, w = rgb.shape[:2]
    edges = find_boundaries(cells, mode="inner")[:h, :w]
    rgb = rgb.copy()
    rgb[: edges.shape[0], : edges.shape[1]][edges] = (rgb[: edges.shape[0], : edges.shape[1]][edges] * 0.3
                                                      + np.array([1.0, 0.85, 0.0]) * 0.7)
    return rgb


def _figure(rgb, img, tissue, grid_um, zone_masks, scales):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    h, w = rgb.shape[:2]
    px = img.pixel_size_um
    extent_um = (0, img.data.shape[2] * px, img.data.shape[1] * px, 0)
    fig = Figure(figsize=(8, 8 * h / max(w, 1) + 0.6), dpi=110)
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.9])
    ax.imshow(rgb, extent=extent_um, interpolation="nearest")
    contour_side = 2 * max(h, w)  # contours need no more detail than twice the composite's pixels
    if tissue is not None:
        _contour(ax, tissue, grid_um, "white", 0.8, max_side=contour_side)
    palette = ["#ff4fd8", "#00e5ff", "#ffa600", "#7cff4f", "#ff5e5e", "#b18cff"]
    handles = []
    for i, (name, m) in enumerate(sorted(zone_masks.items())):
        if not np.any(m) or name.endswith(("_distal", "_margin", "_peritumoral")):
            continue
        colour = palette[i % len(palette)]
        _contour(ax, m, grid_um or px, colour, 1.2, max_side=contour_side)
        handles.append(Line2D([0], [0], color=colour, label=f"zone {name}"))
    channel_handles = [Patch(color=QC_COLOURS.get(s["colour"], (0.8, 0.8, 0.8)),
                             label=_legend_label(s)) for s in scales]
    first = ax.legend(handles=channel_handles, loc="upper left", fontsize=7, framealpha=0.7, title="composite",
                      title_fontsize=7)
    if handles:
        ax.add_artist(first)
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    ax.set_xlim(extent_um[0], extent_um[1])
    ax.set_ylim(extent_um[2], extent_um[3])
    ax.set_xlabel("x (µm)", fontsize=7)
    ax.tick_params(labelsize=6)
    names = ", ".join(f"{s['channel']} ({s['colour']})" for s in scales)
    ax.set_title(f"{Path(str(img.path)).name}: {names}; cells (yellow), tissue (white), zones", fontsize=8)
    return fig


def _legend_label(s: dict[str, Any]) -> str:
    role = "" if s["role"] == "chosen" else f" ({s['role']})"
    empty = ", empty" if s["hi"] <= s["lo"] else ""
    return f"{s['channel']}{role}: {s['colour']}{empty}"


def _contour(ax, mask: np.ndarray, grid_um: float, colour: str, lw: float, *, max_side: int):
    """The 0.5 contour of a bool grid mask; a mask longer than ``max_side`` is first reduced to the fraction of
    each k × k block (a whole section's 10⁸-pixel grid would otherwise cost gigabytes inside matplotlib)."""
    mask = np.asarray(mask, bool)
    if mask.size == 0 or not mask.any() or mask.all():
        return None
    k = max(1, int(np.ceil(max(mask.shape) / max(int(max_side), 1))))
    if k == 1:
        frac = mask.astype(np.float32)
    else:
        import dask.array as da

        from .grid import block_mean

        frac = block_mean(da.from_array(mask.view(np.uint8), chunks=k * 512), k, dtype=np.float32)
    ys = (np.arange(frac.shape[0]) * k + 0.5 * k) * grid_um
    xs = (np.arange(frac.shape[1]) * k + 0.5 * k) * grid_um
    return ax.contour(xs, ys, frac, levels=[0.5], colors=[colour], linewidths=lw)
