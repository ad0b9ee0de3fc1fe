"""Dock widgets. Thin over chemozone functions: they read the sample the layers came from, call the
library, and write what the user decided where ``chemozone run`` replays it.

1. :class:`AnalyseWidget` — run the pipeline on the current image, add the result layers.
2. :class:`GateReviewWidget` — histogram + draggable gate per marker; live recolouring; save a gates YAML.
3. :class:`ZoneReviewWidget` — threshold and smoothing of a zone with a live mask preview; save to the config.
4. :class:`CellInspectorWidget` — click a cell: its row of the table; correct its phenotype (sidecar file).
5. :class:`InfiltrationWidget` — the sample's infiltration table and a small plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._colors import binary_colors, category_colors

if TYPE_CHECKING:
    import napari

SLIDER_STEPS = 1000


# ------------------------------------------------------------------------------------------ helpers
def _meta(layer) -> dict[str, Any]:
    return dict(getattr(layer, "metadata", {}) or {}).get("chemozone", {}) or {}


def cells_layers(viewer) -> list:
    """Points layers that hold a chemozone cells table."""
    return [ly for ly in viewer.layers if _meta(ly).get("kind") == "cells"]


def current_cells_layer(viewer):
    """The selected cells layer, else the first one (None when there is none)."""
    active = viewer.layers.selection.active
    if active is not None and _meta(active).get("kind") == "cells":
        return active
    layers = cells_layers(viewer)
    return layers[0] if layers else None


def _run_dir(layer) -> Path | None:
    rd = _meta(layer).get("run_dir")
    return Path(rd) if rd else None


def _sample_dir(layer) -> Path | None:
    sd = _meta(layer).get("sample_dir")
    return Path(sd) if sd else None


def _run_config(layer):
    from ._reader import run_config

    return run_config(_run_dir(layer))


def _mpl_canvas(width=4.0, height=2.4):
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), tight_layout=True)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(int(height * 60))
    return fig, canvas


def _file_row(default: str = "", *, save: bool = True, filt: str = "YAML (*.yaml *.yml)"):
    edit = QLineEdit(default)
    btn = QPushButton("…")
    btn.setFixedWidth(28)

    def browse():
        if save:
            name, _ = QFileDialog.getSaveFileName(None, "File", edit.text(), filt)
        else:
            name, _ = QFileDialog.getOpenFileName(None, "File", edit.text(), filt)
        if name:
            edit.setText(name)

    btn.clicked.connect(browse)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(btn)
    return edit, row


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


# ================================================================================ 2. gate review
class GateReviewWidget(QWidget):
    """Per marker: histogram of the (transformed) cell values with the gate as a draggable line.

    Moving the gate recolours the cells live (positive red, negative grey) and updates the layer's
    ``{marker}_pos`` feature; *Save gate* writes the gate to the gates YAML (``phenotypes.gates_file``)
    that ``chemozone run`` replays.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._setup: dict[str, Any] | None = None
        self._layer = None
        self._dragging = False
        self._updating = False

        self.layer_box = QComboBox()
        self.marker_box = QComboBox()
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(4)
        self.spin.setRange(-1e9, 1e9)
        self.info = QLabel("")
        self.fig, self.canvas = _mpl_canvas()
        self.ax = self.fig.add_subplot(111)
        self.line = None
        self.gates_path, gates_row = _file_row()
        self.all_samples = QCheckBox("same gate for every sample ('*')")
        self.save_btn = QPushButton("Save gate")
        self.reset_btn = QPushButton("Colour by phenotype")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("cells", self.layer_box)
        form.addRow("marker", self.marker_box)
        form.addRow("gate", self.spin)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.canvas)
        lay.addWidget(self.slider)
        lay.addWidget(self.info)
        lay.addWidget(QLabel("gates file (phenotypes.gates_file)"))
        lay.addLayout(gates_row)
        lay.addWidget(self.all_samples)
        btns = QHBoxLayout()
        btns.addWidget(self.save_btn)
        btns.addWidget(self.reset_btn)
        lay.addLayout(btns)
        lay.addWidget(self.status)
        lay.addStretch()

        self.layer_box.currentTextChanged.connect(self._on_layer)
        self.marker_box.currentTextChanged.connect(self.set_marker)
        self.slider.valueChanged.connect(self._on_slider)
        self.spin.valueChanged.connect(self.set_gate)
        self.save_btn.clicked.connect(lambda: self.save())
        self.reset_btn.clicked.connect(self._colour_by_phenotype)
        self.canvas.mpl_connect("button_press_event", self._on_press)
        self.canvas.mpl_connect("motion_notify_event", self._on_motion)
        self.canvas.mpl_connect("button_release_event", self._on_release)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ---- state
    @property
    def layer(self):
        return self._layer

    @property
    def marker(self) -> str | None:
        return self.marker_box.currentText() or None

    @property
    def gate(self) -> float:
        """The current gate on the transformed scale (the spin box shows it rounded)."""
        return float(self._setup["threshold"]) if self._setup is not None else float(self.spin.value())

    def _refresh_layers(self, event=None):
        names = [ly.name for ly in cells_layers(self.viewer)]
        current = self.layer_box.currentText()
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems(names)
        self.layer_box.blockSignals(False)
        if names:
            self.layer_box.setCurrentText(current if current in names else names[0])
            self._on_layer(self.layer_box.currentText())

    def _on_layer(self, name: str):
        if not name or name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        if layer is self._layer:
            return
        self._layer = layer
        from ._review import marker_names

        self._cfg = _run_config(layer)
        self._gates = None
        rd = _run_dir(layer)
        if rd is not None and (rd / "gates.parquet").is_file():
            import pandas as pd

            self._gates = pd.read_parquet(rd / "gates.parquet")
        if not self.gates_path.text():
            gf = self._cfg.phenotypes.gates_file
            default = gf if gf is not None else (rd / "gates_reviewed.yaml" if rd is not None else None)
            if default is not None:
                self.gates_path.setText(str(default))
        markers = marker_names(layer.features, self._cfg)
        self.marker_box.blockSignals(True)
        self.marker_box.clear()
        self.marker_box.addItems(markers)
        self.marker_box.blockSignals(False)
        if markers:
            self.set_marker(markers[0])

    def set_marker(self, marker: str):
        """Show the histogram of ``marker`` with its current gate, and colour the cells by it."""
        if not marker or self._layer is None:
            return
        from ._review import marker_setup

        if self.marker_box.currentText() != marker:
            self.marker_box.blockSignals(True)
            self.marker_box.setCurrentText(marker)
            self.marker_box.blockSignals(False)
        sid = _meta(self._layer).get("sample_id")
        self._setup = marker_setup(self._layer.features, marker, cfg=self._cfg, gates=self._gates, sample_id=sid,
                                   gates_file=self.gates_path.text() or None)
        vals = self._setup["values"]
        finite = vals[np.isfinite(vals)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        self._range = (lo, hi)
        self.ax.clear()
        self.ax.hist(finite, bins=100, color="0.5")
        self.ax.set_yscale("log")
        self.ax.set_xlabel(f"{self._setup['column']} ({self._setup['transform']})")
        self.ax.set_ylabel("cells")
        self.line = self.ax.axvline(self._setup["threshold"], color="red", lw=2)
        self.set_gate(self._setup["threshold"], force=True)

    def set_gate(self, value: float, *, force: bool = False):
        """Move the gate to ``value`` (transformed scale) and recolour the cells."""
        if self._setup is None or self._updating:
            return
        value = float(value)
        self._updating = True
        try:
            self._setup["threshold"] = value
            self.spin.setValue(value)
            lo, hi = self._range
            self.slider.setValue(int(round(np.clip((value - lo) / (hi - lo), 0, 1) * SLIDER_STEPS)))
            if self.line is not None:
                self.line.set_xdata([value, value])
                self.canvas.draw_idle()
            pos = self.positive()
            feats = self._layer.features
            feats[f"{self.marker}_pos"] = pos
            set_point_colors(self._layer, binary_colors(pos))
            self.info.setText(f"{int(pos.sum())} / {pos.size} positive ({100 * pos.mean() if pos.size else 0:.1f} %)")
        finally:
            self._updating = False

    @property
    def gate_raw(self) -> float:
        """The current gate in measured intensity units (what the gates file stores)."""
        from ._review import to_raw

        return to_raw(self.gate, self._setup)

    def positive(self) -> np.ndarray:
        """``{marker}_pos`` of every cell under the current gate: measured value > ``gate_raw`` (as
        :func:`chemozone.phenotype.apply_gates`; NaN is negative)."""
        with np.errstate(invalid="ignore"):
            return np.asarray(self._setup["raw"] > self.gate_raw, dtype=bool)

    def _on_slider(self, step: int):
        if self._updating or self._setup is None:
            return
        lo, hi = self._range
        self.set_gate(lo + (hi - lo) * step / SLIDER_STEPS)

    def _on_press(self, event):
        if event.inaxes is self.ax and event.xdata is not None:
            self._dragging = True
            self.set_gate(event.xdata)

    def _on_motion(self, event):
        if self._dragging and event.inaxes is self.ax and event.xdata is not None:
            self.set_gate(event.xdata)

    def _on_release(self, event):
        self._dragging = False

    def _colour_by_phenotype(self):
        if self._layer is not None:
            recolor_by_category(self._layer)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the current gate (measured units) of the current marker into the gates YAML; returns its path."""
        from ._review import update_gates_file

        path = Path(path or self.gates_path.text())
        sid = None if self.all_samples.isChecked() else _meta(self._layer).get("sample_id")
        out = update_gates_file(path, self.marker, self.gate_raw, sample_id=sid)
        self.status.setText(f"saved {self.marker} > {self.gate_raw:.4g} for {sid or 'every sample'} to {out}; "
                            "set phenotypes.gates_file to this file so 'chemozone run' replays it")
        return out


# ================================================================================ 3. zone review
class ZoneReviewWidget(QWidget):
    """Per zone: the module signal on the analysis grid, its threshold and smoothing, a live mask preview.

    *Compute signal* runs :func:`chemozone.zones.zone_signal` (in a worker thread) with the chosen smoothing;
    moving the threshold updates the preview layer at once; *Save* writes ``threshold: {mode: absolute,
    value}`` and ``smooth_um`` of the zone into the experiment config YAML.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.signal: np.ndarray | None = None
        self.tissue: np.ndarray | None = None
        self.grid_um: float | None = None
        self._updating = False
        self.zone_box = QComboBox()
        self.smooth = QDoubleSpinBox()
        self.smooth.setRange(0.1, 1000.0)
        self.smooth.setSuffix(" µm")
        self.thr = QDoubleSpinBox()
        self.thr.setDecimals(4)
        self.thr.setRange(-1e9, 1e9)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.compute_btn = QPushButton("Compute signal")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.config_path, cfg_row = _file_row(save=False)
        self.save_btn = QPushButton("Save zone to config")
        self.info = QLabel("")
        self.info.setWordWrap(True)
        form = QFormLayout()
        form.addRow("zone", self.zone_box)
        form.addRow("smoothing", self.smooth)
        form.addRow("threshold", self.thr)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.slider)
        lay.addWidget(self.compute_btn)
        lay.addWidget(self.progress)
        lay.addWidget(QLabel("experiment config (YAML)"))
        lay.addLayout(cfg_row)
        lay.addWidget(self.save_btn)
        lay.addWidget(self.info)
        lay.addStretch()
        self.zone_box.currentTextChanged.connect(self._on_zone)
        self.compute_btn.clicked.connect(lambda: self.compute_signal())
        self.thr.valueChanged.connect(self.set_threshold)
        self.slider.valueChanged.connect(self._on_slider)
        self.save_btn.clicked.connect(lambda: self.save())
        self.viewer.layers.events.inserted.connect(self._refresh)
        self._refresh()

    def _context_layer(self):
        return current_cells_layer(self.viewer) or next(
            (ly for ly in self.viewer.layers if _meta(ly).get("sample_dir")), None)

    def _refresh(self, event=None):
        layer = self._context_layer()
        if layer is None:
            return
        self._cfg = _run_config(layer)
        names = [z.name for z in self._cfg.zones if z.source in ("pixels", "tumor")]
        if names == [self.zone_box.itemText(i) for i in range(self.zone_box.count())]:
            return
        self.zone_box.blockSignals(True)
        self.zone_box.clear()
        self.zone_box.addItems(names)
        self.zone_box.blockSignals(False)
        if names:
            self._on_zone(names[0])

    @property
    def zone(self):
        name = self.zone_box.currentText()
        return next((z for z in self._cfg.zones if z.name == name), None)

    def _on_zone(self, name: str):
        z = self.zone
        if z is None:
            return
        self.signal = None
        self.smooth.setValue(z.smooth_um)
        thr = self._threshold_used(name)
        if thr is None and z.threshold.value is not None:
            thr = z.threshold.value
        if thr is not None:
            self._updating = True
            self.thr.setValue(float(thr))
            self._updating = False

    def _threshold_used(self, zone: str) -> float | None:
        layer = self._context_layer()
        sd = _sample_dir(layer) if layer is not None else None
        if sd is not None and (sd / "zones.parquet").is_file():
            import pandas as pd

            from chemozone.zones import zone_channel_thresholds

            df = pd.read_parquet(sd / "zones.parquet")
            hit = df[df["zone"] == zone]
            vals = list(zone_channel_thresholds(df, zone).values())
            if vals:
                return float(np.mean(vals))
            if len(hit) and "threshold_used" in hit.columns and np.isfinite(hit["threshold_used"].iloc[0]):
                return float(hit["threshold_used"].iloc[0])
        return None

    def _image_and_tissue(self):
        from chemozone.io import read_image, read_labels_zarr

        layer = self._context_layer()
        img_layer = next((ly for ly in self.viewer.layers if _meta(ly).get("kind") == "image"), None)
        if img_layer is None:
            from chemozone.errors import MissingStepError

            raise MissingStepError("zone review needs the sample's image; open a sample or run folder whose image exists")
        m = _meta(img_layer)
        img = read_image(m["path"], channels=self._cfg.panel.channels, pixel_size_um=self._cfg.panel.pixel_size_um)
        sd = _sample_dir(layer)
        store = sd / "masks.ome.zarr" if sd is not None else None
        from chemozone.grid import grid_pixel_um

        tissue = None
        if store is not None and (store / "labels" / "tissue").is_dir():
            tissue = read_labels_zarr(store, "tissue").astype(bool)
        return img, tissue, grid_pixel_um(img.pixel_size_um, self._cfg.analysis_grid.pixel_size_um)

    def compute_signal(self, *, block: bool = False):
        """Compute the zone's module signal with the chosen smoothing (worker thread unless ``block``)."""
        z = self.zone
        if z is None:
            return None
        zone = z.model_copy(update={"smooth_um": float(self.smooth.value())})

        def work():
            from chemozone.io import resolve_channels
            from chemozone.zones import zone_signal

            img, tissue, grid_um = self._image_and_tissue()
            idx = resolve_channels(img.channels, zone.channels, aliases=self._cfg.panel.aliases, source=img.path)
            sig = zone_signal(img.data, channel_indices=idx, pixel_size_um=img.pixel_size_um, grid_um=grid_um,
                              smooth_um=zone.smooth_um, background_quantile=zone.background_quantile, tissue=tissue)
            return np.asarray(sig), tissue, grid_um

        if block:
            self._on_signal(work())
            return self.signal
        from napari.qt.threading import create_worker

        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        worker = create_worker(work)
        worker.returned.connect(self._on_signal)
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self.progress.setVisible(False))
        worker.start()
        return worker

    def _on_error(self, exc):
        self.info.setText(f"error: {exc}")

    def _on_signal(self, result):
        sig, self.tissue, self.grid_um = result
        self.signal = sig if sig.ndim == 3 else sig[None]
        score = self.signal.mean(axis=0)  # absolute mode: mean(signal_k / t) >= 1  <=>  mean(signal_k) >= t
        if self.tissue is not None and self.tissue.shape == score.shape:
            score = score[self.tissue]
        finite = score[np.isfinite(score)]
        self._range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if self._range[1] <= self._range[0]:
            self._range = (self._range[0], self._range[0] + 1.0)
        self.set_threshold(self.thr.value())

    def _on_slider(self, step: int):
        if self._updating or self.signal is None:
            return
        lo, hi = self._range
        self.set_threshold(lo + (hi - lo) * step / SLIDER_STEPS)

    def preview_mask(self) -> np.ndarray | None:
        """The zone mask that ``chemozone run`` builds with this threshold (``mode: absolute``) and smoothing:
        :func:`chemozone.zones.threshold_zone_signal` (module mean ≥ threshold, in tissue, holes filled,
        small pieces removed)."""
        if self.signal is None:
            return None
        from chemozone.zones import threshold_zone_signal

        z = self.zone
        thr = [float(self.thr.value())] * self.signal.shape[0]
        tissue = self.tissue if self.tissue is not None and self.tissue.shape == self.signal.shape[1:] else None
        return threshold_zone_signal(self.signal, thr, tissue, grid_um=self.grid_um, min_area_um2=z.min_area_um2,
                                     fill_holes=z.fill_holes)

    def set_threshold(self, value: float):
        """Move the threshold and update the preview layer."""
        if self._updating:
            return
        self._updating = True
        try:
            self.thr.setValue(float(value))
            if self.signal is None:
                return
            lo, hi = self._range
            self.slider.setValue(int(round(np.clip((value - lo) / (hi - lo), 0, 1) * SLIDER_STEPS)))
            mask = self.preview_mask().astype(np.uint8)
            name = f"zone preview: {self.zone_box.currentText()}"
            s = self.grid_um
            if name in self.viewer.layers:
                self.viewer.layers[name].data = mask
            else:
                self.viewer.add_labels(mask, name=name, scale=(s, s), translate=(s / 2, s / 2), opacity=0.45,
                                       colormap={1: "yellow", None: "transparent"},
                                       metadata={"chemozone": {"kind": "zone_preview"}})
            tissue_px = int(self.tissue.sum()) if self.tissue is not None else mask.size
            self.info.setText(f"{100 * mask.sum() / max(tissue_px, 1):.1f} % of the tissue in the zone")
        finally:
            self._updating = False

    def save(self, path: str | Path | None = None) -> Path:
        """Write this zone's threshold and smoothing into the config YAML."""
        from ._review import update_zone_config

        path = Path(path or self.config_path.text())
        out = update_zone_config(path, self.zone_box.currentText(), threshold=float(self.thr.value()),
                                 smooth_um=float(self.smooth.value()))
        self.info.setText(f"saved zone '{self.zone_box.currentText()}' to {out}")
        return out


# ============================================================================== 4. cell inspector
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

    def closeEvent(self, event):  # noqa: N802 - Qt name
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
        layer = self.layer
        self.cell_index = i
        row = layer.features.iloc[i]
        layer.selected_data = {i}
        self.title.setText(f"cell {row.get('cell_id', i)} of {_meta(layer).get('sample_id') or layer.name}")
        keys = self._ordered_keys(list(row.index))
        self.table.setRowCount(len(keys))
        for r, k in enumerate(keys):
            v = row[k]
            text = f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
            self.table.setItem(r, 0, QTableWidgetItem(str(k)))
            self.table.setItem(r, 1, QTableWidgetItem(text))
        choices = sorted({str(v) for col in ("phenotype", "phenotype_display", "cell_type")
                          if col in layer.features.columns for v in layer.features[col].unique()})
        self.pheno.blockSignals(True)
        self.pheno.clear()
        self.pheno.addItems(choices)
        current = row.get("phenotype_display", row.get("phenotype", ""))
        self.pheno.setCurrentText(str(current))
        self.pheno.blockSignals(False)

    @staticmethod
    def _ordered_keys(keys: list[str]) -> list[str]:
        first = [k for k in ("sample_id", "cell_id", "cell_type", "phenotype", "phenotype_reviewed",
                             "phenotype_display", "x_um", "y_um", "area_um2", "nucleus_area_um2") if k in keys]
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
        sd = _sample_dir(layer)
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


# ============================================================================ 5. infiltration panel
class InfiltrationWidget(QWidget):
    """The current sample's ``infiltration.parquet``: a filtered table and a bar plot of densities."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.df = None
        self.zone_box = QComboBox()
        self.ptype_box = QComboBox()
        self.table = QTableWidget(0, 0)
        self.fig, self.canvas = _mpl_canvas(4.0, 2.8)
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
        layer = current_cells_layer(self.viewer)
        sd = _sample_dir(layer) if layer is not None else None
        path = sd / "infiltration.parquet" if sd is not None else None
        if path is None or not path.is_file():
            self.df = None
            self.info.setText("no infiltration.parquet for the current sample (run the spatial step)")
            return
        import pandas as pd

        self.df = pd.read_parquet(path)
        self.info.setText(str(path))
        for box, col in ((self.zone_box, "zone"), (self.ptype_box, "population_type")):
            vals = sorted(self.df[col].dropna().astype(str).unique()) if col in self.df.columns else []
            box.blockSignals(True)
            box.clear()
            box.addItems(vals)
            box.blockSignals(False)
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
        cols = [c for c in ("population", "region", "n_cells", "area_mm2", "density_per_mm2", "log2_enrichment")
                if c in df.columns]
        self.table.setColumnCount(len(cols))
        self.table.setHorizontalHeaderLabels(cols)
        self.table.setRowCount(len(df))
        for r, (_, row) in enumerate(df[cols].iterrows()):
            for c, k in enumerate(cols):
                v = row[k]
                self.table.setItem(r, c, QTableWidgetItem(f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)))
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


# ================================================================================= 1. analyse image
class AnalyseWidget(QWidget):
    """Run segmentation → quantification → phenotypes → zones → spatial on the current image.

    The image is the file of the selected image layer; results are written as a sample folder of a run
    folder (``OUT/samples/<stem>``) through the same library functions as ``chemozone run`` and opened
    with the plugin's reader.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.image_box = QComboBox()
        self.config_path, cfg_row = _file_row(save=False)
        self.out_path = QLineEdit("")
        self.run_btn = QPushButton("Analyse")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        form = QFormLayout()
        form.addRow("image", self.image_box)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(QLabel("config (YAML; empty = defaults)"))
        lay.addLayout(cfg_row)
        lay.addWidget(QLabel("output run folder (empty = a temporary folder)"))
        lay.addWidget(self.out_path)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.progress)
        lay.addWidget(self.info)
        lay.addStretch()
        self.run_btn.clicked.connect(lambda: self.run())
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    def _refresh(self, event=None):
        paths = []
        for ly in self.viewer.layers:
            m = _meta(ly)
            if m.get("kind") == "image" and m.get("path") and m["path"] not in paths:
                paths.append(m["path"])
        self.image_box.clear()
        self.image_box.addItems(paths)

    def run(self, *, block: bool = False):
        """Analyse the chosen image (worker thread with a progress bar unless ``block``)."""
        from ._analyse import analyse_steps

        image = self.image_box.currentText()
        if not image:
            self.info.setText("open an image first")
            return None
        cfg_path = self.config_path.text() or None
        out = self.out_path.text() or None
        if block:
            result = None
            for step in analyse_steps(image, cfg_path, out):
                result = step
            self._done(result)
            return result
        from napari.qt.threading import create_worker

        self.progress.setVisible(True)
        worker = create_worker(analyse_steps, image, cfg_path, out, _progress={"total": 0})
        worker.yielded.connect(self._on_step)
        worker.errored.connect(lambda exc: self.info.setText(f"error: {exc}"))
        worker.finished.connect(lambda: self.progress.setVisible(False))
        worker.start()
        return worker

    def _on_step(self, step):
        i, n, msg = step.get("step", 0), step.get("n_steps", 1), step.get("message", "")
        self.progress.setRange(0, n)
        self.progress.setValue(i)
        self.info.setText(msg)
        if step.get("sample_dir"):
            self._done(step)

    def _done(self, step):
        from ._reader import sample_layers

        if not step or not step.get("sample_dir"):
            return
        names = {ly.name for ly in self.viewer.layers}
        for data, kw, kind in sample_layers(step["sample_dir"]):
            if kind == "image":
                continue  # the image is already open
            if kw["name"] in names:
                kw["name"] = f"{kw['name']} [{Path(step['sample_dir']).name}]"
            getattr(self.viewer, f"add_{kind}")(data, **kw)
        self.info.setText(f"results in {step['sample_dir']}")
