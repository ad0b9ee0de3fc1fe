"""Nuclear and cell segmentation, tiled and stitched for images larger than memory.

Public functions
----------------
segment_nuclei(image_yx, *, pixel_size_um, nucleus_diameter_um, method="watershed", **options)
    Nuclei of one nuclear channel as ``uint32`` labels (a classical watershed that needs no weights,
    or cellpose through :mod:`chemozone.segment._cellpose`).
nuclei_statistics(image_yx, *, pixel_size_um, nucleus_diameter_um, **options)
    The image-level intensity statistics of the classical segmenter (shared by all tiles of an image).
segment_cells(nuclei, *, pixel_size_um, expand_um=3.0, method="expand", membrane=None)
    Cell bodies grown from the nuclei; every cell keeps its nucleus' label.
membrane_scale(membrane_cyx)
    Per-channel (1st, 99th percentile) that puts membrane channels on a common scale.
segment_image(image_cyx, *, channels, pixel_size_um, ..., method=..., nucleus_diameter_um=..., ...)
    Both, on a whole ``(C, Y, X)`` image, per tile with overlap (dask-delayed tasks), with globally
    unique labels stitched across the seams; optionally written to a zarr store tile by tile. The
    options are the config's ``segmentation`` fields as plain keywords (cellpose's with a
    ``cellpose_`` prefix).
combine_masks(nuclei=None, cells=None, *, pixel_size_um, ...), load_precomputed_masks(specs, image_cyx, ...)
    Precomputed masks from the sample sheet (``nuclei_mask`` / ``cells_mask``) in the contract of
    ``segment_image``: cell ids kept, nuclei carrying their cell's id, cells grown from nuclei-only masks.
segmentation_provenance(**options)
    Method, parameters and (for cellpose) version and model, for ``run.json``.
estimate_nucleus_diameter_um(image_yx, *, pixel_size_um), nucleus_scale(...)
    The typical nucleus diameter from the nuclear channel (``nucleus_diameter_um: auto``): scale-space
    blobs on a few crops, then each blob's size at the segmenter's outline level.
resolve_auto_diameter(nuclear_yx, options, *, pixel_size_um)
    ``segment_image``'s keywords with ``"auto"`` replaced by that estimate (and its record).

Modules
-------
``_watershed``   the classical nuclear segmenter (steps, defaults, image-level statistics)
``_preprocess``  its per-pixel preprocessing (background, smoothing) on a global block grid
``_nuclei``      :func:`segment_nuclei`: watershed or cellpose, then size filters
``_cellpose``    the cellpose adapter (imports cellpose/torch only when a model is used)
``_cells``       :func:`segment_cells`, :func:`membrane_scale`
``_tiling``      tile layout, the tile reader (tasks read their own pixels), statistics pass, per-tile
                 dask tasks, stitching
``_tile_store``  tiles segmented into a zarr store (scratch windows, then one stitch task per core)
``_image``       :func:`segment_image`: keywords, channels, tissue, then the tiles
``_provenance``  :func:`segmentation_provenance`
``_precomputed`` :func:`combine_masks`, :func:`load_precomputed_masks` (bring your own masks)
``_scale``       :func:`estimate_nucleus_diameter_um`, :func:`nucleus_scale`
``_lattice``, ``_labels``, ``_validate``  sampling lattice, label clean-up, input checks

A tiled run reproduces the whole-image labels exactly: every intensity statistic is image-level
(gathered from a lattice in a cheap first pass over the tiles) and the preprocessing is per-pixel on a
global block grid, with tiles overlapping by at least the preprocessing context plus two nucleus
diameters and the cell expansion.
"""

from __future__ import annotations

from ..grid import grid_factor  # noqa: F401 - the one grid formula, as used here (tests check it is that one)
from ._cells import membrane_scale, segment_cells
from ._image import segment_image
from ._nuclei import segment_nuclei
from ._precomputed import combine_masks, load_precomputed_masks
from ._provenance import segmentation_provenance
from ._scale import estimate_nucleus_diameter_um, nucleus_scale, resolve_auto_diameter
from ._watershed import NUCLEI_DEFAULTS, nuclei_statistics

__all__ = [
    "segment_nuclei",
    "nuclei_statistics",
    "membrane_scale",
    "segment_cells",
    "segment_image",
    "segmentation_provenance",
    "estimate_nucleus_diameter_um",
    "nucleus_scale",
    "resolve_auto_diameter",
    "NUCLEI_DEFAULTS",
    "combine_masks",
    "load_precomputed_masks",
]
