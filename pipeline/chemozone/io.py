"""Image and table I/O.

Readers return a lazy ``(C, Y, X)`` dask array over the file's full-resolution level (no full read),
the channel names and the pixel size in µm. Supported: OME-TIFF (pyramidal, tiled, BigTIFF), plain
multi-page TIFF, Akoya/PerkinElmer ``.qptiff`` and inForm component TIFFs (channel names from each page's
QPI XML; thumbnail, overview and label pages skipped), and OME-Zarr.

The dask arrays read through :class:`TiffRegion` / zarr by file path, so their graphs pickle to
Dask workers in other processes and reopen the file there.

Writers: OME-Zarr label/mask images (NGFF 0.4, chunked, compressed, written chunk by chunk from dask)
and Parquet tables (see :func:`chemozone.layout.write_parquet`).
"""

from __future__ import annotations

import atexit
import collections
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ChannelError, ImageError

__all__ = [
    "ImageData",
    "read_image",
    "read_image_info",
    "resolve_channels",
    "normalize_channel_name",
    "write_ome_tiff",
    "write_labels_zarr",
    "read_labels_zarr",
    "list_labels_zarr",
]


@dataclass
class ImageData:
    """A lazily read multichannel image.

    Attributes
    ----------
    data : dask.array.Array, shape (C, Y, X)
        Full-resolution pixels, in the file's dtype (never rescaled).
    channels : list of str
        One name per channel.
    pixel_size_um : float
        Physical pixel size in µm.
    path : Path
    levels : list of dask.array.Array
        Pyramid levels (``levels[0] is data``); one element when the file has no pyramid.
    format : str
        ``ome-tiff``, ``qptiff``, ``inform-tiff``, ``tiff`` or ``ome-zarr``.
    """

    data: Any
    channels: list[str]
    pixel_size_um: float
    path: Path
    levels: list[Any] = field(default_factory=list)
    format: str = "tiff"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def channel(self, name: str, *, aliases: dict[str, list[str]] | None = None):
        """The ``(Y, X)`` dask array of one channel (matched like :func:`resolve_channels`)."""
        (idx,) = resolve_channels(self.channels, [name], aliases=aliases, source=self.path)
        return self.data[idx]


# ------------------------------------------------------------------------------------ channel names
_OPAL_RE = re.compile(r"\s*\((?:opal|alexa|cy|fitc|dapi|af)[^)]*\)\s*$", re.IGNORECASE)


def normalize_channel_name(name: str) -> str:
    """Canonical key for matching channel spellings.

    Case, spaces, dashes, underscores and dots are ignored, as is a trailing fluorophore in
    parentheses (``"CD8 (Opal 520)"`` → ``"cd8"``).

    >>> normalize_channel_name("CD8 (Opal 520)") == normalize_channel_name("cd-8")
    True
    """
    base = _OPAL_RE.sub("", str(name))
    return re.sub(r"[\s_\-.]+", "", base).lower()


def resolve_channels(
    image_channels: Sequence[str],
    wanted: Sequence[str],
    *,
    aliases: dict[str, list[str]] | None = None,
    source: str | Path = "image",
) -> list[int]:
    """Indices of ``wanted`` channels in ``image_channels``.

    Matching is exact first, then by :func:`normalize_channel_name`, then through ``aliases``
    (``{canonical: [other spellings]}``).

    Raises
    ------
    ChannelError
        Names the missing channel, the file, and lists the image's channels.
    """
    exact = {c: i for i, c in enumerate(image_channels)}
    norm: dict[str, int] = {}
    for i, c in enumerate(image_channels):
        norm.setdefault(normalize_channel_name(c), i)
    out = []
    for w in wanted:
        if w in exact:
            out.append(exact[w])
            continue
        candidates = [w] + list((aliases or {}).get(w, []))
        for canon, alts in (aliases or {}).items():
            if w in alts:
                candidates += [canon] + list(alts)
        hit = next((norm[normalize_channel_name(c)] for c in candidates if normalize_channel_name(c) in norm), None)
        if hit is None:
            raise ChannelError(
                f"{source}: channel '{w}' not found; the image has channels {list(image_channels)}; "
                "fix the name in the config or map it with panel.aliases"
            )
        out.append(hit)
    return out


# ------------------------------------------------------------------------------------------- TIFF
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
        z = self._zarr()
        native = z.shape
        if len(native) == 2:  # a single-channel series
            key = key if isinstance(key, tuple) else (key,)
            out = np.asarray(z[key[1:] if len(key) == 3 else key])
            return out[None] if len(key) == 3 else out
        return np.asarray(z[key])

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


def _qpi_pages(tif) -> tuple[list[int], list[str], float | None] | None:
    """Full-resolution pages of a PerkinElmer/Akoya QPI TIFF (qptiff or inForm component data)."""
    pages, names, px = [], [], None
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
        if px is None:
            px = _tiff_resolution_um(page)
    if not pages:
        return None
    return pages, names, px


def _tiff_resolution_um(page) -> float | None:
    """Pixel size from the TIFF resolution tags (µm), if they give one in cm or inch."""
    try:
        tags = page.tags
        xres = tags.get("XResolution")
        unit = tags.get("ResolutionUnit")
        if xres is None or unit is None:
            return None
        num, den = xres.value
        if num == 0:
            return None
        per_unit = num / den  # pixels per unit
        unit_val = int(unit.value)
        if unit_val == 3:  # centimetre
            return 1e4 / per_unit
        if unit_val == 2:  # inch
            return 25400.0 / per_unit
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

    qpi = None if tif.is_ome else _qpi_pages(tif)
    if qpi is not None:
        pages, channels, px = qpi
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
        return ImageData(data, channels, px, path, [data], fmt)

    # OME-TIFF or plain TIFF: the first series that is not a thumbnail/label is the image.
    if not tif.series:
        raise ImageError(f"{path}: the TIFF holds no image series")
    si = 0
    series = tif.series[si]
    if tif.is_ome:
        fmt = "ome-tiff"
        channels, px = _ome_channels_and_px(tif, si)
    if px is None:
        px = _tiff_resolution_um(series.pages[0])
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
    return ImageData(levels[0], channels or [], px, path, levels, fmt)  # type: ignore[arg-type]


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


# -------------------------------------------------------------------------------------------- zarr
def _read_ome_zarr(path: Path) -> ImageData:
    import dask.array as da
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{path}: not a readable OME-Zarr group ({type(exc).__name__}); check the path") from None
    attrs = dict(root.attrs)
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests under "ome"
    ms = ome.get("multiscales")
    if not ms:
        raise ImageError(f"{path}: no 'multiscales' metadata; is this an OME-Zarr image?")
    ms0 = ms[0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms0.get("axes", ["c", "y", "x"])]
    levels, px = [], None
    for i, ds in enumerate(ms0["datasets"]):
        arr = da.from_zarr(str(path), component=ds["path"])
        keep = []
        for ax, n in zip(axes, arr.shape):
            if ax in ("t", "z") and n != 1:
                raise ImageError(f"{path}: axis '{ax}' has size {n}; chemozone reads 2-D (C, Y, X) images")
            keep.append(ax)
        idx = tuple(0 if ax in ("t", "z") else slice(None) for ax in keep)
        arr = arr[idx]
        if "c" not in axes:
            arr = arr[None]
        levels.append(arr)
        if i == 0:
            for tr in ds.get("coordinateTransformations", []):
                if tr.get("type") == "scale":
                    scale = tr["scale"]
                    px = float(scale[axes.index("x")])
                    unit = next((a.get("unit") for a in ms0.get("axes", []) if isinstance(a, dict) and a.get("name") == "x"), "micrometer")
                    px *= {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}.get(unit or "micrometer", 1.0)
    channels = [c.get("label", f"channel_{i}") for i, c in enumerate(ome.get("omero", {}).get("channels", []))]
    if len(channels) != levels[0].shape[0]:
        channels = []
    return ImageData(levels[0], channels, px, path, levels, "ome-zarr")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- public API
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
        OME-TIFF / TIFF / ``.qptiff`` / inForm component TIFF, or an OME-Zarr folder.
    channels : sequence of str, optional
        Channel names in file order (``panel.channels``), used only when the file names none.
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
    if path.is_dir() or name.endswith(".zarr"):
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


# ---------------------------------------------------------------------------------------- writers
def write_ome_tiff(
    path: str | Path,
    data,
    *,
    channels: Sequence[str],
    pixel_size_um: float,
    tile_px: int = 512,
    pyramid_levels: int = 0,
    compression: str | None = "zlib",
    uuid: str | None = None,
) -> Path:
    """Write a (C, Y, X) array as a tiled (optionally pyramidal) OME-TIFF.

    ``uuid`` fixes the OME ``UUID`` attribute (default: a random one from tifffile); pass a
    deterministic value to get byte-identical files from identical inputs.

    ``data`` may be a numpy array, a dask array (written tile by tile without loading it whole), or
    an iterator factory is not supported: pass a dask array for images larger than memory.
    Pyramid levels are 2× mean-downsampled (``pyramid_levels`` extra levels, SubIFDs).
    """
    import tifffile

    path = Path(path)
    c, y, x = data.shape
    if len(channels) != c:
        raise ImageError(f"{path}: {len(channels)} channel names for {c} channels")
    metadata = {
        "axes": "CYX",
        "Channel": {"Name": list(channels)},
        "PhysicalSizeX": float(pixel_size_um),
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": float(pixel_size_um),
        "PhysicalSizeYUnit": "µm",
    }
    if uuid is not None:
        metadata["UUID"] = f"urn:uuid:{uuid}"
    from .layout import atomic_path

    def tiles(arr):
        # one strip of tile rows at a time: a dask array is computed strip by strip (bounded memory)
        ny, nx = -(-arr.shape[1] // tile_px), -(-arr.shape[2] // tile_px)
        for ci in range(arr.shape[0]):
            for ty in range(ny):
                strip = np.asarray(arr[ci, ty * tile_px:(ty + 1) * tile_px, :])
                if strip.shape[0] != tile_px or strip.shape[1] != nx * tile_px:
                    pad = np.zeros((tile_px, nx * tile_px), dtype=arr.dtype)
                    pad[: strip.shape[0], : strip.shape[1]] = strip
                    strip = pad
                for tx in range(nx):
                    yield strip[:, tx * tile_px:(tx + 1) * tile_px]

    def downsample(arr):
        import dask.array as da

        a = arr if hasattr(arr, "dask") else da.from_array(arr, chunks=(1, 2048, 2048))
        h, w = (a.shape[1] // 2) * 2, (a.shape[2] // 2) * 2
        a = a[:, :h, :w]
        return da.coarsen(np.mean, a, {1: 2, 2: 2}).astype(arr.dtype)

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=(c * y * x * np.dtype(data.dtype).itemsize) > 2**31 - 2**25, ome=True) as tw:
            kw = dict(tile=(tile_px, tile_px), dtype=data.dtype, compression=compression,
                      resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um), resolutionunit="CENTIMETER")
            tw.write(tiles(data), shape=(c, y, x), metadata=metadata, subifds=pyramid_levels, **kw)
            level = data
            for _ in range(pyramid_levels):
                level = downsample(level)
                tw.write(tiles(level), shape=level.shape, subfiletype=1, **{**kw, "resolution": None})
    return path


def write_labels_zarr(
    store: str | Path,
    name: str,
    labels,
    *,
    pixel_size_um: float,
    chunk_px: int = 1024,
) -> Path:
    """Write one label or mask image into ``store`` (an OME-Zarr, NGFF 0.4) at ``labels/{name}``.

    Parameters
    ----------
    store : path
        The ``masks.ome.zarr`` folder (created if missing; other labels are kept).
    name : str
        Label name, e.g. ``nuclei``, ``cells``, ``tissue``, ``zone_CXCL8``.
    labels : numpy or dask array, shape (Y, X)
        ``uint32`` labels or ``uint8``/``bool`` masks (bool is stored as ``uint8``); a dask array is
        written chunk by chunk.
    pixel_size_um : float
        Physical pixel size, stored as the scale transform.

    Notes
    -----
    The array is written to a temporary name and renamed into place, so a killed write never leaves
    a partial label image under its final name.
    """
    import dask.array as da

    store = Path(store)
    arr = labels if hasattr(labels, "dask") else da.from_array(np.asarray(labels), chunks=(chunk_px, chunk_px))
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise ValueError(f"labels '{name}' must be 2-D (Y, X), got shape {arr.shape}")
    arr = arr.rechunk((chunk_px, chunk_px))
    root = _open_ngff_root(store)
    labels_grp = root.require_group("labels")
    tmp_name = f".tmp-{name}"
    if tmp_name in labels_grp:
        del labels_grp[tmp_name]
    grp = labels_grp.create_group(tmp_name)
    target = grp.create_array("0", shape=arr.shape, chunks=(chunk_px, chunk_px), dtype=arr.dtype,
                              fill_value=0, **_compressor_kwargs()) if hasattr(grp, "create_array") else \
        grp.create_dataset("0", shape=arr.shape, chunks=(chunk_px, chunk_px), dtype=arr.dtype, fill_value=0)
    da.store(arr, target, lock=False, compute=True)
    grp.attrs.update(_multiscale_attrs(name, pixel_size_um))
    grp.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
    # atomic publish: rename the group folder (local filesystem store)
    final = store / "labels" / name
    tmp_dir = store / "labels" / tmp_name
    import os
    import shutil

    if final.exists():
        old = store / "labels" / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp_dir, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final)
    names = sorted(set(list_labels_zarr(store)) | {name})
    labels_grp.attrs["labels"] = names
    return final


def _compressor_kwargs() -> dict[str, Any]:
    from numcodecs import Blosc

    return {"compressors": Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)}


def _open_ngff_root(store: Path):
    import zarr

    kw = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
    return zarr.open_group(str(store), mode="a", **kw)


def _multiscale_attrs(name: str, pixel_size_um: float) -> dict[str, Any]:
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": [
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {"path": "0", "coordinateTransformations": [
                        {"type": "scale", "scale": [float(pixel_size_um), float(pixel_size_um)]}]}
                ],
            }
        ]
    }


def list_labels_zarr(store: str | Path) -> list[str]:
    """Names of the label images in an OME-Zarr store (folders under ``labels/``)."""
    d = Path(store) / "labels"
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_labels_zarr(store: str | Path, name: str, *, lazy: bool = False):
    """Read ``labels/{name}`` from an OME-Zarr store: numpy (or dask when ``lazy``) array (Y, X).

    Raises
    ------
    ImageError
        If the store or label is missing (lists the labels present).
    """
    import dask.array as da

    store = Path(store)
    present = list_labels_zarr(store)
    if name not in present:
        raise ImageError(f"{store}: no label image '{name}' (present: {present}); run segmentation/zones first")
    arr = da.from_zarr(str(store / "labels" / name), component="0")
    return arr if lazy else arr.compute()


def labels_pixel_size_um(store: str | Path, name: str) -> float | None:
    """Pixel size stored with a label image (µm), if any."""
    import zarr

    grp = zarr.open_group(str(Path(store) / "labels" / name), mode="r")
    try:
        return float(dict(grp.attrs)["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][-1])
    except (KeyError, IndexError, TypeError):
        return None
