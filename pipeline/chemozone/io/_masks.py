"""Precomputed label masks named in the sample sheet (``nuclei_mask``, ``cells_mask``): "bring your own masks".

A sheet cell holds a label image's path, optionally followed by ``#`` and a selector:

- a TIFF / OME-TIFF with one plane (``cells.tif``), or one page of a multi-page TIFF (``maps.tif#1``, 0-based);
- inForm's ``*_binary_seg_maps.tif`` (pages tagged ``<CompartmentType>``): by default ``Nucleus`` for
  ``nuclei_mask`` and ``Nucleus`` + ``Cytoplasm`` (inForm's whole cell: both pages carry the cell's id) for
  ``cells_mask``; a compartment name (``maps.tif#Nucleus``) or a page index picks one page;
- an OME-Zarr: a single-channel image (``seg.ome.zarr``) or one of its label images
  (``masks.ome.zarr#cells``; the only one when there is one).

Label ids are kept as they are (non-contiguous ids are fine) and returned as ``uint32``. Refused, each with a
one-line :class:`~chemozone.errors.MaskError` naming the file, the column and what to do: a missing file, a
float or boolean image, negative ids, ids above the ``uint32`` range, a shape other than the image's, a
multi-plane file without a selector.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MaskError

__all__ = ["MASK_COLUMNS", "split_mask_spec", "resolve_mask_spec", "sample_mask_specs", "mask_header",
           "read_label_mask"]

MASK_COLUMNS = ("nuclei_mask", "cells_mask")
_UINT32_MAX = int(np.iinfo(np.uint32).max)
_INFORM_CELL_PAGES = ("Nucleus", "Cytoplasm")


def split_mask_spec(spec: str) -> tuple[Path, str | None]:
    """``"path#selector"`` → ``(Path("path"), "selector")``; no ``#`` → ``(Path(spec), None)``.

    >>> split_mask_spec("/d/maps.tif#Nucleus")
    (PosixPath('/d/maps.tif'), 'Nucleus')
    >>> split_mask_spec("/d/cells.tif")
    (PosixPath('/d/cells.tif'), None)
    """
    path, sep, sel = str(spec).rpartition("#")
    if not sep or "/" in sel or not path:
        return Path(str(spec)), None
    return Path(path), sel.strip() or None


def resolve_mask_spec(spec: str, base: Path) -> str:
    """A sheet cell with a relative path made absolute (relative to ``base``, the sheet's folder).

    >>> resolve_mask_spec("m/maps.tif#1", Path("/data"))
    '/data/m/maps.tif#1'
    """
    path, sel = split_mask_spec(spec)
    if not path.is_absolute():
        path = (base / path).resolve()
    return str(path) + (f"#{sel}" if sel is not None else "")


def sample_mask_specs(row: dict[str, Any]) -> dict[str, str]:
    """``{column: spec}`` of the mask columns a sample-sheet row fills (empty cells skipped).

    >>> sample_mask_specs({"sample_id": "s", "cells_mask": "/d/c.tif", "nuclei_mask": float("nan")})
    {'cells_mask': '/d/c.tif'}
    """
    out = {}
    for col in MASK_COLUMNS:
        v = row.get(col)
        if isinstance(v, str) and v.strip():
            out[col] = v.strip()
    return out


def _err(path: Path, column: str, what: str) -> MaskError:
    return MaskError(f"{path} (sample-sheet column '{column}'): {what}")


# ---------------------------------------------------------------------------------------------- TIFF
def _inform_pages(tif) -> dict[str, int]:
    """``{compartment: page index}`` of an inForm ``binary_seg_maps`` TIFF (empty for other TIFFs)."""
    out = {}
    for i, page in enumerate(tif.pages):
        m = re.search(r"<CompartmentType>\s*(\w+)\s*</CompartmentType>", page.description or "")
        if m:
            out[m.group(1)] = i
    return out


def _tiff_plan(tif, path: Path, column: str, sel: str | None) -> tuple[list[int] | None, str]:
    """Which pages make the mask (None = the first series as a whole) and a description for run.json."""
    inform = _inform_pages(tif)
    series = tif.series[0]
    if "S" in series.axes:
        raise _err(path, column, f"an RGB(A) image (axes {series.axes}), not labels; export the label image itself "
                                 "(one integer id per object)")
    n_pages = len(tif.pages) if inform else int(np.prod(series.shape[:-2], dtype=np.int64))
    if sel is not None:
        if sel.isdigit():
            if int(sel) >= n_pages:
                raise _err(path, column, f"page {sel} does not exist (the file has {n_pages} pages, 0-based); "
                                         "fix the '#page' after the file name")
            return [int(sel)], f"page {sel}"
        match = {k.lower(): v for k, v in inform.items()}.get(sel.lower())
        if match is None:
            names = sorted(inform) or "none"
            raise _err(path, column, f"no page '{sel}' (inForm compartments: {names}); use '#<page number>' "
                                     "or one of those names")
        return [match], f"page {match} ({sel})"
    if inform:
        want = ("Nucleus",) if column == "nuclei_mask" else _INFORM_CELL_PAGES
        missing = [w for w in want if w not in inform]
        if missing:
            raise _err(path, column, f"inForm segmentation maps without a {missing[0]} page (pages: "
                                     f"{sorted(inform)}); pick a page with '#<name>'")
        return [inform[w] for w in want], "inForm " + " + ".join(want)
    shape = tuple(int(s) for s in tif.series[0].shape)
    planes = [s for s in shape[:-2] if s != 1]
    if planes:
        raise _err(path, column, f"{int(np.prod(planes))} planes of shape {shape}; a mask is one plane: pick one "
                                 "with '#<page number>' after the file name, e.g. maps.tif#1")
    return None, "whole file"


def _tiff_header(path: Path, column: str, sel: str | None) -> tuple[tuple[int, int], np.dtype, str]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        _, desc = _tiff_plan(tif, path, column, sel)
        src = tif.series[0]  # inForm's pages are the planes of its first series
        return tuple(int(s) for s in src.shape[-2:]), np.dtype(src.dtype), desc  # type: ignore[return-value]


def _tiff_read(path: Path, column: str, sel: str | None) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages, _ = _tiff_plan(tif, path, column, sel)
        series = tif.series[0]
        if pages is None:
            return np.asarray(series.asarray()).reshape(series.shape[-2:])
        if not _inform_pages(tif):  # plane N of a multi-plane series
            return np.asarray(series.asarray()).reshape((-1,) + tuple(series.shape[-2:]))[pages[0]]
        planes = [np.asarray(tif.pages[i].asarray()) for i in pages]
    out = planes[0].copy()
    for extra in planes[1:]:  # one cell's compartments carry its id; where a Cytoplasm pixel lies on another
        # cell's nucleus (1,319 px in FIHC4, 14,125 in Set4), the nucleus keeps it
        fill = (out == 0) & (extra != 0)
        out[fill] = extra[fill]
    return out


# ---------------------------------------------------------------------------------------------- Zarr
def _zarr_array(path: Path, column: str, sel: str | None):
    """The level-0 array (dask) of an OME-Zarr image, or of its label image ``sel``, and a description."""
    import dask.array as da
    import zarr

    group = path
    labels = sorted(p.name for p in (path / "labels").iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if (path / "labels").is_dir() else []
    if sel is not None:
        if sel not in labels:
            raise _err(path, column, f"no label image '{sel}' (present: {labels}); fix the '#name' after the path")
        group, desc = path / "labels" / sel, f"labels/{sel}"
    else:
        desc = "image"
    try:
        attrs = dict(zarr.open_group(str(group), mode="r").attrs)
    except Exception as exc:  # noqa: BLE001 - any open failure is a bad path for the user
        raise _err(path, column, f"not a readable OME-Zarr ({type(exc).__name__}); check the path") from None
    ms = attrs.get("ome", attrs).get("multiscales")
    if not ms and sel is None and len(labels) == 1:
        return _zarr_array(path, column, labels[0])
    if not ms:
        raise _err(path, column, f"no OME-Zarr image here (label images: {labels}); name one with '#<label>'")
    arr = da.from_zarr(str(group), component=ms[0]["datasets"][0]["path"])
    if arr.ndim < 2 or any(s != 1 for s in arr.shape[:-2]):
        raise _err(path, column, f"array of shape {arr.shape}; a mask is one 2-D plane (a single-channel image "
                                 "or a label image '#<label>')")
    return arr.reshape(arr.shape[-2:]), desc


# ------------------------------------------------------------------------------------------- public
def mask_header(spec: str, *, column: str, shape_yx: tuple[int, int] | None = None) -> dict[str, Any]:
    """What a mask spec points to, without reading the pixels: ``path``, ``selector``, ``source``,
    ``shape`` (Y, X) and ``dtype``.

    Raises
    ------
    MaskError
        The file does not exist, cannot be read, has several planes and no selector, holds floats or booleans,
        or (with ``shape_yx``, the image's) has another shape than the image.
    """
    path, sel = split_mask_spec(spec)
    if not path.exists():
        raise _err(path, column, "file not found; fix the path in the sample sheet (relative paths are relative to "
                                 "the sheet's folder)")
    if path.is_dir():
        arr, desc = _zarr_array(path, column, sel)
        shape, dtype = tuple(int(s) for s in arr.shape), np.dtype(arr.dtype)
    else:
        try:
            shape, dtype, desc = _tiff_header(path, column, sel)
        except MaskError:
            raise
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for a non-TIFF
            raise _err(path, column, f"not a readable TIFF ({type(exc).__name__}: {exc}); export the mask as "
                                     "TIFF, OME-TIFF or OME-Zarr") from None
    _check_dtype(dtype, path, column)
    if shape_yx is not None and tuple(shape) != tuple(int(s) for s in shape_yx):
        raise _err(path, column, f"mask shape {tuple(shape)} differs from the image's {tuple(int(s) for s in shape_yx)}; "
                                 "export the mask at the image's full resolution (same field, no crop)")
    return {"path": str(path), "selector": sel, "source": desc, "shape": list(shape), "dtype": str(dtype)}


def _check_dtype(dtype: np.dtype, path: Path, column: str) -> None:
    if dtype.kind == "b":
        raise _err(path, column, "a boolean (binary) image, not labels; give each object its own integer id "
                                 "(e.g. skimage.measure.label) and save that")
    if not np.issubdtype(dtype, np.integer):
        raise _err(path, column, f"{dtype} pixels; a label mask holds integer ids (0 = background): save it as "
                                 "uint16/uint32 labels, not probabilities or a float image")


def read_label_mask(spec: str, *, column: str, shape_yx: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label mask named in the sample sheet as ``uint32`` (ids kept, 0 = background).

    Parameters
    ----------
    spec : str
        ``path`` or ``path#selector`` (see the module docstring).
    column : str
        The sample-sheet column it came from (``nuclei_mask`` / ``cells_mask``), for error messages and inForm
        defaults.
    shape_yx : (int, int), optional
        The image's (Y, X); the mask must have exactly this shape.

    Returns
    -------
    numpy.ndarray of uint32, shape (Y, X)

    Raises
    ------
    MaskError
        As :func:`mask_header`; also negative ids, ids above 4,294,967,295, or a shape other than ``shape_yx``.

    Examples
    --------
    >>> import tifffile, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.tif")
    >>> tifffile.imwrite(p, np.array([[0, 7], [70000, 7]], np.int64))
    >>> read_label_mask(p, column="cells_mask").tolist()
    [[0, 7], [70000, 7]]
    """
    head = mask_header(spec, column=column, shape_yx=shape_yx)
    path, sel = Path(head["path"]), head["selector"]
    arr = np.asarray(_zarr_array(path, column, sel)[0]) if path.is_dir() else _tiff_read(path, column, sel)
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and int(arr.min()) < 0:
        raise _err(path, column, f"negative ids (min {int(arr.min())}); labels are >= 0 with 0 = background: "
                                 "relabel the mask")
    if arr.size and int(arr.max()) > _UINT32_MAX:
        raise _err(path, column, f"ids up to {int(arr.max())} do not fit uint32 (max {_UINT32_MAX}); renumber them, "
                                 "e.g. skimage.segmentation.relabel_sequential")
    return arr.astype(np.uint32, copy=False)
