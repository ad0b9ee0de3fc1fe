"""Cell bodies grown from nuclei: capped expansion or a membrane-guided watershed.

Every cell keeps its nucleus' label. Membrane channels are put on a common scale (1st-99th
percentile, :func:`membrane_scale`) before they are summed, so a dim and a bright marker guide the
watershed equally; :func:`chemozone.segment.segment_image` passes image-level scales to every tile.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..grid import nearest_feature
from ._lattice import _lattice_step, _robust_ranges
from ._validate import _validate_2d, _validate_scale

__all__ = ["segment_cells", "membrane_scale"]


def segment_cells(
    nuclei,
    *,
    pixel_size_um: float,
    expand_um: float = 3.0,
    method: str = "expand",
    membrane=None,
    membrane_scales=None,
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
    membrane : ndarray, shape (Y, X) or (C, Y, X), optional
        Membrane signal, needed by ``membrane_watershed``: one image, or a stack of membrane
        channels (e.g. CD45 and panCK) that are put on a common scale before they are summed:
        channel ``c`` becomes ``(m_c - low_c) / (high_c - low_c)`` so that a dim and a bright
        marker guide the watershed equally (the measured intensities are untouched).
    membrane_scales : array-like, shape (C, 2), optional
        ``(low, high)`` per channel of a membrane stack; default :func:`membrane_scale` of the
        stack itself (its 1st and 99th percentiles). :func:`segment_image` passes image-level
        values so that all tiles share them.

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
    from skimage.segmentation import watershed

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
        return _expand_labels(nuc, dist_px)
    if method == "membrane_watershed":
        if membrane is None:
            raise ValueError("method 'membrane_watershed' needs a membrane image (segmentation.membrane_channels)")
        if np.ndim(membrane) == 3:
            mem = _combine_membranes(np.asarray(membrane), membrane_scales)
        else:
            mem = _validate_2d(membrane, "membrane").astype(np.float32)
        if mem.shape != nuc.shape:
            raise ValueError(f"membrane shape {mem.shape} differs from nuclei shape {nuc.shape}")
        reach = _reach(nuc, dist_px)[0]
        mem = ndi.gaussian_filter(mem, 1.0)
        out = watershed(mem, markers=nuc.astype(np.int64), mask=reach)
        out = out.astype(np.uint32)
        out[nuc > 0] = nuc[nuc > 0]
        return out
    raise ValueError(f"method must be 'expand' or 'membrane_watershed', got {method!r}")


def _reach(nuc: np.ndarray, dist_px: float) -> tuple[np.ndarray, np.ndarray | None]:
    """``ndi.distance_transform_edt(nuc == 0) <= dist_px`` (the same pixels) and the feature transform
    (nearest nucleus pixel, shape (2, Y, X); None without nuclei), from integer squared distances: only the
    pixels whose squared distance lies within 1 of ``dist_px**2`` need the float64 square root."""
    bg = nuc == 0
    if not bg.any():
        return np.ones(nuc.shape, bool), np.indices(nuc.shape, dtype=np.int32)
    if bg.all():
        return np.zeros(nuc.shape, bool), None
    ft = nearest_feature(~bg)  # scipy's feature transform of ``bg``, compiled
    h, w = nuc.shape
    dy = ft[0] - np.arange(h, dtype=ft.dtype)[:, None]
    d2 = (dy * dy).astype(np.int64)
    dx = ft[1] - np.arange(w, dtype=ft.dtype)[None, :]
    d2 += dx * dx
    lo, hi = int(np.floor(dist_px**2)) - 1, int(np.ceil(dist_px**2)) + 1
    within = d2 <= lo
    edge = (d2 > lo) & (d2 <= hi)
    within[edge] = np.sqrt(d2[edge].astype(np.float64)) <= dist_px
    return within, ft


def _expand_labels(nuc: np.ndarray, dist_px: float) -> np.ndarray:
    """``skimage.segmentation.expand_labels(nuc, distance=dist_px)`` as uint32: the same labels (the same
    feature transform picks each pixel's nearest nucleus pixel), without float64 distance arrays."""
    within, ft = _reach(nuc, dist_px)
    out = np.zeros(nuc.shape, np.uint32)
    if ft is not None:
        out[within] = nuc[ft[0][within], ft[1][within]]
    return out


def membrane_scale(membrane_cyx, *, step: int | None = None) -> np.ndarray:
    """Robust ``(low, high)`` = (1st, 99th percentile) of each membrane channel.

    Parameters
    ----------
    membrane_cyx : array-like, shape (C, Y, X)
        Membrane channels (numpy or dask; only a lattice of at most ~4 Mpx is read).
    step : int, optional
        Lattice stride (default: from the image size, as for the nuclear statistics).

    Returns
    -------
    ndarray of float64, shape (C, 2)
        ``high > low`` for every channel (a flat channel gets ``high = low + 1``).
    """
    shape = tuple(np.shape(membrane_cyx))
    if len(shape) != 3:
        raise ValueError(f"membrane_cyx must be 3-D (C, Y, X), got shape {shape}")
    s = step or _lattice_step(shape)
    lat = np.asarray(membrane_cyx[:, ::s, ::s], dtype=np.float64)
    return _robust_ranges(lat.reshape(shape[0], -1))


def _combine_membranes(mem_cyx: np.ndarray, scales) -> np.ndarray:
    """Sum of membrane channels, each mapped to ``(m - low) / (high - low)``; shape (Y, X) float32."""
    scales = membrane_scale(mem_cyx, step=1) if scales is None else np.asarray(scales, dtype=np.float64)
    if scales.shape != (mem_cyx.shape[0], 2):
        raise ValueError(f"membrane_scales must have shape ({mem_cyx.shape[0]}, 2), got {scales.shape}")
    out = np.zeros(mem_cyx.shape[1:], np.float32)
    for c in range(mem_cyx.shape[0]):
        lo, hi = scales[c]
        m = np.nan_to_num(np.asarray(mem_cyx[c], np.float32), nan=float(lo))
        out += (m - np.float32(lo)) / np.float32(hi - lo)
    return out

