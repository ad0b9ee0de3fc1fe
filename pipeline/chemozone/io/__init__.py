"""Image and table I/O.

Readers return a lazy ``(C, Y, X)`` dask array over the file's full-resolution level (no full read),
the channel names and the pixel size in µm. Supported: OME-TIFF (pyramidal, tiled, BigTIFF), plain
multi-page TIFF, Akoya/PerkinElmer ``.qptiff`` and inForm component TIFFs (channel names from each page's
QPI XML; thumbnail, overview and label pages skipped), OME-Zarr, and a folder of single-channel TIFFs
(MIBI / IMC exports; channel names from the file stems).

The dask arrays read through :class:`TiffRegion` / zarr by file path, so their graphs pickle to
Dask workers in other processes and reopen the file there.

Writers: OME-Zarr label/mask images (NGFF 0.4, chunked, compressed, written chunk by chunk from dask)
and Parquet tables (see :func:`chemozone.layout.write_parquet`).

Layout (one concept per module; import the public names from ``chemozone.io``):

- ``_channels``: channel-name matching (:func:`normalize_channel_name`, :func:`resolve_channels`,
  :func:`canonical_channel_names`).
- ``_image``: the :class:`ImageData` every reader returns.
- ``_read``: :func:`read_image` (dispatch on the file type, panel fallbacks) and :func:`read_image_info`.
- ``_folder``: a folder of single-channel TIFFs as one image (:func:`is_channel_folder`).
- ``_tiff``: TIFF / OME-TIFF / qptiff / inForm reading, :class:`TiffRegion`, the bounded cache of open files.
- ``_zarr``: OME-Zarr image reading; label images as pyramids (:func:`write_labels_zarr`, :func:`read_labels_zarr`,
  :func:`read_labels_pyramid`, :func:`list_labels_zarr`, :func:`labels_pixel_size_um`).
- ``_write``: :func:`write_ome_tiff`.
- ``_masks``: precomputed label masks named in the sample sheet (``nuclei_mask``, ``cells_mask``;
  :func:`read_label_mask`, :func:`mask_header`, :func:`sample_mask_specs`).
- ``_tables``: other tools' cell tables in chemozone's columns (:func:`read_cell_table`, :class:`CellTable`);
  ``_vendors``: one reader per format (inForm, HALO, QuPath, MCMICRO/SCIMAP, CellProfiler, CODEX).
"""

from ._channels import canonical_channel_names, normalize_channel_name, resolve_channels
from ._folder import is_channel_folder
from ._image import ImageData
from ._masks import MASK_COLUMNS, mask_header, read_label_mask, resolve_mask_spec, sample_mask_specs, split_mask_spec
from ._read import IMAGE_SUFFIXES, is_image_path, read_image, read_image_info
from ._tables import TABLE_FORMATS, CellTable, detect_table_format, read_cell_table, table_markers
from ._tiff import TiffRegion as TiffRegion  # public type, outside __all__ as before
from ._write import write_ome_tiff
from ._zarr import labels_pixel_size_um as labels_pixel_size_um
from ._zarr import list_labels_zarr, read_labels_pyramid, read_labels_zarr, write_labels_zarr

__all__ = [
    "ImageData",
    "read_image",
    "read_image_info",
    "is_image_path",
    "is_channel_folder",
    "IMAGE_SUFFIXES",
    "resolve_channels",
    "canonical_channel_names",
    "normalize_channel_name",
    "write_ome_tiff",
    "write_labels_zarr",
    "read_labels_zarr",
    "read_labels_pyramid",
    "list_labels_zarr",
    "MASK_COLUMNS",
    "sample_mask_specs",
    "split_mask_spec",
    "resolve_mask_spec",
    "mask_header",
    "read_label_mask",
    "TABLE_FORMATS",
    "CellTable",
    "read_cell_table",
    "detect_table_format",
    "table_markers",
]

# doctest only collects examples of functions defined in the module itself; the examples of the re-exported
# functions are documentation too
