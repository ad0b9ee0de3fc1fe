"""The classical nuclear segmenter (``method="watershed"``): no weights, scale-free.

Every length is derived from ``nucleus_diameter_um`` (``d``, in pixels below) and every intensity
decision from the image's own statistics, so that the same parameters work for uint8, uint16 and
float images of any range:

1. background: morphological opening with a square of side ``2 d`` (computed on a block-reduced
   copy, then smoothed and resampled), subtracted (a rolling-ball-like white top-hat);
2. denoising: Gaussian with sigma ``max(0.5 px, 0.04 d)``;
3. detection: half-way (``detect_fraction``) between the background level and the automatic
   threshold (Otsu / Li / triangle / local, or an absolute value), never below a noise floor of
   ``noise_k`` robust sigmas of the background (a tile without nuclei stays empty); the sigma is
   the smaller of a median-based and a histogram-mode-based estimate, so that in dense fields the
   dim nuclei below the threshold do not inflate it;
4. seeds: maxima, at least ``0.25 d`` apart, of the distance transform of the foreground (capped at
   ``distance_cap_factor`` x ``d`` = half a diameter, so that touching nuclei merged into a large
   region are split by brightness rather than by the region's shape) times the square root of the
   intensity smoothed at ``0.12 d`` (shape and brightness together split touching nuclei);
5. watershed of the inverted seed map inside the foreground;
6. per-object refinement: each nucleus ends where its intensity falls below ``object_fraction``
   (0.3) of its own peak (dim and bright nuclei both get their own half-max-like outline), holes
   filled, only the largest piece kept;
7. size filters in µm² (``min_area_um2``, ``max_area_um2``; default 0.15x and 8x a disc of the
   nucleus diameter).

Every intensity statistic (threshold, background level, noise floor, seed-map scale) is image-level:
:func:`nuclei_statistics` estimates it from a lattice of at most ~4 Mpx of the preprocessed image;
:func:`chemozone.segment.segment_image` gathers that lattice tile by tile in a cheap first pass and
passes the statistics to every tile, and the preprocessing is per-pixel with a global block grid, so a
tiled run reproduces the whole-image labels exactly.

On the 52 real images of nuclei_dsb2018 with ``nucleus_diameter_um: auto`` this gives F1@0.5 = 0.772, mAP
0.470 (textbook watershed given the same diameter 0.726, 0.767 with its seed spacing tuned on those images;
0.860 with each image's annotated diameter, an oracle); on a dense real Vectra field with one diameter
(7.75 µm) F1@0.5 = 0.537 against inForm's nuclei (0.27 before the dense-field changes); see
``benchmarks/bench_nuclei_dsb2018.py`` and ``benchmarks/bench_nuclei_real.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..gaussian import gaussian_filter
from ._labels import _distance_capped, _fill_holes_labels, _fill_small_holes, _largest_piece, _open3, _size_filter
from ._lattice import _lattice, _lattice_step
from ._preprocess import _finite_fill, _local_threshold, _preprocess
from ._validate import _validate_2d, _validate_scale

NUCLEI_DEFAULTS: dict[str, Any] = {
    "threshold": "otsu",  # otsu | li | triangle | local | float (absolute, on the corrected image)
    "background_factor": 2.0,  # opening side = factor * diameter (0 = no background correction)
    "smooth_factor": 0.04,  # Gaussian sigma = factor * diameter (>= 0.5 px)
    "noise_k": 5.0,  # threshold floor: background median + k robust sigmas
    "detect_fraction": 0.5,  # detection threshold between background (0) and the automatic one (1)
    "seed_map": "product",  # distance | intensity | product (distance x sqrt(intensity))
    "seed_sigma_factor": 0.12,  # smoothing of the intensity for seeds = factor * diameter
    "seed_distance_factor": 0.25,  # min distance between seeds = factor * diameter
    "distance_cap_factor": 0.5,  # the seed map's distance saturates at factor * diameter (0 = never)
    "seed_h_factor": 0.0,  # seeds must stand this fraction of the map's maximum above their saddle
    "object_fraction": 0.3,  # each nucleus ends where it falls below this fraction of its own peak
    "min_area_um2": None,  # default 0.15 x the area of a disc of nucleus_diameter_um
    "max_area_um2": None,  # default 8 x that area
}


def _watershed_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(NUCLEI_DEFAULTS))
    if unknown:
        raise TypeError(f"segment_nuclei(method='watershed') got unknown options {unknown}; "
                        f"valid: {sorted(NUCLEI_DEFAULTS)}")
    return {**NUCLEI_DEFAULTS, **options}


_STAT_KEYS = ("threshold", "background_level", "noise_floor", "seed_scale")


def _nuclear_samples(img: np.ndarray, d_px: float, opts: dict[str, Any], *, origin, region, step) -> dict:
    """First pass of a tile: the preprocessed values on the global lattice inside ``region``."""
    img = _finite_fill(np.asarray(img))
    smooth, blob = _preprocess(img, d_px, opts, origin)
    return _lattice_samples(smooth, blob, d_px, opts, origin=origin, region=region, step=step)


def _lattice_samples(smooth: np.ndarray, blob: np.ndarray, d_px: float, opts: dict[str, Any], *, origin, region,
                     step) -> dict:
    """``smooth``, ``blob`` (and the local threshold) on the global lattice inside ``region``."""
    out = {"smooth": _lattice(smooth, origin, region, step).ravel(),
           "blob": _lattice(blob, origin, region, step).ravel()}
    if opts["threshold"] == "local":
        out["local"] = _lattice(_local_threshold(smooth, d_px), origin, region, step).ravel()
    return out


def _statistics_from_samples(samples: dict, opts: dict[str, Any]) -> dict[str, Any]:
    """Image-level intensity statistics of the classical segmenter from lattice samples.

    ``threshold`` (the automatic threshold; None for ``local``), ``background_level`` (median of
    the pixels below it), ``noise_floor`` (background + ``noise_k`` robust sigmas of the lower
    tail; nuclei cannot inflate it) and ``seed_scale`` (95th percentile of the background-subtracted
    blob map inside the foreground, the brightness at which the seed map saturates).
    """
    from skimage import filters

    s = np.asarray(samples["smooth"], np.float32)
    method = opts["threshold"]
    numeric = isinstance(method, (int, float)) and not isinstance(method, bool)
    if s.size == 0 or float(s.max()) == float(s.min()):
        thr = float(method) if numeric else (float(s.max()) if s.size else 0.0)
        return {"threshold": thr, "background_level": 0.0, "noise_floor": thr, "seed_scale": 1.0}
    if numeric:
        thr, bg, floor = float(method), 0.0, -np.inf
        det = np.full(s.shape, thr, np.float32)
    else:
        if method == "otsu":
            thr = float(filters.threshold_otsu(s))
        elif method == "li":
            thr = float(filters.threshold_li(np.sort(s)))  # canonical order: exact sums
        elif method == "triangle":
            thr = float(filters.threshold_triangle(s))
        elif method == "local":
            thr = None
        else:
            raise ValueError(f"threshold must be 'otsu', 'li', 'triangle', 'local' or a number, got {method!r}")
        below = s[s < thr] if thr is not None else s
        bg = float(np.median(below)) if below.size else float(np.median(s))
        floor = -np.inf
        if opts["noise_k"] > 0 and below.size >= 16:
            floor = _noise_floor(below, opts["noise_k"])
        t = np.asarray(samples["local"], np.float32) if thr is None else thr
        det = np.maximum(bg + opts["detect_fraction"] * (t - bg), floor)
    fg = s > det
    blob = np.clip(np.asarray(samples["blob"], np.float32) - bg, 0, None)[fg]
    scale = float(np.percentile(blob, 95)) if blob.size else 0.0
    return {"threshold": thr, "background_level": float(bg), "noise_floor": float(floor),
            "seed_scale": scale if scale > 0 else 1.0}


def _noise_floor(below: np.ndarray, k: float) -> float:
    """Background level + ``k`` robust sigmas from the pixels below the automatic threshold.

    Two estimates, the lower one wins: around the median (the lower tail median - 5th percentile;
    right when the background dominates) and around the histogram mode (the half-normal spread of
    the values below the mode; right in dense fields, where dim nuclei below the threshold would
    inflate the first). Values at the minimum (clipped by the top-hat) are ignored for the mode.
    """
    med = float(np.median(below))
    floor = med + k * (med - float(np.percentile(below, 5))) / 1.645
    lo_v = float(below.min())
    v = below[below > lo_v]
    if v.size >= 16 and float(v.max()) > float(v.min()):
        hist, edges = np.histogram(v, bins=256)
        hist = ndi.gaussian_filter1d(hist.astype(np.float64), 2.0)
        i = int(np.argmax(hist))
        mode = 0.5 * float(edges[i] + edges[i + 1])
        tail = v[v < mode]
        if tail.size >= 16:
            floor = min(floor, mode + k * float(np.median(mode - tail)) / 0.6745)
    return floor


def nuclei_statistics(image_yx, *, pixel_size_um: float, nucleus_diameter_um: float, **options: Any) -> dict:
    """Image-level intensity statistics of the classical nuclear segmenter.

    :func:`segment_nuclei` computes them from its own image when not given; :func:`segment_image`
    computes them once per image (a cheap first pass over the tiles that keeps only a lattice of
    at most ~4 Mpx) and passes them to every tile, so that tiled and whole-image runs use the same
    parameters.

    Parameters
    ----------
    image_yx : array-like, shape (Y, X)
        The nuclear channel.
    pixel_size_um, nucleus_diameter_um : float
        As for :func:`segment_nuclei`.
    **options
        Keys of :data:`NUCLEI_DEFAULTS` (``threshold``, ``background_factor``, ...).

    Returns
    -------
    dict
        ``threshold`` (None for ``local``), ``background_level``, ``noise_floor``, ``seed_scale``
        (floats, in the units of the background-corrected image); pass it back as
        ``segment_nuclei(..., statistics=...)``.
    """
    img = _validate_2d(image_yx, "image_yx")
    _validate_scale(pixel_size_um, nucleus_diameter_um=nucleus_diameter_um)
    opts = _watershed_options(options)
    d_px = nucleus_diameter_um / pixel_size_um
    h, w = img.shape
    samples = _nuclear_samples(img, d_px, opts, origin=(0, 0), region=(0, h, 0, w), step=_lattice_step(img.shape))
    return _statistics_from_samples(samples, opts)



def _nuclei_watershed(img: np.ndarray, d_px: float, opts: dict[str, Any], min_px: float, max_px: float,
                      statistics: dict | None = None, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Steps 1-7 of the module docstring on one image (or window at global ``origin``)."""
    from skimage.segmentation import watershed

    img = _finite_fill(img)
    if img.size == 0 or float(img.max()) == float(img.min()):
        return np.zeros(img.shape, np.uint32)
    smooth, blob = _preprocess(img, d_px, opts, origin)
    statistics = _own_or_given_statistics(statistics, smooth, blob, d_px, opts)
    bg_level = float(statistics["background_level"])
    fg = _foreground(smooth, d_px, opts, statistics, bg_level)
    if not fg.any():
        return np.zeros(img.shape, np.uint32)
    inten = np.clip(smooth - bg_level, 0, None)
    seed_map = _seed_map(fg, blob, d_px, opts, statistics, bg_level)
    markers = _seed_markers(seed_map, fg, d_px, opts)
    labels = watershed(-seed_map, markers, mask=fg)
    labels = _refine_objects(labels, inten, opts["object_fraction"])
    return _size_filter(labels, min_px, max_px)


def _own_or_given_statistics(statistics: dict | None, smooth: np.ndarray, blob: np.ndarray, d_px: float,
                             opts: dict[str, Any]) -> dict:
    """The given image-level statistics (checked), or those of this image itself."""
    if statistics is None:
        h, w = smooth.shape
        samples = _lattice_samples(smooth, blob, d_px, opts, origin=(0, 0), region=(0, h, 0, w),
                                   step=_lattice_step(smooth.shape))
        return _statistics_from_samples(samples, opts)
    missing = [k for k in _STAT_KEYS if k not in statistics]
    if missing:
        raise ValueError(f"statistics is missing {missing}; compute it with nuclei_statistics()")
    return statistics


def _foreground(smooth: np.ndarray, d_px: float, opts: dict[str, Any], statistics: dict,
                bg_level: float) -> np.ndarray:
    """Step 3: pixels above the detection threshold, opened and with small holes filled."""
    # foreground: part of the way from the background to the automatic threshold (dim nuclei are
    # found; each object's extent is refined against its own peak below), floored by the noise
    if isinstance(opts["threshold"], (int, float)) and not isinstance(opts["threshold"], bool):
        thr = float(opts["threshold"])
    else:
        t = _local_threshold(smooth, d_px) if opts["threshold"] == "local" else float(statistics["threshold"])
        thr = np.maximum(bg_level + opts["detect_fraction"] * (t - bg_level), float(statistics["noise_floor"]))
    fg = smooth > thr
    fg = _open3(fg) if d_px >= 6 else fg
    return _fill_small_holes(fg, math.pi * (d_px / 2) ** 2)


def _seed_map(fg: np.ndarray, blob: np.ndarray, d_px: float, opts: dict[str, Any], statistics: dict,
              bg_level: float) -> np.ndarray:
    """Step 4's map: shape (capped distance) and brightness combined, smoothed, zero outside ``fg``."""
    # in dense tissue touching nuclei merge into large foreground regions whose distance
    # transform is one broad ridge; beyond a nucleus radius it says nothing about single nuclei,
    # so it saturates there (distance_cap_factor) and the intensity decides the seeds
    cap = opts["distance_cap_factor"] * d_px if opts["distance_cap_factor"] > 0 else None
    dist = _distance_capped(fg, cap)
    seed_kind = opts["seed_map"]
    if seed_kind == "distance":
        seed_map = dist
    else:
        rel = np.clip((blob - bg_level) / float(statistics["seed_scale"]), 0, 1.0)
        seed_map = rel if seed_kind == "intensity" else dist * np.sqrt(rel)
    seed_map = gaussian_filter(seed_map, max(0.5, 0.08 * d_px), mode="nearest")
    seed_map[~fg] = 0
    return seed_map


def _seed_markers(seed_map: np.ndarray, fg: np.ndarray, d_px: float, opts: dict[str, Any]) -> np.ndarray:
    """Step 4's seeds as int32 markers: the map's maxima, plus one per seedless foreground component."""
    from skimage.morphology import h_maxima

    comp, ncomp = ndi.label(fg)
    min_dist = max(1, int(round(opts["seed_distance_factor"] * d_px)))
    peaks = _component_peaks(seed_map, comp, min_dist)
    h = opts["seed_h_factor"]
    if h > 0 and len(peaks):
        # keep peaks that stand out by h x the map's nominal maximum (the nucleus radius; a fixed
        # scale, so that the choice does not depend on the tile) from their surroundings
        nominal = d_px / 2 if opts["seed_map"] != "intensity" else 1.0
        hm = h_maxima(seed_map, h * nominal).astype(bool)
        hm_lab, _ = ndi.label(hm)
        ids = hm_lab[peaks[:, 0], peaks[:, 1]]
        ok = ids > 0
        _, first = np.unique(ids[ok], return_index=True)
        peaks = peaks[ok][first]
    markers = np.zeros(seed_map.shape, np.int32)
    if len(peaks):
        markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    # components without any seed get one at their maximum
    has = np.zeros(ncomp + 1, bool)
    has[comp[markers > 0]] = True
    missing = np.flatnonzero(~has[1:]) + 1
    if len(missing):
        pos = ndi.maximum_position(seed_map, comp, missing)
        start = len(peaks) + 1
        for i, (y, x) in enumerate(pos):
            markers[int(y), int(x)] = start + i
    return markers


def _refine_objects(labels: np.ndarray, inten: np.ndarray, frac: float) -> np.ndarray:
    """Step 6: each nucleus cut at ``frac`` of its own peak, largest piece kept, holes filled."""
    if frac > 0 and labels.max() > 0:
        # each nucleus ends where its intensity falls below `frac` of its own peak
        # (inten >= 0, so 0 is a floor; ufunc.at is linear, ndi.maximum sorts the whole image)
        peak = np.zeros(int(labels.max()) + 1, np.float32)
        np.maximum.at(peak, labels.ravel(), inten.ravel())
        keep = inten >= frac * peak[labels]
        labels = np.where(keep, labels, 0)
        labels = _largest_piece(labels)
        labels = _fill_holes_labels(labels)
    return labels


def _component_peaks(seed_map: np.ndarray, comp: np.ndarray, min_dist: int) -> np.ndarray:
    """``skimage.feature.peak_local_max(seed_map, min_distance=min_dist, labels=comp, exclude_border=False)``:
    the same coordinates in the same order, without a loop over components.

    scikit-image looks at each component in its box with the other pixels at the dtype's minimum: a
    candidate equals the maximum of its own component's pixels within ``min_dist`` (Chebyshev); a flat
    component gives its isolated pixels instead; candidates must exceed the image minimum; each component's
    candidates go highest first (raster order on ties) and are thinned greedily to ``min_dist`` apart. Here
    the window maxima are checked only at pixels >= their 4-neighbours (a component's own pixels, so every
    candidate is one), by gathering the window's own-component pixels; the greedy thinning runs on the
    conflicting pairs within a component (``ensure_spacing``'s rule: a point is dropped when an earlier kept
    point of its component lies closer than ``min_dist``).
    """
    threshold = seed_map.min()
    floor = np.finfo(seed_map.dtype).min if np.issubdtype(seed_map.dtype, np.floating) else np.iinfo(seed_map.dtype).min
    w = comp.shape[1]
    fg = comp > 0
    obj = np.where(fg, seed_map, floor)
    loc = fg.copy()
    loc[1:] &= obj[1:] >= obj[:-1]
    loc[:-1] &= obj[:-1] >= obj[1:]
    loc[:, 1:] &= obj[:, 1:] >= obj[:, :-1]
    loc[:, :-1] &= obj[:, :-1] >= obj[:, 1:]
    idx = np.flatnonzero(loc)
    k = comp.ravel()[idx]
    own = obj.ravel()[idx]
    r = min_dist
    pw = w + 2 * r
    pc = np.pad(comp, r).ravel()
    po = np.pad(obj, r, constant_values=floor).ravel()
    pidx = idx + (idx // w) * 2 * r + r * pw + r  # the same pixel in the padded images
    best = own.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            q = pidx + dy * pw + dx
            np.maximum(best, np.where(pc[q] == k, po[q], floor), out=best)
    cand = np.zeros(comp.shape, bool)
    cand.ravel()[idx[own >= best]] = True
    # flat components (no pixel below a 4-neighbour): their isolated pixels (scikit-image's rule)
    varied = np.zeros(int(comp.max()) + 1, bool)
    varied[comp[fg & ~loc]] = True
    flat = np.flatnonzero(~varied[1:]) + 1
    if flat.size:
        boxes = ndi.find_objects(comp)
        for kk in flat:
            roi = boxes[kk - 1]
            own_k = comp[roi] == kk
            c = cand[roi]
            c[own_k] = False
            c[np.logical_xor(own_k, ndi.binary_opening(own_k))] = True
    cand &= obj > threshold
    pos = np.flatnonzero(cand)
    cid = comp.ravel()[pos]
    order = np.lexsort((-obj.ravel()[pos], cid))  # by component, highest first, raster order on ties
    pos, cid = pos[order], cid[order]
    coord = np.stack([pos // w, pos % w], axis=1)
    if min_dist > 1 and len(pos) > 1:
        coord = coord[_greedy_spacing(coord, cid, min_dist)]
    return coord


def _greedy_spacing(coord: np.ndarray, cid: np.ndarray, min_dist: int) -> np.ndarray:
    """Which points of ``coord`` (in priority order) to keep: a point is dropped when an earlier kept point
    with the same ``cid`` lies within Chebyshev distance < ``min_dist`` (integer coordinates)."""
    from scipy.spatial import cKDTree

    keep = np.ones(len(coord), bool)
    pairs = cKDTree(coord).query_pairs(min_dist - 1, p=np.inf, output_type="ndarray")
    pairs = pairs[cid[pairs[:, 0]] == cid[pairs[:, 1]]] if len(pairs) else pairs
    if len(pairs) == 0:
        return keep
    pairs.sort(axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    starts = np.searchsorted(pairs[:, 0], np.arange(len(coord) + 1))
    for i in np.unique(pairs[:, 0]):
        if keep[i]:
            keep[pairs[starts[i]:starts[i + 1], 1]] = False
    return keep
