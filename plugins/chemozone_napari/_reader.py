"""napari reader: images (one layer per channel), sample folders and run folders.

Images (OME-TIFF, TIFF, ``.qptiff``, inForm component TIFF, OME-Zarr) are read through
:func:`chemozone.io.read_image` and stay lazy (dask); a pyramid becomes a multiscale layer. Contrast limits
come from a low-resolution level or a few sampled chunks, never from the whole image.

A *sample folder* (``OUT/samples/<id>``, or a lone copy of one) or a *run folder* (``OUT``, its first
sample) opens the image of the sample, the label images and masks of its masks store (each at its own stored
scale), its region annotations (the QuPath GeoJSON of the sample sheet's ``regions`` column, as a Shapes layer)
and the cells as a Points layer whose ``features`` are the cells table (plus reviewed phenotypes, see
:mod:`chemozone_napari._review`). A sample's masks store (``samples/<id>/masks.ome.zarr``) opens as its label images
and masks only (:func:`mask_layers`: nothing else is read, so a whole section's masks are on screen in seconds).
Every path comes from :class:`chemozone.layout.RunLayout` / :class:`chemozone.layout.SampleLayout`; a lone sample
folder has no run, so it opens with the default config and without its image.

World coordinates are micrometres: pixel ``i`` of a raster with pixel size ``s`` covers
``[i*s, (i+1)*s)``, so rasters get ``translate = s/2`` and points sit at ``(y_um, x_um)``. This matches the
analysis-grid convention of the API (a cell falls in grid pixel ``y_um // grid_um``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._colors import ZONE_COLORS, category_colors, channel_colormap, mask_colormap

LABEL_NAMES = ("nuclei", "cells")
CONTRAST_MAX_PX = 2**22  # pixels of a level small enough to take percentiles on directly
CONTRAST_SAMPLE_CHUNKS = 9
CONTRAST_WINDOW_PX = 512  # side of the window read at each sampled chunk's corner (one tile of a tiled TIFF)

LayerData = tuple  # (data, kwargs, layer_type)


# ------------------------------------------------------------------------------------------ detection
def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reader function for ``path``, or ``None`` when chemozone cannot read it."""
    if isinstance(path, (list, tuple)):
        if not path:
            return None
        readers = [napari_get_reader(p) for p in path]
        if any(r is None for r in readers):
            return None
        return read_paths
    kind = path_kind(path)
    if kind is None:
        return None
    return read_paths


def path_kind(path: str | Path) -> str | None:
    """``"image"``, ``"sample"``, ``"run"``, ``"masks"`` (a sample's masks store: its label images and masks
    only) or ``None`` (not something chemozone reads)."""
    p = Path(path)
    if not p.exists():
        return None
    if p.is_dir():
        from chemozone.layout import RunLayout, SampleLayout

        run, sample = RunLayout(p), SampleLayout(p)
        if run.run_json.is_file() or run.samples_dir.is_dir():
            return "run"
        if sample.cells.is_file() or sample.masks.is_dir():
            return "sample"
        if SampleLayout(p.parent).masks == p:
            return "masks"
    from chemozone.io import is_image_path

    return "image" if is_image_path(p) else None


def read_paths(path: str | list[str]) -> list[LayerData] | None:
    """Read one path or a list of paths into layer data tuples (``None`` if any cannot be read)."""
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    out: list[LayerData] = []
    for p in paths:
        kind = path_kind(p)
        if kind is None:
            return None
        if kind == "image":
            out += image_layers(p)
        elif kind == "masks":
            out += mask_layers(Path(p).parent)
        else:
            sample_dir = sample_dir_of(p) if kind == "sample" else first_sample_dir(p)
            out += sample_layers(sample_dir)
    return out


# --------------------------------------------------------------------------------------------- images
def contrast_limits(levels: list, channel: int) -> tuple[float, float]:
    """Display range (0.5th and 99.8th percentiles) of one channel, from a cheap subset of pixels
    (:func:`contrast_limits_all` for one channel)."""
    return contrast_limits_all(levels, [channel])[0]


def contrast_limits_all(levels: list, channels: list[int]) -> list[tuple[float, float]]:
    """Display ranges (0.5th and 99.8th percentiles) of these channels, from a cheap subset of pixels.

    The smallest pyramid level is used whole when it has at most ``CONTRAST_MAX_PX`` pixels;
    otherwise the corners (``CONTRAST_WINDOW_PX`` square) of a few chunks spread over it are read (never the
    whole image), every channel's in one ``compute`` (one pass over a whole section's graph, not one per channel).
    """
    lvl = min(levels, key=lambda a: a.shape[-1] * a.shape[-2])
    ny_px, nx_px = lvl.shape[-2:]
    if ny_px * nx_px <= CONTRAST_MAX_PX:
        samples = [np.asarray(lvl[c]).ravel() for c in channels]
    elif hasattr(lvl, "blocks"):
        import dask

        sub = lvl[channels] if list(channels) != list(range(lvl.shape[0])) else lvl
        ey, ex = (np.concatenate([[0], np.cumsum(ch)]) for ch in sub.chunks[1:])
        k = int(np.ceil(np.sqrt(CONTRAST_SAMPLE_CHUNKS)))
        iy = np.unique(np.linspace(0, len(ey) - 2, k).round().astype(int))
        ix = np.unique(np.linspace(0, len(ex) - 2, k).round().astype(int))
        # one slice per sampled chunk position, all channels at once (a slice per channel and chunk costs more
        # than the reading on a whole section's graph)
        w = CONTRAST_WINDOW_PX  # the corner of each sampled chunk (a stored tile), not the whole chunk
        blocks = dask.compute(*[sub[:, ey[a]:min(ey[a + 1], ey[a] + w), ex[b]:min(ex[b + 1], ex[b] + w)]
                                for a in iy for b in ix])
        samples = [np.concatenate([np.asarray(b[i]).ravel() for b in blocks]) for i in range(len(channels))]
    else:  # numpy, large
        step = int(np.ceil(np.sqrt(ny_px * nx_px / CONTRAST_MAX_PX)))
        samples = [np.asarray(lvl[c][::step, ::step]).ravel() for c in channels]
    return [_display_range(v) for v in samples]


def _display_range(vals: np.ndarray) -> tuple[float, float]:
    vals = vals[np.isfinite(vals)] if vals.dtype.kind == "f" else vals
    if vals.size == 0:
        return (0.0, 1.0)
    lo, hi = _percentiles(vals, [0.5, 99.8])
    if hi <= lo:
        hi = float(vals.max())
        if hi <= lo:
            hi = lo + 1.0
    return (lo, hi)


def _percentiles(vals: np.ndarray, q: list[float]) -> list[float]:
    """``np.percentile(vals, q)`` (linear interpolation); 8- and 16-bit integers through a histogram of the values,
    which gives the same numbers without copying and partitioning millions of pixels. Integers are interpolated as
    float64 (numpy interpolates in the input's dtype, where two values more than its maximum apart wrap around:
    ``np.percentile(np.int8([86, -62]), 1)`` is -63.08, not -60.52).

    Examples
    --------
    >>> v = np.random.default_rng(0).integers(0, 4000, 10_001).astype(np.uint16)
    >>> _percentiles(v, [0.5, 99.8]) == [float(x) for x in np.percentile(v, [0.5, 99.8])]
    True
    """
    if vals.dtype.kind not in "ui" or vals.dtype.itemsize > 2:
        return [float(v) for v in np.percentile(vals.astype(np.float64) if vals.dtype.kind in "ui" else vals, q)]
    offset = int(np.iinfo(vals.dtype).min)
    cum = np.cumsum(np.bincount(vals.ravel() if offset == 0 else vals.ravel().astype(np.int32) - offset))
    out = []
    for p in q:
        pos = p / 100.0 * (vals.size - 1)
        i = int(np.floor(pos))
        a, b = (int(np.searchsorted(cum, k, side="right")) + offset for k in (i, min(i + 1, vals.size - 1)))
        out.append(float(a + (b - a) * (pos - i)))
    return out


def image_layers(path: str | Path, *, channels=None, pixel_size_um=None, img=None,
                 visible_channels: int | None = None) -> list[LayerData]:
    """One Image layer per channel of an image file (lazy; multiscale when the file has levels).

    Parameters
    ----------
    path : path
        The image file or OME-Zarr folder.
    channels, pixel_size_um : optional
        Fallbacks from the config (``panel.channels`` / ``panel.pixel_size_um``) for files that store none.
    img : ImageData, optional
        An already opened image (``path`` is then only recorded in the metadata).
    visible_channels : int, optional
        Show only the first N channels (others are added hidden); all when None.
    """
    from chemozone.io import read_image

    if img is None:
        img = read_image(path, channels=channels, pixel_size_um=pixel_size_um)
    levels = list(img.levels) if img.levels else [img.data]
    multiscale = len(levels) > 1
    px = float(img.pixel_size_um)
    out: list[LayerData] = []
    others = 0
    limits = contrast_limits_all(levels, list(range(len(img.channels))))
    for c, name in enumerate(img.channels):
        cmap = channel_colormap(name, others)
        if cmap != "blue":
            others += 1
        data = [lvl[c] for lvl in levels] if multiscale else levels[0][c]
        meta = {"chemozone": {"kind": "image", "path": str(img.path), "channel": name, "channel_index": c,
                              "channels": list(img.channels), "pixel_size_um": px, "format": img.format}}
        kwargs = dict(
            name=str(name), colormap=cmap, blending="additive", contrast_limits=limits[c],
            scale=(px, px), translate=(px / 2, px / 2), multiscale=multiscale, metadata=meta,
            visible=visible_channels is None or c < visible_channels,
        )
        out.append((data, kwargs, "image"))
    return out


# -------------------------------------------------------------------------------------- run folders
def sample_dir_of(path: str | Path) -> Path:
    return Path(path)


def first_sample_dir(run_dir: str | Path) -> Path:
    """The first sample folder of a run (sorted by id)."""
    from chemozone.layout import RunLayout

    lay = RunLayout(run_dir)
    ids = lay.sample_ids()
    if not ids:
        from chemozone.errors import RunError

        raise RunError(f"{run_dir}: the run folder has no samples/ yet; run 'chemozone run' first")
    return lay.sample_dir(ids[0])


def run_dir_of(sample_dir: Path) -> Path | None:
    """The run folder that holds ``sample_dir`` (``OUT`` of ``OUT/samples/<id>``), if it looks like one."""
    from chemozone.layout import RunLayout

    run, _ = RunLayout.of_sample(sample_dir)
    return run.root if run is not None else None


def _run_json(run_dir: Path | None) -> dict[str, Any]:
    """``run.json`` of a run folder; empty when there is none or it cannot be read (display still works)."""
    from chemozone.errors import RunError
    from chemozone.layout import read_run_json

    if run_dir is None:
        return {}
    try:
        return read_run_json(run_dir)
    except (RunError, OSError):
        return {}


def run_config(run_dir: Path | None):
    """The resolved config stored in ``run.json`` (a :class:`chemozone.config.Config`), or defaults."""
    from chemozone.config import Config, config_from_dict

    cfg = _run_json(run_dir).get("config")
    if not isinstance(cfg, dict):
        return Config()
    try:
        return config_from_dict(cfg, source=f"{run_dir}/run.json config")
    except Exception:  # noqa: BLE001 - an older run.json with keys this version lacks: display still works
        return Config()


def sample_image_path(sample_dir: Path, sample_id: str | None = None) -> Path | None:
    """Image of a sample as its run recorded it (:meth:`chemozone.layout.RunLayout.sample_image`); None for
    a lone sample folder."""
    from chemozone.layout import RunLayout

    run, name = RunLayout.of_sample(sample_dir)
    return run.sample_image(sample_id or name) if run is not None else None


def load_cells(sample_dir: Path):
    """``cells.parquet`` of a sample with the reviewed phenotypes merged in (or None when absent)."""
    from chemozone.layout import SampleLayout

    from ._review import merge_reviewed

    path = SampleLayout(sample_dir).cells
    if not path.is_file():
        return None
    from chemozone.layout import read_parquet

    return merge_reviewed(read_parquet(path, split_blocks=True), sample_dir)  # read-only display: no consolidation


def display_category(cells) -> str | None:
    """Column the points are coloured by: reviewed phenotype, phenotype, cell type (first present)."""
    for col in ("phenotype_display", "phenotype", "cell_type"):
        if col in cells.columns:
            return col
    return None


def cell_point_size_um(cells) -> float:
    if "area_um2" in cells.columns and len(cells):
        med = float(np.nanmedian(cells["area_um2"].to_numpy(dtype=float)))
        if np.isfinite(med) and med > 0:
            return float(np.clip(1.2 * np.sqrt(med / np.pi), 2.0, 30.0))
    return 6.0


def cells_layer(cells, *, sample_dir: Path | None = None, sample_id: str | None = None,
                name: str = "cell points") -> LayerData:
    """Points layer data of a cells table (``features`` = the table; coloured by phenotype)."""
    coords = cells[["y_um", "x_um"]].to_numpy(dtype=float) if len(cells) else np.zeros((0, 2))
    col = display_category(cells)
    colors = category_colors(cells[col].to_numpy()) if col is not None else np.tile([1.0, 1.0, 1.0, 1.0], (len(cells), 1))
    meta = {"chemozone": {"kind": "cells", "sample_dir": str(sample_dir) if sample_dir else None,
                          "sample_id": sample_id, "color_by": col}}
    import pandas as pd

    plain = isinstance(cells.index, pd.RangeIndex) and cells.index.start == 0 and cells.index.step == 1
    kwargs = dict(name=name, features=cells if plain else cells.reset_index(drop=True), border_width=0,
                  size=cell_point_size_um(cells), metadata=meta, opacity=0.9)
    if len(cells):  # napari cannot take an empty colour array
        kwargs["face_color"] = colors
    return (coords, kwargs, "points")


def mask_layers(sample_dir: str | Path, *, pixel_size_um: float | None = None, run_dir: Path | None = None
                ) -> list[LayerData]:
    """The label images (nuclei, cells) and masks (tissue, zones) of a sample's masks store, as lazy (multiscale)
    labels layers at their stored scales; nothing else of the sample is read (its image, cells table and run
    config are not needed), so a whole section's masks open from their small pyramid levels at once."""
    from chemozone.io import labels_pixel_size_um, list_labels_zarr, read_labels_pyramid
    from chemozone.layout import SampleLayout

    sample_dir = Path(sample_dir)
    run_dir = run_dir_of(sample_dir) if run_dir is None else run_dir
    common = {"sample_dir": str(sample_dir), "sample_id": sample_dir.name, "run_dir": str(run_dir) if run_dir else None}
    store = SampleLayout(sample_dir).masks
    names = list_labels_zarr(store) if store.is_dir() else []
    out: list[LayerData] = []
    zone_i = 0
    for name in sorted(names, key=lambda n: (n not in LABEL_NAMES, n != "tissue", n)):
        s = labels_pixel_size_um(store, name) or pixel_size_um or 1.0
        levels = read_labels_pyramid(store, name)  # lazy; a whole section opens from its small levels
        arr = levels if len(levels) > 1 else levels[0]
        meta = {"chemozone": {"kind": "labels" if name in LABEL_NAMES else "mask", "label": name,
                              "pixel_size_um": s, **common}}
        kw: dict[str, Any] = dict(name=name, scale=(s, s), translate=(s / 2, s / 2), metadata=meta,
                                  multiscale=len(levels) > 1)
        if name in LABEL_NAMES:
            kw.update(opacity=0.5, visible=(name == "cells"))
        elif name == "tissue":
            kw.update(opacity=0.2, colormap=mask_colormap("white"))
        else:
            color = ZONE_COLORS[zone_i % len(ZONE_COLORS)]
            zone_i += 1
            kw.update(opacity=0.35, colormap=mask_colormap(color), visible=zone_i <= 2)
        out.append((arr, kw, "labels"))
    return out


def sample_layers(sample_dir: str | Path) -> list[LayerData]:
    """Layers of one sample folder: image channels, labels, masks and cells."""
    from chemozone.layout import SampleLayout

    sample_dir = Path(sample_dir)
    sample_id = sample_dir.name
    run_dir = run_dir_of(sample_dir)
    cfg = run_config(run_dir)
    out: list[LayerData] = []
    common = {"sample_dir": str(sample_dir), "sample_id": sample_id, "run_dir": str(run_dir) if run_dir else None}
    img_path = sample_image_path(sample_dir, sample_id)
    px = None
    if img_path is not None:
        from chemozone.io import read_image
        from chemozone.overview import with_overview

        # an image without a pyramid shows the run's overview when zoomed out (never its every pixel at once)
        img = with_overview(read_image(img_path, channels=cfg.panel.channels, pixel_size_um=cfg.panel.pixel_size_um),
                            SampleLayout(sample_dir).overview)
        layers = image_layers(img_path, img=img, visible_channels=4)
        for _, kw, _ in layers:
            kw["metadata"]["chemozone"].update(common)
            px = kw["metadata"]["chemozone"]["pixel_size_um"]
        out += layers
    out += mask_layers(sample_dir, pixel_size_um=px, run_dir=run_dir)
    regions = ((_run_json(run_dir).get("inputs") or {}).get(sample_id) or {}).get("regions") or {}
    if px is not None and regions.get("path") and Path(regions["path"]).is_file():  # the sample's region annotations
        from ._regions import regions_layer

        data, kw, kind = regions_layer(regions["path"], pixel_size_um=px, name="regions")
        kw["metadata"]["chemozone"].update(common)
        out.append((data, kw, kind))
    cells = load_cells(sample_dir)
    if cells is not None and {"x_um", "y_um"} <= set(cells.columns):
        data, kw, kind = cells_layer(cells, sample_dir=sample_dir, sample_id=sample_id)
        kw["metadata"]["chemozone"].update(common)
        out.append((data, kw, kind))
    return out
