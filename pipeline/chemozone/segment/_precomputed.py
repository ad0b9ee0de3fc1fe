"""Precomputed masks instead of segmentation: a sample whose sheet row names ``nuclei_mask`` and/or ``cells_mask``.

The result has the contract of :func:`chemozone.segment.segment_image` (``nuclei``, ``cells``: ``uint32``, the
nucleus pixels of a cell carry the cell's id), so quantification and everything after it run unchanged:

- **cells and nuclei**: the cell ids are the cells mask's ids, kept; a cell's nucleus compartment is its pixels
  covered by any nucleus of the nuclei mask (the two masks may number their objects differently, as two tools
  do; a multinucleated cell gets all its nuclei; nucleus pixels outside every cell are dropped and counted).
- **cells only** (e.g. a whole-cell DeepCell / Mesmer mask): no nucleus compartment. No nuclei are invented
  from the nuclear channel: ``{marker}_nucleus`` / ``{marker}_cytoplasm`` and ``nucleus_area_um2`` are NaN, and
  a gate on a nucleus or cytoplasm compartment is refused for such a sample before the run starts.
- **nuclei only**: cells grown from the nuclei as the default segmenter does (``segmentation.cell_method``,
  ``expand_um`` and, for ``membrane_watershed``, ``membrane_channels``); every cell keeps its nucleus' id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["combine_masks", "load_precomputed_masks"]


def combine_masks(nuclei=None, cells=None, *, pixel_size_um: float, expand_um: float = 3.0,
                  cell_method: str = "expand", membrane=None) -> tuple[np.ndarray | None, np.ndarray, dict[str, Any]]:
    """Nuclei and cells in the segmenter's contract from whichever of the two masks a user has.

    Parameters
    ----------
    nuclei, cells : ndarray of uint32, shape (Y, X), optional
        Label masks (0 = background); at least one.
    pixel_size_um : float
        Pixel size, µm (for growing cells from nuclei).
    expand_um, cell_method, membrane
        As for :func:`chemozone.segment.segment_cells` (used when only ``nuclei`` is given).

    Returns
    -------
    (nuclei or None, cells, record)
        ``nuclei`` carries the ids of ``cells`` (None when only cells were given); ``record``: ``n_cells``,
        ``cells_from`` (``"mask"`` / ``"expanded nuclei"``), ``nuclei_from`` (``"mask"`` / ``"none"``),
        ``cells_without_nucleus``, ``nuclei_outside_cells`` (ids of the nuclei mask with no pixel in a cell).

    Examples
    --------
    >>> c = np.array([[5, 5, 0, 9, 9]], np.uint32); n = np.array([[1, 0, 0, 0, 2]], np.uint32)
    >>> nuc, cel, rec = combine_masks(n, c, pixel_size_um=1.0)
    >>> nuc.tolist(), rec["cells_without_nucleus"]
    ([[5, 0, 0, 0, 9]], 0)
    >>> nuc, cel, rec = combine_masks(n, None, pixel_size_um=1.0, expand_um=1.0)
    >>> cel.tolist(), rec["cells_from"]
    ([[1, 1, 0, 2, 2]], 'expanded nuclei')
    """
    from ._cells import segment_cells

    if nuclei is None and cells is None:
        raise ValueError("combine_masks needs nuclei, cells or both")
    rec: dict[str, Any] = {"nuclei_from": "none" if nuclei is None else "mask",
                           "cells_from": "mask" if cells is not None else "expanded nuclei"}
    if cells is None:
        cells = segment_cells(nuclei, pixel_size_um=pixel_size_um, expand_um=expand_um, method=cell_method,
                              membrane=membrane)
        rec.update(cell_method=cell_method, expand_um=expand_um)
    elif nuclei is not None:
        covered = nuclei > 0
        inside = np.unique(nuclei[covered & (cells > 0)])
        rec["nuclei_outside_cells"] = int(np.setdiff1d(np.unique(nuclei[covered]), inside).size)
        nuclei = np.where(covered, cells, 0).astype(np.uint32)
    cell_ids = np.unique(cells)
    cell_ids = cell_ids[cell_ids > 0]
    rec["n_cells"] = int(cell_ids.size)
    if nuclei is not None:
        with_nuc = np.unique(nuclei)
        rec["cells_without_nucleus"] = int(np.setdiff1d(cell_ids, with_nuc).size)
    rec.setdefault("nuclei_outside_cells", 0)
    return nuclei, cells, rec


def load_precomputed_masks(specs: dict[str, str], image_cyx, *, channels: Sequence[str], pixel_size_um: float,
                           expand_um: float = 3.0, cell_method: str = "expand",
                           membrane_channels: Sequence[str] = (), aliases: dict[str, list[str]] | None = None
                           ) -> tuple[np.ndarray | None, np.ndarray, dict[str, Any]]:
    """Read a sample's ``nuclei_mask`` / ``cells_mask`` and combine them (:func:`combine_masks`).

    Parameters
    ----------
    specs : dict
        ``{column: "path[#selector]"}`` from :func:`chemozone.io.sample_mask_specs`.
    image_cyx : array, shape (C, Y, X)
        The sample's image (its shape is checked; membrane channels read for ``membrane_watershed``).
    channels : sequence of str
        The image's channel names.
    pixel_size_um : float
    expand_um, cell_method, membrane_channels, aliases
        The ``segmentation`` options used to grow cells when only nuclei are given.

    Returns
    -------
    (nuclei or None, cells, record)
        ``record`` = :func:`combine_masks`'s plus ``method: "precomputed"`` and, per column, what was read
        (``path``, ``selector``, ``source``, ``dtype``, ``n_objects``).

    Raises
    ------
    MaskError
        A mask that cannot be used (see :func:`chemozone.io.read_label_mask`).
    """
    from ..io import mask_header, read_label_mask, resolve_channels

    shape_yx = tuple(int(s) for s in image_cyx.shape[-2:])
    read: dict[str, np.ndarray] = {}
    sources: dict[str, Any] = {}
    for column, spec in specs.items():
        arr = read_label_mask(spec, column=column, shape_yx=shape_yx)
        ids = np.unique(arr)
        sources[column] = {**mask_header(spec, column=column), "n_objects": int((ids > 0).sum())}
        read[column] = arr
    membrane = None
    if "cells_mask" not in read and cell_method == "membrane_watershed":
        idx = resolve_channels(list(channels), list(membrane_channels), aliases=aliases,
                               source="segmentation.membrane_channels")
        membrane = np.asarray(image_cyx[idx], dtype=np.float32)
    nuclei, cells, rec = combine_masks(read.get("nuclei_mask"), read.get("cells_mask"), pixel_size_um=pixel_size_um,
                                       expand_um=expand_um, cell_method=cell_method, membrane=membrane)
    return nuclei, cells, {"method": "precomputed", **rec, "masks": sources}
