"""Per-cell, per-compartment measurement: exact, vectorised, out-of-core.

:func:`quantify_cells` turns a ``(C, Y, X)`` image and ``(Y, X)`` label images into the per-cell table that
every later stage reads. The image is visited tile by tile (``tile_size_px``); per tile, the labels present
get compact ids, every pixel a bin (cell × compartment) and each run of equal bins its count and coordinate
moments in closed form; every pixel then adds its C channel values to its bin in one streaming pass — a
compiled kernel when ``numba`` is importable (int64 sums for 8/16-bit images: exact, so row bands of a tile
may run in threads, ``CHEMOZONE_QUANT_THREADS``; float64 in raster order otherwise), ``np.bincount`` in
the numpy fallback (``CHEMOZONE_NO_NUMBA=1``), which gives the same table bit for bit. Each tile keeps only
one row per (label present, compartment); at the end one column at a time is gathered in label order and
summed over the tiles that share a label, so a cell split across tiles is measured exactly once and exactly,
and no second copy of the partial sums is made. Peak memory ~ one tile of image and labels plus the
per-cell table (dask / zarr-backed inputs are read one tile at a time).

Definitions (documented contract)
---------------------------------
- ``cell k`` = pixels where ``cells == k``.
- ``nucleus`` compartment of cell ``k`` = pixels where ``cells == k`` **and** ``nuclei == k`` (nuclei keep
  their cell's label; nucleus pixels outside their own cell are not counted).
- ``cytoplasm`` = cell minus nucleus. So ``cell = nucleus ⊔ cytoplasm`` exactly.
- Centroid: pixel ``(row, col)`` covers ``[col, col + 1) × [row, row + 1)`` in pixel units, so
  ``x_um = (mean(col) + 0.5) * pixel_size_um`` and ``y_um = (mean(row) + 0.5) * pixel_size_um``;
  the cell's centroid therefore falls in pixel ``(int(y_um / px), int(x_um / px))`` of a convex cell.
- Intensities are raw (never rescaled), accumulated in float64. ``std`` is the population standard
  deviation (``ddof=0``); ``median`` and ``p90`` are exact quantiles with numpy's default ``linear``
  interpolation (cells cut by tile seams gather their pixels, so they are exact too); ``total`` is the sum.
- ``background`` (``{channel: constant}``) is subtracted from every pixel of that channel before measuring
  (not clipped): means, medians and p90 shift by the constant, totals by ``n × constant``, std unchanged.
- A compartment without pixels gives NaN (``nucleus_area_um2`` is 0 then; NaN when ``nuclei`` is None,
  in which case ``nucleus`` and ``cytoplasm`` columns are NaN as well).
- Morphology (``morphology=True``): ``eccentricity``, ``major_axis_length_um`` and ``minor_axis_length_um``
  from the second central moments of the pixel centres (as ``skimage.measure.regionprops``), and
  ``solidity`` = pixel area / number of pixel centres inside (or on) the convex hull of the cell's pixel
  centres, so every digitally convex cell (a filled rectangle, a digitised disk) has solidity exactly 1.

Layout (import the public names from ``chemozone.quantify``): ``_cells`` holds :func:`quantify_cells` (the
stage: validation and the tile loop), ``_kernels`` the compiled accumulation kernels and their numpy twin,
``_table`` the per-tile partial results and the final table, ``_quantiles`` the exact quantiles,
``_morphology`` the shape columns.
"""

from ._cells import COMPARTMENTS, STATISTICS, quantify_cells

__all__ = ["quantify_cells", "COMPARTMENTS", "STATISTICS"]

# doctest only collects examples of functions defined in the module itself; the example of the re-exported
# stage function is documentation too
