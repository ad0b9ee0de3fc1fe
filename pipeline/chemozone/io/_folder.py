"""A folder of single-channel TIFFs as one image (MIBI / IMC exports: one file per channel).

The channel name is the file stem (``CD45.tiff`` → ``CD45``); channels are in sorted order (case-insensitive),
or in ``panel.channels`` order when the config gives one (which then picks the files: a channel the folder
lacks is an error, files not named are left out). These exports store no usable pixel size (their TIFF
resolution tags say 72 dpi), so the pixel size always comes from ``panel.pixel_size_um``.

Each file is read lazily through :class:`chemozone.io.TiffRegion` (by path, so the dask graph pickles to
workers in other processes), and the planes are stacked into one ``(C, Y, X)`` dask array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ImageError
from ._channels import normalize_channel_name
from ._image import ImageData

CHANNEL_SUFFIXES = (".tif", ".tiff")
"""File endings of a channel folder's images."""


def channel_files(folder: str | Path) -> list[Path]:
    """The TIFF files of a folder (not hidden), sorted case-insensitively by name; empty for a file path.

    Examples
    --------
    >>> channel_files("no/such/folder")
    []
    """
    p = Path(folder)
    if not p.is_dir():
        return []
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
             and f.name.lower().endswith(CHANNEL_SUFFIXES)]
    return sorted(files, key=lambda f: (f.name.lower(), f.name))


def _stem(f: Path) -> str:
    name = f.name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return f.stem


def is_channel_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder of single-channel TIFFs: at least two, every TIFF in it single-channel,
    and no OME-Zarr store in or beside them (a run or cohort folder is not a channel folder).

    Only the TIFF headers are read. A folder whose TIFFs are single-channel but differ in shape or dtype
    still counts (reading it then stops with an error that names the files).

    Examples
    --------
    >>> is_channel_folder("no/such/folder")
    False
    """
    import tifffile

    p = Path(path)
    if not p.is_dir() or (p / ".zattrs").is_file() or (p / "zarr.json").is_file():
        return False
    files = channel_files(p)
    if len(files) < 2 or any(c.is_dir() and c.name.lower().endswith(".zarr") for c in p.iterdir()):
        return False
    for f in files:
        try:
            with tifffile.TiffFile(f) as tif:
                shape = tif.series[0].shape if tif.series else ()
        except Exception:  # noqa: BLE001 - an unreadable file: not a channel folder
            return False
        if len([n for n in shape if n > 1]) != 2:
            return False
    return True


def _pick(files: list[Path], channels: Sequence[str] | None, folder: Path) -> list[Path]:
    """The files in ``channels`` order (matched by :func:`normalize_channel_name`), or all of them."""
    if channels is None:
        return files
    by_name = {}
    for f in files:
        by_name.setdefault(normalize_channel_name(_stem(f)), f)
    picked = []
    for c in channels:
        f = by_name.get(normalize_channel_name(c))
        if f is None:
            raise ImageError(
                f"{folder}: panel.channels names '{c}' but the folder has no such file (channels: "
                f"{[_stem(f) for f in files]}); fix panel.channels or remove it to read every file"
            )
        picked.append(f)
    return picked


def _check_uniform(infos: list[tuple[Path, tuple[int, ...], np.dtype]], folder: Path) -> None:
    """One-line ImageError naming the files whose shape or dtype differs from the first file's."""
    f0 = infos[0][0]
    for what, k in (("shape", 1), ("dtype", 2)):
        odd = [info for info in infos if info[k] != infos[0][k]]
        if odd:
            listed = ", ".join(f"{info[0].name} {info[k]}" for info in odd[:5])
            more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
            raise ImageError(
                f"{folder}: the channel TIFFs differ in {what}: {f0.name} {infos[0][k]} but {listed}{more}; "
                "a channel folder needs single-channel TIFFs of one shape and dtype"
            )


def _read_channel_folder(folder: Path, channels: Sequence[str] | None = None) -> ImageData:
    """A folder of single-channel TIFFs as one lazy ``(C, Y, X)`` image (see the module docstring).

    Raises
    ------
    ImageError
        No TIFF in the folder, a file that is not readable or not single-channel, files of different
        shapes or dtypes, or a ``panel.channels`` name without a file.
    """
    import dask.array as da
    import tifffile

    from ._tiff import TiffRegion, _plane_chunks

    files = channel_files(folder)
    if not files:
        raise ImageError(f"{folder}: the folder holds no .tif/.tiff files; a channel folder has one TIFF per channel")
    files = _pick(files, channels, folder)
    infos, chunks = [], None
    for f in files:
        try:
            with tifffile.TiffFile(f) as tif:
                series = tif.series[0]
                shape, dtype = tuple(n for n in series.shape if n > 1), series.dtype
                if chunks is None and len(shape) == 2:
                    chunks = (1,) + _plane_chunks(shape, series.pages[0])
        except Exception as exc:  # noqa: BLE001 - any parse failure is a user-facing unreadable file
            raise ImageError(f"{f}: not a readable TIFF ({type(exc).__name__}: {exc}); check the file is complete") from None
        if len(shape) != 2:
            raise ImageError(f"{f}: holds an image of shape {tuple(series.shape)}, not one channel; "
                             "a channel folder needs one single-channel TIFF per channel")
        infos.append((f, shape, np.dtype(dtype)))
    _check_uniform(infos, folder)
    _, shape, dtype = infos[0]
    planes = [da.from_array(TiffRegion(str(f), 0, 0, (1,) + shape, dtype), chunks=chunks, asarray=True, lock=False,
                            fancy=False, meta=np.empty((0, 0, 0), dtype), name=f"chfolder-{_token(f)}")
              for f in files]
    data = da.concatenate(planes, axis=0)
    return ImageData(data, [_stem(f) for f in files], None, folder, [data], "channel-folder")  # type: ignore[arg-type]


def _token(path: Path) -> str:
    import hashlib

    st = path.stat()
    return hashlib.md5(f"{path.resolve()}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()[:16]
