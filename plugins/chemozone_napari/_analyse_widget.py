"""Analyse image: run the pipeline on the image of the selected image layer and add the result layers.

Library calls: :func:`chemozone_napari._analyse.analyse_steps` (:func:`chemozone.run.run_batch` on the one
image) and the plugin's reader (:func:`chemozone_napari._reader.sample_layers`) for the results. The run's
plausibility warnings (``RunResult.warnings``, :mod:`chemozone.plausibility`) are shown as the library words
them: a napari warning notification and a label under the progress bar.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._layers import layer_meta
from ._qt import file_row

if TYPE_CHECKING:
    import napari


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
        self.config_path, cfg_row = file_row(save=False)
        self.out_path = QLineEdit("")
        self.run_btn = QPushButton("Analyse")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.warnings = QLabel("")
        """The last analysis' plausibility warnings, one per line (hidden when there are none)."""
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #e8a33d")
        self.warnings.setVisible(False)
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
        lay.addWidget(self.warnings)
        lay.addStretch()
        self.run_btn.clicked.connect(lambda: self.run())
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    def _refresh(self, event=None):
        paths = []
        for ly in self.viewer.layers:
            m = layer_meta(ly)
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
        self._show_warnings([])  # a new analysis: the last one's warnings no longer apply
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
        self._show_warnings(step.get("warnings") or [])

    def _show_warnings(self, lines: list[str]) -> None:
        """Show the run's plausibility warnings (as the library words them): the label, and one notification."""
        self.warnings.setText("\n".join(f"⚠ {line}" for line in lines))
        self.warnings.setVisible(bool(lines))
        if lines:
            from napari.utils.notifications import show_warning

            more = f" (+{len(lines) - 1} more in the Analyse panel and run.json)" if len(lines) > 1 else ""
            show_warning(f"chemozone: {lines[0]}{more}")
