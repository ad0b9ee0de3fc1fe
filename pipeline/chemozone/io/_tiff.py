"""TIFF readers: OME-TIFF (pyramidal, tiled, BigTIFF), plain multi-page TIFF, Akoya/PerkinElmer ``.qptiff``
and inForm component TIFFs (channel names from each page's QPI XML; thumbnail, overview and label pages
skipped).

Open files are shared through a bounded cache (:data:`_TIFF_CACHE_MAX`, least recently used dropped, those
kept closed at exit); the dask arrays read through :class:`TiffRegion` by file path, so their graphs pickle
to Dask workers in other processes and reopen the file there.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import ImageError
from ._image import ImageData

_SKIP_PAGE_TYPES = {"thumbnail", "overview", "label", "macro"}


_TIFF_CACHE: collections.OrderedDict[tuple[str, int], tuple[Any, threading.Lock]] = collections.OrderedDict()
_TIFF_CACHE_MAX = 32
_TIFF_CACHE_LOCK = threading.Lock()


def _open_tiff(path: str, mtime_ns: int):
    """An open ``TiffFile`` and its lock, shared per (path, mtime); at most :data:`_TIFF_CACHE_MAX` are
    kept (least recently used dropped), and those kept are closed at exit."""
    import tifffile

    key = (path, mtime_ns)
    with _TIFF_CACHE_LOCK:
        hit = _TIFF_CACHE.get(key)
        if hit is not None:
            _TIFF_CACHE.move_to_end(key)
            return hit
        hit = (tifffile.TiffFile(path), threading.Lock())
        _TIFF_CACHE[key] = hit
        while len(_TIFF_CACHE) > _TIFF_CACHE_MAX:
            # dropped, not closed: a reader may still hold its zarr view (the file closes when collected)
            _TIFF_CACHE.popitem(last=False)
        return hit


@atexit.register
def _close_tiffs() -> None:
    with _TIFF_CACHE_LOCK:
        while _TIFF_CACHE:
            _, (tif, _lock) = _TIFF_CACHE.popitem()
            tif.close()


def _tiff(path: str):
    p = Path(path)
    return _open_tiff(str(p), p.stat().st_mtime_ns)


_DEFLATE = {8, 32946}  # TIFF compression codes of zlib/deflate tiles (ADOBE_DEFLATE, DEFLATE)


class _TilePlan(NamedTuple):
    """Byte ranges of the tiles of each channel's page of one series level (row-major tile order)."""

    path: str
    owner: Any  # the open TiffFile: keeps ``fileno`` open while a read holds this plan, even if the cache drops it
    fileno: int
    tile_yx: tuple[int, int]
    tiles_x: int
    offsets: np.ndarray  # (C, n_tiles) int64
    counts: np.ndarray  # (C, n_tiles) int64
    deflate: bool


def _tile_plan(tif, series: int, level: int, shape: tuple[int, ...], dtype) -> _TilePlan | None:
    """A :class:`_TilePlan` when every channel is one tiled page, uncompressed or deflate without a predictor,
    one sample per pixel, in the machine's byte order and ``dtype`` (what OME-TIFF writers, ours included, write
    for fluorescence); None otherwise (tifffile's zarr store reads those)."""
    import sys

    import imagecodecs

    try:
        lev = tif.series[series].levels[level]
        pages = list(lev.pages)
        axes = "".join(a for a, n in zip(lev.axes.upper(), lev.shape) if n > 1 or a in "YX")
        fileno = tif.filehandle.fileno()
    except Exception:  # noqa: BLE001 - anything unusual: the general reader
        return None
    if axes not in ("YX", "CYX", "QYX", "IYX") or len(pages) != shape[0] or tif.byteorder != "<" or \
            sys.byteorder != "little" or not imagecodecs.DEFLATE.available:
        return None
    if any(p is None for p in pages):
        return None
    keys = [getattr(p, "keyframe", None) or p for p in pages]  # a TiffFrame's layout is its key page's
    first = keys[0]
    for p, k in zip(pages, keys):
        if (not k.is_tiled or k.compression not in _DEFLATE | {1} or k.predictor != 1 or k.samplesperpixel != 1
                or k.imagedepth != 1 or k.tiledepth != 1 or k.fillorder != 1 or k.dtype != np.dtype(dtype)
                or k.shape != tuple(shape[-2:]) or p.shape != k.shape
                or (k.tilelength, k.tilewidth, k.compression) != (first.tilelength, first.tilewidth, first.compression)):
            return None
    tl, tw = int(first.tilelength), int(first.tilewidth)
    n = (-(-shape[-2] // tl)) * (-(-shape[-1] // tw))
    offsets = np.array([np.asarray(p.dataoffsets, np.int64) for p in pages])
    counts = np.array([np.asarray(p.databytecounts, np.int64) for p in pages])
    if offsets.shape != (len(pages), n) or counts.shape != offsets.shape:
        return None
    return _TilePlan(str(tif.filehandle.path), tif, fileno, (tl, tw), -(-shape[-1] // tw), offsets, counts,
                     first.compression in _DEFLATE)


def _window(key, shape: tuple[int, ...]) -> tuple[int, int, int, int, int, int] | None:
    """``(c0, c1, y0, y1, x0, x1)`` of a key of three unit-step slices (what dask asks for), else None."""
    if not isinstance(key, tuple) or len(key) != 3 or len(shape) != 3 or \
            not all(isinstance(k, slice) and k.step in (None, 1) for k in key):
        return None
    (c0, c1, _), (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(key, shape))
    return (c0, c1, y0, y1, x0, x1) if c1 > c0 and y1 > y0 and x1 > x0 else None


def _read_tiles(plan: _TilePlan, c0: int, c1: int, y0: int, y1: int, x0: int, x1: int, dtype) -> np.ndarray:
    """Decode the tiles a window covers straight from the file into the result.

    Reading through tifffile's zarr store decodes each tile with libdeflate without telling it the output size
    (2.5 ms per 512² uint16 tile of a 40k² section, against 1.0 ms with it) and copies it twice; here each tile's
    bytes are read into one reused buffer, decoded into one reused tile buffer and copied once: 1.36x less CPU per
    15-channel 2048² window of that section (``benchmarks/bench_tiff_windows.py``). Tiles of zero bytes (absent in
    sparse files) read as 0, as in tifffile.
    """
    import imagecodecs

    tl, tw = plan.tile_yx
    out = np.empty((c1 - c0, y1 - y0, x1 - x0), dtype)
    buf = np.empty((tl, tw), dtype)
    flat = buf.reshape(-1).view(np.uint8)
    raw = memoryview(bytearray(int(plan.counts[c0:c1].max())))
    for ci, c in enumerate(range(c0, c1)):
        for ty in range(y0 // tl, (y1 - 1) // tl + 1):
            ya, yb = max(y0, ty * tl), min(y1, (ty + 1) * tl)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                xa, xb = max(x0, tx * tw), min(x1, (tx + 1) * tw)
                k = ty * plan.tiles_x + tx
                n = int(plan.counts[c, k])
                if n == 0:
                    out[ci, ya - y0 : yb - y0, xa - x0 : xb - x0] = 0
                    continue
                try:
                    if os.preadv(plan.fileno, [raw[:n]], int(plan.offsets[c, k])) != n:
                        raise ValueError(f"{n} bytes expected at offset {int(plan.offsets[c, k])}, the file ends before")
                    if plan.deflate:
                        imagecodecs.deflate_decode(raw[:n], out=flat)
                    else:
                        flat[:] = np.frombuffer(raw[:n], np.uint8, count=flat.size)
                except Exception as exc:  # noqa: BLE001 - any failure is a damaged file
                    raise ImageError(f"{plan.path}: channel {c}, tile {k} cannot be read ({type(exc).__name__}: {exc}); "
                                     "the file is truncated or damaged: export it again") from None
                out[ci, ya - y0 : yb - y0, xa - x0 : xb - x0] = buf[ya - ty * tl : yb - ty * tl, xa - tx * tw : xb - tx * tw]
    return out


class TiffRegion:
    """A picklable, lazily opened array view of one level of a TIFF series.

    Shape ``(C, Y, X)``. Slicing reads only the tiles or strips needed, through tifffile's zarr store.
    Pickles as (path, series, level, shape, dtype) and reopens the file in the receiving process.
    """

    def __init__(self, path: str, series: int, level: int, shape: tuple[int, ...], dtype: Any,
                 pages: tuple[int, ...] | None = None) -> None:
        self.path = str(path)
        self.series = series
        self.level = level
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.pages = pages  # explicit page indices (vendor TIFFs with mixed pages), else None

    def __reduce__(self):
        return (TiffRegion, (self.path, self.series, self.level, self.shape, self.dtype, self.pages))

    def _zarr(self):
        import zarr

        tif, lock = _tiff(self.path)
        key = ("_cz_store", self.series, self.level)
        cache = tif.__dict__.setdefault("_cz_zarr", {})
        with lock:
            if key not in cache:
                store = tif.series[self.series].aszarr(level=self.level)
                z = zarr.open(store, mode="r")
                if hasattr(z, "shape") is False:  # a group: pick the level array
                    z = z[str(self.level)]
                cache[key] = z
        return cache[key]

    def __getitem__(self, key):
        if self.pages is not None:
            return self._read_pages(key)
        window = _window(key, self.shape)
        if window is not None and (plan := self._tiles()) is not None:
            return _read_tiles(plan, *window, self.dtype)
        z = self._zarr()
        native = z.shape
        if len(native) == 2:  # a single-channel series
            key = key if isinstance(key, tuple) else (key,)
            out = np.asarray(z[key[1:] if len(key) == 3 else key])
            return out[None] if len(key) == 3 else out
        return np.asarray(z[key])

    def _tiles(self) -> _TilePlan | None:
        """Where each channel's tiles lie in the file, when :func:`_read_tiles` can decode them (else None)."""
        tif, lock = _tiff(self.path)
        key = ("_cz_tiles", self.series, self.level)
        cache = tif.__dict__.setdefault("_cz_tiles", {})
        with lock:
            if key not in cache:
                cache[key] = _tile_plan(tif, self.series, self.level, self.shape, self.dtype)
        return cache[key]

    def _read_pages(self, key):
        tif, lock = _tiff(self.path)
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        cidx = np.arange(self.shape[0])[key[0]]
        planes = []
        for c in np.atleast_1d(cidx):
            with lock:
                page = tif.pages[self.pages[int(c)]]
                plane = page.asarray()
            planes.append(plane[key[1], key[2]])
        out = np.stack(planes)
        return out if np.ndim(cidx) else out[0]


def _xml_text(desc: str, tag: str) -> str | None:
    try:
        root = ET.fromstring(desc)
    except ET.ParseError:
        return None
    el = root.find(f".//{tag}")
    return el.text.strip() if el is not None and el.text else None


def _qpi_pages(tif) -> tuple[list[int], list[str], float | None, str] | None:
    """Full-resolution pages of a PerkinElmer/Akoya QPI TIFF (qptiff or inForm component data)."""
    pages, names, px = [], [], None
    origin = ""
    shape0 = None
    for i, page in enumerate(tif.pages):
        desc = page.description or ""
        if "PerkinElmer-QPI" not in desc and "<PerkinElmer" not in desc:
            continue
        kind = (_xml_text(desc, "ImageType") or "").lower()
        if kind in _SKIP_PAGE_TYPES:
            continue
        shape = page.shape[:2]
        if shape0 is None:
            shape0 = shape
        if shape != shape0:
            continue  # a reduced-resolution or auxiliary page
        name = _xml_text(desc, "Name") or _xml_text(desc, "Biomarker") or f"channel_{len(names)}"
        pages.append(i)
        names.append(name)
        if px is None and (res := _tiff_resolution(page)) is not None:
            px, origin = res
    if not pages:
        return None
    return pages, names, px, origin


def _tiff_resolution(page) -> tuple[float, str] | None:
    """Pixel size (µm) from the TIFF resolution tags and a description of the tags (``TIFF resolution tag
    (72 pixels per inch)``), if they give one in cm or inch. The value is not judged here: a 72 dpi tag gives
    352.8 µm, which :func:`~chemozone.io.read_image` rejects as a pixel size."""
    try:
        tags = page.tags
        xres = tags.get("XResolution")
        unit = tags.get("ResolutionUnit")
        if xres is None or unit is None:
            return None
        num, den = xres.value
        if num == 0 or den == 0:
            return None
        per_unit = num / den  # pixels per unit
        unit_val = int(unit.value)
        if unit_val == 3:  # centimetre
            return 1e4 / per_unit, f"TIFF resolution tag ({per_unit:.6g} pixels per cm)"
        if unit_val == 2:  # inch
            return 25400.0 / per_unit, f"TIFF resolution tag ({per_unit:.6g} pixels per inch)"
    except Exception:  # noqa: BLE001 - malformed tags mean "unknown", never an error
        return None
    return None


def _ome_channels_and_px(tif, series_index: int) -> tuple[list[str] | None, float | None]:
    xml = tif.ome_metadata
    if not xml:
        return None, None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    ns = {"ome": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
    pref = "ome:" if ns else ""
    images = root.findall(f"{pref}Image", ns)
    if not images:
        return None, None
    img = images[min(series_index, len(images) - 1)]
    pixels = img.find(f"{pref}Pixels", ns)
    if pixels is None:
        return None, None
    names = [ch.get("Name") or ch.get("ID") for ch in pixels.findall(f"{pref}Channel", ns)]
    px = pixels.get("PhysicalSizeX")
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    size_um = None
    if px is not None:
        factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit, 1.0)
        size_um = float(px) * factor
    names = [n for n in names if n] or None
    return names, size_um


def _series_to_cyx(series) -> tuple[tuple[int, int, int], str]:
    """Map a tifffile series' axes to (C, Y, X); returns the shape and the axes string."""
    axes = series.axes.upper()
    shape = series.shape
    dims = dict(zip(axes, shape))
    extra = {a: n for a, n in dims.items() if a not in "CYXSQI" and n > 1}
    if extra:
        raise ImageError(
            f"{series.parent.filehandle.path}: unsupported axes {series.axes} with sizes {shape}; "
            "chemozone reads 2-D multichannel images (C, Y, X); export one plane per file"
        )
    y, x = dims.get("Y"), dims.get("X")
    if y is None or x is None:
        raise ImageError(f"{series.parent.filehandle.path}: no Y/X axes in series axes {series.axes}")
    c = 1
    for a in "CSQI":
        if a in dims:
            c *= dims[a]
    return (c, y, x), axes


def _read_tiff(path: Path) -> ImageData:
    import dask.array as da

    try:
        tif, _ = _tiff(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a user-facing unreadable file
        raise ImageError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}); check the file is complete") from None

    fmt = "tiff"
    channels: list[str] | None = None
    px: float | None = None
    origin = ""

    qpi = None if tif.is_ome else _qpi_pages(tif)
    if qpi is not None:
        pages, channels, px, origin = qpi
        fmt = "qptiff" if str(path).lower().endswith(".qptiff") else "inform-tiff"
        p0 = tif.pages[pages[0]]
        shape = (len(pages),) + tuple(p0.shape[:2])
        # Pick the series holding exactly these pages, if tifffile built one; else read pages one by one.
        region = None
        for si, s in enumerate(tif.series):
            try:
                idx = [p.index for p in s.pages]
            except Exception:  # noqa: BLE001
                continue
            if idx == pages:
                sshape, _ = _series_to_cyx(s)
                if sshape == shape:
                    region = TiffRegion(str(path), si, 0, shape, p0.dtype)
                break
        if region is None:
            region = TiffRegion(str(path), 0, 0, shape, p0.dtype, pages=tuple(pages))
        chunks = (1,) + _plane_chunks(shape[1:], p0)
        data = da.from_array(region, chunks=chunks, asarray=True, lock=False, fancy=False,
                             meta=np.empty((0, 0, 0), p0.dtype), name=f"tiff-{_token(path)}-qpi")
        return ImageData(data, channels, px, path, [data], fmt, pixel_size_origin=origin)

    # OME-TIFF or plain TIFF: the first series that is not a thumbnail/label is the image.
    if not tif.series:
        raise ImageError(f"{path}: the TIFF holds no image series")
    si = 0
    series = tif.series[si]
    if tif.is_ome:
        fmt = "ome-tiff"
        channels, px = _ome_channels_and_px(tif, si)
        origin = "OME-XML PhysicalSizeX" if px is not None else ""
    if px is None and (res := _tiff_resolution(series.pages[0])) is not None:
        px, origin = res
    shape, axes = _series_to_cyx(series)
    levels = []
    for lvl, s in enumerate(series.levels):
        lshape, _ = _series_to_cyx(s)
        region = TiffRegion(str(path), si, lvl, lshape, s.dtype)
        page0 = s.pages[0] if s.pages else series.pages[0]
        chunks = (1,) + _plane_chunks(lshape[1:], page0)
        arr = da.from_array(region, chunks=chunks, asarray=True, lock=False, fancy=False,
                            meta=np.empty((0, 0, 0), s.dtype), name=f"tiff-{_token(path)}-{si}-{lvl}")
        levels.append(arr)
    if channels is not None and len(channels) != shape[0]:
        channels = None  # metadata disagree with the pixels: fall back to the panel
    return ImageData(levels[0], channels or [], px, path, levels, fmt,  # type: ignore[arg-type]
                     pixel_size_origin=origin)


def _plane_chunks(yx: tuple[int, int], page) -> tuple[int, int]:
    """Dask chunks of about 1024² px aligned to the file's tiles (or whole strips)."""
    target = 1024
    th = getattr(page, "tilelength", 0) or 0
    tw = getattr(page, "tilewidth", 0) or 0
    if th and tw:
        cy = max(th, (target // th) * th)
        cx = max(tw, (target // tw) * tw)
    else:
        cy, cx = target, target
    return (min(cy, yx[0]), min(cx, yx[1]))


def _token(path: Path) -> str:
    import hashlib

    st = path.stat()
    return hashlib.md5(f"{path.resolve()}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()[:16]

