"""Nuclei of one nuclear channel: the classical watershed or the cellpose adapter, then size filters."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._labels import _size_filter
from ._validate import _validate_2d, _validate_scale
from ._watershed import _nuclei_watershed, _watershed_options

__all__ = ["segment_nuclei"]


def segment_nuclei(
    image_yx,
    *,
    pixel_size_um: float,
    nucleus_diameter_um: float,
    method: str = "watershed",
    statistics: dict[str, Any] | None = None,
    origin_px: tuple[int, int] = (0, 0),
    **options: Any,
) -> np.ndarray:
    """Segment nuclei in one nuclear channel.

    Parameters
    ----------
    image_yx : array-like, shape (Y, X)
        The nuclear channel (any numeric dtype and intensity range; not modified). With
        ``method="cellpose"`` also a stack of shape (C, Y, X), C <= 3, of the channels the model
        reads (``cellpose_channels`` of :func:`segment_image`, in that order).
    pixel_size_um : float
        Pixel size, µm.
    nucleus_diameter_um : float
        Typical nucleus diameter, µm; every length of the method scales with it.
    method : {"watershed", "cellpose"}
        The classical segmenter (no weights) or the cellpose adapter.
    statistics : dict, optional
        Image-level intensity statistics computed elsewhere (for a tile of a larger image, so that
        every tile uses the same parameters). watershed: the dict of :func:`nuclei_statistics`
        (default: computed from ``image_yx`` itself). cellpose: ``{"lowhigh": (C, 2) array}``,
        the intensities mapped to 0 and 1 per channel (default: cellpose's own 1st/99th
        percentiles of ``image_yx``).
    origin_px : (int, int)
        Global (y, x) position of ``image_yx[0, 0]`` when it is a window of a larger image; aligns
        the block grid of the background estimate so that windows reproduce the whole image.
    **options
        watershed: keys of :data:`NUCLEI_DEFAULTS` (``threshold``, ``min_area_um2``,
        ``max_area_um2``, ``background_factor``, ``smooth_factor``, ``noise_k``,
        ``seed_distance_factor``, ``distance_cap_factor``, ``seed_h_factor``). cellpose: ``model``
        (an object with the CellposeModel ``eval`` contract; default the model named by
        ``cellpose_model``), ``cellpose_model``, ``cellpose_gpu``, ``cellpose_diameter_um``,
        ``cellpose_flow_threshold``, ``cellpose_cellprob_threshold``, ``cellpose_batch_size`` (see
        :func:`chemozone.segment._cellpose.cellpose_nuclei`), ``min_area_um2``, ``max_area_um2``.

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
    if method == "cellpose" and np.ndim(image_yx) == 3:
        img = np.asarray(image_yx)
        if not 1 <= img.shape[0] <= 3:
            raise ValueError(f"cellpose reads at most 3 channels, got a stack of shape {img.shape}")
    else:
        img = _validate_2d(image_yx, "image_yx")
    _validate_scale(pixel_size_um, nucleus_diameter_um=nucleus_diameter_um)
    d_px = nucleus_diameter_um / pixel_size_um
    disc_um2 = math.pi * (nucleus_diameter_um / 2) ** 2
    if method == "watershed":
        opts = _watershed_options(options)
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
        from ._cellpose import cellpose_nuclei  # lazily: the adapter is only needed for cellpose

        lowhigh = None if statistics is None else statistics.get("lowhigh")
        labels = cellpose_nuclei(img, pixel_size_um=pixel_size_um, nucleus_diameter_um=nucleus_diameter_um,
                                 lowhigh=lowhigh, **opts)
        return _size_filter(labels.astype(np.int64, copy=False), min_um2 / px2, max_um2 / px2)
    return _nuclei_watershed(img, d_px, opts, min_um2 / px2, max_um2 / px2, statistics=statistics,
                             origin=(int(origin_px[0]), int(origin_px[1])))

