"""Tissue and tumor regions from cell positions alone (cell tables without images).

Without pixels, the tissue is estimated from where the cells are, on the analysis grid (:mod:`chemozone.grid`):

1. every cell is a disc of radius ``r`` (default: half the median distance from a cell to its nearest
   neighbour in the sample, i.e. about a cell's own radius in packed tissue);
2. the union of the discs is closed (dilated, then eroded) by ``close_um``, so gaps between groups of cells narrower
   than about ``2 × close_um`` (sparse stroma, cells the export dropped) are tissue, while the outline keeps its
   concave shape (a convex hull would add the glass inside a bent explant);
3. holes smaller than ``fill_holes_um2`` are filled.

The same estimate on the tumor cells alone (``source: tumor_cells`` zones) gives the epithelium, from which the
tumor compartments are measured as for a stained epithelium (:func:`chemozone.zones.tumor_compartments`). The
estimate, its parameters and the convex hull's area (for comparison) are recorded per sample in ``run.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, cKDTree

from ._zone_masks import tumor_compartments
from .config import ZoneConfig
from .errors import ConfigError, TableError
from .grid import cell_grid_index

__all__ = ["default_region_radius_um", "region_grid_shape", "cell_region", "convex_hull_area_mm2",
           "tumor_cell_zones"]


def default_region_radius_um(xy_um: np.ndarray) -> float:
    """Half the median distance from a cell to its nearest neighbour (µm); 5 µm with fewer than two cells.

    Examples
    --------
    >>> default_region_radius_um(np.array([[0.0, 0.0], [10.0, 0.0], [30.0, 0.0]]))
    5.0
    """
    xy = np.asarray(xy_um, np.float64)
    if len(xy) < 2:
        return 5.0
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1])) / 2.0


def region_grid_shape(cells: pd.DataFrame, *, grid_um: float, margin_um: float, max_side_px: int = 20_000
                      ) -> tuple[int, int]:
    """Grid shape (rows, cols) that holds every cell plus ``margin_um`` (origin at 0, as for images).

    Raises
    ------
    TableError
        Negative positions, or a grid larger than ``max_side_px`` on a side (names ``analysis_grid.pixel_size_um``).

    Examples
    --------
    >>> region_grid_shape(pd.DataFrame({"x_um": [10.0], "y_um": [3.0]}), grid_um=2.0, margin_um=4.0)
    (5, 8)
    """
    x, y = cells["x_um"].to_numpy(np.float64), cells["y_um"].to_numpy(np.float64)
    if len(x) and (x.min() < 0 or y.min() < 0):
        raise TableError("cells table: negative positions (min x %.1f µm, y %.1f µm); the analysis grid starts at 0, "
                         "shift the coordinates to the image's frame" % (x.min(), y.min()))
    shape = (int(np.ceil(((y.max() if len(y) else 0) + margin_um) / grid_um)) + 1,
             int(np.ceil(((x.max() if len(x) else 0) + margin_um) / grid_um)) + 1)
    if max(shape) > max_side_px:
        raise TableError(f"cells table: positions up to {max(x.max(), y.max()):.0f} µm give an analysis grid of "
                         f"{shape} pixels; raise analysis_grid.pixel_size_um")
    return shape


def cell_region(cells: pd.DataFrame, *, grid_um: float, shape: Sequence[int], radius_um: float | None = None,
                close_um: float = 50.0, fill_holes_um2: float = 2000.0) -> tuple[np.ndarray, float]:
    """The region the cells occupy, on the grid: discs around the cells, closed, small holes filled.

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um``
    grid_um : float
        Grid pixel size, µm.
    shape : (int, int)
        Grid shape (:func:`region_grid_shape` with ``margin_um >= radius + close_um``).
    radius_um : float, optional
        Disc radius around each cell (None = :func:`default_region_radius_um`).
    close_um : float
        Closing radius (µm; 0 = none): concavities and gaps between groups of cells narrower than about
        ``2 × close_um`` become tissue (two isolated cells need a larger radius: the closing fills what a disc of
        this radius cannot enter).
    fill_holes_um2 : float
        Holes smaller than this are filled, µm².

    Returns
    -------
    mask : bool ndarray (Ygrid, Xgrid)
    radius_um : float
        The disc radius used.

    Examples
    --------
    >>> cells = pd.DataFrame({"x_um": [25.0, 45.0], "y_um": [25.0, 25.0]})
    >>> cell_region(cells, grid_um=2.0, shape=(25, 35), radius_um=3.0, close_um=0)[0][12, 8:27].astype(int).tolist()
    [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    >>> cell_region(cells, grid_um=2.0, shape=(25, 35), radius_um=3.0, close_um=12)[0][12, 8:27].astype(int).tolist()
    [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    """
    shape = (int(shape[0]), int(shape[1]))
    if radius_um is None:
        radius_um = default_region_radius_um(cells[["x_um", "y_um"]].to_numpy(np.float64))
    seeds = np.zeros(shape, bool)
    if len(cells):
        r, c = cell_grid_index(cells, grid_um=grid_um, shape=shape)
        seeds[r, c] = True
    if not seeds.any():
        return seeds, float(radius_um)
    # pixel centres within radius of a cell's pixel centre (+ half a pixel: the cell may sit anywhere in it)
    d = ndi.distance_transform_edt(~seeds, sampling=grid_um)
    mask = d <= radius_um + close_um + grid_um / 2
    if close_um > 0:
        mask = ndi.distance_transform_edt(mask, sampling=grid_um) > close_um
        mask |= d <= radius_um + grid_um / 2
    if fill_holes_um2 > 0:
        holes = ndi.binary_fill_holes(mask) & ~mask
        lab, n = ndi.label(holes)
        if n:
            small = np.bincount(lab.ravel(), minlength=n + 1) * grid_um**2 < fill_holes_um2
            small[0] = False
            mask |= small[lab]
    return mask, float(radius_um)


def convex_hull_area_mm2(cells: pd.DataFrame) -> float:
    """Area of the convex hull of the cell centres, mm² (0 with fewer than three cells not on a line).

    Examples
    --------
    >>> convex_hull_area_mm2(pd.DataFrame({"x_um": [0.0, 1000.0, 0.0, 1000.0], "y_um": [0.0, 0.0, 1000.0, 1000.0]}))
    1.0
    """
    xy = cells[["x_um", "y_um"]].to_numpy(np.float64)
    if len(xy) < 3 or np.linalg.matrix_rank(xy - xy.mean(axis=0)) < 2:
        return 0.0
    return float(ConvexHull(xy).volume) * 1e-6


def tumor_cell_zones(cells: pd.DataFrame, tissue: np.ndarray, *, grid_um: float, zone: ZoneConfig,
                     radius_um: float | None = None, fill_holes_um2: float = 2000.0, **_: Any
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tumor compartments of a ``source: tumor_cells`` zone: the epithelium is :func:`cell_region` of the cells
    whose ``zone.tumor_column`` is one of ``zone.tumor_values``, closed by ``zone.tumor_close_um`` (None = the
    disc radius), within the tissue.

    On the HALO export of five TMA cores (``Classifier.Label`` Tumor / Stroma, 12,782 cells), the default puts
    6.0 % of the Stroma-labelled cells (143 of 2,392) inside the epithelium; the tissue's 50 µm closing would put 71 % there
    (tumor and stroma interleave at the scale of a few cells).

    Other keywords of :func:`chemozone.options.cell_region_options` (the tissue's ``close_um``) are ignored.

    Returns
    -------
    masks : dict name -> bool ndarray (Ygrid, Xgrid)
        ``{zone}_intraepithelial``, ``_margin``, ``_peritumoral``, ``_distal`` (:func:`chemozone.zones.tumor_compartments`).
    record : dict
        ``n_tumor_cells`` and the disc radius used.

    Raises
    ------
    ConfigError
        The cells table has no ``tumor_column``.

    Examples
    --------
    >>> cells = pd.DataFrame({"x_um": [1.0, 9.0], "y_um": [1.0, 1.0], "cell_type": ["Tumor", "T"]})
    >>> z = ZoneConfig(name="T", source="tumor_cells", tumor_values=["Tumor"], tumor_close_um=0, bands_um=[2.0, 4.0])
    >>> masks, rec = tumor_cell_zones(cells, np.ones((1, 6), bool), grid_um=2.0, zone=z, radius_um=0.5)
    >>> masks["T_intraepithelial"].astype(int).tolist(), rec["n_tumor_cells"]
    ([[1, 0, 0, 0, 0, 0]], 1)
    """
    if zone.tumor_column not in cells.columns:
        have = [c for c in ("cell_type", "tissue_category", "vendor_phenotype") if c in cells.columns]
        raise ConfigError(f"zones '{zone.name}'.tumor_column: the cells table has no column '{zone.tumor_column}'; "
                          f"use one of {have}")
    sel = cells[zone.tumor_column].astype(str).isin([str(v) for v in zone.tumor_values]).to_numpy()
    tumor = cells.loc[sel]
    if radius_um is None:
        radius_um = default_region_radius_um(tumor[["x_um", "y_um"]].to_numpy(np.float64))
    close = radius_um if zone.tumor_close_um is None else zone.tumor_close_um
    epi, r = cell_region(tumor, grid_um=grid_um, shape=np.shape(tissue), radius_um=radius_um, close_um=close,
                         fill_holes_um2=fill_holes_um2)
    masks = tumor_compartments(epi, tissue, grid_um=grid_um, bands_um=zone.bands_um, zone=zone.name)
    return masks, {"n_tumor_cells": int(sel.sum()), "radius_um": round(r, 3), "close_um": round(float(close), 3)}
