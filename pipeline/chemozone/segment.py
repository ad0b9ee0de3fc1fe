"""Nuclear and cell segmentation, tiled and stitched for images larger than memory.

Public functions
----------------
segment_nuclei(image_yx, *, pixel_size_um, nucleus_diameter_um, method="watershed", **options)
    Nuclei of one nuclear channel as ``uint32`` labels (a classical watershed that needs no weights,
    or cellpose through :mod:`chemozone._cellpose`).
segment_cells(nuclei, *, pixel_size_um, expand_um=3.0, method="expand", membrane=None)
    Cell bodies grown from the nuclei; every cell keeps its nucleus' label.
segment_image(image_cyx, *, channels, pixel_size_um, config, ...)
    Both, on a whole ``(C, Y, X)`` image, per tile with overlap (dask-delayed tasks), with globally
    unique labels stitched across the seams; optionally written to a zarr store tile by tile.
segmentation_provenance(config)
    Method, parameters and (for cellpose) version and model, for ``run.json``.

The classical nuclear segmenter (``method="watershed"``)
-------------------------------------------------------
Every length is derived from ``nucleus_diameter_um`` (``d``, in pixels below) and every intensity
decision from the image's own statistics, so that the same parameters work for uint8, uint16 and
float images of any range:

1. background: morphological opening with a square of side ``2 d`` (computed on a block-reduced
   copy, then smoothed and resampled), subtracted (a rolling-ball-like white top-hat);
2. denoising: Gaussian with sigma ``max(0.5 px, 0.04 d)``;
3. detection: half-way (``detect_fraction``) between the background level and the automatic
   threshold (Otsu / Li / triangle / local, or an absolute value), never below a noise floor of
   ``noise_k`` robust sigmas of the background (a tile without nuclei stays empty);
4. seeds: maxima, at least ``0.25 d`` apart, of the distance transform of the foreground times the
   square root of the intensity smoothed at ``0.12 d`` (shape and brightness together split
   touching nuclei);
5. watershed of the inverted seed map inside the foreground;
6. per-object refinement: each nucleus ends where its intensity falls below ``object_fraction``
   (0.3) of its own peak (dim and bright nuclei both get their own half-max-like outline), holes
   filled, only the largest piece kept;
7. size filters in µm² (``min_area_um2``, ``max_area_um2``; default 0.15x and 8x a disc of the
   nucleus diameter).

On the 52 real images of nuclei_dsb2018 this gives F1@0.5 = 0.856 (textbook watershed 0.729); see
``benchmarks/bench_nuclei_dsb2018.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .errors import ConfigError

__all__ = [
    "segment_nuclei",
    "segment_cells",
    "segment_image",
    "segmentation_provenance",
    "NUCLEI_DEFAULTS",
]

NUCLEI_DEFAULTS: dict[str, Any] = {
    "threshold": "otsu",  # otsu | li | triangle | local | float (absolute, on the corrected image)
    "background_factor": 2.0,  # opening side = factor * diameter (0 = no background correction)
    "smooth_factor": 0.04,  # Gaussian sigma = factor * diameter (>= 0.5 px)
    "noise_k": 5.0,  # threshold floor: background median + k robust sigmas
    "detect_fraction": 0.5,  # detection threshold between background (0) and the automatic one (1)
    "seed_map": "product",  # distance | intensity | product (distance x sqrt(intensity))
    "seed_sigma_factor": 0.12,  # smoothing of the intensity for seeds = factor * diameter
    "seed_distance_factor": 0.25,  # min distance between seeds = factor * diameter
    "seed_h_factor": 0.0,  # seeds must stand this fraction of the map's maximum above their saddle
    "object_fraction": 0.3,  # each nucleus ends where it falls below this fraction of its own peak
    "min_area_um2": None,  # default 0.15 x the area of a disc of nucleus_diameter_um
    "max_area_um2": None,  # default 8 x that area
}


# ----------------------------------------------------------------------------------- validation
def _validate_2d(image: Any, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (Y, X), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _validate_scale(pixel_size_um: float, **lengths: float | None) -> None:
    if not (pixel_size_um and np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    for k, v in lengths.items():
        if v is not None and not (np.isfinite(v) and v > 0):
            raise ValueError(f"{k} must be a positive number, got {v!r}")


# --------------------------------------------------------------------------- classical nuclei
def _background(img: np.ndarray, size_px: float) -> np.ndarray:
    """Smooth estimate of the background: grey opening with a square of side ``size_px``.

    Computed on a block-minimum reduced copy (factor ~ size/8) so the cost does not grow with the
    nucleus size, then bilinearly resampled to full resolution.
    """
    f = max(1, int(size_px // 8))
    if f > 1:
        h, w = img.shape
        ph, pw = (-h) % f, (-w) % f
        padded = np.pad(img, ((0, ph), (0, pw)), mode="edge")
        small = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).min(axis=(1, 3))
    else:
        small = img
    k = max(3, int(round(size_px / f)) | 1)
    opened = ndi.grey_opening(small, size=(k, k), mode="nearest")
    opened = ndi.uniform_filter(opened, size=max(3, (k // 2) | 1), mode="nearest")
    if f > 1:
        zoom = (padded.shape[0] / small.shape[0], padded.shape[1] / small.shape[1])
        up = ndi.zoom(opened, zoom, order=1, mode="nearest", grid_mode=True)
        up = up[: img.shape[0], : img.shape[1]]
        # opening is <= image; the resampled surface may exceed it slightly: clip to keep a top-hat
        return np.minimum(up, img)
    return opened


def _robust_sigma(values: np.ndarray) -> float:
    med = np.median(values)
    return float(1.4826 * np.median(np.abs(values - med)))


def _noise_floor(smooth: np.ndarray, thr, k: float) -> float:
    """Background level + ``k`` robust sigmas, from the pixels below the automatic threshold.

    sigma comes from the lower tail (median - 5th percentile) / 1.645, which nuclei cannot inflate,
    so that a tile with no nuclei (pure noise) keeps a threshold above its noise.
    """
    sample = smooth[::2, ::2] if smooth.size > 1_000_000 else smooth
    below = sample[sample < thr] if np.ndim(thr) == 0 else sample.ravel()
    if below.size < 16:
        return -np.inf
    med = float(np.median(below))
    sigma = (med - float(np.percentile(below, 5))) / 1.645
    return med + k * sigma


def _threshold(img: np.ndarray, method: Any, d_px: float) -> float:
    from skimage import filters

    if isinstance(method, (int, float)) and not isinstance(method, bool):
        return float(method)
    sample = img
    if img.size > 4_000_000:  # a regular subsample is enough for a histogram threshold
        step = int(math.ceil(math.sqrt(img.size / 4_000_000)))
        sample = img[::step, ::step]
    if method == "otsu":
        return float(filters.threshold_otsu(sample))
    if method == "li":
        return float(filters.threshold_li(sample))
    if method == "triangle":
        return float(filters.threshold_triangle(sample))
    if method == "local":
        return filters.threshold_local(img, block_size=int(4 * d_px) | 1, method="gaussian")
    raise ValueError(f"threshold must be 'otsu', 'li', 'triangle', 'local' or a number, got {method!r}")


def _nuclei_watershed(img: np.ndarray, d_px: float, opts: dict[str, Any], min_px: float, max_px: float) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    img = img.astype(np.float32, copy=True)
    if not np.all(np.isfinite(img)):
        finite = img[np.isfinite(img)]
        img[~np.isfinite(img)] = float(finite.min()) if finite.size else 0.0
    if img.size == 0 or float(img.max()) == float(img.min()):
        return np.zeros(img.shape, np.uint32)
    if opts["background_factor"] > 0:
        img = img - _background(img, opts["background_factor"] * d_px)
    sigma = max(0.5, opts["smooth_factor"] * d_px)
    smooth = ndi.gaussian_filter(img, sigma, mode="nearest")

    # foreground: automatic threshold, floored by the background noise
    thr = _threshold(smooth, opts["threshold"], d_px)
    if not isinstance(opts["threshold"], (int, float)):
        floor = _noise_floor(smooth, thr, opts["noise_k"]) if opts["noise_k"] > 0 else -np.inf
        bg_level = _background_level(smooth, thr)
        # detection threshold: part of the way from the background to the automatic threshold, so
        # that dim nuclei are found; each object's extent is refined against its own peak below
        thr = bg_level + opts["detect_fraction"] * (thr - bg_level)
        thr = np.maximum(thr, floor)
    else:
        bg_level = 0.0
    fg = smooth > thr
    fg = ndi.binary_opening(fg, structure=np.ones((3, 3), bool)) if d_px >= 6 else fg
    fg = _fill_small_holes(fg, math.pi * (d_px / 2) ** 2)
    if not fg.any():
        return np.zeros(img.shape, np.uint32)

    # seeds: maxima of a map that combines shape (distance) and brightness
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    inten = np.clip(smooth - bg_level, 0, None)
    seed_kind = opts["seed_map"]
    if seed_kind == "distance":
        seed_map = dist
    else:
        blob = ndi.gaussian_filter(inten, max(0.5, opts["seed_sigma_factor"] * d_px))
        scale = float(np.percentile(blob[fg], 95)) or 1.0
        rel = np.clip(blob / scale, 0, 1.0)
        seed_map = rel if seed_kind == "intensity" else dist * np.sqrt(rel)
    seed_map = ndi.gaussian_filter(seed_map, max(0.5, 0.08 * d_px))
    seed_map[~fg] = 0
    comp, ncomp = ndi.label(fg)
    min_dist = max(1, int(round(opts["seed_distance_factor"] * d_px)))
    peaks = peak_local_max(seed_map, min_distance=min_dist, labels=comp, exclude_border=False)
    h = opts["seed_h_factor"]
    if h > 0 and len(peaks):
        # keep peaks that stand out by h (relative to the map's scale) from their surroundings
        hm = h_maxima(seed_map, h * float(seed_map.max())).astype(bool)
        hm_lab, _ = ndi.label(hm)
        ids = hm_lab[peaks[:, 0], peaks[:, 1]]
        ok = ids > 0
        _, first = np.unique(ids[ok], return_index=True)
        peaks = peaks[ok][first]
    markers = np.zeros(img.shape, np.int32)
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
    labels = watershed(-seed_map, markers, mask=fg)
    frac = opts["object_fraction"]
    if frac > 0 and labels.max() > 0:
        # each nucleus ends where its intensity falls below `frac` of its own peak
        peak = ndi.maximum(inten, labels, np.arange(labels.max() + 1))
        peak = np.asarray(peak, np.float32)
        keep = inten >= frac * peak[labels]
        labels = np.where(keep, labels, 0)
        labels = _largest_piece(labels)
        labels = _fill_holes_labels(labels)
    return _size_filter(labels, min_px, max_px)


def _background_level(smooth: np.ndarray, thr) -> float:
    sample = smooth[::2, ::2] if smooth.size > 1_000_000 else smooth
    below = sample[sample < thr] if np.ndim(thr) == 0 else sample.ravel()
    return float(np.median(below)) if below.size else float(np.median(sample))


def _fill_small_holes(fg: np.ndarray, max_px: float) -> np.ndarray:
    holes = ndi.binary_fill_holes(fg) & ~fg
    if holes.any():
        hl, _ = ndi.label(holes)
        sizes = np.bincount(hl.ravel())
        small = sizes < max_px
        small[0] = False
        fg = fg | small[hl]
    return fg


def _largest_piece(labels: np.ndarray) -> np.ndarray:
    """Keep, for each label, only its largest 4-connected piece."""
    pieces, n = ndi.label(labels > 0)
    if n == 0:
        return labels
    # pieces never span two labels only if labels touch; split pieces by label pairs
    code = pieces.astype(np.int64) * (int(labels.max()) + 1) + labels
    uniq, inv, cnt = np.unique(code.ravel(), return_inverse=True, return_counts=True)
    lab_of = uniq % (int(labels.max()) + 1)
    order = np.lexsort((-cnt, lab_of))
    best = np.zeros(len(uniq), bool)
    first = np.ones(len(order), bool)
    first[1:] = lab_of[order][1:] != lab_of[order][:-1]
    best[order[first]] = True
    best[lab_of == 0] = False
    return np.where(best[inv.reshape(labels.shape)], labels, 0)


def _fill_holes_labels(labels: np.ndarray) -> np.ndarray:
    """Fill background holes that lie entirely inside one label."""
    bg = labels == 0
    holes, n = ndi.label(bg)
    if n <= 1:
        return labels
    # holes touching the border are background; others take the label that surrounds them
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    grown = ndi.grey_dilation(labels, size=(3, 3))
    ring = ndi.binary_dilation(bg) & ~bg
    # label of the ring around each hole: unique only if the hole is enclosed by one nucleus
    hid = ndi.grey_dilation(holes, size=(3, 3))[ring]
    lab = labels[ring]
    out = labels.copy()
    if hid.size == 0:
        return out
    pairs = np.unique(np.stack([hid, lab]), axis=1)
    hole_ids, counts = np.unique(pairs[0], return_counts=True)
    single = set(hole_ids[counts == 1].tolist()) - set(border.tolist()) - {0}
    if not single:
        return out
    lut = np.zeros(n + 1, np.int64)
    for h_id, l_id in pairs.T:
        if int(h_id) in single:
            lut[h_id] = l_id
    fill = lut[holes]
    out[bg & (fill > 0)] = fill[bg & (fill > 0)]
    del grown
    return out


def _size_filter(labels: np.ndarray, min_px: float, max_px: float) -> np.ndarray:
    """Drop objects outside ``[min_px, max_px]`` and renumber 1..n (raster order of first pixel)."""
    sizes = np.bincount(labels.ravel())
    keep = (sizes >= min_px) & (sizes <= max_px)
    keep[0] = False
    return _relabel(labels, keep)


def _relabel(labels: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Renumber kept labels 1..n in raster order of their first pixel (deterministic)."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    if keep is not None:
        sel = keep[ids]
    else:
        sel = ids > 0
    ids, first = ids[sel], first[sel]
    order = np.argsort(first, kind="stable")
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.uint32)
    lut[ids[order]] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels]


def segment_nuclei(
    image_yx,
    *,
    pixel_size_um: float,
    nucleus_diameter_um: float,
    method: str = "watershed",
    **options: Any,
) -> np.ndarray:
    """Segment nuclei in one nuclear channel.

    Parameters
    ----------
    image_yx : array-like, shape (Y, X)
        The nuclear channel (any numeric dtype and intensity range; not modified).
    pixel_size_um : float
        Pixel size, µm.
    nucleus_diameter_um : float
        Typical nucleus diameter, µm; every length of the method scales with it.
    method : {"watershed", "cellpose"}
        The classical segmenter (no weights) or the cellpose adapter.
    **options
        watershed: keys of :data:`NUCLEI_DEFAULTS` (``threshold``, ``min_area_um2``,
        ``max_area_um2``, ``background_factor``, ``smooth_factor``, ``noise_k``,
        ``seed_distance_factor``, ``seed_h_factor``). cellpose: ``model`` (an object with the
        CellposeModel ``eval`` contract), ``config`` (a :class:`~chemozone.config.CellposeConfig`),
        ``min_area_um2``, ``max_area_um2``.

    Returns
    -------
    ndarray of uint32, shape (Y, X)
        0 = background; nuclei numbered 1..n in raster order of their first pixel.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = ((yy - 20) ** 2 + (xx - 20) ** 2 < 36) * 100.0 + ((yy - 44) ** 2 + (xx - 40) ** 2 < 36) * 80.0
    >>> lab = segment_nuclei(img, pixel_size_um=1.0, nucleus_diameter_um=12)
    >>> int(lab.max()), lab.dtype.name
    (2, 'uint32')
    """
    img = _validate_2d(image_yx, "image_yx")
    _validate_scale(pixel_size_um, nucleus_diameter_um=nucleus_diameter_um)
    d_px = nucleus_diameter_um / pixel_size_um
    disc_um2 = math.pi * (nucleus_diameter_um / 2) ** 2
    if method == "watershed":
        unknown = sorted(set(options) - set(NUCLEI_DEFAULTS))
        if unknown:
            raise TypeError(f"segment_nuclei(method='watershed') got unknown options {unknown}; "
                            f"valid: {sorted(NUCLEI_DEFAULTS)}")
        opts = {**NUCLEI_DEFAULTS, **options}
    elif method == "cellpose":
        opts = dict(options)
    else:
        raise ValueError(f"method must be 'watershed' or 'cellpose', got {method!r}")
    min_um2 = opts.pop("min_area_um2", None)
    max_um2 = opts.pop("max_area_um2", None)
    min_um2 = 0.15 * disc_um2 if min_um2 is None else float(min_um2)
    max_um2 = 8.0 * disc_um2 if max_um2 is None else float(max_um2)
    px2 = pixel_size_um**2
    if method == "cellpose":
        from ._cellpose import cellpose_nuclei

        labels = cellpose_nuclei(img, pixel_size_um=pixel_size_um, nucleus_diameter_um=nucleus_diameter_um, **opts)
        return _size_filter(labels.astype(np.int64, copy=False), min_um2 / px2, max_um2 / px2)
    return _nuclei_watershed(img, d_px, opts, min_um2 / px2, max_um2 / px2)


# ------------------------------------------------------------------------------------------- cells
def segment_cells(
    nuclei,
    *,
    pixel_size_um: float,
    expand_um: float = 3.0,
    method: str = "expand",
    membrane=None,
) -> np.ndarray:
    """Grow nuclei into cell bodies; every cell keeps the label of its nucleus.

    Parameters
    ----------
    nuclei : ndarray of int, shape (Y, X)
        Nuclear labels (0 = background).
    pixel_size_um : float
        Pixel size, µm.
    expand_um : float
        Maximum growth beyond the nucleus, µm (the cap of both methods).
    method : {"expand", "membrane_watershed"}
        ``expand``: each background pixel within ``expand_um`` goes to its nearest nucleus.
        ``membrane_watershed``: watershed of the membrane image seeded by the nuclei, restricted to
        pixels within ``expand_um`` of a nucleus, so that cells meet at the bright membranes.
    membrane : ndarray, shape (Y, X), optional
        Membrane signal (e.g. the sum of CD45 and panCK), needed by ``membrane_watershed``.

    Returns
    -------
    ndarray of uint32, shape (Y, X)
        Cells; ``cells[nuclei > 0] == nuclei[nuclei > 0]``.

    Examples
    --------
    >>> import numpy as np
    >>> n = np.zeros((1, 9), np.uint32); n[0, 4] = 7
    >>> segment_cells(n, pixel_size_um=1.0, expand_um=2).tolist()
    [[0, 0, 7, 7, 7, 7, 7, 0, 0]]
    """
    from skimage.segmentation import expand_labels, watershed

    nuc = _validate_2d(nuclei, "nuclei")
    if not np.issubdtype(nuc.dtype, np.integer):
        raise ValueError(f"nuclei must be integer labels, got dtype {nuc.dtype}")
    _validate_scale(pixel_size_um)
    if expand_um < 0:
        raise ValueError(f"expand_um must be >= 0, got {expand_um}")
    dist_px = expand_um / pixel_size_um
    nuc = nuc.astype(np.uint32, copy=False)
    if method == "expand":
        if dist_px <= 0:
            return nuc.copy()
        return expand_labels(nuc, distance=dist_px).astype(np.uint32, copy=False)
    if method == "membrane_watershed":
        if membrane is None:
            raise ValueError("method 'membrane_watershed' needs a membrane image (segmentation.membrane_channels)")
        mem = _validate_2d(membrane, "membrane").astype(np.float32)
        if mem.shape != nuc.shape:
            raise ValueError(f"membrane shape {mem.shape} differs from nuclei shape {nuc.shape}")
        reach = ndi.distance_transform_edt(nuc == 0) <= dist_px
        mem = ndi.gaussian_filter(mem, 1.0)
        out = watershed(mem, markers=nuc.astype(np.int64), mask=reach)
        out = out.astype(np.uint32)
        out[nuc > 0] = nuc[nuc > 0]
        return out
    raise ValueError(f"method must be 'expand' or 'membrane_watershed', got {method!r}")


# ------------------------------------------------------------------------------- tiles and seams
def _tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[dict[str, Any]]:
    """Cores (a partition of the image into ``tile``-sized blocks) and windows (cores + overlap)."""
    h, w = shape
    tiles = []
    for ty, y0 in enumerate(range(0, h, tile)):
        for tx, x0 in enumerate(range(0, w, tile)):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            win = (max(0, y0 - overlap), min(h, y1 + overlap), max(0, x0 - overlap), min(w, x1 + overlap))
            tiles.append({"index": len(tiles), "ty": ty, "tx": tx, "core": (y0, y1, x0, x1), "window": win})
    return tiles


def _keep_core_objects(nuc: np.ndarray, cells: np.ndarray, win, core, tissue, tissue_factor):
    """Keep the objects whose centroid lies in the core (and in the tissue); renumber them 1..n.

    Returns window-sized ``(nuclei, cells, n)`` holding only the kept objects.
    """
    n_obj = int(nuc.max()) if nuc.size else 0
    if n_obj == 0:
        return np.zeros(nuc.shape, np.uint32), np.zeros(nuc.shape, np.uint32), 0
    idx = np.arange(1, n_obj + 1)
    cy, cx = (np.asarray(v, dtype=np.float64) for v in zip(*ndi.center_of_mass(np.ones_like(nuc, np.uint8), nuc, idx)))
    gy, gx = cy + win[0], cx + win[2]
    y0, y1, x0, x1 = core
    # the pixel that holds the centroid decides (half-open core intervals: each pixel in one core)
    py, px = np.floor(gy + 0.5), np.floor(gx + 0.5)
    keep = (py >= y0) & (py < y1) & (px >= x0) & (px < x1)
    if tissue is not None:
        ty = np.clip((py // tissue_factor).astype(np.int64), 0, tissue.shape[0] - 1)
        tx = np.clip((px // tissue_factor).astype(np.int64), 0, tissue.shape[1] - 1)
        keep &= tissue[ty, tx].astype(bool)
    keep_lut = np.concatenate([[False], keep])
    nuc_k = _relabel(nuc, keep_lut)
    # the same renumbering for cells (cell id == nucleus id before renumbering)
    # map old id -> new id through the pixels (a kept id sits at the same pixels in nuc and nuc_k)
    lut = np.zeros(n_obj + 1, np.uint32)
    m = nuc_k > 0
    lut[nuc[m]] = nuc_k[m]
    cells_k = lut[cells]
    return nuc_k, cells_k, int(nuc_k.max()) if nuc_k.size else 0


def _segment_window(nuclear, membrane, *, win, core, pixel_size_um, seg: dict[str, Any], tissue, tissue_factor,
                    model):
    """Segment one window (numpy) and keep its core's objects."""
    nuclear = np.asarray(nuclear)
    opts = dict(seg["nuclei_options"])
    if seg["method"] == "cellpose":
        opts.update(model=model, config=seg["cellpose"])
    nuc = segment_nuclei(nuclear, pixel_size_um=pixel_size_um, nucleus_diameter_um=seg["nucleus_diameter_um"],
                         method=seg["method"], **opts)
    mem = None if membrane is None else np.asarray(membrane, dtype=np.float32)
    cells = segment_cells(nuc, pixel_size_um=pixel_size_um, expand_um=seg["expand_um"], method=seg["cell_method"],
                          membrane=mem)
    return _keep_core_objects(nuc, cells, win, core, tissue, tissue_factor)


def _paste(dst_nuc, dst_cell, tile_res, offset, tile, core_i):
    """Write ``tile``'s kept objects into the core ``core_i`` where nothing is written yet."""
    nuc, cell = tile_res
    wy0, wy1, wx0, wx1 = tile["window"]
    y0, y1, x0, x1 = core_i
    iy0, iy1, ix0, ix1 = max(y0, wy0), min(y1, wy1), max(x0, wx0), min(x1, wx1)
    if iy0 >= iy1 or ix0 >= ix1:
        return
    src = (slice(iy0 - wy0, iy1 - wy0), slice(ix0 - wx0, ix1 - wx0))
    dst = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    for out, lab in ((dst_nuc, nuc), (dst_cell, cell)):
        s = lab[src]
        o = out[dst]
        put = (o == 0) & (s > 0)
        o[put] = s[put] + np.uint32(offset)


def _stitch_core(i: int, tiles, offsets, get_result) -> tuple[np.ndarray, np.ndarray]:
    """Assemble the labels of core ``i``: its own tile first, then its neighbours in tile order."""
    t = tiles[i]
    y0, y1, x0, x1 = t["core"]
    nuc = np.zeros((y1 - y0, x1 - x0), np.uint32)
    cell = np.zeros_like(nuc)
    neigh = [j for j, u in enumerate(tiles) if abs(u["ty"] - t["ty"]) <= 1 and abs(u["tx"] - t["tx"]) <= 1]
    for j in [i] + [j for j in neigh if j != i]:
        _paste(nuc, cell, get_result(j), offsets[j], tiles[j], t["core"])
    m = nuc > 0
    cell[m] = nuc[m]  # every nucleus pixel belongs to its own cell, whatever the seam rule chose
    return nuc, cell


def _resolve_config(config) -> Any:
    from .config import SegmentationConfig

    if config is None:
        return SegmentationConfig()
    if isinstance(config, dict):
        return SegmentationConfig(**config)
    if hasattr(config, "segmentation") and not isinstance(config, SegmentationConfig):
        return config.segmentation
    return config


def segment_image(
    image_cyx,
    *,
    channels: list[str],
    pixel_size_um: float,
    config=None,
    nuclear_channel: str = "DAPI",
    aliases: dict[str, list[str]] | None = None,
    tissue=None,
    tissue_grid_um: float | None = None,
    store=None,
    model=None,
):
    """Segment nuclei and cells of a whole image, tile by tile, with globally unique stitched labels.

    Parameters
    ----------
    image_cyx : numpy or dask array, shape (C, Y, X)
        The image (a lazy dask array from :func:`chemozone.io.read_image` is read window by window).
    channels : list of str
        Channel names of ``image_cyx`` (length C).
    pixel_size_um : float
        Pixel size, µm.
    config : SegmentationConfig
        ``method``, ``nucleus_diameter_um``, area limits, ``threshold``, ``cell_method``,
        ``expand_um``, ``membrane_channels``, ``tile_size_px``, ``tile_overlap_um``, ``cellpose``.
    nuclear_channel : str
        Channel to segment nuclei in (matched with ``aliases`` like :func:`chemozone.io.resolve_channels`).
    aliases : dict, optional
        Other spellings of channel names.
    tissue : bool ndarray, shape (Ygrid, Xgrid), optional
        Tissue mask on the analysis grid; nuclei whose centroid falls outside it are dropped.
    tissue_grid_um : float, optional
        Pixel size of ``tissue``, µm (required with ``tissue``).
    store : path, optional
        A zarr group (folder) to write ``nuclei`` and ``cells`` into tile by tile; the function then
        returns zarr-backed dask arrays and its peak memory depends on the tile size only.
    model : object, optional
        For ``method="cellpose"``: a model with the CellposeModel ``eval`` contract (tests inject one).

    Returns
    -------
    nuclei, cells : uint32 arrays, shape (Y, X)
        numpy arrays, or dask arrays backed by ``store``. Labels run 1..n (tile order, then raster
        order of first pixel in the tile); ``cells`` carry their nucleus' label.

    Notes
    -----
    Images larger than ``tile_size_px`` on either side are cut into cores of that size; each core is
    segmented inside a window that extends it by ``tile_overlap_um`` (at least one nucleus diameter
    plus ``expand_um``). A tile keeps the objects whose centroid pixel lies in its core, so each
    object is kept by exactly one tile even when it straddles a seam. The kept objects of a core and
    its 8 neighbours are then pasted into the core (own tile first, then neighbours in tile order) so
    that objects reaching across a seam stay whole. Tiles are ``dask.delayed`` tasks computed by
    ``dask.compute`` with the current scheduler (a distributed client parallelises them).
    """
    import dask

    from .io import resolve_channels

    seg_cfg = _resolve_config(config)
    shape = tuple(getattr(image_cyx, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"image_cyx must be 3-D (C, Y, X), got shape {shape}")
    if len(channels) != shape[0]:
        raise ValueError(f"channels has {len(channels)} names but the image has {shape[0]} channels")
    _validate_scale(pixel_size_um)
    nuc_idx = resolve_channels(list(channels), [nuclear_channel], aliases=aliases, source="segmentation")[0]
    mem_idx: list[int] = []
    if seg_cfg.cell_method == "membrane_watershed":
        if not seg_cfg.membrane_channels:
            raise ConfigError("segmentation.membrane_channels: cell_method 'membrane_watershed' needs at least "
                              "one membrane channel (e.g. [CD45, panCK]); add them or use cell_method: expand")
        mem_idx = resolve_channels(list(channels), list(seg_cfg.membrane_channels), aliases=aliases,
                                   source="segmentation.membrane_channels")
    tissue_arr = None
    factor = 1
    if tissue is not None:
        if tissue_grid_um is None:
            raise ValueError("tissue_grid_um is required with tissue (the analysis grid's pixel size, µm)")
        tissue_arr = np.asarray(tissue).astype(bool)
        factor = max(1, int(round(tissue_grid_um / pixel_size_um)))

    _, h, w = shape
    d_px = seg_cfg.nucleus_diameter_um / pixel_size_um
    overlap = int(math.ceil(seg_cfg.tile_overlap_um / pixel_size_um))
    overlap = max(overlap, int(math.ceil(d_px + seg_cfg.expand_um / pixel_size_um)) + 2)
    tile = int(seg_cfg.tile_size_px)
    tiles = _tile_grid((h, w), tile, overlap) if (h > tile or w > tile) else [
        {"index": 0, "ty": 0, "tx": 0, "core": (0, h, 0, w), "window": (0, h, 0, w)}]
    seg = {
        "method": seg_cfg.method,
        "nucleus_diameter_um": seg_cfg.nucleus_diameter_um,
        "expand_um": seg_cfg.expand_um,
        "cell_method": seg_cfg.cell_method,
        "cellpose": seg_cfg.cellpose,
        "nuclei_options": {"min_area_um2": seg_cfg.min_nucleus_area_um2,
                           "max_area_um2": seg_cfg.max_nucleus_area_um2,
                           **({"threshold": seg_cfg.threshold} if seg_cfg.method == "watershed" else {})},
    }
    is_dask = hasattr(image_cyx, "dask")

    def window_of(t):
        wy0, wy1, wx0, wx1 = t["window"]
        nucw = image_cyx[nuc_idx, wy0:wy1, wx0:wx1]
        memw = None
        if mem_idx:
            parts = [image_cyx[c, wy0:wy1, wx0:wx1].astype(np.float32) for c in mem_idx]
            memw = sum(parts[1:], parts[0])
        if not is_dask:
            nucw = np.asarray(nucw)
        return nucw, memw

    common = {"pixel_size_um": pixel_size_um, "seg": seg, "tissue_factor": factor, "model": model}

    if len(tiles) == 1 and store is None:
        nucw, memw = window_of(tiles[0])
        if is_dask:
            nucw = nucw.compute()
            memw = None if memw is None else np.asarray(memw)
        nuc, cell, _ = _segment_window(nucw, memw, win=tiles[0]["window"], core=tiles[0]["core"],
                                       tissue=tissue_arr, **common)
        return nuc, cell

    tissue_d = dask.delayed(tissue_arr) if tissue_arr is not None else None
    if store is None:
        tasks = []
        for t in tiles:
            nucw, memw = window_of(t)
            tasks.append(dask.delayed(_segment_window, pure=True)(
                nucw, memw, win=t["window"], core=t["core"], tissue=tissue_d, **common))
        results = dask.compute(*tasks)
        counts = [r[2] for r in results]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        _check_id_range(int(np.sum(counts)))
        nuclei = np.zeros((h, w), np.uint32)
        cells = np.zeros((h, w), np.uint32)
        for i, t in enumerate(tiles):
            y0, y1, x0, x1 = t["core"]
            n_c, c_c = _stitch_core(i, tiles, offsets, lambda j: results[j][:2])
            nuclei[y0:y1, x0:x1] = n_c
            cells[y0:y1, x0:x1] = c_c
        return nuclei, cells
    return _segment_to_store(store, tiles, window_of, common, tissue_d, (h, w), tile)


def _check_id_range(n: int) -> None:
    if n >= 2**32 - 1:
        raise ValueError(f"{n} objects do not fit in uint32 labels")


def _segment_to_store(store, tiles, window_of, common, tissue_d, shape, tile):
    """Two passes over the tiles, both as dask tasks: segment windows into a scratch zarr array, then
    stitch each core from its neighbours' windows into ``store/nuclei`` and ``store/cells``."""
    import shutil
    from pathlib import Path

    import dask
    import dask.array as da
    import zarr

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    root = zarr.open_group(str(store), mode="a")
    win_h = max(t["window"][1] - t["window"][0] for t in tiles)
    win_w = max(t["window"][3] - t["window"][2] for t in tiles)
    scratch_name = ".tiles"
    if scratch_name in root:
        del root[scratch_name]
    scratch = root.create_array(scratch_name, shape=(len(tiles), 2, win_h, win_w), chunks=(1, 2, win_h, win_w),
                                dtype=np.uint32, fill_value=0, overwrite=True)
    chunk = (min(tile, shape[0]), min(tile, shape[1]))
    outs = {}
    for name in ("nuclei", "cells"):
        if name in root:
            del root[name]
        outs[name] = root.create_array(name, shape=shape, chunks=chunk, dtype=np.uint32, fill_value=0,
                                       overwrite=True)
    scratch_path = str(store / scratch_name)

    def segment_and_park(nucw, memw, *, index, win, core, tissue, **kw):
        nuc, cell, n = _segment_window(nucw, memw, win=win, core=core, tissue=tissue, **kw)
        arr = zarr.open_array(scratch_path, mode="r+")
        buf = np.zeros((1, 2, win_h, win_w), np.uint32)
        buf[0, 0, : nuc.shape[0], : nuc.shape[1]] = nuc
        buf[0, 1, : nuc.shape[0], : nuc.shape[1]] = cell
        arr[index : index + 1] = buf
        return n

    tasks = []
    for t in tiles:
        nucw, memw = window_of(t)
        tasks.append(dask.delayed(segment_and_park, pure=False)(
            nucw, memw, index=t["index"], win=t["window"], core=t["core"], tissue=tissue_d, **common))
    counts = dask.compute(*tasks)
    _check_id_range(int(np.sum(counts)))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    nuc_path, cell_path = str(store / "nuclei"), str(store / "cells")

    def stitch_and_write(i):
        arr = zarr.open_array(scratch_path, mode="r")

        def get(j):
            wy0, wy1, wx0, wx1 = tiles[j]["window"]
            block = arr[j]
            return block[0, : wy1 - wy0, : wx1 - wx0], block[1, : wy1 - wy0, : wx1 - wx0]

        n_c, c_c = _stitch_core(i, tiles, offsets, get)
        y0, y1, x0, x1 = tiles[i]["core"]
        zarr.open_array(nuc_path, mode="r+")[y0:y1, x0:x1] = n_c
        zarr.open_array(cell_path, mode="r+")[y0:y1, x0:x1] = c_c
        return True

    dask.compute(*[dask.delayed(stitch_and_write, pure=False)(i) for i in range(len(tiles))])
    del root[scratch_name]
    shutil.rmtree(store / scratch_name, ignore_errors=True)
    return da.from_zarr(nuc_path), da.from_zarr(cell_path)


def segmentation_provenance(config=None) -> dict[str, Any]:
    """What produced the masks: method, parameters and, for cellpose, its version and model.

    Parameters
    ----------
    config : SegmentationConfig or Config, optional

    Returns
    -------
    dict
        ``method``, ``cell_method``, ``nucleus_diameter_um``, ``expand_um``, ``threshold``,
        ``tile_size_px``, ``tile_overlap_um``, ``nuclei_defaults``; with cellpose also
        ``cellpose_version``, ``cellpose_model`` (and ``cellpose_model_path`` when a file).
    """
    seg_cfg = _resolve_config(config)
    out: dict[str, Any] = {
        "method": seg_cfg.method,
        "cell_method": seg_cfg.cell_method,
        "nucleus_diameter_um": seg_cfg.nucleus_diameter_um,
        "min_nucleus_area_um2": seg_cfg.min_nucleus_area_um2,
        "max_nucleus_area_um2": seg_cfg.max_nucleus_area_um2,
        "expand_um": seg_cfg.expand_um,
        "membrane_channels": list(seg_cfg.membrane_channels),
        "threshold": seg_cfg.threshold,
        "tile_size_px": seg_cfg.tile_size_px,
        "tile_overlap_um": seg_cfg.tile_overlap_um,
        "nuclei_defaults": dict(NUCLEI_DEFAULTS),
    }
    if seg_cfg.method == "cellpose":
        from ._cellpose import cellpose_provenance

        out.update(cellpose_provenance(seg_cfg.cellpose))
    return out
