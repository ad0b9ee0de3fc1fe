"""Tissue (explant) mask on the coarse analysis grid, and which outcome produced it.

The mask lives on the analysis grid that :mod:`chemozone.grid` defines (``grid_factor``, ``grid_shape``
and ``block_mean`` are re-exported here for existing callers).

The mask is computed from block means of the image (a lazy dask array is reduced chunk by chunk; the
full-resolution image is never held in memory):

1. **counts**: a channel whose pixels are integer-valued with many zeros (MIBI / IMC ion counts) gets the
   Anscombe transform ``2 sqrt(block sum + 3/8)`` (unit Poisson noise everywhere, so that dim stroma of a
   few counts is not drowned by bright tumor of hundreds); fluorescence channels are used as they are;
2. **per-channel range**: each channel is scaled by its own robust range (1st-99th percentile of the
   block values; the maximum when that range is empty, as in a channel with counts on under 1 % of the
   field), so that every channel weighs the same whatever its units;
3. the channels are averaged and smoothed (Gaussian, ``smooth_um``);
4. **glass or not**: an automatic threshold (Otsu / triangle / Li) splits the signal in two; the darker
   class counts as glass only if the brighter class is at least ``glass_contrast`` times brighter. With
   glass, the cut sits ``glass_fraction`` of the way from the glass level (the mode of the darker class)
   to the automatic threshold, so dim tissue (stroma next to bright tumor) stays tissue. Without glass
   the whole field is tissue and only regions darker than half the darker class's median (tears, holes)
   are excluded. A number as ``threshold`` is an absolute cut on the scaled signal;
5. pieces smaller than ``min_area_um2`` (or than a fifth of the field of view, for small crops) are
   dropped and holes smaller than ``fill_holes_um2`` filled (larger holes, i.e. tears and lumina, stay
   excluded).

:func:`tissue_mask` returns a :class:`TissueResult`: the mask, the grid pixel size, the **outcome**
(``"tissue_on_glass"``; ``"whole_field"`` when no glass was found or at least :data:`WHOLE_FIELD_FRACTION`
of the field is tissue; ``"no_tissue"`` for an empty mask) and the tissue fraction of the field, which the
batch runner records per sample in ``run.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .gaussian import gaussian_filter
from .grid import block_mean, block_sizes, grid_factor, grid_shape, iter_channel_means
from .progress import active_client

__all__ = ["grid_factor", "grid_shape", "block_means", "tissue_mask", "TissueResult", "count_channels",
           "TISSUE_OUTCOMES"]

TISSUE_OUTCOMES = ("tissue_on_glass", "whole_field", "no_tissue")
"""What :func:`tissue_mask` found: tissue with glass (background) around or between it, a field of view
that is all tissue (only tears and holes excluded), or no tissue at all."""

WHOLE_FIELD_FRACTION = 0.95
"""A mask covering at least this fraction of the field is ``whole_field`` even when dark regions (a tear
showing the glass, an absolute ``threshold``) were excluded."""


@dataclass
class TissueResult:
    """The tissue mask on the analysis grid and how it was reached.

    Attributes
    ----------
    mask : ndarray of bool, shape (ceil(Y / f), ceil(X / f))
        True = tissue.
    grid_um : float
        Grid pixel size, µm (``f * pixel_size_um``).
    outcome : str
        One of :data:`TISSUE_OUTCOMES`.
    fraction : float
        Tissue fraction of the field (``mask.mean()``).
    threshold : float
        The cut applied to the combined, scaled, smoothed signal.
    count_channels : list of int
        Channels (indices into the image) treated as ion counts (Anscombe transform).
    """

    mask: np.ndarray
    grid_um: float
    outcome: str
    fraction: float
    threshold: float = float("nan")
    count_channels: list[int] = field(default_factory=list)


def block_means(image_cyx, factor: int, channel_indices=None) -> np.ndarray:
    """Float64 block means of a (C, Y, X) image: :func:`chemozone.grid.block_mean` (kept for the API).

    Examples
    --------
    >>> block_means(np.arange(9.0).reshape(1, 3, 3), 2)[0].tolist()
    [[2.0, 3.5], [6.5, 8.0]]
    """
    return block_mean(image_cyx, factor, channel_indices=channel_indices)


def count_channels(image_cyx, channel_indices=None, *, window_px: int = 512, min_zero_fraction: float = 0.25
                   ) -> list[int]:
    """Channels that hold ion counts (MIBI / IMC): non-negative integer values with many zeros.

    Judged on a central window of at most ``window_px`` square per channel (a lazy image reads only that
    window): all values integers >= 0 and at least ``min_zero_fraction`` of them zero. Fluorescence (an
    offset, few exact zeros) and float components (inForm) are not counts.

    Parameters
    ----------
    image_cyx : numpy or dask array, shape (C, Y, X)
    channel_indices : list of int, optional
        Channels to test (default all).
    window_px : int
        Side of the central window, pixels.
    min_zero_fraction : float
        Smallest fraction of zero pixels of a count channel.

    Returns
    -------
    list of int
        The image's channel indices judged to be counts.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = np.stack([rng.poisson(0.3, (64, 64)), rng.normal(500, 20, (64, 64))])
    >>> count_channels(img)
    [0]
    """
    _, h, w = image_cyx.shape
    y0, x0 = max(0, (h - window_px) // 2), max(0, (w - window_px) // 2)
    idx = range(image_cyx.shape[0]) if channel_indices is None else channel_indices
    out = []
    for c in idx:
        win = np.asarray(image_cyx[int(c), y0:y0 + window_px, x0:x0 + window_px])
        if win.size == 0:
            continue
        if not np.issubdtype(win.dtype, np.integer):
            finite = win[np.isfinite(win)]
            if finite.size != win.size or not np.array_equal(finite, np.round(finite)):
                continue
        if win.min() >= 0 and np.mean(win == 0) >= min_zero_fraction:
            out.append(int(c))
    return out


def _auto_threshold(values: np.ndarray, method) -> float:
    from skimage import filters

    if isinstance(method, (int, float)) and not isinstance(method, bool):
        return float(method)
    fn = {"otsu": filters.threshold_otsu, "triangle": filters.threshold_triangle, "li": filters.threshold_li}
    if method not in fn:
        raise ValueError(f"tissue.threshold must be 'otsu', 'triangle', 'li' or a number, got {method!r}")
    if np.ptp(values) == 0:
        return float(values.flat[0])
    return float(fn[method](values))


def _tap(i: int, means: np.ndarray, callback) -> np.ndarray:
    if callback is not None:
        callback(i, means)
    return means


def _scaled_signal(means, counts: list[bool], block_px: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Steps 1-3 before smoothing: Anscombe for count channels, robust range per channel, mean.

    ``means`` yields one channel's block means (grid shape, float64) per entry of ``counts`` (a generator: only
    one channel is held at a time; each grid is consumed, i.e. changed in place). The mean (not the maximum) over channels: one
    channel bright on glass (a MIBI ``Background`` mass channel on the bare slide) must not make the glass tissue.
    ``block_px``: the pixels per block of each grid row and column (edge blocks are partial).
    """
    rows, cols = block_px
    signal = np.zeros((rows.size, cols.size), np.float64)
    for ch, is_count in zip(means, counts):
        ok = np.isfinite(ch)
        whole = bool(ok.all())  # the usual case: no copies of the finite values (memory of whole sections)
        if not whole:
            ch = np.where(ok, ch, np.nan)
        if is_count:
            ch = 2.0 * np.sqrt(np.clip(ch, 0, None) * np.outer(rows, cols) + 0.375)
        finite = ch if whole else ch[ok]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, [1, 99])
        if hi <= lo:
            hi = float(finite.max())  # a sparse channel: counts on under 1 % of the field
        del finite
        if hi > lo:
            if whole:  # in place: each grid of ``means`` is this loop's own (no third grid-sized array)
                x = ch
                x -= lo
            else:
                x = np.nan_to_num(ch, nan=lo) - lo
            x /= hi - lo
            signal += np.clip(x, 0, 1, out=x)  # a few blocks far above the 99th percentile (a sham's rare bright
            # producers in a chemokine channel: 100x its range) must not outweigh every other channel
            del x
        del ch, ok  # before the next channel's means are made: one channel grid at a time, not three
    return signal / max(1, len(counts))


def _glass_level(lower: np.ndarray) -> float:
    """The mode of the darker class (the glass), from a smoothed histogram."""
    if lower.size < 16 or float(lower.max()) == float(lower.min()):
        return float(np.median(lower))
    hist, edges = np.histogram(lower, bins=128)
    hist = ndi.gaussian_filter1d(hist.astype(np.float64), 1.5)
    i = int(np.argmax(hist))
    return 0.5 * float(edges[i] + edges[i + 1])


def _split(smooth: np.ndarray, thr: float, contrast: float, glass_fraction: float) -> tuple[float, bool]:
    """Step 4: the cut and whether the darker class of an automatic threshold is glass.

    A field of view that is all tissue (a Vectra field, a crop of a section, a MIBI field) still has a
    bimodal-looking signal: dim and bright tissue. The darker class counts as glass only when the brighter
    class's median is at least ``contrast`` times its median (glass is near the floor: ratio < 0.1 on our
    synthetic explants and on a real .qptiff; dim tissue is about 0.8 of bright tissue on the real lymphoid
    and Vectra fields). With glass the cut moves from the automatic threshold ``glass_fraction`` of the way
    towards the glass level (dim tissue kept); without, only regions darker than half the darker class's
    median (holes, tears) are excluded.
    """
    lower, upper = smooth[smooth <= thr], smooth[smooth > thr]
    if lower.size == 0 or upper.size == 0:
        return thr, lower.size > 0
    lo_med, up_med = float(np.median(lower)), float(np.median(upper))
    if up_med > contrast * lo_med:
        glass = _glass_level(lower)
        return glass + glass_fraction * (thr - glass), True
    return 0.5 * lo_med, False


def _clean(mask: np.ndarray, grid_um: float, min_area_um2: float, fill_holes_um2: float) -> np.ndarray:
    """Step 5: drop small pieces (a fifth of the field is always kept), fill small holes."""
    lab, n = ndi.label(mask)
    if n:
        sizes = np.bincount(lab.ravel()) * grid_um**2
        field_um2 = mask.size * grid_um**2
        keep = sizes >= min(min_area_um2, 0.2 * field_um2)
        keep[0] = False
        mask = keep[lab]
    holes = ndi.binary_fill_holes(mask) & ~mask
    if holes.any():
        hl, _ = ndi.label(holes)
        hs = np.bincount(hl.ravel()) * grid_um**2
        small = hs < fill_holes_um2
        small[0] = False
        mask = mask | small[hl]
    return mask


def tissue_mask(image_cyx, *, pixel_size_um: float, grid_um: float = 2.0, smooth_um: float = 12.0,
                threshold: str | float = "otsu", glass_contrast: float = 3.0, glass_fraction: float = 0.5,
                min_area_um2: float = 20000.0, fill_holes_um2: float = 2000.0, channel_indices=None,
                counts: bool | None = None, channel_means_callback=None) -> TissueResult:
    """The explant's tissue on the analysis grid, and whether the field has glass, is all tissue, or is empty.

    Parameters
    ----------
    image_cyx : numpy or dask array, shape (C, Y, X)
        The image (read block by block when lazy).
    pixel_size_um : float
        Pixel size of the image, µm.
    grid_um : float
        Target pixel size of the analysis grid, µm (``analysis_grid.pixel_size_um``).
    smooth_um : float
        Gaussian sigma before thresholding, µm.
    threshold : {"otsu", "triangle", "li"} or float
        Automatic method, or an absolute value on the combined (range-scaled) signal.
    glass_contrast : float
        An automatic threshold's darker class counts as glass only if the brighter class is at least this
        many times brighter; otherwise the field is all tissue.
    glass_fraction : float
        With glass, the cut lies this fraction of the way from the glass level to the automatic threshold
        (1 = the automatic threshold itself).
    min_area_um2, fill_holes_um2 : float
        Smaller tissue pieces are dropped; smaller holes are filled, µm².
    channel_indices : list of int, optional
        Channels combined for the mask (resolve ``tissue.channels`` names with
        :func:`chemozone.io.resolve_channels`); default all.
    counts : bool, optional
        Treat every channel as ion counts (True) or none (False); default: judged per channel by
        :func:`count_channels`.
    channel_means_callback : callable, optional
        Called as ``callback(channel_index, grid_means)`` with each channel's block means on the grid (float64,
        the mask's shape) as they are computed, before they are used (e.g. a
        :class:`chemozone.overview.OverviewWriter`): whatever else needs every channel at a coarse scale gets it
        without reading the image again.

    Returns
    -------
    TissueResult
        ``mask`` (bool, shape (ceil(Y / f), ceil(X / f))), ``grid_um`` (``f * pixel_size_um``), ``outcome``
        (one of :data:`TISSUE_OUTCOMES`), ``fraction``, ``threshold``, ``count_channels``.

    Raises
    ------
    ValueError
        A non-3-D image or an unknown threshold method.

    Examples
    --------
    >>> img = np.zeros((1, 400, 400)); img[0, 100:300, 100:300] = 50.0
    >>> r = tissue_mask(img, pixel_size_um=1.0, grid_um=4, smooth_um=1, min_area_um2=100)
    >>> r.mask.shape, r.grid_um, int(r.mask.sum()) * r.grid_um ** 2, r.outcome, r.fraction
    ((100, 100), 4.0, 40000.0, 'tissue_on_glass', 0.25)
    """
    if len(getattr(image_cyx, "shape", ())) != 3:
        raise ValueError(f"image_cyx must be 3-D (C, Y, X), got shape {getattr(image_cyx, 'shape', None)}")
    f = grid_factor(pixel_size_um, grid_um)
    grid_um = f * float(pixel_size_um)
    idx = list(range(image_cyx.shape[0])) if channel_indices is None else [int(i) for i in channel_indices]
    is_count = set(count_channels(image_cyx, idx)) if counts is None else (set(idx) if counts else set())
    _, h, w = image_cyx.shape
    block_px = (block_sizes(h, f), block_sizes(w, f))  # pixels per block of each grid row, column
    # one channel's block means at a time: a 40k² section's 15 channels on a 2 µm grid would be 12 GB at once
    # (on a cluster the workers sum the next channel meanwhile)
    means = (_tap(i, m, channel_means_callback) for i, m in iter_channel_means(image_cyx, f, idx, client=active_client()))
    signal = _scaled_signal(means, [i in is_count for i in idx], block_px)
    smooth = gaussian_filter(signal, smooth_um / grid_um, mode="nearest")
    thr = _auto_threshold(smooth, threshold)
    numeric = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    glass = None
    if not numeric:
        thr, glass = _split(smooth, thr, glass_contrast, glass_fraction)
    mask = _clean(smooth > thr, grid_um, min_area_um2, fill_holes_um2)
    fraction = float(mask.mean()) if mask.size else 0.0
    if not mask.any():
        outcome = "no_tissue"
    elif glass is False or fraction >= WHOLE_FIELD_FRACTION:
        outcome = "whole_field"
    else:
        outcome = "tissue_on_glass"
    return TissueResult(mask, grid_um, outcome, fraction, float(thr), sorted(is_count))
