"""``read_image``: open any supported image lazily (dispatch on the file type, panel fallbacks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ImageError
from ._folder import _read_channel_folder, is_channel_folder
from ._image import ImageData
from ._tiff import _read_tiff
from ._zarr import _read_ome_zarr


def read_image(
    path: str | Path,
    *,
    channels: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
) -> ImageData:
    """Open an image lazily.

    Parameters
    ----------
    path : str or Path
        OME-TIFF / TIFF / ``.qptiff`` / inForm component TIFF, an OME-Zarr folder, or a folder of
        single-channel TIFFs (MIBI / IMC exports; channel names from the file stems, sorted).
    channels : sequence of str, optional
        Channel names in file order (``panel.channels``), used only when the file names none. For a
        folder of single-channel TIFFs they pick the files and set their order.
    pixel_size_um : float, optional
        Pixel size (``panel.pixel_size_um``), used only when the file stores none.

    Returns
    -------
    ImageData
        ``data`` is a dask array of shape (C, Y, X) in the file's dtype.

    Raises
    ------
    ImageError
        Missing or unreadable file, no pixel size anywhere, or a channel list of the wrong length.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: image file not found; check the path or the sample sheet's 'image' column")
    name = path.name.lower()
    if path.is_dir() and not name.endswith(".zarr") and is_channel_folder(path):
        img = _read_channel_folder(path, channels)
    elif path.is_dir() or name.endswith(".zarr"):
        img = _read_ome_zarr(path)
    elif name.endswith((".tif", ".tiff", ".qptiff", ".btf", ".tf8", ".svs")):
        img = _read_tiff(path)
    else:
        raise ImageError(f"{path}: unsupported image type; use OME-TIFF, TIFF, .qptiff or OME-Zarr")
    n_c = img.data.shape[0]
    if not img.channels:
        if channels is None:
            img.channels = [f"channel_{i}" for i in range(n_c)]
        elif len(channels) != n_c:
            raise ImageError(
                f"{path}: the file names no channels and panel.channels lists {len(channels)} names "
                f"for {n_c} channels; give exactly {n_c} names in file order"
            )
        else:
            img.channels = list(channels)
    if img.pixel_size_um is None or not np.isfinite(img.pixel_size_um) or img.pixel_size_um <= 0:
        if pixel_size_um is None:
            raise ImageError(
                f"{path}: the file stores no pixel size; set panel.pixel_size_um in the config (µm per pixel)"
            )
        img.pixel_size_um = float(pixel_size_um)
    return img


def read_image_info(path: str | Path, **kwargs) -> dict[str, Any]:
    """Shape, dtype, channels, pixel size and format of an image, without reading pixels."""
    img = read_image(path, **kwargs)
    return {
        "path": str(path),
        "shape": list(img.data.shape),
        "dtype": str(img.data.dtype),
        "channels": list(img.channels),
        "pixel_size_um": img.pixel_size_um,
        "format": img.format,
        "levels": len(img.levels),
    }


IMAGE_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".qptiff", ".btf", ".ome.zarr", ".zarr")
"""File name endings :func:`read_image` reads (a ``.zarr`` folder must also hold OME-NGFF ``multiscales``)."""


def is_image_path(path: str | Path) -> bool:
    """Whether :func:`read_image` can open ``path``: an existing TIFF-family file, an OME-Zarr image folder,
    or a folder of single-channel TIFFs (one file per channel).

    A zarr folder counts only when its metadata (``.zattrs`` or ``zarr.json``) declares ``multiscales``; a
    run folder's ``masks.ome.zarr`` (labels only) does not.

    Examples
    --------
    >>> is_image_path("no/such/file.ome.tif")
    False
    """
    import json

    p = Path(path)
    if not p.exists():
        return False
    if p.is_file():
        return p.name.lower().endswith(IMAGE_SUFFIXES)
    for meta in (p / ".zattrs", p / "zarr.json"):
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return False
            attrs = attrs.get("attributes", attrs)
            attrs = attrs.get("ome", attrs)
            return bool(attrs.get("multiscales"))
    return is_channel_folder(p)
