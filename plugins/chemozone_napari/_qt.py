"""Small Qt helpers shared by the dock widgets: a matplotlib canvas, a file chooser row, combo boxes and
the mapping between a value range and a slider. Qt enums are spelled fully scoped (``Qt.Orientation``),
as PyQt6 requires."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSlider,
)

SLIDER_STEPS = 1000


def mpl_canvas(width: float = 4.0, height: float = 2.4):
    """A matplotlib figure on a Qt canvas: ``(figure, canvas)``."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), tight_layout=True)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(int(height * 60))
    return fig, canvas


def file_row(default: str = "", *, save: bool = True, filt: str = "YAML (*.yaml *.yml)"):
    """A line edit with a ``…`` button that opens a file dialog: ``(edit, row layout)``."""
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


def set_items(box: QComboBox, items: list[str]) -> None:
    """Replace the items of a combo box without emitting its change signals."""
    box.blockSignals(True)
    box.clear()
    box.addItems(items)
    box.blockSignals(False)


def horizontal_slider() -> QSlider:
    """A horizontal slider of ``SLIDER_STEPS`` steps."""
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, SLIDER_STEPS)
    return slider


def slider_step(value: float, value_range: tuple[float, float]) -> int:
    """The slider step of ``value`` within ``value_range`` (clipped to the ends)."""
    lo, hi = value_range
    return int(round(np.clip((value - lo) / (hi - lo), 0, 1) * SLIDER_STEPS))


def slider_value(step: int, value_range: tuple[float, float]) -> float:
    """The value of a slider step within ``value_range``."""
    lo, hi = value_range
    return lo + (hi - lo) * step / SLIDER_STEPS


def format_value(v) -> str:
    """A table cell: floats with 4 significant digits, everything else as ``str``."""
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
