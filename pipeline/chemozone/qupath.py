"""Back to QuPath: cells and zones as GeoJSON that QuPath imports, labels as TIFF; shapes ↔ GeoJSON features.

``chemozone export OUT --to qupath`` writes, per finished sample, into ``OUT/export/qupath/<sample_id>/``:

- ``cells.geojson``: a ``FeatureCollection`` with one ``objectType: detection`` per row of the sample's
  ``cells.parquet``. The geometry is the cell's **outline**: the exact pixel edges of its label in the cells mask
  (a ``Polygon``, or a ``MultiPolygon`` for a label in several pieces; holes kept), so QuPath's area of a cell is its
  pixel count. With ``cells="points"`` it is the centroid (a ``Point``; smaller files, no outline). The
  classification is the cell's ``phenotype`` (else ``cell_type``); every numeric column is a measurement
  (``cell_id``, intensities, ``x_um``, distances; booleans as 0/1: ``in_{zone}`` is the zone membership,
  ``{marker}_pos`` the gates), NaN left out. Feature ids are UUIDs derived from sample and cell id.
- ``zones.geojson``: one ``objectType: annotation`` per zone mask of ``masks.ome.zarr`` (class = the zone's name)
  and one for the analysed tissue (class ``Tissue``): the exact edges of the mask's grid pixels in full-resolution
  pixel coordinates, clipped to the image. Read back with :func:`chemozone.regions.rasterize_geometry` (pixel-centre
  rule) they give the stored masks exactly.
- ``cells.tif`` / ``nuclei.tif``: the label images (uint32, ids = ``cell_id``; the whole segmentation, cells that
  region annotations removed from the table included), with the pixel size as TIFF resolution.

Coordinates are QuPath's: pixels of the full-resolution image, pixel ``(row r, col c)`` covering
``[c, c + 1) x [r, r + 1)``; QuPath's *File → Import objects* reads the files onto the same image.

Examples
--------
>>> m = np.zeros((3, 4), bool); m[0, :2] = m[1, :2] = True; m[2, 3] = True
>>> g = mask_polygons(m)
>>> g.geom_type, g.area, sorted(round(v) for v in g.bounds)
('MultiPolygon', 5.0, [0, 0, 3, 4])
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import MissingStepError

__all__ = ["mask_polygons", "label_polygons", "qupath_feature", "write_geojson", "cell_features", "zone_features",
           "export_qupath", "shapes_to_features", "features_to_shapes"]

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def _color(name: str) -> list[int]:
    import hashlib

    return list(_PALETTE[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(_PALETTE)])


# --------------------------------------------------------------------------------------- geometry
def _row_runs(labels: np.ndarray, row0: int = 0) -> tuple[np.ndarray, ...]:
    """Horizontal runs of equal non-zero value: ``(value, row, start, end)`` arrays (end exclusive)."""
    h, w = labels.shape
    pad = np.zeros((h, w + 2), labels.dtype)
    pad[:, 1:-1] = labels
    r, x = np.nonzero(pad[:, 1:] != pad[:, :-1])  # boundaries at x = 0..w, sorted by row then x
    same = r[:-1] == r[1:]
    r0, s, e = r[:-1][same], x[:-1][same], x[1:][same]
    val = labels[r0, np.minimum(s, w - 1)]
    keep = (val != 0) & (s < w)
    return val[keep], r0[keep] + row0, s[keep], e[keep]


def mask_polygons(mask: np.ndarray, *, factor: float = 1, shape_yx: Sequence[int] | None = None):
    """The exact outline of a boolean mask's pixels as a shapely (Multi)Polygon, in pixel coordinates.

    Parameters
    ----------
    mask : bool ndarray (Y, X)
        A mask on the analysis grid (or at full resolution with ``factor=1``).
    factor : float
        Image pixels per mask pixel: grid pixel ``(r, c)`` becomes the square ``[c f, (c+1) f) x [r f, (r+1) f)``
        (a whole number on an image run's grid; any ratio on a cell-table run's).
    shape_yx : (int, int), optional
        Full-resolution image shape: the outline is clipped to it (partial grid blocks at the edges).

    Returns
    -------
    shapely Polygon or MultiPolygon (empty Polygon for an empty mask)
    """
    import shapely

    mask = np.asarray(mask, bool)
    if not mask.any():
        return shapely.Polygon()
    _, rows, starts, ends = _row_runs(mask.astype(np.uint8))
    boxes = _merge_runs(rows, starts, ends)
    f = float(factor)
    geom = shapely.union_all(shapely.box(boxes[:, 1] * f, boxes[:, 0] * f, boxes[:, 2] * f, boxes[:, 3] * f))
    if shape_yx is not None:
        geom = geom.intersection(shapely.box(0, 0, float(shape_yx[1]), float(shape_yx[0])))
    return geom.simplify(0)


def _merge_runs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Runs of consecutive rows with the same ``[start, end)`` merged into rectangles ``(row0, x0, x1, row1)``."""
    out, open_ = [], {}
    for r, s, e in zip(rows.tolist(), starts.tolist(), ends.tolist()):
        key = (s, e)
        prev = open_.get(key)
        if prev is not None and prev[1] == r:  # continues the rectangle of the row above
            prev[1] = r + 1
            continue
        if prev is not None:
            out.append((prev[0], s, e, prev[1]))
        open_[key] = [r, r + 1]
    out += [(r0, s, e, r1) for (s, e), (r0, r1) in open_.items()]
    return np.asarray(out, np.float64).reshape(-1, 4)


def label_polygons(labels: np.ndarray, *, rows_per_chunk: int = 1024) -> dict[int, Any]:
    """The exact pixel outline of every label of a label image: ``{label id: (Multi)Polygon}`` (pixel coordinates).

    Examples
    --------
    >>> lab = np.zeros((3, 3), np.uint32); lab[0, 0:2] = 7; lab[2, 2] = 9
    >>> {k: (g.geom_type, g.area) for k, g in label_polygons(lab).items()}
    {7: ('Polygon', 2.0), 9: ('Polygon', 1.0)}
    """
    import shapely

    labels = np.asarray(labels)
    parts = [_row_runs(labels[r:r + rows_per_chunk], r) for r in range(0, labels.shape[0], rows_per_chunk)]
    val, rows, s, e = (np.concatenate([p[i] for p in parts]) for i in range(4))
    order = np.argsort(val, kind="stable")
    val, rows, s, e = val[order], rows[order], s[order], e[order]
    boxes = shapely.box(s.astype(float), rows.astype(float), e.astype(float), rows + 1.0)
    ids, first = np.unique(val, return_index=True)
    bounds = list(first[1:]) + [len(val)]
    return {int(i): shapely.union_all(boxes[a:b]).simplify(0) for i, a, b in zip(ids, first, bounds)}


def qupath_feature(geom: Any, *, object_type: str, classification: str | None = None, name: str | None = None,
                   measurements: dict[str, float] | None = None, feature_id: str | None = None) -> dict[str, Any]:
    """A GeoJSON Feature as QuPath writes it (``properties.objectType``, ``classification: {name, color}``,
    ``measurements: {name: value}``; NaN measurements left out).

    >>> from shapely.geometry import Point
    >>> qupath_feature(Point(1, 2), object_type="detection", classification="T cell")["properties"]["classification"]
    {'name': 'T cell', 'color': [0, 128, 128]}
    """
    import shapely

    props: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        props["name"] = name
    if classification:
        props["classification"] = {"name": str(classification), "color": _color(str(classification))}
    if measurements:
        props["measurements"] = {k: float(v) for k, v in measurements.items() if v is not None and np.isfinite(v)}
    feat = {"type": "Feature", "geometry": json.loads(shapely.to_geojson(geom)), "properties": props}
    if feature_id is not None:
        feat = {"type": "Feature", "id": feature_id, **{k: v for k, v in feat.items() if k != "type"}}
    return feat


def write_geojson(features: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write features as a GeoJSON FeatureCollection, atomically; returns the path."""
    from .layout import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")))
    return path


# ------------------------------------------------------------------------------------------ cells
def _measurement_columns(cells) -> list[str]:
    import pandas as pd

    skip = {"sample_id"}
    return [c for c in cells.columns if c not in skip and (pd.api.types.is_numeric_dtype(cells[c])
                                                              or pd.api.types.is_bool_dtype(cells[c]))]


def cell_features(cells, *, sample_id: str, pixel_size_um: float, labels: np.ndarray | None = None,
                  as_points: bool = False) -> list[dict[str, Any]]:
    """QuPath detections of a cells table (see the module docstring).

    Parameters
    ----------
    cells : DataFrame
        A sample's ``cells.parquet`` (``cell_id``, ``x_um``, ``y_um``, phenotype, measurements).
    sample_id : str
    pixel_size_um : float
    labels : uint32 ndarray (Y, X), optional
        The cells label image; needed for outlines (``as_points=False``).
    as_points : bool
        Centroids instead of outlines.

    Returns
    -------
    list of dict
        One Feature per cell, in the table's order.

    Raises
    ------
    MissingStepError
        Outlines asked without a label image, or a cell without a label.
    """
    import shapely

    cls_col = next((c for c in ("phenotype", "cell_type") if c in cells.columns), None)
    cols = _measurement_columns(cells)
    values = cells[cols].astype(np.float64).to_numpy()
    ids = cells["cell_id"].to_numpy(np.int64)
    if as_points:
        geoms = shapely.points(cells["x_um"].to_numpy(float) / pixel_size_um, cells["y_um"].to_numpy(float) / pixel_size_um)
    else:
        if labels is None:
            raise MissingStepError(f"sample '{sample_id}': cell outlines need the cells label image (masks.ome.zarr), "
                                   "which this run lacks; export the cells as points (--cells points)")
        outlines = label_polygons(labels)
        missing = [int(i) for i in ids if int(i) not in outlines]
        if missing:
            raise MissingStepError(f"sample '{sample_id}': cells {missing[:5]} of cells.parquet are not in the cells "
                                   "mask; re-run the sample")
        geoms = [outlines[int(i)] for i in ids]
    classes = cells[cls_col].astype(str).to_numpy() if cls_col else [None] * len(cells)
    return [qupath_feature(g, object_type="detection", classification=c, measurements=dict(zip(cols, v)),
                           feature_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"chemozone:{sample_id}:{i}")))
            for g, c, v, i in zip(geoms, classes, values, ids)]


def zone_features(masks: dict[str, np.ndarray], *, shape_yx: Sequence[int] | None, factor: float,
                  grid_um: float) -> list[dict[str, Any]]:
    """One QuPath annotation per grid mask (class = the mask's name), clipped to the image; empty masks skipped.

    ``measurements``: ``area_mm2`` of the mask on the grid.
    """
    feats = []
    for name, m in masks.items():
        m = np.asarray(m, bool)
        if not m.any():
            continue
        geom = mask_polygons(m, factor=factor, shape_yx=shape_yx)
        feats.append(qupath_feature(geom, object_type="annotation", classification=name, name=name,
                                    measurements={"area_mm2": float(m.sum()) * (grid_um * 1e-3) ** 2}))
    return feats


# ----------------------------------------------------------------------------------------- export
def export_qupath(out: str | os.PathLike, dest: str | os.PathLike | None = None, *, cells: str = "polygons") -> Path:
    """Write every finished sample of a run for QuPath (module docstring); returns the destination folder.

    Parameters
    ----------
    out : path
        Run folder.
    dest : path, optional
        Destination folder (default ``OUT/export/qupath``); one subfolder per sample.
    cells : {"polygons", "points"}
        Cell outlines or centroids.

    Raises
    ------
    RunError, MissingStepError
        Not a run folder, or no finished sample.
    """
    import pandas as pd

    from .grid import grid_factor
    from .io import labels_pixel_size_um, list_labels_zarr, read_labels_zarr
    from .layout import RunLayout, atomic_path, read_run_json

    lay = RunLayout(out)
    run = read_run_json(out)
    done = [s for s, rec in (run.get("samples") or {}).items() if rec.get("status") == "done"]
    if not done:
        raise MissingStepError(f"{lay.run_json}: no finished sample to export; run 'chemozone run' into {out} first")
    dest = Path(dest) if dest else lay.export_qupath
    for sid in done:
        step_a = run["samples"][sid].get("step_a") or {}
        store = lay.masks(sid)
        names = list_labels_zarr(store)
        label_imgs = {n: read_labels_zarr(store, n) for n in ("cells", "nuclei") if n in names}
        px, shape_yx = _pixel_frame(run, sid, step_a, label_imgs)
        table = pd.read_parquet(lay.cells(sid))
        sdir = dest / sid
        sdir.mkdir(parents=True, exist_ok=True)
        write_geojson(cell_features(table, sample_id=sid, pixel_size_um=px, labels=label_imgs.get("cells"),
                                    as_points=cells == "points"), sdir / "cells.geojson")
        grid_um = labels_pixel_size_um(store, "tissue") or float(step_a["grid_um"])
        grid = {n[len("zone_"):]: read_labels_zarr(store, n) for n in names if n.startswith("zone_")}
        grid["Tissue"] = read_labels_zarr(store, "tissue")
        factor = grid_factor(px, grid_um) if "shape" in step_a else grid_um / px  # a table run's grid: origin 0
        write_geojson(zone_features(grid, shape_yx=shape_yx, factor=factor, grid_um=grid_um), sdir / "zones.geojson")
        for name, arr in label_imgs.items():
            with atomic_path(sdir / f"{name}.tif") as tmp:
                _write_label_tiff(tmp, arr, pixel_size_um=px)
    return dest


def _pixel_frame(run: dict[str, Any], sid: str, step_a: dict[str, Any], label_imgs: dict[str, np.ndarray]):
    """``(pixel_size_um, shape_yx or None)`` of a sample's image: from step A of an image run; for a run on cell
    tables from ``panel.pixel_size_um`` and the shape of its masks (None without masks: outlines are not clipped)."""
    if "pixel_size_um" in step_a:
        return float(step_a["pixel_size_um"]), tuple(step_a["shape"][1:])
    px = ((run.get("config") or {}).get("panel") or {}).get("pixel_size_um")
    if px is None:
        raise MissingStepError(f"sample '{sid}': a run on cell tables in µm without panel.pixel_size_um has no pixel "
                               "coordinates for QuPath; rerun it with --pixel-size-um (the image's pixel size)")
    shape = next((a.shape for a in label_imgs.values()), None)
    return float(px), shape


def _write_label_tiff(path: Path, labels: np.ndarray, *, pixel_size_um: float) -> None:
    import tifffile

    big = max(labels.shape) > 4096
    tifffile.imwrite(path, np.asarray(labels, np.uint32), compression="zlib", tile=(512, 512) if big else None,
                     resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um), resolutionunit="CENTIMETER",
                     metadata=None)


# --------------------------------------------------------------------------- napari shapes <-> GeoJSON
def shapes_to_features(data: Sequence[np.ndarray], shape_types: Sequence[str], *, classifications: Sequence[Any],
                       holes: Sequence[bool] | None = None, object_type: str = "annotation") -> list[dict[str, Any]]:
    """GeoJSON features of napari shapes whose vertices are ``(row, col)`` in full-resolution pixels.

    Polygons and rectangles become ``Polygon``s, ellipses a 64-gon, paths and lines ``LineString``s. A shape's
    classification (``None`` or empty = unclassified) becomes its QuPath class. A shape flagged in ``holes`` (as
    :func:`features_to_shapes` marks them) is cut out of the shapes of the same class that contain it.

    Examples
    --------
    >>> f = shapes_to_features([np.array([[0, 0], [0, 4], [2, 4], [2, 0]])], ["rectangle"], classifications=["Fold"])
    >>> f[0]["geometry"]["type"], f[0]["properties"]["classification"]["name"]
    ('Polygon', 'Fold')
    """
    import shapely

    holes = list(holes) if holes is not None else [False] * len(data)
    geoms, classes = [], []
    for verts, kind, cls in zip(data, shape_types, classifications):
        xy = np.asarray(verts, np.float64)[:, -2:][:, ::-1]  # (row, col) -> (x, y)
        if kind == "ellipse":
            c, half = xy.mean(axis=0), (xy.max(axis=0) - xy.min(axis=0)) / 2
            t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            geom = shapely.Polygon(np.c_[c[0] + half[0] * np.cos(t), c[1] + half[1] * np.sin(t)])
        elif kind in ("path", "line"):
            geom = shapely.LineString(xy)
        else:
            geom = shapely.make_valid(shapely.Polygon(xy))
        geoms.append(geom)
        classes.append(None if cls is None or (isinstance(cls, float) and np.isnan(cls)) or not str(cls).strip()
                       else str(cls))
    for i in (i for i, h in enumerate(holes) if h):
        for j in (j for j, h in enumerate(holes) if not h and classes[j] == classes[i]):
            if geoms[j].geom_type in ("Polygon", "MultiPolygon") and geoms[j].contains(geoms[i]):
                geoms[j] = geoms[j].difference(geoms[i])
    return [qupath_feature(g, object_type=object_type, classification=c)
            for g, c, h in zip(geoms, classes, holes) if not h]


def features_to_shapes(table) -> tuple[list[np.ndarray], list[str], dict[str, list]]:
    """napari Shapes data of a features table (:func:`chemozone.regions.read_geojson`): vertices ``(row, col)``.

    Each polygon part becomes a ``polygon``; napari has no holes, so each hole is a polygon of its own marked
    ``hole=True``; lines become ``path``s, points are skipped.

    Returns
    -------
    data, shape_types, properties
        ``properties``: ``classification`` (``""`` = unclassified), ``object_type``, ``hole`` per shape.
    """
    import shapely

    data, types = [], []
    props: dict[str, list] = {"classification": [], "object_type": [], "hole": []}

    def add(coords, kind, row, hole=False):
        xy = np.asarray(coords, np.float64)
        if kind == "polygon":
            xy = xy[:-1]  # GeoJSON rings repeat the first vertex
        data.append(xy[:, ::-1].copy())
        types.append(kind)
        props["classification"].append(row.classification or "")
        props["object_type"].append(row.object_type)
        props["hole"].append(hole)

    for row in table.itertuples(index=False):
        for part in shapely.get_parts(row.geometry):
            if part.geom_type == "Polygon":
                add(part.exterior.coords, "polygon", row)
                for ring in part.interiors:
                    add(ring.coords, "polygon", row, hole=True)
            elif part.geom_type == "LineString":
                add(part.coords, "path", row)
    return data, types, props
