"""Region annotations on runs from cell tables (``chemozone run SHEET --cells FORMAT`` with a ``regions`` column).

The same QuPath GeoJSON and the same rules as for images (:mod:`chemozone.regions`): the analysis region bounds
the cells and the areas, exclusions are removed from both, any class can be a ``source: regions`` zone; a cell is
inside when its position is, an area on the analysis grid when the grid pixel's centre is (on an outline =
outside). What differs without an image:

- the annotations are in pixels of the table's image, the cells in µm: ``panel.pixel_size_um`` converts (refused
  without it);
- the grid is the table run's (origin 0, ``analysis_grid.pixel_size_um``, not a whole number of image pixels;
  :func:`chemozone.grid.grid_pixel_centres_um`), and the tissue it bounds is the estimate from the cell positions
  (:func:`chemozone.cell_regions.cell_region`, computed from all cells before the regions apply, as an image's
  tissue mask is);
- the image's size is known only when the sheet also names masks; otherwise the annotations are checked against
  the cells: annotations that lie wholly away from every cell, or an analysis region containing none, are another
  image's, a downsampled export's or in µm, and are refused.

Besides the grid areas (what densities use), the record gives the drawn areas from the geometry itself (shapely;
``*_geometry_mm2``), which do not depend on the tissue estimate.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import RegionError
from .grid import grid_pixel_centres_um
from .regions import (
    REGIONS_COLUMN,
    SampleRegions,
    contains_grid_centres,
    load_regions,
    points_in_geometry,
    region_zone_geometry,
    sample_regions_path,
)

__all__ = ["load_table_regions", "apply_table_regions", "table_region_zones"]

_FAR = 10**9
"""Image side used when the table's image size is unknown (the cells' extent is checked instead)."""


def _err(path: Any, what: str) -> RegionError:
    return RegionError(f"{path} (sample-sheet column '{REGIONS_COLUMN}'): {what}")


def _check_against_cells(regs: SampleRegions, cells: pd.DataFrame, px: float, margin_um: float) -> None:
    """Refuse annotations that cannot belong to the table's image (see the module docstring)."""
    import shapely

    geoms = list(regs.classes.values())
    if not geoms or not len(cells):
        return
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    cx, cy = cells["x_um"].to_numpy(np.float64) / px, cells["y_um"].to_numpy(np.float64) / px
    m = margin_um / px
    where = (f"annotations span x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g} px, the table's cells x "
             f"{cx.min():.6g}..{cx.max():.6g}, y {cy.min():.6g}..{cy.max():.6g} px at {px:g} µm/px")
    fix = ("export the GeoJSON from QuPath on this table's image at full resolution (pixel coordinates, not µm) and "
           "set panel.pixel_size_um to that image's pixel size")
    if x1 < cx.min() - m or x0 > cx.max() + m or y1 < cy.min() - m or y0 > cy.max() + m:
        raise _err(regs.source, f"the annotations lie away from every cell ({where}); {fix}")
    if regs.analysis is not None and not points_in_geometry(regs.analysis, cx, cy).any():
        raise _err(regs.source, f"no cell of the table lies inside the analysis region ({where}); {fix}")


def load_table_regions(row: dict[str, Any], cells: pd.DataFrame, *, pixel_size_um: float | None,
                       zones: Sequence[Any] = (), image_shape_yx: Sequence[int] | None = None,
                       margin_um: float = 100.0, checked: bool = False, **options: Any) -> SampleRegions | None:
    """The region annotations a cell-table sheet row names (``regions`` column), checked against the cells.

    Parameters
    ----------
    row : dict
        The sheet row.
    cells : DataFrame with ``x_um, y_um``
        The sample's cells (all of them).
    pixel_size_um : float or None
        The table's image's pixel size (``panel.pixel_size_um``).
    zones : list of ZoneConfig
        The configured zones: each ``source: regions`` zone's class must be annotated (checked here, before
        anything of the sample is written).
    image_shape_yx : (int, int), optional
        The image's shape when known (from the sample's masks): annotations beyond it are refused as for images.
    margin_um : float
        How far from the outermost cells annotations may lie and still be this image's.
    checked : bool
        The file was checked against the cells and the image before (step B re-reads it): only read it.
    **options
        :func:`chemozone.options.region_options`.

    Returns
    -------
    SampleRegions or None
        None when the row names no file and no zone needs one.

    Raises
    ------
    RegionError
        No pixel size; the file's problems (:func:`chemozone.regions.load_regions`); annotations away from the
        cells or an analysis region without cells; a regions zone without the file or its class.
    """
    path = sample_regions_path(row)
    todo = [z for z in zones if z.source == "regions"]
    if path is None:
        for z in todo:  # raises: a regions zone needs the file
            region_zone_geometry(None, z.region_class, zone=z.name)
        return None
    if pixel_size_um is None:
        raise _err(path, "region annotations of a cell table need its image's pixel size (QuPath writes pixels, the "
                         "table has µm); set panel.pixel_size_um (CLI: --pixel-size-um)")
    px = float(pixel_size_um)
    shape = tuple(image_shape_yx) if image_shape_yx is not None and not checked else (_FAR, _FAR)
    regs = load_regions(path, shape_yx=shape, **options)
    if image_shape_yx is None and not checked:
        _check_against_cells(regs, cells, px, margin_um)
    for z in todo:
        region_zone_geometry(regs, z.region_class, zone=z.name)
    return regs


def _grid_mask(geom: Any, shape: Sequence[int], grid_um: float, px: float) -> np.ndarray:
    ys, xs = grid_pixel_centres_um(shape, grid_um)
    return contains_grid_centres(geom, ys / px, xs / px)


def apply_table_regions(regions: SampleRegions, tissue: np.ndarray, cells: pd.DataFrame, *, grid_um: float,
                        pixel_size_um: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Remove what lies outside the analysis region or inside an exclusion from a table run's tissue and cells.

    Parameters
    ----------
    regions : SampleRegions
        Pixel coordinates of the table's image.
    tissue : bool ndarray (Ygrid, Xgrid)
        The tissue estimated from the cell positions, on the table run's grid (origin 0, pixel ``grid_um``).
    cells : DataFrame with ``x_um, y_um``
    grid_um, pixel_size_um : float
        The grid's pixel and the image's pixel, µm.

    Returns
    -------
    tissue : bool ndarray (Ygrid, Xgrid)
        ``tissue & inside analysis & not excluded``.
    keep : bool ndarray (n_cells,)
        Cells inside the analysis region and outside every exclusion.
    record : dict
        :func:`chemozone.regions.apply_regions`'s keys, plus ``pixel_size_um`` and the drawn areas from the
        geometry: ``analysis_geometry_mm2`` (None without an analysis region) and ``excluded_geometry_mm2``
        (exclusions within the analysis region).

    Examples
    --------
    >>> from shapely.geometry import box
    >>> regs = SampleRegions(source="r.geojson", exclusion=box(0, 0, 4, 4))  # pixels of 0.5 µm: 2 x 2 µm
    >>> cells = pd.DataFrame({"x_um": [1.0, 3.0], "y_um": [1.0, 1.0]})
    >>> t, keep, rec = apply_table_regions(regs, np.ones((2, 4), bool), cells, grid_um=1.0, pixel_size_um=0.5)
    >>> t.astype(int).tolist(), keep.tolist(), rec["cells_excluded"], rec["excluded_geometry_mm2"]
    ([[0, 0, 1, 1], [0, 0, 1, 1]], [False, True], 1, 4e-06)
    """
    px, g = float(pixel_size_um), float(grid_um)
    tissue = np.asarray(tissue, bool)
    grid_mm2 = (g * 1e-3) ** 2
    inside = (_grid_mask(regions.analysis, tissue.shape, g, px) if regions.analysis is not None
              else np.ones(tissue.shape, bool))
    excluded = _grid_mask(regions.exclusion, tissue.shape, g, px) & inside
    new_tissue = tissue & inside & ~excluded
    x, y = cells["x_um"].to_numpy(np.float64) / px, cells["y_um"].to_numpy(np.float64) / px
    in_analysis = points_in_geometry(regions.analysis, x, y) if regions.analysis is not None else np.ones(len(x), bool)
    in_excl = points_in_geometry(regions.exclusion, x, y) & in_analysis
    px_mm2 = (px * 1e-3) ** 2
    drawn_excl = regions.exclusion
    if drawn_excl is not None and regions.analysis is not None:
        drawn_excl = drawn_excl.intersection(regions.analysis)
    record = {"source": regions.source, "annotations": dict(regions.counts), "ignored": dict(regions.ignored),
              "analysis_region": regions.analysis is not None, "pixel_size_um": px,
              "excluded_area_mm2": float(excluded.sum()) * grid_mm2,
              "outside_analysis_mm2": float((~inside).sum()) * grid_mm2,
              "tissue_removed_mm2": float(tissue.sum() - new_tissue.sum()) * grid_mm2,
              "cells_excluded": int(in_excl.sum()), "cells_outside_analysis": int((~in_analysis).sum()),
              "analysis_geometry_mm2": float(regions.analysis.area) * px_mm2 if regions.analysis is not None else None,
              "excluded_geometry_mm2": float(drawn_excl.area) * px_mm2 if drawn_excl is not None else 0.0}
    return new_tissue, in_analysis & ~in_excl, record


def table_region_zones(regions: SampleRegions | None, zones: Sequence[Any], tissue: np.ndarray, *, grid_um: float,
                       pixel_size_um: float, sample_id: str) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """The ``source: regions`` zones of a table run: each class's annotations on the grid, within the tissue.

    Returns
    -------
    masks : dict name -> bool ndarray (Ygrid, Xgrid)
    zones : DataFrame
        :data:`chemozone.zones.ZONES_COLUMNS` (``source`` = ``regions``, ``channels`` = the class).

    Raises
    ------
    RegionError
        As :func:`chemozone.regions.region_zone_geometry`.
    """
    from .zones import ZONES_COLUMNS

    tissue = np.asarray(tissue, bool)
    g = float(grid_um)
    t_mm2 = float(tissue.sum()) * (g * 1e-3) ** 2
    masks, rows = {}, []
    for z in (z for z in zones if z.source == "regions"):
        geom = region_zone_geometry(regions, z.region_class, zone=z.name)
        m = _grid_mask(geom, tissue.shape, g, float(pixel_size_um)) & tissue
        masks[z.name] = m
        area = float(m.sum()) * (g * 1e-3) ** 2
        rows.append(dict(sample_id=str(sample_id), zone=z.name, source="regions", channels=z.region_class,
                         threshold_used=float("nan"), channel_thresholds="", area_mm2=area, tissue_area_mm2=t_mm2,
                         area_fraction=area / t_mm2 if t_mm2 > 0 else float("nan")))
    return masks, pd.DataFrame(rows, columns=ZONES_COLUMNS)
