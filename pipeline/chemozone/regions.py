"""Region annotations: a QuPath GeoJSON per sample (analysis region, exclusions, named regions as zones).

A sample-sheet column ``regions`` names a GeoJSON file per sample (empty = no annotations; relative paths are
relative to the sheet). The file is what QuPath writes with *File → Export objects → GeoJSON* (v0.2 to v0.6): a
``FeatureCollection``, a JSON list of ``Feature`` objects, or one ``Feature``. For each feature:

- **type**: ``properties.objectType`` (``annotation``, ``detection``, ``cell``, ``tile``, ``tmaCore``; also the
  aliases ``object_type`` / ``type``), or QuPath v0.2's feature ``id`` (``PathAnnotationObject``, ...); without
  either it is an annotation, as QuPath reads it. Only annotations are regions; other objects are counted as
  ignored.
- **class**: ``properties.classification`` as ``{"name": "Tumor"}`` (v0.3+), ``{"names": ["Tumor",
  "Positive"]}`` (a derived class, v0.4+; read as ``Tumor: Positive``), ``{"name": ..., "parentClass": {...}}``
  (v0.2) or a plain string; none = unclassified. A class matches a configured name when the whole name or its
  first part (before ``:``) is equal, ignoring case (``Tumor: Positive`` matches ``Tumor``).
- **geometry**: ``Polygon`` and ``MultiPolygon`` (holes kept), the polygonal parts of a ``GeometryCollection``;
  ``Point`` / ``LineString`` annotations (counts, rulers) have no area and are counted as ignored; any other type
  is refused.

Coordinates are pixels of the full-resolution image, x to the right and y down, as QuPath writes them: image
pixel ``(row r, col c)`` covers ``[c, c + 1) x [r, r + 1)``, so a cell's centroid is ``(x_um / px, y_um / px)``
(:mod:`chemozone.quantify`). A ``crs`` member other than none is refused (geographic or projected coordinates are
not pixels), and so is a file whose annotations reach more than ``max(2 px, 1 %)`` of the image's side beyond
it (a GeoJSON of another image, of a downsampled export, or in µm).

What the annotations do (``regions`` config section):

- **analysis region**: the union of the annotations whose class is in ``analysis_classes`` (and the
  unclassified ones when ``unclassified: analysis``); none = the whole image. Cells and areas outside are removed.
- **exclusions**: the union of the annotations whose class is in ``exclude_classes`` (necrosis, folds, a
  damaged rim); cells and areas inside are removed.
- **named regions**: any class can be a zone (``zones: [{name: T, source: regions, region_class: Tumor}]``):
  the zone is that class's union, inside the analysed tissue.

A **cell** is inside an annotation when its centroid is (``shapely.contains_xy``); an **area** on the analysis
grid is inside when the grid pixel's centre is (:func:`chemozone.grid.grid_pixel_centres_px`). A point exactly
on an outline counts as outside that annotation.

Examples
--------
>>> fc = {"type": "FeatureCollection", "features": [
...     {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [8, 0], [8, 4], [0, 4], [0, 0]]]},
...      "properties": {"objectType": "annotation", "classification": {"name": "Necrosis", "color": [0, 0, 0]}}}]}
>>> regs = regions_from_geojson(fc, shape_yx=(8, 8), source="r.geojson")
>>> int(rasterize_geometry(regs.exclusion, shape_yx=(8, 8), factor=2).sum())  # 4 x 2 grid pixels of 2 x 2 px
8
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import RegionError
from .grid import grid_factor, grid_pixel_centres_px

__all__ = [
    "REGIONS_COLUMN",
    "SampleRegions",
    "read_geojson",
    "regions_from_geojson",
    "load_regions",
    "class_matches",
    "rasterize_geometry",
    "contains_grid_centres",
    "points_in_geometry",
    "apply_regions",
    "region_zone_geometry",
    "region_zone_mask",
    "add_region_zones",
    "sample_regions_path",
    "load_sample_regions",
]

REGIONS_COLUMN = "regions"
"""The sample-sheet column that names each sample's region-annotation GeoJSON."""

_LEGACY_TYPES = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection", "PathCellObject": "cell",
                 "PathTileObject": "tile", "TMACoreObject": "tmaCore", "PathRootObject": "root"}
_AREA_TYPES = ("Polygon", "MultiPolygon", "GeometryCollection")
_NO_AREA_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString")
_EDGE_TOLERANCE = 0.01
"""Annotations may reach this fraction of the image's side (at least 2 px) beyond it (brush strokes at the edge)."""


def _err(path: Any, column: str, what: str) -> RegionError:
    return RegionError(f"{path} (sample-sheet column '{column}'): {what}")


# ------------------------------------------------------------------------------------------ reading
def class_name(classification: Any) -> str | None:
    """The class of a QuPath ``properties.classification`` in any of its forms (None = unclassified).

    >>> class_name({"name": "Tumor", "color": [200, 0, 0]}), class_name({"names": ["Tumor", "Positive"]})
    ('Tumor', 'Tumor: Positive')
    >>> class_name({"name": "Positive", "colorRGB": -1, "parentClass": {"name": "Tumor"}}), class_name("Stroma")
    ('Tumor: Positive', 'Stroma')
    """
    if classification is None:
        return None
    if isinstance(classification, str):
        return classification.strip() or None
    if isinstance(classification, dict):
        names = classification.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)
        name = classification.get("name")
        parent = class_name(classification.get("parentClass"))
        if name is None:
            return parent
        return f"{parent}: {name}" if parent else str(name)
    return None


def class_matches(name: str | None, wanted: Sequence[str]) -> bool:
    """Whether a class name matches one of ``wanted``: the whole name or its first part, ignoring case.

    >>> class_matches("Tumor: Positive", ["tumor"]), class_matches("Necrosis", ["Tumor"]), class_matches(None, ["x"])
    (True, False, False)
    """
    if not name:
        return False
    low = {w.strip().lower() for w in wanted}
    return name.strip().lower() in low or name.split(":", 1)[0].strip().lower() in low


def _object_type(feat: dict) -> str:
    props = feat.get("properties") or {}
    for key in ("objectType", "object_type", "type"):
        if isinstance(props.get(key), str):
            return _LEGACY_TYPES.get(props[key], props[key])
    fid = feat.get("id")
    return _LEGACY_TYPES.get(fid, "annotation") if isinstance(fid, str) else "annotation"


def _features(data: Any, source: Any, column: str) -> list[dict]:
    """The features of a GeoJSON document (FeatureCollection, list of Features or one Feature)."""
    if isinstance(data, dict) and data.get("crs") is not None:
        crs = data["crs"]
        name = (crs.get("properties") or {}).get("name") if isinstance(crs, dict) else crs
        raise _err(source, column, f"coordinates in the reference system '{name}'; region annotations must be in "
                                   "pixels of the full-resolution image, as QuPath exports them (no 'crs' member)")
    if isinstance(data, dict) and data.get("type") == "FeatureCollection" and isinstance(data.get("features"), list):
        feats = data["features"]
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    elif isinstance(data, list):
        feats = data
    else:
        raise _err(source, column, "not a GeoJSON FeatureCollection, Feature or list of Features; export the "
                                   "annotations from QuPath with File > Export objects as GeoJSON")
    if any(not isinstance(f, dict) or f.get("type") != "Feature" for f in feats):
        raise _err(source, column, "an element that is not a GeoJSON Feature; export from QuPath as GeoJSON")
    return feats


def _geometry(geom: Any, source: Any, column: str, k: int):
    import shapely.geometry

    gtype = geom.get("type") if isinstance(geom, dict) else None
    known = _AREA_TYPES + _NO_AREA_TYPES
    if gtype not in known:
        raise _err(source, column, f"feature {k} has geometry type {gtype!r}; supported are {list(known)} (in "
                                   "pixel coordinates); convert or remove it")
    try:
        shp = shapely.geometry.shape(geom)
    except Exception as exc:  # noqa: BLE001 - malformed coordinates of any kind
        raise _err(source, column, f"feature {k}: unreadable {gtype} coordinates ({type(exc).__name__}: {exc}); "
                                   "re-export the annotations") from None
    if gtype == "GeometryCollection":
        import shapely

        parts = [g for g in shapely.get_parts(shp) if g.geom_type in ("Polygon", "MultiPolygon")]
        shp = shapely.union_all(parts) if parts else shapely.geometry.Polygon()
    if shp.geom_type in ("Polygon", "MultiPolygon") and not shp.is_valid:
        import shapely

        shp = shapely.make_valid(shp)  # self-touching outlines drawn by hand
    return shp


def read_geojson(path: str | Path | dict | list, *, column: str = REGIONS_COLUMN, source: Any = None):
    """Every feature of a QuPath GeoJSON as a table (annotations, detections, cells; any geometry).

    Parameters
    ----------
    path : path, or an already parsed GeoJSON document
    column : str
        The sample-sheet column the file came from (for error messages).
    source : str, optional
        Name of a parsed document in error messages.

    Returns
    -------
    pandas.DataFrame
        One row per feature: ``object_type`` (str), ``classification`` (str or None, see :func:`class_name`),
        ``name`` (str or None), ``geometry`` (shapely geometry, pixel coordinates), ``measurements`` (dict name ->
        float; QuPath's list-of-``{name, value}`` form of v0.2 too), ``id`` (str or None).

    Raises
    ------
    RegionError
        Missing or unreadable file, not GeoJSON, a ``crs`` member, an unknown geometry type (names the file and
        the column).
    """
    import pandas as pd

    source = path if isinstance(path, (str, Path)) else (source or "<GeoJSON>")
    if isinstance(path, (str, Path)):
        p = Path(path)
        if not p.is_file():
            raise _err(p, column, "file not found; fix the path in the sample sheet (relative paths are relative to "
                                  "the sheet's folder)")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _err(p, column, f"not valid JSON ({type(exc).__name__}: {exc}); export the annotations from "
                                  "QuPath as GeoJSON") from None
    else:
        data = path
    rows = []
    for k, feat in enumerate(_features(data, source, column)):
        props = feat.get("properties") or {}
        meas = props.get("measurements") or {}
        if isinstance(meas, list):  # QuPath v0.2: [{"name": ..., "value": ...}]
            meas = {m.get("name"): m.get("value") for m in meas if isinstance(m, dict)}
        rows.append({"object_type": _object_type(feat), "classification": class_name(props.get("classification")),
                     "name": props.get("name"), "geometry": _geometry(feat.get("geometry"), source, column, k),
                     "measurements": {str(a): (float(b) if b is not None else float("nan")) for a, b in meas.items()},
                     "id": feat.get("id") if isinstance(feat.get("id"), str) else None})
    return pd.DataFrame(rows, columns=["object_type", "classification", "name", "geometry", "measurements", "id"])


# ------------------------------------------------------------------------------------------ regions
@dataclass
class SampleRegions:
    """The region annotations of one sample, as geometries in pixel coordinates of the full-resolution image.

    ``analysis`` is None when no annotation bounds the analysis (the whole image); ``exclusion`` None when
    nothing is excluded; ``classes`` maps each class name present (unclassified: ``""``) to its union.
    """

    source: str
    analysis: Any = None
    exclusion: Any = None
    classes: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)

    def union_of(self, region_class: str):
        """Union of the annotations whose class matches ``region_class`` (None when there is none)."""
        import shapely

        parts = [g for name, g in self.classes.items() if class_matches(name, [region_class])]
        return shapely.union_all(parts) if parts else None


def _check_bounds(geoms: list, shape_yx: Sequence[int], source: Any, column: str) -> None:
    import shapely

    if not geoms:
        return
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    h, w = int(shape_yx[0]), int(shape_yx[1])
    tx, ty = max(2.0, _EDGE_TOLERANCE * w), max(2.0, _EDGE_TOLERANCE * h)
    if x0 < -tx or y0 < -ty or x1 > w + tx or y1 > h + ty:
        raise _err(source, column, f"annotations span x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g} px, outside the "
                                   f"image ({w} x {h} px at full resolution); export the GeoJSON from QuPath on this "
                                   "image at full resolution (pixel coordinates, not µm)")


def regions_from_geojson(data: Any, *, shape_yx: Sequence[int], exclude_classes: Sequence[str] = ("Necrosis",),
                         analysis_classes: Sequence[str] = ("Region*",), unclassified: str = "analysis",
                         source: Any = "<GeoJSON>", column: str = REGIONS_COLUMN) -> SampleRegions:
    """The analysis region, exclusions and named regions of a GeoJSON (path or parsed document).

    Parameters
    ----------
    data : path, dict or list
        The sample's GeoJSON (see the module docstring).
    shape_yx : (int, int)
        The full-resolution image's shape; annotations must lie on it.
    exclude_classes, analysis_classes : sequence of str
        Classes removed / bounding the analysis (the ``regions`` config section, :func:`class_matches`).
    unclassified : {"analysis", "ignore"}
        What an annotation without a class is.
    source, column : for error messages.

    Returns
    -------
    SampleRegions

    Raises
    ------
    RegionError
        As :func:`read_geojson`, and annotations outside the image.
    """
    import shapely

    src = str(data) if isinstance(data, (str, Path)) else source
    table = read_geojson(data, column=column, source=src)
    regs = SampleRegions(source=src)
    area, analysis, exclusion = [], [], []
    by_class: dict[str, list] = {}
    for row in table.itertuples(index=False):
        gtype = row.geometry.geom_type
        if row.object_type != "annotation" or gtype not in ("Polygon", "MultiPolygon") or row.geometry.is_empty:
            key = row.object_type if row.object_type != "annotation" else f"annotation {gtype}"
            regs.ignored[key] = regs.ignored.get(key, 0) + 1
            continue
        name = row.classification or ""
        area.append(row.geometry)
        by_class.setdefault(name, []).append(row.geometry)
        regs.counts[name] = regs.counts.get(name, 0) + 1
        if class_matches(name, exclude_classes):
            exclusion.append(row.geometry)
        elif class_matches(name, analysis_classes) or (not name and unclassified == "analysis"):
            analysis.append(row.geometry)
    _check_bounds(area, shape_yx, src, column)
    regs.classes = {k: shapely.union_all(v) for k, v in by_class.items()}
    regs.analysis = shapely.union_all(analysis) if analysis else None
    regs.exclusion = shapely.union_all(exclusion) if exclusion else None
    return regs


def load_regions(path: str | Path, *, shape_yx: Sequence[int], column: str = REGIONS_COLUMN,
                 **options: Any) -> SampleRegions:
    """:func:`regions_from_geojson` of a file (``options``: :func:`chemozone.options.region_options`)."""
    return regions_from_geojson(Path(path), shape_yx=shape_yx, column=column, **options)


def load_sample_regions(row: dict[str, Any], *, shape_yx: Sequence[int], **options: Any) -> SampleRegions | None:
    """The region annotations a sample-sheet row names (``regions`` column), or None when it names none.

    ``options``: :func:`chemozone.options.region_options`. Raises :class:`~chemozone.errors.RegionError` as
    :func:`regions_from_geojson`.
    """
    path = sample_regions_path(row)
    return None if path is None else load_regions(path, shape_yx=shape_yx, **options)


def sample_regions_path(row: dict[str, Any]) -> str | None:
    """The GeoJSON a sample-sheet row names in its ``regions`` column (None when empty).

    >>> sample_regions_path({"regions": " /d/s1.geojson "}), sample_regions_path({"regions": float("nan")})
    ('/d/s1.geojson', None)
    """
    v = row.get(REGIONS_COLUMN)
    return v.strip() if isinstance(v, str) and v.strip() else None


# ----------------------------------------------------------------------------------- rasterising
def rasterize_geometry(geom: Any, *, shape_yx: Sequence[int], factor: int, rows_per_chunk: int = 256) -> np.ndarray:
    """Grid pixels whose centre lies inside a geometry (pixel coordinates of the full-resolution image).

    Parameters
    ----------
    geom : shapely geometry or None
        None or empty gives an all-False mask.
    shape_yx : (int, int)
        Full-resolution image shape.
    factor : int
        Image pixels per grid pixel (:func:`chemozone.grid.grid_factor`; 1 = the image's own pixels).
    rows_per_chunk : int
        Grid rows tested at once (bounds memory).

    Returns
    -------
    bool ndarray, shape ``grid_shape(shape_yx, factor)``

    Examples
    --------
    >>> from shapely.geometry import box
    >>> rasterize_geometry(box(0, 0, 4, 2), shape_yx=(4, 6), factor=2).astype(int).tolist()
    [[1, 1, 0], [0, 0, 0]]
    """
    ys, xs = grid_pixel_centres_px(shape_yx, factor)
    return contains_grid_centres(geom, ys, xs, rows_per_chunk=rows_per_chunk)


def contains_grid_centres(geom: Any, ys_px: np.ndarray, xs_px: np.ndarray, *, rows_per_chunk: int = 256
                          ) -> np.ndarray:
    """Which grid pixels, given their centres (increasing, pixel coordinates of the full-resolution image), lie
    inside a geometry; bool ndarray ``(len(ys_px), len(xs_px))`` (None or empty geometry: all False).

    >>> from shapely.geometry import box
    >>> contains_grid_centres(box(0, 0, 3, 1), np.array([0.5, 1.5]), np.array([0.5, 2.5, 4.5])).astype(int).tolist()
    [[1, 1, 0], [0, 0, 0]]
    """
    import shapely

    ys, xs = np.asarray(ys_px, np.float64), np.asarray(xs_px, np.float64)
    out = np.zeros((len(ys), len(xs)), bool)
    if geom is None or geom.is_empty:
        return out
    x0, y0, x1, y1 = geom.bounds
    c0, c1 = np.searchsorted(xs, x0), np.searchsorted(xs, x1, side="right")
    r0, r1 = np.searchsorted(ys, y0), np.searchsorted(ys, y1, side="right")
    if c1 <= c0 or r1 <= r0:
        return out
    shapely.prepare(geom)
    for r in range(r0, r1, rows_per_chunk):
        rr = slice(r, min(r + rows_per_chunk, r1))
        gx, gy = np.meshgrid(xs[c0:c1], ys[rr])
        out[rr, c0:c1] = shapely.contains_xy(geom, gx, gy)
    return out


def points_in_geometry(geom: Any, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
    """Which points (pixel coordinates) lie inside a geometry (on the outline = outside; None = none).

    >>> from shapely.geometry import box
    >>> points_in_geometry(box(0, 0, 4, 4), np.array([1.0, 4.0, 5.0]), np.array([1.0, 2.0, 1.0])).tolist()
    [True, False, False]
    """
    import shapely

    x_px, y_px = np.asarray(x_px, np.float64), np.asarray(y_px, np.float64)
    if geom is None or geom.is_empty:
        return np.zeros(x_px.shape, bool)
    shapely.prepare(geom)
    return shapely.contains_xy(geom, x_px, y_px)


def apply_regions(regions: SampleRegions, tissue: np.ndarray, cells, *, shape_yx: Sequence[int], grid_um: float,
                  pixel_size_um: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Remove what lies outside the analysis region or inside an exclusion from the tissue mask and the cells.

    Parameters
    ----------
    regions : SampleRegions
    tissue : bool ndarray (Ygrid, Xgrid)
        The tissue mask on the analysis grid.
    cells : DataFrame
        With ``x_um``, ``y_um`` (µm; centroid in pixels = ``x_um / pixel_size_um``).
    shape_yx : (int, int)
        Full-resolution image shape.
    grid_um : float
        The analysis grid's pixel size (a whole number of image pixels, :func:`chemozone.grid.grid_pixel_um`).
    pixel_size_um : float

    Returns
    -------
    tissue : bool ndarray (Ygrid, Xgrid)
        ``tissue & inside analysis & not excluded``.
    keep : bool ndarray (n_cells,)
        Cells whose centroid is inside the analysis region and outside every exclusion.
    record : dict
        For ``run.json``: ``source``, ``annotations`` (count per class), ``ignored``, ``excluded_area_mm2`` (grid
        area inside exclusions and the analysis region), ``outside_analysis_mm2``, ``tissue_removed_mm2``,
        ``cells_excluded``, ``cells_outside_analysis``.
    """
    px = float(pixel_size_um)
    factor = grid_factor(px, grid_um)
    grid_mm2 = (factor * px * 1e-3) ** 2
    inside = (rasterize_geometry(regions.analysis, shape_yx=shape_yx, factor=factor)
              if regions.analysis is not None else np.ones(tissue.shape, bool))
    excluded = rasterize_geometry(regions.exclusion, shape_yx=shape_yx, factor=factor) & inside
    new_tissue = np.asarray(tissue, bool) & inside & ~excluded
    x = cells["x_um"].to_numpy(np.float64) / px
    y = cells["y_um"].to_numpy(np.float64) / px
    in_analysis = points_in_geometry(regions.analysis, x, y) if regions.analysis is not None else np.ones(len(x), bool)
    in_excl = points_in_geometry(regions.exclusion, x, y) & in_analysis
    record = {"source": regions.source, "annotations": dict(regions.counts), "ignored": dict(regions.ignored),
              "analysis_region": regions.analysis is not None,
              "excluded_area_mm2": float(excluded.sum()) * grid_mm2,
              "outside_analysis_mm2": float((~inside).sum()) * grid_mm2,
              "tissue_removed_mm2": float(np.asarray(tissue, bool).sum() - new_tissue.sum()) * grid_mm2,
              "cells_excluded": int(in_excl.sum()), "cells_outside_analysis": int((~in_analysis).sum())}
    return new_tissue, in_analysis & ~in_excl, record


def region_zone_geometry(regions: SampleRegions | None, region_class: str, *, zone: str = ""):
    """The union of a sample's annotations of ``region_class`` (a ``source: regions`` zone), pixel coordinates.

    Raises
    ------
    RegionError
        The sample has no regions file, or no annotation of that class (lists the classes present).
    """
    if regions is None:
        raise RegionError(f"zones '{zone}' (source: regions) needs a regions GeoJSON for this sample; name it in the "
                          f"sample sheet's '{REGIONS_COLUMN}' column")
    geom = regions.union_of(region_class)
    if geom is None:
        raise _err(regions.source, REGIONS_COLUMN,
                   f"no annotation of class '{region_class}' for zones '{zone}' (classes: "
                   f"{sorted(c or '(unclassified)' for c in regions.classes)}); draw one or fix zones[].region_class")
    return geom


def region_zone_mask(regions: SampleRegions | None, region_class: str, tissue: np.ndarray, *,
                     shape_yx: Sequence[int], factor: int, zone: str = "") -> np.ndarray:
    """A ``source: regions`` zone: the grid pixels inside the class's annotations (:func:`region_zone_geometry`)
    and inside the tissue; bool ndarray of the tissue's shape."""
    geom = region_zone_geometry(regions, region_class, zone=zone)
    return rasterize_geometry(geom, shape_yx=shape_yx, factor=factor) & np.asarray(tissue, bool)


def add_region_zones(masks: dict[str, np.ndarray], zones_df, row: dict[str, Any], tissue: np.ndarray, *,
                     zones: Sequence[Any], sample_id: str, shape_yx: Sequence[int], pixel_size_um: float,
                     grid_um: float, **options: Any):
    """Add the ``source: regions`` zones of a sample to the masks and the zones table of
    :func:`chemozone.zones.build_zones`.

    Parameters
    ----------
    masks : dict name -> bool ndarray (Ygrid, Xgrid)
    zones_df : DataFrame
        :data:`chemozone.zones.ZONES_COLUMNS`.
    row : dict
        The sample-sheet row (its ``regions`` column names the GeoJSON).
    tissue : bool ndarray (Ygrid, Xgrid)
        The analysed tissue (exclusions already removed).
    zones : list of ZoneConfig
        All configured zones; only those with ``source: regions`` are built here (nothing is read without one).
    sample_id, shape_yx, pixel_size_um, grid_um :
        As :func:`apply_regions`.
    **options
        :func:`chemozone.options.region_options`.

    Returns
    -------
    (masks, zones_df)
        With one mask and one row per region zone (``source`` = ``regions``, ``channels`` = the class).
    """
    import pandas as pd

    from .zones import ZONES_COLUMNS

    todo = [z for z in zones if z.source == "regions"]
    if not todo:
        return masks, zones_df
    regs = load_sample_regions(row, shape_yx=shape_yx, **options)
    factor = grid_factor(pixel_size_um, grid_um)
    px_mm2 = (factor * float(pixel_size_um) * 1e-3) ** 2
    tissue_mm2 = float(np.asarray(tissue, bool).sum()) * px_mm2
    masks, rows = dict(masks), []
    for z in todo:
        m = region_zone_mask(regs, z.region_class, tissue, shape_yx=shape_yx, factor=factor, zone=z.name)
        masks[z.name] = m
        area = float(m.sum()) * px_mm2
        rows.append(dict(sample_id=str(sample_id), zone=z.name, source="regions", channels=z.region_class,
                         threshold_used=float("nan"), channel_thresholds="", area_mm2=area, tissue_area_mm2=tissue_mm2,
                         area_fraction=area / tissue_mm2 if tissue_mm2 > 0 else float("nan")))
    new = pd.DataFrame(rows, columns=ZONES_COLUMNS)
    return masks, (pd.concat([zones_df, new], ignore_index=True) if len(zones_df) else new)
