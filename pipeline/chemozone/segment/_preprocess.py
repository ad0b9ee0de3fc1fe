"""Per-pixel preprocessing of the classical nuclear segmenter: background, smoothing, blob map.

Every step is a per-pixel computation on a block grid aligned to the whole image, so a window of a
larger image gets bit-identical values wherever it has :func:`_context_px` of context.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..gaussian import gaussian_filter


def _correlate_box(a: np.ndarray, size: int) -> np.ndarray:
    """Box mean by explicit correlation (each output computed independently, so values do not depend
    on where the array starts, unlike the running sum of ``uniform_filter``)."""
    w = np.full(size, 1.0 / size)
    a = ndi.correlate1d(a, w, axis=0, mode="nearest")
    return ndi.correlate1d(a, w, axis=1, mode="nearest")


def _upsample_linear(a: np.ndarray, f: int, axis: int) -> np.ndarray:
    """Bilinear upsampling by an integer factor along one axis (``ndi.zoom(order=1, grid_mode=True,
    mode="nearest")``), with weights that depend only on the position inside the block."""
    n = a.shape[axis]
    r = np.arange(f)
    c = (r + 0.5) / f - 0.5
    lo_off = np.floor(c).astype(np.int64)
    w = (c - lo_off).astype(a.dtype)
    q = np.repeat(np.arange(n), f)
    rr = np.tile(r, n)
    lo = np.clip(q + lo_off[rr], 0, n - 1)
    hi = np.clip(q + lo_off[rr] + 1, 0, n - 1)
    shape = [1] * a.ndim
    shape[axis] = -1
    wv = w[rr].reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - wv) + np.take(a, hi, axis=axis) * wv


def _background_geometry(size_px: float) -> tuple[int, int, int]:
    """Block factor ``f``, opening side ``k`` and box side ``u`` (both in blocks) of :func:`_background`."""
    f = max(1, int(size_px // 8))
    k = max(3, int(round(size_px / f)) | 1)
    u = max(3, (k // 2) | 1)
    return f, k, u


def _block_min_rows(a: np.ndarray, offset: int, f: int) -> np.ndarray:
    """Minimum over blocks of ``f`` rows of the global grid, ``a[0]`` being row ``offset`` of its block (so
    the first block has ``f - offset`` rows and the last may be partial): the block minima of an image
    padded with its edge values to whole blocks, without the padded copy."""
    h = a.shape[0]
    first = min(h, f - offset) if offset else 0
    n_full = (h - first) // f
    rest = h - first - n_full * f
    parts = [a[:first].min(axis=0, keepdims=True)] if first else []
    if n_full:
        parts.append(a[first : first + n_full * f].reshape(n_full, f, *a.shape[1:]).min(axis=1))
    if rest:
        parts.append(a[h - rest :].min(axis=0, keepdims=True))
    return np.concatenate(parts, axis=0)


def _background(img: np.ndarray, size_px: float, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Smooth estimate of the background: grey opening with a square of side ``size_px``.

    Computed on a block-minimum reduced copy (factor ``f`` ~ size/8) so the cost does not grow with
    the nucleus size, then bilinearly resampled to full resolution. The blocks are aligned to the
    image's global pixel grid (``origin`` = global position of ``img[0, 0]``) and every step is a
    per-pixel computation, so a window of a larger image gets bit-identical values wherever it has
    :func:`_context_px` of context.
    """
    f, k, u = _background_geometry(size_px)
    if f > 1:
        by, bx = origin[0] % f, origin[1] % f
        small = _block_min_rows(_block_min_rows(img, by, f).T, bx, f).T
    else:
        small = img
    opened = ndi.grey_opening(small, size=(k, k), mode="nearest")
    opened = _correlate_box(opened, u).astype(np.float32)
    if f > 1:
        up = _upsample_linear(_upsample_linear(opened, f, 0), f, 1)
        up = up[by : by + img.shape[0], bx : bx + img.shape[1]]
        # opening is <= image; the resampled surface may exceed it slightly: clip to keep a top-hat
        return np.minimum(up, img)
    return opened


def _gauss_radius(sigma: float) -> int:
    return int(4.0 * sigma + 0.5)  # scipy's default truncate = 4


def _context_px(d_px: float, opts: dict[str, Any]) -> int:
    """Pixels of context the per-pixel preprocessing (background, smoothing, seed map, local
    threshold) of the classical segmenter needs: beyond this distance from a window's edge its
    values equal those of the whole image."""
    r = 0
    if opts["background_factor"] > 0:
        f, k, u = _background_geometry(opts["background_factor"] * d_px)
        r += f * (2 * (k // 2) + u // 2 + 2) + f
    r += _gauss_radius(max(0.5, opts["smooth_factor"] * d_px))
    extra = _gauss_radius(max(0.5, opts["seed_sigma_factor"] * d_px)) + _gauss_radius(max(0.5, 0.08 * d_px))
    if opts["threshold"] == "local":
        extra = max(extra, _gauss_radius(((int(4 * d_px) | 1) - 1) / 6) + 1)
    return int(r + extra + 1)


def _finite_fill(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float32, copy=True)
    if not np.all(np.isfinite(img)):
        finite = img[np.isfinite(img)]
        img[~np.isfinite(img)] = float(finite.min()) if finite.size else 0.0
    return img


def _preprocess(img: np.ndarray, d_px: float, opts: dict[str, Any], origin=(0, 0)):
    """Background-corrected, denoised image and the brighter-scale blob map (both float32)."""
    if opts["background_factor"] > 0:
        img = img - _background(img, opts["background_factor"] * d_px, origin)
    smooth = gaussian_filter(img, max(0.5, opts["smooth_factor"] * d_px), mode="nearest")
    blob = gaussian_filter(smooth, max(0.5, opts["seed_sigma_factor"] * d_px), mode="nearest")
    return smooth, blob


def _local_threshold(smooth: np.ndarray, d_px: float) -> np.ndarray:
    from skimage import filters

    return filters.threshold_local(smooth, block_size=int(4 * d_px) | 1, method="gaussian", mode="nearest")
