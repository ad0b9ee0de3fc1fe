"""Regions: import a QuPath GeoJSON of region annotations, and save a Shapes layer as one.

Library calls: :mod:`chemozone.regions` (reading) and :mod:`chemozone.qupath` (writing) through
:mod:`chemozone_napari._regions`; coordinates are the pixels of the image the viewer shows (its pixel size comes
from the chemozone image layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtWidgets import QFormLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from ._qt import file_row
from ._regions import regions_layer, save_shapes_geojson, viewer_pixel_size_um

if TYPE_CHECKING:
    import napari

GEOJSON_FILTER = "GeoJSON (*.geojson *.json)"


class RegionsWidget(QWidget):
    """Import region annotations (QuPath GeoJSON) as a Shapes layer; save the selected Shapes layer as GeoJSON."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.in_edit, in_row = file_row("", save=False, filt=GEOJSON_FILTER)
        self.out_edit, out_row = file_row("regions.geojson", save=True, filt=GEOJSON_FILTER)
        self.cls_edit = QLineEdit("Necrosis")
        self.import_btn = QPushButton("Import regions")
        self.save_btn = QPushButton("Save shapes as GeoJSON")
        self.info = QLabel("")
        form = QFormLayout()
        form.addRow("GeoJSON to import", in_row)
        form.addRow("save to", out_row)
        form.addRow("class of new shapes", self.cls_edit)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.import_btn)
        lay.addWidget(self.save_btn)
        lay.addWidget(self.info)
        self.import_btn.clicked.connect(lambda: self.import_regions(self.in_edit.text()))
        self.save_btn.clicked.connect(lambda: self.save_shapes(self.out_edit.text()))

    def _pixel_size(self) -> float | None:
        px = viewer_pixel_size_um(self.viewer)
        if px is None:
            self.info.setText("open the sample's image first: its pixel size places the regions")
        return px

    def import_regions(self, path: str | Path):
        """Add the regions of ``path`` as a Shapes layer; returns the layer (None when nothing was added)."""
        from chemozone.errors import ChemozoneError

        px = self._pixel_size()
        if px is None:
            return None
        try:
            data, kwargs, _ = regions_layer(path, pixel_size_um=px)
        except ChemozoneError as exc:
            self.info.setText(str(exc))
            return None
        layer = self.viewer.add_shapes(data, **kwargs)
        self.info.setText(f"{len(data)} shapes from {Path(path).name}")
        return layer

    def save_shapes(self, path: str | Path):
        """Write the selected Shapes layer as a QuPath GeoJSON; returns the path (None when nothing was saved)."""
        layer = self.viewer.layers.selection.active
        if layer is None or layer._type_string != "shapes":
            self.info.setText("select a Shapes layer to save")
            return None
        px = self._pixel_size()
        if px is None:
            return None
        out = save_shapes_geojson(layer, path, pixel_size_um=px, classification=self.cls_edit.text().strip() or None)
        self.info.setText(f"saved {len(layer.data)} shapes to {out}")
        return out
