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
        Pixel size (``panel.pixel_size_um``), used when the file stores none or one outside
        :data:`~chemozone.plausibility.PIXEL_SIZE_RANGE_UM` (0.05–5 µm/px; a 72 dpi resolution tag reads as
        352.8 µm/px). A plausible value in the file wins over the config's; when they differ by more than
        1 %, ``pixel_size_note`` says so (see :func:`_resolve_pixel_size`).

    Returns
    -------
    ImageData
        ``data`` is a dask array of shape (C, Y, X) in the file's dtype; ``pixel_size_source`` (``file`` or
        ``config``) and ``pixel_size_note`` record where the pixel size came from and why.

    Raises
    ------
    ImageError
        Missing or unreadable file, no plausible pixel size in the file and none in the config, or a
        channel list of the wrong length.
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
    _resolve_pixel_size(img, pixel_size_um, path)
    return img


def _resolve_pixel_size(img: ImageData, config_um: float | None, path: Path) -> None:
    """Set ``img.pixel_size_um`` / ``pixel_size_source`` / ``pixel_size_note`` from the file's value and the config's.

    1. The file stores a plausible pixel size (:func:`~chemozone.plausibility.plausible_pixel_size`): it is
       used; a config value that differs by more than 1 % is ignored and the note says so.
    2. The file stores none, or one outside 0.05–5 µm/px: the config's value is used and the note says why.
    3. Neither, or a config value outside 0.05–5 µm/px too: :class:`ImageError` naming the file and
       ``panel.pixel_size_um``.
    """
    from ..plausibility import PIXEL_SIZE_RANGE_UM, plausible_pixel_size

    file_um = img.pixel_size_um
    stored = file_um is not None and bool(np.isfinite(file_um)) and file_um > 0
    origin = img.pixel_size_origin or f"{img.format} metadata"
    lo, hi = PIXEL_SIZE_RANGE_UM
    if stored and plausible_pixel_size(file_um):
        img.pixel_size_source = "file"
        if config_um is not None and not np.isclose(file_um, config_um, rtol=0.01, atol=0.0):
            img.pixel_size_note = (f"the file's {origin} gives {file_um:.4g} µm/px; panel.pixel_size_um = "
                                   f"{config_um:g} is ignored (it applies only to files without a plausible pixel "
                                   "size); fix the file's metadata if it is wrong")
        return
    why = (f"the file's {origin} gives {file_um:.4g} µm/px, not a pixel size (outside {lo:g}–{hi:g} µm/px)"
           if stored else "the file stores no pixel size")
    if config_um is None:
        raise ImageError(f"{path}: {why}; set panel.pixel_size_um in the config (µm per pixel)")
    if not plausible_pixel_size(config_um):
        raise ImageError(f"{path}: {why}, and panel.pixel_size_um = {config_um:g} is outside {lo:g}–{hi:g} µm/px "
                         "too; set panel.pixel_size_um to the image's µm per pixel")
    img.pixel_size_um = float(config_um)
    img.pixel_size_source = "config"
    img.pixel_size_note = why


def read_image_info(path: str | Path, **kwargs) -> dict[str, Any]:
    """Shape, dtype, channels, pixel size (with ``pixel_size_source`` and ``pixel_size_note``, see
    :func:`read_image`) and format of an image, without reading pixels."""
    img = read_image(path, **kwargs)
    return {
        "path": str(path),
        "shape": list(img.data.shape),
        "dtype": str(img.data.dtype),
        "channels": list(img.channels),
        "pixel_size_um": img.pixel_size_um,
        "pixel_size_source": img.pixel_size_source,
        "pixel_size_note": img.pixel_size_note,
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
