"""The whole-image entry point: a ``(C, Y, X)`` image and plain keyword options in, ``(nuclei, cells)`` out.

The options are the fields of the config's ``segmentation`` section as keywords, with the same
defaults (``chemozone.run`` is the one place that turns the section into keywords); the cellpose
sub-section's fields carry a ``cellpose_`` prefix. Error messages name the config key a user writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..grid import grid_factor
from ._lattice import _lattice_step
from ._tile_store import _segment_to_store
from ._tiling import _overlap_px, _segment_single_tile, _segment_tiles, _statistics_pass, _tile_layout, _TileReader
from ._validate import _validate_scale

__all__ = ["segment_image"]


def segment_image(
    image_cyx,
    *,
    channels: list[str],
    pixel_size_um: float,
    nuclear_channel: str = "DAPI",
    aliases: dict[str, list[str]] | None = None,
    tissue=None,
    tissue_grid_um: float | None = None,
    store=None,
    model=None,
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
    method : {"watershed", "cellpose"}
        Nuclear segmenter (:func:`segment_nuclei`).
    nucleus_diameter_um : float
        Typical nucleus diameter, µm: scales smoothing, seed spacing and the overlap of tiles.
    small_nucleus_diameter_um : float, optional
        Diameter of the smallest nuclei to keep apart from a touching larger one, µm (watershed): the
        seed map's distance term saturates at half of it (``distance_cap_factor = 0.5 · small /
        nucleus_diameter_um``), so small nuclei (lymphocytes) touching large ones get their own seed.
    min_nucleus_area_um2, max_nucleus_area_um2 : float
        Nuclear size filters, µm².
    threshold : {"otsu", "li", "triangle", "local"} or float
        Foreground threshold of the background-corrected nuclear channel (watershed).
    cell_method : {"expand", "membrane_watershed"}
        How cells grow from nuclei (:func:`segment_cells`).
    expand_um : float
        Maximum growth of a nucleus into its cell body, µm.
    membrane_channels : sequence of str
        Channels whose (rescaled) sum guides ``membrane_watershed``.
    tile_size_px : int
        Images larger than this (either side) are segmented tile by tile.
    tile_overlap_um : float
        Overlap between neighbouring tiles, µm (raised to what exact stitching needs).
    cellpose_model : str
        Checkpoint path or built-in model name (config ``segmentation.cellpose.model``); the
        ``cellpose_*`` options are the fields of the config's ``segmentation.cellpose``.
    cellpose_gpu : bool
        Run cellpose on the GPU.
    cellpose_diameter_um : float, optional
        Expected object diameter for cellpose, µm (None = ``nucleus_diameter_um``).
    cellpose_flow_threshold, cellpose_cellprob_threshold : float
        cellpose's ``flow_threshold`` and ``cellprob_threshold``.
    cellpose_batch_size : int
        cellpose's ``batch_size``.
    cellpose_channels : sequence of str, optional
        Up to 3 channels handed to cellpose, in that order (default: the nuclear channel).

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
    _check_options(method=method, cell_method=cell_method, nucleus_diameter_um=nucleus_diameter_um,
                   small_nucleus_diameter_um=small_nucleus_diameter_um, min_nucleus_area_um2=min_nucleus_area_um2,
                   max_nucleus_area_um2=max_nucleus_area_um2, expand_um=expand_um, tile_size_px=tile_size_px,
                   tile_overlap_um=tile_overlap_um)
    shape = tuple(getattr(image_cyx, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"image_cyx must be 3-D (C, Y, X), got shape {shape}")
    if len(channels) != shape[0]:
        raise ValueError(f"channels has {len(channels)} names but the image has {shape[0]} channels")
    _validate_scale(pixel_size_um)
    nuc_idx, mem_idx, cp_idx = _channel_indices(
        channels, nuclear_channel=nuclear_channel, aliases=aliases, method=method, cell_method=cell_method,
        membrane_channels=membrane_channels, cellpose_channels=cellpose_channels)
    tissue_arr, factor = _tissue_lookup(tissue, tissue_grid_um, pixel_size_um)
    cellpose = {"cellpose_model": cellpose_model, "cellpose_gpu": cellpose_gpu,
                "cellpose_diameter_um": cellpose_diameter_um, "cellpose_flow_threshold": cellpose_flow_threshold,
                "cellpose_cellprob_threshold": cellpose_cellprob_threshold,
                "cellpose_batch_size": cellpose_batch_size}
    seg = _stage_options(method=method, nucleus_diameter_um=nucleus_diameter_um,
                         small_nucleus_diameter_um=small_nucleus_diameter_um,
                         min_nucleus_area_um2=min_nucleus_area_um2, max_nucleus_area_um2=max_nucleus_area_um2,
                         threshold=threshold, cell_method=cell_method, expand_um=expand_um, cellpose=cellpose)

    _, h, w = shape
    overlap = _overlap_px(seg, pixel_size_um=pixel_size_um, tile_overlap_um=tile_overlap_um)
    tiles = _tile_layout((h, w), tile_size_px=tile_size_px, overlap_px=overlap)
    reader = _TileReader(image_cyx, cp_idx if cp_idx else nuc_idx, mem_idx)
    common = {"pixel_size_um": pixel_size_um, "seg": seg, "tissue_factor": factor, "model": model}
    sample_kw = {"step": _lattice_step((h, w)), "seg": seg, "d_px": seg["nucleus_diameter_um"] / pixel_size_um}
    if len(tiles) == 1 and store is None:
        return _segment_single_tile(reader, tiles[0], tissue=tissue_arr, common=common, sample_kw=sample_kw)

    import dask

    # the reader (and, in memory, the tissue mask) enter the graph once, as keys every tile task depends on
    reader_d = dask.delayed(reader, traverse=False)
    common["statistics"] = _statistics_pass(tiles, reader_d, sample_kw)
    if store is None:
        tissue_d = dask.delayed(tissue_arr) if tissue_arr is not None else None
        return _segment_tiles(tiles, reader_d, common, tissue_d, (h, w))
    return _segment_to_store(store, tiles, reader_d, common, tissue_arr, (h, w), int(tile_size_px))


def _check_options(*, method, cell_method, nucleus_diameter_um, small_nucleus_diameter_um, min_nucleus_area_um2,
                   max_nucleus_area_um2, expand_um, tile_size_px, tile_overlap_um) -> None:
    """The checks the config's ``segmentation`` section makes, for callers that pass keywords directly."""
    if isinstance(nucleus_diameter_um, str):
        raise ValueError(f"segment_image takes nucleus_diameter_um in µm, got {nucleus_diameter_um!r}; estimate it "
                         "first with chemozone.segment.estimate_nucleus_diameter_um (the batch runner does so for "
                         "segmentation.nucleus_diameter_um: auto)")
    if method not in ("watershed", "cellpose"):
        raise ValueError(f"method must be 'watershed' or 'cellpose', got {method!r}")
    if cell_method not in ("expand", "membrane_watershed"):
        raise ValueError(f"cell_method must be 'expand' or 'membrane_watershed', got {cell_method!r}")
    _validate_scale(1.0, nucleus_diameter_um=nucleus_diameter_um, small_nucleus_diameter_um=small_nucleus_diameter_um,
                    min_nucleus_area_um2=min_nucleus_area_um2, max_nucleus_area_um2=max_nucleus_area_um2,
                    tile_size_px=tile_size_px, tile_overlap_um=tile_overlap_um)
    if not expand_um >= 0:
        raise ValueError(f"expand_um must be >= 0, got {expand_um}")
    if min_nucleus_area_um2 >= max_nucleus_area_um2:
        raise ValueError(f"min_nucleus_area_um2 ({min_nucleus_area_um2}) must be smaller than "
                         f"max_nucleus_area_um2 ({max_nucleus_area_um2})")
    if small_nucleus_diameter_um is not None and small_nucleus_diameter_um > nucleus_diameter_um:
        raise ValueError(f"small_nucleus_diameter_um ({small_nucleus_diameter_um}) must not exceed "
                         f"nucleus_diameter_um ({nucleus_diameter_um})")


def _channel_indices(channels, *, nuclear_channel, aliases, method, cell_method, membrane_channels,
                     cellpose_channels) -> tuple[int, list[int], list[int]]:
    """Indices of the nuclear channel, the membrane channels and the cellpose channels (may be empty)."""
    from ..io import resolve_channels

    nuc_idx = resolve_channels(list(channels), [nuclear_channel], aliases=aliases, source="segmentation")[0]
    mem_idx: list[int] = []
    if cell_method == "membrane_watershed":
        if not membrane_channels:
            raise ConfigError("segmentation.membrane_channels: cell_method 'membrane_watershed' needs at least "
                              "one membrane channel (e.g. [CD45, panCK]); add them or use cell_method: expand")
        mem_idx = resolve_channels(list(channels), list(membrane_channels), aliases=aliases,
                                   source="segmentation.membrane_channels")
    cp_idx: list[int] = []
    if method == "cellpose" and cellpose_channels:
        if len(cellpose_channels) > 3:
            raise ConfigError(f"segmentation.cellpose.channels: cellpose 4 reads at most 3 channels, got "
                              f"{len(cellpose_channels)} ({list(cellpose_channels)}); keep up to 3 "
                              f"(e.g. [panCK, DAPI])")
        cp_idx = resolve_channels(list(channels), list(cellpose_channels), aliases=aliases,
                                  source="segmentation.cellpose.channels")
    return nuc_idx, mem_idx, cp_idx


def _tissue_lookup(tissue, tissue_grid_um: float | None, pixel_size_um: float) -> tuple[np.ndarray | None, int]:
    """The tissue mask as bool and its grid factor (pixels per grid cell); ``(None, 1)`` without one."""
    if tissue is None:
        return None, 1
    if tissue_grid_um is None:
        raise ValueError("tissue_grid_um is required with tissue (the analysis grid's pixel size, µm)")
    return np.asarray(tissue).astype(bool), grid_factor(pixel_size_um, tissue_grid_um)


def _stage_options(*, method, nucleus_diameter_um, small_nucleus_diameter_um, min_nucleus_area_um2,
                   max_nucleus_area_um2, threshold, cell_method, expand_um, cellpose: dict[str, Any]) -> dict[str, Any]:
    """What every tile needs to segment its window (passed to the tile tasks)."""
    watershed = method == "watershed"
    return {
        "method": method,
        "nucleus_diameter_um": nucleus_diameter_um,
        "expand_um": expand_um,
        "cell_method": cell_method,
        "cellpose": cellpose,
        "nuclei_options": {"min_area_um2": min_nucleus_area_um2,
                           "max_area_um2": max_nucleus_area_um2,
                           **({"threshold": threshold} if watershed else {}),
                           **({"distance_cap_factor": 0.5 * small_nucleus_diameter_um / nucleus_diameter_um}
                              if watershed and small_nucleus_diameter_um else {})},
    }
