"""Region annotations in napari (no Qt): a QuPath GeoJSON as a Shapes layer, and a Shapes layer saved as one.

The geometry conversion is the library's (:func:`chemozone.regions.read_geojson`,
:func:`chemozone.qupath.features_to_shapes`, :func:`chemozone.qupath.shapes_to_features`,
:func:`chemozone.qupath.write_geojson`); this module only moves between napari's world coordinates (µm, see
:mod:`chemozone_napari._reader`) and the file's pixel coordinates: world ``(y, x)`` µm = pixel ``(row, col)`` ×
pixel size, with no half-pixel shift, since GeoJSON vertices lie on pixel edges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._colors import category_colors

LayerData = tuple


def regions_layer(path: str | Path, *, pixel_size_um: float, name: str | None = None) -> LayerData:
    """Shapes layer data of a region GeoJSON: one polygon per part (holes as polygons of their own, drawn
    without fill), coloured by class; features ``classification``, ``object_type``, ``hole``."""
    import pandas as pd

    from chemozone.qupath import features_to_shapes
    from chemozone.regions import read_geojson

    table = read_geojson(path)
    data, types, props = features_to_shapes(table)
    feats = pd.DataFrame(props)
    colors = category_colors(np.array([c or "unclassified" for c in props["classification"]], dtype=object)) \
        if len(feats) else np.zeros((0, 4))
    face = colors.copy()
    if len(face):
        face[:, 3] = np.where(np.asarray(props["hole"], bool), 0.0, 0.25)
    meta = {"chemozone": {"kind": "regions", "path": str(path), "pixel_size_um": float(pixel_size_um)}}
    kwargs: dict[str, Any] = dict(name=name or f"regions {Path(path).stem}", shape_type=types, features=feats,
                                  scale=(pixel_size_um, pixel_size_um), metadata=meta, edge_width=2.0 / pixel_size_um)
    if len(feats):
        kwargs.update(edge_color=colors, face_color=face)
    return (data, kwargs, "shapes")


def save_shapes_geojson(layer, path: str | Path, *, pixel_size_um: float, classification: str | None = None) -> Path:
    """Write a Shapes layer as a QuPath GeoJSON of annotations (pixel coordinates of the full-resolution image).

    A shape's class is its ``classification`` feature when the layer has one and it is not empty, else
    ``classification``; shapes marked ``hole`` (an imported layer) are cut out of their polygon again. Returns the
    path.
    """
    from chemozone.qupath import shapes_to_features, write_geojson

    scale = np.asarray(layer.scale, float)[-2:]
    translate = np.asarray(layer.translate, float)[-2:]
    data = [(np.asarray(v, float)[:, -2:] * scale + translate) / float(pixel_size_um) for v in layer.data]
    feats = getattr(layer, "features", None)
    own = feats["classification"].astype(str).tolist() if feats is not None and "classification" in feats else []
    classes = [c if c and c != "nan" else classification for c in own] if own else [classification] * len(data)
    holes = feats["hole"].astype(bool).tolist() if feats is not None and "hole" in feats else [False] * len(data)
    return write_geojson(shapes_to_features(data, list(layer.shape_type), classifications=classes, holes=holes), path)


def viewer_pixel_size_um(viewer) -> float | None:
    """The pixel size (µm) of the first chemozone image or label layer in the viewer (None when there is none)."""
    for ly in viewer.layers:
        meta = (getattr(ly, "metadata", {}) or {}).get("chemozone", {}) or {}
        if meta.get("kind") in ("image", "labels") and meta.get("pixel_size_um"):
            return float(meta["pixel_size_um"])
    return None
