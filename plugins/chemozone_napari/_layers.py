"""What the widgets know about napari layers: the ``chemozone`` metadata the reader puts on them (kind,
sample folder, run folder, sample id) and recolouring of cell points. No Qt here.

Folders are resolved to :class:`chemozone.layout.SampleLayout` / :class:`chemozone.layout.RunLayout`, so no
widget spells a file name of the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._colors import category_colors


def layer_meta(layer) -> dict[str, Any]:
    """The ``chemozone`` block of a layer's metadata (empty for layers the plugin did not make)."""
    return dict(getattr(layer, "metadata", {}) or {}).get("chemozone", {}) or {}


def cells_layers(viewer) -> list:
    """Points layers that hold a chemozone cells table."""
    return [ly for ly in viewer.layers if layer_meta(ly).get("kind") == "cells"]


def current_cells_layer(viewer):
    """The selected cells layer, else the first one (None when there is none)."""
    active = viewer.layers.selection.active
    if active is not None and layer_meta(active).get("kind") == "cells":
        return active
    layers = cells_layers(viewer)
    return layers[0] if layers else None


def layer_sample(layer):
    """The sample folder a layer was read from (:class:`chemozone.layout.SampleLayout`), or None."""
    from chemozone.layout import SampleLayout

    sd = layer_meta(layer).get("sample_dir") if layer is not None else None
    return SampleLayout(sd) if sd else None


def layer_run(layer):
    """The run folder a layer was read from (:class:`chemozone.layout.RunLayout`), or None."""
    from chemozone.layout import RunLayout

    rd = layer_meta(layer).get("run_dir") if layer is not None else None
    return RunLayout(rd) if rd else None


def layer_run_config(layer):
    """The config of the run a layer comes from (defaults when there is none)."""
    from ._reader import run_config

    run = layer_run(layer)
    return run_config(run.root if run is not None else None)


def set_point_colors(layer, colors: np.ndarray) -> None:
    """Recolour a points layer in one vectorised assignment."""
    layer.face_color = colors


def recolor_by_category(layer, column: str | None = None) -> None:
    """Colour a cells layer by a categorical feature (default: reviewed phenotype, phenotype, cell type)."""
    from ._reader import display_category

    feats = layer.features
    column = column or display_category(feats)
    if column is None:
        return
    set_point_colors(layer, category_colors(feats[column].to_numpy()))


def sample_path(layer) -> Path | None:
    """The sample folder of a layer as a path (None when it has none)."""
    sample = layer_sample(layer)
    return sample.root if sample is not None else None
