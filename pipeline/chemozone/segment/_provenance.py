"""What produced the masks, for ``run.json``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._watershed import NUCLEI_DEFAULTS

__all__ = ["segmentation_provenance"]


def segmentation_provenance(
    *,
    method: str = "watershed",
    nucleus_diameter_um: float = 8.0,
    small_nucleus_diameter_um: float | None = None,
    min_nucleus_area_um2: float = 8.0,
    max_nucleus_area_um2: float = 400.0,
    threshold: str | float = "otsu",
    cell_method: str = "expand",
    expand_um: float = 3.0,
    membrane_channels: Sequence[str] = (),
    tile_size_px: int = 2048,
    tile_overlap_um: float = 40.0,
    cellpose_model: str = "cpsam",
    cellpose_gpu: bool = False,
    cellpose_diameter_um: float | None = None,
    cellpose_flow_threshold: float = 0.4,
    cellpose_cellprob_threshold: float = 0.0,
    cellpose_batch_size: int = 8,
    cellpose_channels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What produced the masks: method, parameters and, for cellpose, its version and model.

    Parameters
    ----------
    method, cell_method, threshold, membrane_channels, tile_size_px, tile_overlap_um, expand_um
        As for :func:`chemozone.segment.segment_image` (same names and defaults, so that one dict
        of options serves both functions).
    nucleus_diameter_um, small_nucleus_diameter_um, min_nucleus_area_um2, max_nucleus_area_um2
        As for :func:`chemozone.segment.segment_image`.
    cellpose_model, cellpose_gpu, cellpose_diameter_um, cellpose_flow_threshold
        As for :func:`chemozone.segment.segment_image` (recorded with ``method="cellpose"``).
    cellpose_cellprob_threshold, cellpose_channels
        As for :func:`chemozone.segment.segment_image` (recorded with ``method="cellpose"``).
    cellpose_batch_size : int
        Accepted but not recorded (it does not change the masks).

    Returns
    -------
    dict
        ``method``, ``cell_method``, ``nucleus_diameter_um``, ``small_nucleus_diameter_um``,
        ``min_nucleus_area_um2``, ``max_nucleus_area_um2``, ``expand_um``, ``membrane_channels``,
        ``threshold``, ``tile_size_px``, ``tile_overlap_um``, ``nuclei_defaults``; with cellpose also
        ``cellpose_version``, ``cellpose_model`` and its eval options (and ``cellpose_model_path``).

    Examples
    --------
    >>> p = segmentation_provenance(nucleus_diameter_um=9.0)
    >>> p["method"], p["nucleus_diameter_um"], "cellpose_version" in p
    ('watershed', 9.0, False)
    """
    del cellpose_batch_size  # not part of the record: it does not change the masks
    out: dict[str, Any] = {
        "method": method,
        "cell_method": cell_method,
        "nucleus_diameter_um": nucleus_diameter_um,
        "small_nucleus_diameter_um": small_nucleus_diameter_um,
        "min_nucleus_area_um2": min_nucleus_area_um2,
        "max_nucleus_area_um2": max_nucleus_area_um2,
        "expand_um": expand_um,
        "membrane_channels": list(membrane_channels),
        "threshold": threshold,
        "tile_size_px": tile_size_px,
        "tile_overlap_um": tile_overlap_um,
        "nuclei_defaults": dict(NUCLEI_DEFAULTS),
    }
    if method == "cellpose":
        from ._cellpose import cellpose_provenance

        out.update(cellpose_provenance(
            cellpose_model=cellpose_model, cellpose_gpu=cellpose_gpu, cellpose_diameter_um=cellpose_diameter_um,
            cellpose_flow_threshold=cellpose_flow_threshold, cellpose_cellprob_threshold=cellpose_cellprob_threshold,
            cellpose_channels=cellpose_channels))
    return out
