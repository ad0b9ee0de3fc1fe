"""Tissue (explant) mask on the coarse analysis grid.

The mask lives on the analysis grid that :mod:`chemozone.grid` defines (``grid_factor``, ``grid_shape``
and ``block_mean`` are re-exported here for existing callers).

The mask is computed from block means of the image (a lazy dask array is reduced chunk by chunk; the
full-resolution image is never held in memory): each channel is scaled by its own robust range
(1st-99th percentile of the block means), the channels are averaged, smoothed (``smooth_um``),
thresholded (Otsu / triangle / Li or an absolute value on that scaled signal), pieces smaller than
``min_area_um2`` (or than a fifth of the field of view, for small crops) are dropped and holes smaller than
``fill_holes_um2`` filled (larger holes, i.e. tears
and lumina, stay excluded).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .grid import block_mean, grid_factor, grid_shape

__all__ = ["grid_factor", "grid_shape", "block_means", "tissue_mask"]


def block_means(image_cyx, factor: int, channel_indices=None) -> np.ndarray:
    """Float64 block means of a (C, Y, X) image: :func:`chemozone.grid.block_mean` (kept for the API).

    Examples
    --------
    >>> block_means(np.arange(9.0).reshape(1, 3, 3), 2)[0].tolist()
    [[2.0, 3.5], [6.5, 8.0]]
    """
    return block_mean(image_cyx, factor, channel_indices=channel_indices)


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


def _glass_guard(smooth: np.ndarray, thr: float, contrast: float) -> float:
    """Keep an automatic threshold only if its darker class looks like glass.

    A field of view that is all tissue (a Vectra field, a crop of a section) still has a bimodal-looking
    signal: dim and bright tissue. Otsu would then cut the dim tissue away. The darker class counts as
    background only when the brighter class's median is at least ``contrast`` times its median (glass
    is near the floor: ratio < 0.1 on our synthetic explants and on a real .qptiff; dim tissue is about
    0.8 of bright tissue on the real lymphoid and Vectra fields). Otherwise only regions darker than half
    the darker class's median (holes, tears) are excluded.
    """
    lower, upper = smooth[smooth <= thr], smooth[smooth > thr]
    if lower.size == 0 or upper.size == 0:
        return thr
    lo_med, up_med = float(np.median(lower)), float(np.median(upper))
    if up_med > contrast * lo_med:
        return thr
    return 0.5 * lo_med


def tissue_mask(image_cyx, *, pixel_size_um: float, grid_um: float = 2.0, smooth_um: float = 12.0,
                threshold: str | float = "otsu", glass_contrast: float = 3.0, min_area_um2: float = 20000.0,
                fill_holes_um2: float = 2000.0, channel_indices=None) -> tuple[np.ndarray, float]:
    """The explant's tissue on the analysis grid.

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
    min_area_um2, fill_holes_um2 : float
        Smaller tissue pieces are dropped; smaller holes are filled, µm².
    channel_indices : list of int, optional
        Channels combined for the mask (resolve ``tissue.channels`` names with
        :func:`chemozone.io.resolve_channels`); default all.

    Returns
    -------
    mask : ndarray of bool, shape (ceil(Y / f), ceil(X / f))
        True = tissue.
    grid_um : float
        Grid pixel size, ``f * pixel_size_um``.

    Examples
    --------
    >>> img = np.zeros((1, 400, 400)); img[0, 100:300, 100:300] = 50.0
    >>> m, g = tissue_mask(img, pixel_size_um=1.0, grid_um=4, smooth_um=1, min_area_um2=100)
    >>> m.shape, g, int(m.sum()) * g * g
    ((100, 100), 4.0, 40000.0)
    """
    if len(getattr(image_cyx, "shape", ())) != 3:
        raise ValueError(f"image_cyx must be 3-D (C, Y, X), got shape {getattr(image_cyx, 'shape', None)}")
    f = grid_factor(pixel_size_um, grid_um)
    grid_um = f * float(pixel_size_um)
    means = block_means(image_cyx, f, channel_indices)
    signal = np.zeros(means.shape[1:], np.float64)
    for ch in means:
        finite = ch[np.isfinite(ch)]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, [1, 99])
        if hi > lo:
            signal += np.clip((np.nan_to_num(ch, nan=lo) - lo) / (hi - lo), 0, None)
    signal /= max(1, len(means))
    smooth = ndi.gaussian_filter(signal, smooth_um / grid_um, mode="nearest")
    thr = _auto_threshold(smooth, threshold)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        thr = _glass_guard(smooth, thr, glass_contrast)
    mask = smooth > thr
    # drop small pieces
    lab, n = ndi.label(mask)
    if n:
        sizes = np.bincount(lab.ravel()) * grid_um**2
        # a small field of view (a crop, a tiny ROI) may hold less tissue than min_area_um2 in all:
        # a piece covering at least a fifth of the field is then kept
        field_um2 = mask.size * grid_um**2
        keep = sizes >= min(min_area_um2, 0.2 * field_um2)
        keep[0] = False
        mask = keep[lab]
    # fill small holes; large holes (tears) stay excluded
    holes = ndi.binary_fill_holes(mask) & ~mask
    if holes.any():
        hl, _ = ndi.label(holes)
        hs = np.bincount(hl.ravel()) * grid_um**2
        small = hs < fill_holes_um2
        small[0] = False
        mask = mask | small[hl]
    return mask, grid_um
