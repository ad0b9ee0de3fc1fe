"""Cell inspector: click a cell to see its row of the cells table; correct its phenotype by hand.

Library calls: none for the science (the row is the cells table the run wrote); corrections go through
:func:`chemozone_napari._review.save_reviewed` to the sample's ``reviewed`` sidecar
(:attr:`chemozone.layout.SampleLayout.reviewed`), which ``chemozone run`` merges back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._layers import current_cells_layer, layer_meta, recolor_by_category, sample_path
from ._qt import format_value, set_items

if TYPE_CHECKING:
    import napari

FIRST_FIELDS = ("sample_id", "cell_id", "cell_type", "phenotype", "phenotype_reviewed", "phenotype_display",
                "x_um", "y_um", "area_um2", "nucleus_area_um2")
PHENOTYPE_CHOICES = ("phenotype", "phenotype_display", "cell_type")


class CellInspectorWidget(QWidget):
    """Click a cell (on any layer) to show its row: intensities, ``_pos`` flags, phenotype, zones, distances.

    A phenotype corrected by hand is stored in ``samples/<id>/reviewed.parquet`` (``cell_id,
    phenotype_reviewed``), a sidecar kept across re-runs, and shown as ``phenotype_display``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.cell_index: int | None = None
        self._tree = None
        self._tree_layer = None
        self.title = QLabel("click a cell")
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["field", "value"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.pheno = QComboBox()
        self.pheno.setEditable(True)
        self.save_btn = QPushButton("Correct phenotype")
        self.clear_btn = QPushButton("Clear correction")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.table)
        row = QHBoxLayout()
        row.addWidget(self.pheno)
        row.addWidget(self.save_btn)
        lay.addLayout(row)
        lay.addWidget(self.clear_btn)
        lay.addWidget(self.status)
        self.save_btn.clicked.connect(lambda: self.correct(self.pheno.currentText()))
        self.clear_btn.clicked.connect(lambda: self.correct(None))
        self.viewer.mouse_drag_callbacks.append(self._on_click)

    def closeEvent(self, event):
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        super().closeEvent(event)

    @property
    def layer(self):
        return current_cells_layer(self.viewer)

    def _on_click(self, viewer, event):
        if event.type != "mouse_press":
            return
        self.select_at(np.asarray(event.position)[-2:])

    def select_at(self, world_yx) -> int | None:
        """Select the cell nearest to a world position (µm) within two point sizes; returns its row index."""
        layer = self.layer
        if layer is None or len(layer.data) == 0:
            return None
        if self._tree is None or self._tree_layer is not layer or self._tree.n != len(layer.data):
            from scipy.spatial import cKDTree

            self._tree, self._tree_layer = cKDTree(np.asarray(layer.data)[:, -2:]), layer
        pos = (np.asarray(world_yx, dtype=float) - np.asarray(layer.translate)[-2:]) / np.asarray(layer.scale)[-2:]
        dist, i = self._tree.query(pos)
        size = float(np.max(layer.size)) if np.size(layer.size) else 10.0
        if dist > 2 * size:
            return None
        self.select_index(int(i))
        return int(i)

    def select_cell(self, cell_id: int) -> int:
        """Select a cell by its ``cell_id``; returns its row index."""
        ids = self.layer.features["cell_id"].to_numpy()
        hits = np.flatnonzero(ids == cell_id)
        if not hits.size:
            from chemozone.errors import ChemozoneError

            raise ChemozoneError(f"cell_id {cell_id} is not in layer '{self.layer.name}'")
        self.select_index(int(hits[0]))
        return int(hits[0])

    def select_index(self, i: int) -> None:
        """Show row ``i`` of the current cells layer and offer its phenotype for correction."""
        layer = self.layer
        self.cell_index = i
        row = layer.features.iloc[i]
        layer.selected_data = {i}
        self.title.setText(f"cell {row.get('cell_id', i)} of {layer_meta(layer).get('sample_id') or layer.name}")
        keys = self._ordered_keys(list(row.index))
        self.table.setRowCount(len(keys))
        for r, k in enumerate(keys):
            self.table.setItem(r, 0, QTableWidgetItem(str(k)))
            self.table.setItem(r, 1, QTableWidgetItem(format_value(row[k])))
        choices = sorted({str(v) for col in PHENOTYPE_CHOICES
                          if col in layer.features.columns for v in layer.features[col].unique()})
        set_items(self.pheno, choices)
        current = row.get("phenotype_display", row.get("phenotype", ""))
        self.pheno.blockSignals(True)
        self.pheno.setCurrentText(str(current))
        self.pheno.blockSignals(False)

    @staticmethod
    def _ordered_keys(keys: list[str]) -> list[str]:
        first = [k for k in FIRST_FIELDS if k in keys]
        flags = [k for k in keys if k.endswith("_pos") or k.startswith("in_")]
        dists = [k for k in keys if k.startswith("dist_")]
        rest = [k for k in keys if k not in first + flags + dists]
        return first + flags + dists + rest

    def correct(self, phenotype: str | None) -> Path | None:
        """Store a hand-corrected phenotype (``None`` clears it) of the selected cell and recolour."""
        from ._review import merge_reviewed, save_reviewed

        layer = self.layer
        if layer is None or self.cell_index is None:
            self.status.setText("select a cell first")
            return None
        sd = sample_path(layer)
        if sd is None:
            self.status.setText("this layer has no sample folder to store corrections in")
            return None
        cid = int(layer.features["cell_id"].iloc[self.cell_index])
        path = save_reviewed(sd, [cid], [phenotype or None])
        feats = merge_reviewed(layer.features, sd)
        layer.features = feats
        recolor_by_category(layer)
        self.select_index(self.cell_index)
        self.status.setText(f"cell {cid}: {phenotype or 'correction cleared'} (saved to {path})")
        return path
