"""Gate review: histogram + draggable gate per marker, live recolouring, save to a gates YAML.

Library calls: :func:`chemozone_napari._review.marker_setup` (which gate applies:
:func:`chemozone.phenotype.resolve_gate`; transform: :func:`chemozone.phenotype.transform_values`),
:func:`chemozone.phenotype.inverse_transform` (through :func:`~chemozone_napari._review.to_raw`) and
:func:`chemozone.config.save_gates_file` (through :func:`~chemozone_napari._review.update_gates_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._colors import binary_colors
from ._layers import (
    cells_layers,
    layer_meta,
    layer_run,
    layer_run_config,
    recolor_by_category,
    set_point_colors,
)
from ._qt import (
    file_row,
    horizontal_slider,
    mpl_canvas,
    set_items,
    slider_step,
    slider_value,
)

if TYPE_CHECKING:
    import napari


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
        self.line = None
        self._build_ui()
        self._connect()
        self._refresh_layers()

    def _build_ui(self) -> None:
        self.layer_box = QComboBox()
        self.marker_box = QComboBox()
        self.slider = horizontal_slider()
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(4)
        self.spin.setRange(-1e9, 1e9)
        self.info = QLabel("")
        self.fig, self.canvas = mpl_canvas()
        self.ax = self.fig.add_subplot(111)
        self.gates_path, gates_row = file_row()
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

    def _connect(self) -> None:
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
        set_items(self.layer_box, names)
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

        self._cfg = layer_run_config(layer)
        self._gates = None
        run = layer_run(layer)
        if run is not None and run.gates.is_file():
            import pandas as pd

            self._gates = pd.read_parquet(run.gates)
        if not self.gates_path.text():
            gf = self._cfg.phenotypes.gates_file
            default = gf if gf is not None else (run.reviewed_gates if run is not None else None)
            if default is not None:
                self.gates_path.setText(str(default))
        markers = marker_names(layer.features, self._cfg)
        set_items(self.marker_box, markers)
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
        sid = layer_meta(self._layer).get("sample_id")
        self._setup = marker_setup(self._layer.features, marker, cfg=self._cfg, gates=self._gates, sample_id=sid,
                                   gates_file=self.gates_path.text() or None)
        self._plot_histogram()
        self.set_gate(self._setup["threshold"], force=True)

    def _plot_histogram(self) -> None:
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

    def set_gate(self, value: float, *, force: bool = False):
        """Move the gate to ``value`` (transformed scale) and recolour the cells."""
        if self._setup is None or self._updating:
            return
        value = float(value)
        self._updating = True
        try:
            self._setup["threshold"] = value
            self.spin.setValue(value)
            self.slider.setValue(slider_step(value, self._range))
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
        """``{marker}_pos`` of every cell under the current gate (:func:`chemozone.phenotype.is_positive`, the rule
        :func:`chemozone.phenotype.apply_gates` applies)."""
        from chemozone.phenotype import is_positive

        return is_positive(self._setup["raw"], self.gate_raw)

    def _on_slider(self, step: int):
        if self._updating or self._setup is None:
            return
        self.set_gate(slider_value(step, self._range))

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
        sid = None if self.all_samples.isChecked() else layer_meta(self._layer).get("sample_id")
        out = update_gates_file(path, self.marker, self.gate_raw, sample_id=sid)
        self.status.setText(f"saved {self.marker} > {self.gate_raw:.4g} for {sid or 'every sample'} to {out}; "
                            "set phenotypes.gates_file to this file so 'chemozone run' replays it")
        return out
