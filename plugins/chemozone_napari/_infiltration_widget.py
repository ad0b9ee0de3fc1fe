"""Infiltration panel: the current sample's infiltration table (filtered by zone and population type) and a
bar plot of the cell densities inside and outside the zone.

Library calls: none for the science; it shows the table :func:`chemozone.spatial.infiltration_metrics`
wrote (:attr:`chemozone.layout.SampleLayout.infiltration`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._layers import current_cells_layer, layer_sample
from ._qt import format_value, mpl_canvas, set_items

if TYPE_CHECKING:
    import napari

TABLE_COLUMNS = ("population", "region", "n_cells", "area_mm2", "density_per_mm2", "log2_enrichment")


class InfiltrationWidget(QWidget):
    """The current sample's ``infiltration.parquet``: a filtered table and a bar plot of densities."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.df = None
        self.zone_box = QComboBox()
        self.ptype_box = QComboBox()
        self.table = QTableWidget(0, 0)
        self.fig, self.canvas = mpl_canvas(4.0, 2.8)
        self.reload_btn = QPushButton("Reload")
        self.info = QLabel("")
        form = QFormLayout()
        form.addRow("zone", self.zone_box)
        form.addRow("population", self.ptype_box)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.canvas)
        lay.addWidget(self.table)
        lay.addWidget(self.reload_btn)
        lay.addWidget(self.info)
        self.zone_box.currentTextChanged.connect(lambda _: self.update_view())
        self.ptype_box.currentTextChanged.connect(lambda _: self.update_view())
        self.reload_btn.clicked.connect(self.load)
        self.viewer.layers.events.inserted.connect(lambda e: self.load())
        self.load()

    def load(self):
        """Read the infiltration table of the current cells layer's sample."""
        sample = layer_sample(current_cells_layer(self.viewer))
        path = sample.infiltration if sample is not None else None
        if path is None or not path.is_file():
            self.df = None
            self.info.setText("no infiltration table for the current sample (run the spatial step)")
            return
        import pandas as pd

        self.df = pd.read_parquet(path)
        self.info.setText(str(path))
        for box, col in ((self.zone_box, "zone"), (self.ptype_box, "population_type")):
            vals = sorted(self.df[col].dropna().astype(str).unique()) if col in self.df.columns else []
            set_items(box, vals)
        self.update_view()

    def filtered(self):
        df = self.df
        if df is None:
            return None
        if self.zone_box.currentText() and "zone" in df.columns:
            df = df[df["zone"].astype(str) == self.zone_box.currentText()]
        if self.ptype_box.currentText() and "population_type" in df.columns:
            df = df[df["population_type"].astype(str) == self.ptype_box.currentText()]
        return df

    def update_view(self):
        df = self.filtered()
        if df is None:
            return
        cols = [c for c in TABLE_COLUMNS if c in df.columns]
        self.table.setColumnCount(len(cols))
        self.table.setHorizontalHeaderLabels(cols)
        self.table.setRowCount(len(df))
        for r, (_, row) in enumerate(df[cols].iterrows()):
            for c, k in enumerate(cols):
                self.table.setItem(r, c, QTableWidgetItem(format_value(row[k])))
        self._plot(df)

    def _plot(self, df) -> None:
        self.fig.clear()
        ax = self.fig.add_subplot(111)
        if {"population", "region", "density_per_mm2"} <= set(df.columns) and len(df):
            piv = df[df["region"].isin(["inside", "outside"])].pivot_table(
                index="population", columns="region", values="density_per_mm2", aggfunc="sum")
            if len(piv):
                piv.plot.barh(ax=ax, color={"inside": "tab:red", "outside": "tab:gray"})
                ax.set_xlabel("cells / mm²")
                ax.set_ylabel("")
                ax.legend(fontsize=7)
        self.canvas.draw_idle()
