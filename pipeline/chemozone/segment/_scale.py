"""The typical nucleus diameter of an image, from the nuclear channel (``nucleus_diameter_um: auto``).

Scale-space blob detection (Lindeberg's scale-normalised Laplacian of Gaussian), then a direct size
measurement of the detected nuclei:

1. a few crops of the nuclear channel (the most signal-rich of a 3 x 3 pattern; never the whole
   slide), block-averaged so that the smallest diameter searched is ~3 working pixels;
2. the normalised LoG ``-sigma^2 * LoG`` at 6 scales per octave over ``diameter_range_um``; a disc of
   diameter ``d`` peaks at ``sigma = d / (2 sqrt 2)``;
3. scale-space maxima (3 x 3 x 3) above 5 noise sigmas of that scale (the larger of a white-noise
   estimate, Immerkaer 1996, propagated through the filter, and the spread of the response over
   background pixels, which covers correlated and count noise);
4. greedy non-maximum suppression by response (a stronger blob suppresses any weaker one whose centre
   lies inside it), so that chromatin texture inside a nucleus or a half of a nucleus does not count
   as a nucleus of its own;
5. the clear nuclei: blobs whose response is at least half the 90th percentile of the blobs';
6. the size of each: equivalent diameter of the connected region around its centre that stands above
   ``object_fraction`` (0.3, the segmenter's own outline rule) of its peak over the local background,
   within one LoG diameter of the centre; the estimate is the median over blobs.

On the 52 annotated images of nuclei_dsb2018 (``benchmarks/bench_nuclei_dsb2018.py --diameter auto``)
the estimate is within 20 % of the annotated median diameter for most images; see the README.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["estimate_nucleus_diameter_um", "nucleus_scale", "resolve_auto_diameter"]

_K = 2.0 * math.sqrt(2.0)  # diameter of a disc / the LoG scale at which its normalised response peaks
_PER_OCTAVE = 6
_NOISE_K = 5.0
_REL = 0.5
_OBJECT_FRACTION = 0.3
_MAX_BLOBS = 400


def estimate_nucleus_diameter_um(image_yx: Any, *, pixel_size_um: float,
                                 diameter_range_um: Sequence[float] = (3.0, 100.0),
                                 crop_px: int = 512, n_crops: int = 4) -> float:
    """The typical nucleus diameter in µm, estimated from the nuclear channel.

    Parameters
    ----------
    image_yx : array-like, shape (Y, X)
        The nuclear channel (numpy, dask or zarr; only a few crops are read).
    pixel_size_um : float
        Pixel size in µm (1 to work in pixels).
    diameter_range_um : (float, float)
        The smallest and largest diameter searched, µm.
    crop_px : int
        Side of each crop in working pixels (after block-averaging).
    n_crops : int
        At most this many crops are analysed.

    Returns
    -------
    float
        The median diameter of the detected nuclei, µm.

    Raises
    ------
    ValueError
        If no nucleus-like blob stands above the noise (names ``nucleus_diameter_um`` to set by hand).

    Examples
    --------
    >>> yy, xx = np.mgrid[:200, :200]
    >>> img = np.zeros((200, 200))
    >>> for cy in range(20, 200, 40):
    ...     for cx in range(20, 200, 40):
    ...         img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 8 ** 2] = 1.0
    >>> d = estimate_nucleus_diameter_um(img, pixel_size_um=0.5)
    >>> bool(abs(d - 8.0) < 1.2)
    True
    """
    return nucleus_scale(image_yx, pixel_size_um=pixel_size_um, diameter_range_um=diameter_range_um,
                         crop_px=crop_px, n_crops=n_crops)["diameter_um"]


def nucleus_scale(image_yx: Any, *, pixel_size_um: float, diameter_range_um: Sequence[float] = (3.0, 100.0),
                  crop_px: int = 512, n_crops: int = 4) -> dict[str, Any]:
    """:func:`estimate_nucleus_diameter_um` with its details, for ``run.json``.

    Returns
    -------
    dict
        ``diameter_um``, ``n_blobs`` (nuclei measured), ``iqr_um`` (interquartile range of their
        diameters), ``crops`` (``[y0, x0, y1, x1]`` in image pixels), ``working_factor`` (block size),
        ``method``.

    Examples
    --------
    >>> yy, xx = np.mgrid[:120, :120]
    >>> img = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 36) + ((yy - 85) ** 2 + (xx - 70) ** 2 <= 36) * 1.0
    >>> s = nucleus_scale(img, pixel_size_um=1.0)
    >>> s["n_blobs"], round(s["diameter_um"])
    (2, 13)
    """
    dmin, dmax = (float(v) for v in diameter_range_um)
    if not (pixel_size_um and np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    if not (0 < dmin < dmax):
        raise ValueError(f"diameter_range_um must be two increasing positive numbers, got {diameter_range_um!r}")
    if getattr(image_yx, "ndim", None) != 2:
        raise ValueError(f"the nuclear channel must be 2-D (Y, X), got shape {getattr(image_yx, 'shape', None)}")
    factor = max(1, int(dmin / pixel_size_um / 3.0))
    crops = _read_crops(image_yx, factor=factor, crop_px=int(crop_px), n_crops=int(n_crops))
    wpx = pixel_size_um * factor  # µm per working pixel
    lo_px = max(2.0, dmin / wpx)
    hi_px = min(dmax / wpx, max(min(c.shape) for _, c in crops) / 3.0)
    if hi_px <= lo_px * 1.2:
        raise ValueError(f"the image ({tuple(image_yx.shape)} px at {pixel_size_um} µm/px) is too small to "
                         f"estimate nucleus_diameter_um over {dmin}-{dmax} µm; set it to a number")
    sigmas = np.geomspace(lo_px / _K, hi_px / _K, int(round(math.log2(hi_px / lo_px) * _PER_OCTAVE)) + 1)
    found = [_blobs(c, sigmas) for _, c in crops]
    resp = np.concatenate([f[3] for f in found]) if found else np.zeros(0)
    if resp.size == 0:
        raise ValueError("no nucleus-like blobs stand above the noise in the nuclear channel; set "
                         "segmentation.nucleus_diameter_um to a number (µm)")
    floor = _REL * np.percentile(resp, 90)
    diam = []
    for (_, crop), (y, x, d0, r) in zip(crops, found):
        keep = np.argsort(-r)[: _MAX_BLOBS]
        keep = keep[r[keep] >= floor]
        diam += [_object_diameter(crop, y[i], x[i], d0[i]) for i in keep]
    diam = np.array([d for d in diam if d > 0])
    if diam.size == 0:
        raise ValueError("no nucleus-like blobs could be measured in the nuclear channel; set "
                         "segmentation.nucleus_diameter_um to a number (µm)")
    q1, med, q3 = np.percentile(diam, [25, 50, 75]) * wpx
    return {"diameter_um": float(med), "n_blobs": int(diam.size), "iqr_um": [float(q1), float(q3)],
            "crops": [list(map(int, box)) for box, _ in crops], "working_factor": factor,
            "method": "scale-space LoG blobs, median object diameter at 0.3 of peak"}


def _read_crops(image: Any, *, factor: int, crop_px: int, n_crops: int) -> list[tuple[tuple, np.ndarray]]:
    """The ``n_crops`` most signal-rich windows of a 3 x 3 pattern (centre first on ties), block-averaged."""
    from ..grid import block_mean

    h, w = (int(s) for s in image.shape)
    side = crop_px * factor
    ys = sorted({int(v) for v in np.linspace(0, max(0, h - side), 3)})
    xs = sorted({int(v) for v in np.linspace(0, max(0, w - side), 3)})
    boxes = [(y0, x0, min(h, y0 + side), min(w, x0 + side)) for y0 in ys for x0 in xs]
    cy, cx = h / 2, w / 2
    boxes.sort(key=lambda b: (b[0] + b[2] - 2 * cy) ** 2 + (b[1] + b[3] - 2 * cx) ** 2)
    crops = []
    for b in boxes:
        win = np.nan_to_num(np.asarray(image[b[0]:b[2], b[1]:b[3]], dtype=np.float64))
        crops.append((b, block_mean(win, factor) if factor > 1 else win))
    if len(crops) > n_crops:  # most signal first; stable sort keeps the centre first among equals
        order = sorted(range(len(crops)), key=lambda i: -float(crops[i][1].mean()))
        crops = [crops[i] for i in sorted(order[:n_crops])]
    return crops


def _noise_sigma(img: np.ndarray) -> float:
    """White-noise sigma (Immerkaer 1996): mean |Laplacian-difference kernel| scaled."""
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    c = ndi.convolve(img, k, mode="reflect")[1:-1, 1:-1]
    return math.sqrt(math.pi / 2) * float(np.mean(np.abs(c))) / 6.0 if c.size else 0.0


@lru_cache(maxsize=512)
def _log_gain(sigma: float) -> float:
    """Standard deviation of the normalised LoG response to unit white noise at ``sigma``."""
    n = 2 * int(math.ceil(4 * sigma)) + 1
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    return sigma ** 2 * float(np.sqrt((ndi.gaussian_laplace(delta, sigma) ** 2).sum()))


def _normalised_log_stack(img: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """``-(s**2) * ndi.gaussian_laplace(img, s)`` for every ``s`` in ``sigmas``, shape (S, Y, X), by FFT.

    The same truncated kernels and the same ``reflect`` boundary as :func:`scipy.ndimage.gaussian_laplace`
    (the image is padded by reflection by the largest kernel radius and convolved circularly, which is the
    linear convolution on the kept part), so the result equals scipy's up to floating-point rounding
    (``benchmarks/bench_scale_log.py`` compares both); one forward transform serves every scale, which is
    what makes the large scales cheap (direct filtering costs grow with the kernel).
    """
    from scipy import fft

    h, w = img.shape
    radii = [int(4.0 * float(s) + 0.5) for s in sigmas]  # scipy's truncate=4.0 radius
    pad = max(radii)
    ny, nx = fft.next_fast_len(h + 2 * pad, real=True), fft.next_fast_len(w + 2 * pad, real=True)
    padded = np.pad(img, ((pad, ny - h - pad), (pad, nx - w - pad)), mode="symmetric")
    spec = fft.rfft2(padded)
    out = np.empty((len(sigmas), h, w))
    for i, (s, r) in enumerate(zip(sigmas, radii)):
        k0y, k2y = _kernel_spectra(float(s), r, ny, real=False)
        k0x, k2x = _kernel_spectra(float(s), r, nx, real=True)
        kern = np.outer(k2y, k0x) + np.outer(k0y, k2x)
        out[i] = fft.irfft2(spec * kern, s=(ny, nx))[pad:pad + h, pad:pad + w]
        out[i] *= -(float(s) ** 2)
    return out


def _kernel_spectra(sigma: float, radius: int, n: int, *, real: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fourier transforms (length ``n``, centred at index 0) of scipy's order-0 and order-2 Gaussian kernels."""
    from scipy import fft

    delta = np.zeros(2 * radius + 1)
    delta[radius] = 1.0
    spectra = []
    for order in (0, 2):
        k = ndi.gaussian_filter1d(delta, sigma, order=order, mode="constant", truncate=4.0)
        line = np.zeros(n)
        line[: radius + 1] = k[radius:]
        if radius:
            line[-radius:] = k[:radius]
        spectra.append(fft.rfft(line) if real else fft.fft(line))
    return spectra[0], spectra[1]


def _blobs(img: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scale-space maxima above the noise, after non-maximum suppression: (y, x, diameter px, response)."""
    from skimage.filters import threshold_otsu

    lo, hi = np.percentile(img, [1, 99.9])
    if hi <= lo:
        hi = float(img.max())
    if hi <= lo:
        return (np.zeros(0, int),) * 2 + (np.zeros(0),) * 2
    img = (img - lo) / (hi - lo)
    stack = _normalised_log_stack(img, sigmas)
    noise = _noise_sigma(img) * np.array([_log_gain(float(s)) for s in sigmas])
    sm = ndi.gaussian_filter(img, sigmas[0])
    bg = sm <= threshold_otsu(sm) if sm.max() > sm.min() else np.ones(sm.shape, bool)
    if bg.mean() > 0.05:  # spread of the response over background pixels: correlated and count noise
        rb = stack[:, bg]
        noise = np.maximum(noise, 1.4826 * np.median(np.abs(rb - np.median(rb, axis=1)[:, None]), axis=1))
    peaks = (stack == ndi.maximum_filter(stack, size=3, mode="nearest"))
    peaks &= stack > _NOISE_K * np.maximum(noise, 1e-12)[:, None, None]
    peaks[0] = peaks[-1] = False  # a maximum at the range's edge is not a size
    k, y, x = np.nonzero(peaks)
    r = stack[k, y, x]
    order = np.argsort(-r)[: 20 * _MAX_BLOBS]
    k, y, x, r = k[order], y[order], x[order], r[order]
    rad = _K * sigmas[k] / 2
    keep: list[int] = []
    for i in range(len(r)):  # greedy: strongest first; a blob inside a stronger one is dropped
        if keep:
            j = np.asarray(keep)
            if np.any((y[j] - y[i]) ** 2 + (x[j] - x[i]) ** 2 < np.maximum(rad[j], rad[i]) ** 2):
                continue
        keep.append(i)
    j = np.asarray(keep, int)
    return y[j], x[j], 2 * rad[j], r[j]


def _object_diameter(img: np.ndarray, y: int, x: int, d0: float) -> float:
    """Equivalent diameter (px) of the region around ``(y, x)`` above 0.3 of its peak over the local
    background (10th percentile of a window of 1.5 diameters), within ``d0`` of the centre."""
    w = int(math.ceil(1.5 * d0)) + 2
    y0, x0 = max(0, y - w), max(0, x - w)
    win = img[y0:y + w + 1, x0:x + w + 1]
    # count data (most pixels zero) needs more smoothing than a continuous image to give a filled region
    sparse = np.median(win) <= 0 and np.mean(win > 0) < 0.5
    win = ndi.gaussian_filter(win, max(0.5, (0.1 if sparse else 0.04) * d0))
    cy, cx = y - y0, x - x0  # noqa: F841 - the blob centre in the window
    yy, xx = np.ogrid[: win.shape[0], : win.shape[1]]
    rr = np.hypot(yy - cy, xx - cx)
    core = np.where(rr <= max(1.0, 0.25 * d0), win, -np.inf)
    py, px = np.unravel_index(int(np.argmax(core)), core.shape)
    peak, bg = float(win[py, px]), float(np.percentile(win, 10))
    if peak <= bg:
        return 0.0
    lab, _ = ndi.label((win > bg + _OBJECT_FRACTION * (peak - bg)) & (rr <= d0))
    c = lab[py, px]
    if c == 0:
        return 0.0
    return 2.0 * math.sqrt(float((lab == c).sum()) / math.pi)


def resolve_auto_diameter(nuclear_yx: Any, options: dict[str, Any], *, pixel_size_um: float,
                          source: str = "image") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Segmentation keywords with ``nucleus_diameter_um="auto"`` replaced by the estimate for this image.

    ``small_nucleus_diameter_um`` is capped at the estimate. Options with a number are returned unchanged
    (and ``None`` for the record).

    Parameters
    ----------
    nuclear_yx : array-like, shape (Y, X)
        The nuclear channel (lazy arrays: only a few crops are read).
    options : dict
        :func:`chemozone.options.segmentation_options`.
    pixel_size_um : float
    source : str
        Named in the error message (the image file).

    Returns
    -------
    options : dict
        A copy with a number for ``nucleus_diameter_um`` (rounded to 0.01 µm).
    record : dict or None
        :func:`nucleus_scale`'s record, for ``run.json``.

    Raises
    ------
    ImageError
        When no nucleus can be found; names the file and the key to set.

    Examples
    --------
    >>> yy, xx = np.mgrid[:120, :120]
    >>> img = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 36) + ((yy - 85) ** 2 + (xx - 70) ** 2 <= 36) * 1.0
    >>> opts, rec = resolve_auto_diameter(img, {"nucleus_diameter_um": "auto"}, pixel_size_um=1.0)
    >>> round(opts["nucleus_diameter_um"]), rec["n_blobs"]
    (13, 2)
    """
    from ..errors import ImageError

    if options.get("nucleus_diameter_um") != "auto":
        return options, None
    try:
        record = nucleus_scale(nuclear_yx, pixel_size_um=pixel_size_um)
    except ValueError as exc:
        raise ImageError(f"{source}: segmentation.nucleus_diameter_um: auto failed: {exc}") from None
    out = dict(options)
    out["nucleus_diameter_um"] = round(record["diameter_um"], 2)
    small = out.get("small_nucleus_diameter_um")
    if small is not None and small > out["nucleus_diameter_um"]:
        out["small_nucleus_diameter_um"] = out["nucleus_diameter_um"]
    return out, record
