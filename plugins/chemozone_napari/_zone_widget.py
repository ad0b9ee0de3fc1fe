"""Zone review: the module signal of a zone on the analysis grid, its threshold and smoothing, a live mask
preview, save to the experiment config.

Library calls: :func:`chemozone.io.read_image`, :func:`chemozone.io.read_labels_zarr` (the sample's tissue),
:func:`chemozone.grid.grid_pixel_um` (the analysis grid), :func:`chemozone.io.resolve_channels`,
:func:`chemozone.options.zone_signal_options` + :func:`chemozone.zones.zone_signal` (the signal, as
``chemozone run`` computes it), :func:`chemozone.zones.module_score` (slider range),
:func:`chemozone.zones.threshold_zone_signal` (the preview mask), :func:`chemozone.zones.zone_channel_thresholds`
(the thresholds the run used), :func:`chemozone.zones.zone_offset_map` (the run's tumor / stroma background offsets,
subtracted as the run does) and :func:`chemozone_napari._review.update_zone_config` (save).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._colors import mask_colormap
from ._layers import current_cells_layer, layer_meta, layer_run_config, layer_sample
from ._qt import file_row, horizontal_slider, set_items, slider_step, slider_value

if TYPE_CHECKING:
    import napari


class ZoneReviewWidget(QWidget):
    """Per zone: the module signal on the analysis grid, its threshold and smoothing, a live mask preview.

    *Compute signal* runs :func:`chemozone.zones.zone_signal` (in a worker thread) with the chosen smoothing;
    moving the threshold updates the preview layer at once; *Save* writes ``threshold: {mode: absolute,
    value}`` and ``smooth_um`` of the zone into the experiment config YAML.

    When the run's thresholds of this sample's zone carry background offsets (``halfmax`` with tumor and stroma
    backgrounds), the preview subtracts the same offset map as the run, so at the run's threshold it shows the run's
    zone, and *Save* writes the offsets with the value (``tumor_offset``, ``stroma_offset``; a module's: the mean
    over its channels, which gives the same preview with one threshold for every channel).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.signal: np.ndarray | None = None
        self.tissue: np.ndarray | None = None
        self.grid_um: float | None = None
        self.offset = None  # the run's background offset map of this sample's zone (zone_offset_map), or None
        self.offsets: tuple[float, float] | None = None  # its (tumor, stroma) offsets
        self._offset_note = ""
        self._updating = False
        self._build_ui()
        self.zone_box.currentTextChanged.connect(self._on_zone)
        self.compute_btn.clicked.connect(lambda: self.compute_signal())
        self.thr.valueChanged.connect(self.set_threshold)
        self.slider.valueChanged.connect(self._on_slider)
        self.save_btn.clicked.connect(lambda: self.save())
        self.viewer.layers.events.inserted.connect(self._refresh)
        self._refresh()

    def _build_ui(self) -> None:
        self.zone_box = QComboBox()
        self.smooth = QDoubleSpinBox()
        self.smooth.setRange(0.1, 1000.0)
        self.smooth.setSuffix(" µm")
        self.thr = QDoubleSpinBox()
        self.thr.setDecimals(4)
        self.thr.setRange(-1e9, 1e9)
        self.slider = horizontal_slider()
        self.compute_btn = QPushButton("Compute signal")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.config_path, cfg_row = file_row(save=False)
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

    def _context_layer(self):
        return current_cells_layer(self.viewer) or next(
            (ly for ly in self.viewer.layers if layer_meta(ly).get("sample_dir")), None)

    def _refresh(self, event=None):
        layer = self._context_layer()
        if layer is None:
            return
        self._cfg = layer_run_config(layer)
        names = [z.name for z in self._cfg.zones if z.source in ("pixels", "tumor")]
        if names == [self.zone_box.itemText(i) for i in range(self.zone_box.count())]:
            return
        set_items(self.zone_box, names)
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
        self.offset, self.offsets, self._offset_note = None, None, ""
        self.smooth.setValue(z.smooth_um)
        thr = self._threshold_used(name)
        if thr is None and z.threshold.value is not None:
            thr = z.threshold.value
        if thr is not None:
            self._updating = True
            self.thr.setValue(float(thr))
            self._updating = False

    def _threshold_used(self, zone: str) -> float | None:
        """The threshold the run used for ``zone`` (a module shows the mean of its channel thresholds)."""
        sample = layer_sample(self._context_layer())
        if sample is None or not sample.zones.is_file():
            return None
        import pandas as pd

        from chemozone.zones import zone_channel_thresholds

        df = pd.read_parquet(sample.zones)
        hit = df[df["zone"] == zone]
        vals = list(zone_channel_thresholds(df, zone).values())
        if vals:
            return float(np.mean(vals))
        if len(hit) and "threshold_used" in hit.columns and np.isfinite(hit["threshold_used"].iloc[0]):
            return float(hit["threshold_used"].iloc[0])
        return None

    def _image_and_tissue(self):
        from chemozone.grid import grid_pixel_um
        from chemozone.io import list_labels_zarr, read_image, read_labels_zarr

        img_layer = next((ly for ly in self.viewer.layers if layer_meta(ly).get("kind") == "image"), None)
        if img_layer is None:
            from chemozone.errors import MissingStepError

            raise MissingStepError("zone review needs the sample's image; open a sample or run folder whose image exists")
        img = read_image(layer_meta(img_layer)["path"], channels=self._cfg.panel.channels,
                         pixel_size_um=self._cfg.panel.pixel_size_um)
        sample = layer_sample(self._context_layer())
        tissue = None
        if sample is not None and "tissue" in list_labels_zarr(sample.masks):
            tissue = read_labels_zarr(sample.masks, "tissue").astype(bool)
        return img, tissue, grid_pixel_um(img.pixel_size_um, self._cfg.analysis_grid.pixel_size_um)

    def compute_signal(self, *, block: bool = False):
        """Compute the zone's module signal with the chosen smoothing (worker thread unless ``block``)."""
        z = self.zone
        if z is None:
            return None
        zone = z.model_copy(update={"smooth_um": float(self.smooth.value())})

        def work():
            from chemozone.io import resolve_channels
            from chemozone.options import zone_signal_options
            from chemozone.zones import zone_signal

            img, tissue, grid_um = self._image_and_tissue()
            idx = resolve_channels(img.channels, zone.channels, aliases=self._cfg.panel.aliases, source=img.path)
            sig = zone_signal(img.data, channel_indices=idx, pixel_size_um=img.pixel_size_um, grid_um=grid_um,
                              tissue=tissue, **zone_signal_options(zone))
            return (np.asarray(sig), tissue, grid_um, *self._run_offset(zone, grid_um, np.shape(sig)[-1]))

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

    def _run_offset(self, zone, grid_um: float, n_cols: int):
        """The run's background offset map of this sample's zone, the (tumor, stroma) offsets to save and a note for
        the info line; ``(None, None, "")`` without a run or offsets.

        A module's channels may have different offsets. The preview gives every channel the same threshold, so its
        score ``mean_k((s_k - o_k) / t)`` depends on the offsets' mean only, and that mean is what is saved: the saved
        config builds the zone the preview shows."""
        import pandas as pd

        from chemozone.zones import zone_channel_offsets, zone_offset_map

        sample = layer_sample(self._context_layer())
        run = sample.run if sample is not None else None
        if run is None or not run.zone_thresholds.is_file():
            return None, None, ""
        thr = pd.read_parquet(run.zone_thresholds)
        per_channel = zone_channel_offsets(thr, zone, sample.sample_id)
        if per_channel is None:
            return None, None, ""
        cells = pd.read_parquet(sample.cells) if sample.cells.is_file() else None  # only when the map needs them
        offset = zone_offset_map(thr, zone, sample.sample_id, cells=cells, zones=self._cfg.zones, grid_um=grid_um,
                                 n_cols=n_cols)
        a, b = np.mean(per_channel, axis=0)
        offsets = (float(a), float(b))
        mean = ", the mean over the module's channels" if len(zone.channels) > 1 else ""
        return offset, offsets, (f"; with the run's background offsets (tumor {offsets[0]:.4g}, stroma "
                                 f"{offsets[1]:.4g}{mean}), saved with the threshold")

    def _on_error(self, exc):
        self.info.setText(f"error: {exc}")

    def _on_signal(self, result):
        from chemozone.zones import module_score

        sig, self.tissue, self.grid_um, self.offset, self.offsets, self._offset_note = result
        self.signal = sig if sig.ndim == 3 else sig[None]
        # absolute mode: one threshold t for every channel, so the zone is module_score(signal, 1) >= t
        score = module_score(self.signal, np.ones(self.signal.shape[0]))
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
        self.set_threshold(slider_value(step, self._range))

    def preview_mask(self) -> np.ndarray | None:
        """The zone mask that ``chemozone run`` builds with this threshold (``mode: absolute``, with the run's
        background offsets when it had them) and smoothing: :func:`chemozone.zones.threshold_zone_signal` (module
        mean ≥ threshold, in tissue, holes filled, small pieces removed)."""
        if self.signal is None:
            return None
        from chemozone.zones import threshold_zone_signal

        z = self.zone
        thr = [float(self.thr.value())] * self.signal.shape[0]
        tissue = self.tissue if self.tissue is not None and self.tissue.shape == self.signal.shape[1:] else None
        return threshold_zone_signal(self.signal, thr, tissue, grid_um=self.grid_um, min_area_um2=z.min_area_um2,
                                     fill_holes=z.fill_holes, offset=self.offset)

    def set_threshold(self, value: float):
        """Move the threshold and update the preview layer."""
        if self._updating:
            return
        self._updating = True
        try:
            self.thr.setValue(float(value))
            if self.signal is None:
                return
            self.slider.setValue(slider_step(value, self._range))
            mask = self.preview_mask().astype(np.uint8)
            self._show_preview(mask)
            tissue_px = int(self.tissue.sum()) if self.tissue is not None else mask.size
            self.info.setText(f"{100 * mask.sum() / max(tissue_px, 1):.1f} % of the tissue in the zone"
                              + self._offset_note)
        finally:
            self._updating = False

    def _show_preview(self, mask: np.ndarray) -> None:
        name = f"zone preview: {self.zone_box.currentText()}"
        s = self.grid_um
        if name in self.viewer.layers:
            self.viewer.layers[name].data = mask
        else:
            self.viewer.add_labels(mask, name=name, scale=(s, s), translate=(s / 2, s / 2), opacity=0.45,
                                   colormap=mask_colormap("yellow"),
                                   metadata={"chemozone": {"kind": "zone_preview"}})

    def save(self, path: str | Path | None = None) -> Path:
        """Write this zone's threshold and smoothing into the config YAML."""
        from ._review import update_zone_config

        path = Path(path or self.config_path.text())
        out = update_zone_config(path, self.zone_box.currentText(), threshold=float(self.thr.value()),
                                 smooth_um=float(self.smooth.value()), offsets=self.offsets)
        self.info.setText(f"saved zone '{self.zone_box.currentText()}' to {out}")
        return out
