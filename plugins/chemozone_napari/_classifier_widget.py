"""Cell classifier: label cells by clicking or lassoing, train, preview probabilities, label the suggested cells
next, save labels and the classifier to the run folder.

Library calls (through :class:`chemozone_napari._classifier.ClassifierSession`): :func:`chemozone.classify.cell_features`,
:class:`chemozone.classify.LabelStore`, :func:`chemozone.classify.train_marker_classifier` /
:func:`~chemozone.classify.train_cell_type_classifier`, :func:`~chemozone.classify.classifier_probabilities`,
:func:`~chemozone.classify.suggest_cells`, :func:`~chemozone.classify.save_classifier`,
:func:`~chemozone.classify.write_classifier_metrics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._classifier import CELL_TYPE_TARGET, ClassifierSession
from ._colors import category_color_map, class_probability_colors, probability_colors
from ._layers import cells_layers, layer_meta, layer_run, layer_run_config, recolor_by_category, set_point_colors
from ._qt import set_items

if TYPE_CHECKING:
    import napari

CELL_TYPE_ITEM = "cell type"
POSITIVE, NEGATIVE = "positive", "negative"
LABELS_LAYER, SUGGEST_LAYER, LASSO_LAYER = "classifier labels", "classifier suggestions", "classifier lasso"
FOCUS_FIELD_CELLS = 25  # a suggestion is shown with about this many cell sizes across a nominal 800 px canvas


class CellClassifierWidget(QWidget):
    """Train a marker's positive/negative classifier (or a cell-type classifier) from cells labelled on the canvas.

    Click a cell (the cell under the cursor in the ``cells`` labels, else the nearest point) to give it the
    chosen label (clicking it again with the same label removes it), or draw polygons with *Lasso* and label
    every cell inside. *Train* fits the classifier on the labels of every sample and shows its
    cross-validated metrics; the cells are then coloured by their probability (blue negative, red positive).
    *Suggest* asks for the most uncertain cells spread across the samples and steps through them.
    Labels are kept in the run folder (``classifier/labels.parquet``) and reloaded when the widget opens;
    *Save classifier* writes the classifier file ``chemozone run`` replays (``phenotypes.classifier_file``)
    and the metrics the report shows.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session: ClassifierSession | None = None
        self.sample_id: str | None = None
        self.suggestions = None
        self._next = 0
        self.focused: tuple[str, int] | None = None
        self._hidden: set[int] = set()
        self._build_ui()
        self._connect()
        self._refresh()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.run_info = QLabel("open a run folder (File > Open Folder)")
        self.run_info.setWordWrap(True)
        self.sample_box = QComboBox()
        self.target_box = QComboBox()
        self.target_box.setEditable(True)
        self.classes_edit = QLineEdit()
        self.classes_edit.setPlaceholderText("class names, comma-separated")
        self.label_box = QComboBox()
        self.click_box = QCheckBox("click a cell to label it")
        self.click_box.setChecked(True)
        self.lasso_btn = QPushButton("Lasso")
        self.lasso_label_btn = QPushButton("Label cells in lasso")
        self.train_btn = QPushButton("Train")
        self.preview_btn = QPushButton("Preview probabilities")
        self.phenotype_btn = QPushButton("Colour by phenotype")
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 500)
        self.k_spin.setValue(10)
        self.suggest_btn = QPushButton("Suggest cells")
        self.next_btn = QPushButton("Next suggestion")
        self.focus_btn = QPushButton("Label shown cell")
        self.save_labels_btn = QPushButton("Save labels")
        self.save_btn = QPushButton("Save classifier")
        self.metrics = QLabel("")
        self.metrics.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("sample", self.sample_box)
        form.addRow("target", self.target_box)
        form.addRow("classes", self.classes_edit)
        form.addRow("label", self.label_box)
        form.addRow("suggest", self.k_spin)
        lay = QVBoxLayout(self)
        lay.addWidget(self.run_info)
        lay.addLayout(form)
        lay.addWidget(self.click_box)
        for row in ((self.lasso_btn, self.lasso_label_btn), (self.train_btn, self.preview_btn, self.phenotype_btn),
                    (self.suggest_btn, self.next_btn, self.focus_btn), (self.save_labels_btn, self.save_btn)):
            box = QHBoxLayout()
            for b in row:
                box.addWidget(b)
            lay.addLayout(box)
        lay.addWidget(self.metrics)
        lay.addWidget(self.status)
        lay.addStretch()

    def _connect(self) -> None:
        self.sample_box.currentTextChanged.connect(lambda s: s and self.show_sample(s))
        self.target_box.currentTextChanged.connect(lambda t: t and self.set_target(t))
        self.classes_edit.editingFinished.connect(self._update_label_choices)
        self.lasso_btn.clicked.connect(self.start_lasso)
        self.lasso_label_btn.clicked.connect(lambda: self._guard(self.label_lasso))
        self.train_btn.clicked.connect(lambda: self._guard(self.train))
        self.preview_btn.clicked.connect(lambda: self._guard(self.preview))
        self.phenotype_btn.clicked.connect(self._colour_by_phenotype)
        self.suggest_btn.clicked.connect(lambda: self._guard(self.suggest))
        self.next_btn.clicked.connect(lambda: self._guard(self.next_suggestion))
        self.focus_btn.clicked.connect(lambda: self._guard(self.label_focused))
        self.save_labels_btn.clicked.connect(lambda: self._guard(self.save_labels))
        self.save_btn.clicked.connect(lambda: self._guard(self.save_classifier))
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)

    def closeEvent(self, event):
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        super().closeEvent(event)

    def _guard(self, func):
        """Run a button's action; a chemozone error becomes the status line."""
        from chemozone.errors import ChemozoneError

        if self.session is None:
            self.status.setText("open a run folder first (File > Open Folder, or 'chemozone view run/')")
            return None
        try:
            return func()
        except ChemozoneError as exc:
            self.status.setText(str(exc))
            return None

    # ------------------------------------------------------------------ run, samples, target
    def _refresh(self, event=None) -> None:
        """Start a session on the run of the first cells layer (once)."""
        if self.session is not None:
            return
        runs = [layer_run(ly) for ly in cells_layers(self.viewer)]
        runs = [r for r in runs if r is not None]
        if runs:
            self.open_run(runs[0].root)

    def open_run(self, run_dir: str | Path) -> ClassifierSession:
        """Load a run's cells, saved labels and saved classifiers; show the sample already on the canvas."""
        self.session = s = ClassifierSession(run_dir)
        layers = sorted((ly for ly in cells_layers(self.viewer) if self._is_ours(ly)), key=lambda ly: not ly.visible)
        set_items(self.sample_box, s.sample_ids)
        targets = list(layer_run_config(layers[0]).phenotypes.markers) if layers else []
        chans = [c for c in _feature_channels(s.cells) if c not in targets]
        extra = [t for t in s.store.targets() + list(s.classifiers) if t not in targets + chans + [CELL_TYPE_TARGET]]
        set_items(self.target_box, list(dict.fromkeys(targets + extra + chans)) + [CELL_TYPE_ITEM])
        classes = sorted(set(s.labels(CELL_TYPE_TARGET)["label"]) | set(_column_values(s.cells, "cell_type")))
        self.classes_edit.setText(", ".join(classes))
        self._update_info()
        self.set_target(self.target_box.currentText())
        shown = layer_meta(layers[0]).get("sample_id") if layers else None
        self.show_sample(shown if shown in s.sample_ids else (s.sample_ids[0] if s.sample_ids else None))
        return s

    def _update_info(self) -> None:
        s = self.session
        self.run_info.setText(f"run {s.layout.root.name}: {len(s.sample_ids)} samples, {len(s.cells)} cells, "
                              f"{s.n_saved} labels saved" + (f"; {s.note}" if s.note else ""))

    @property
    def target(self) -> str:
        t = self.target_box.currentText()
        return CELL_TYPE_TARGET if t == CELL_TYPE_ITEM else t

    @property
    def classes(self) -> list[str]:
        return [c.strip() for c in self.classes_edit.text().split(",") if c.strip()]

    def set_target(self, target: str, classes: list[str] | None = None) -> None:
        """Choose the marker (or ``"cell type"``) to label and train; ``classes`` sets the cell-type names."""
        if classes is not None:
            self.classes_edit.setText(", ".join(classes))
        if self.target_box.currentText() != target:
            if self.target_box.findText(target) < 0:
                self.target_box.addItem(target)
            self.target_box.setCurrentText(target)  # re-enters through the signal
            return
        self._update_label_choices()
        self.suggestions, self._next = None, 0
        clf = self.session.classifiers.get(self.target) if self.session else None
        from chemozone.classify import format_metrics

        self.metrics.setText(format_metrics(clf) if clf is not None else "not trained yet")
        self._update_overlays()
        if clf is not None and self.cells_layer() is not None:
            self.preview()

    def _update_label_choices(self) -> None:
        choices = self.classes if self.target == CELL_TYPE_TARGET else [POSITIVE, NEGATIVE]
        current = self.label_box.currentText()
        set_items(self.label_box, choices)
        if current in choices:
            self.label_box.setCurrentText(current)

    def _label_value(self, label=None):
        """The stored label of a choice: True/False for a marker, the class name for cell types."""
        label = self.label_box.currentText() if label is None else label
        if self.target != CELL_TYPE_TARGET:
            return label if isinstance(label, bool) else label == POSITIVE
        if not label:
            from chemozone.errors import ClassifierError

            raise ClassifierError("type the cell-type class names (comma-separated) before labelling cell types")
        return str(label)

    # ------------------------------------------------------------------ layers of a sample
    def _is_ours(self, layer) -> bool:
        run = layer_run(layer)
        return (self.session is not None and run is not None
                and Path(run.root).resolve() == self.session.layout.root.resolve())

    def _sample_layers(self, sample_id: str) -> list:
        return [ly for ly in self.viewer.layers if self._is_ours(ly) and layer_meta(ly).get("sample_id") == sample_id]

    def cells_layer(self, sample_id: str | None = None):
        """The cells (points) layer of a sample (default: the shown one), or None."""
        sid = sample_id or self.sample_id
        hits = [ly for ly in self._sample_layers(sid) if layer_meta(ly).get("kind") == "cells"]
        return hits[0] if hits else None

    def show_sample(self, sample_id: str | None):
        """Show one sample of the run (opened through the plugin's reader when not yet open), hide the others."""
        if sample_id is None or self.session is None:
            return None
        if sample_id == self.sample_id and self.cells_layer(sample_id) is not None:
            self._update_suggestion_rings()
            return self.cells_layer(sample_id)
        if self.cells_layer(sample_id) is None:
            self.viewer.open(str(self.session.layout.sample_dir(sample_id)), plugin="chemozone")
            for name in (LABELS_LAYER, SUGGEST_LAYER, LASSO_LAYER):  # keep the rings above the new layers
                if name in self.viewer.layers:
                    self.viewer.layers.move(self.viewer.layers.index(self.viewer.layers[name]), len(self.viewer.layers))
        for ly in self.viewer.layers:
            if not self._is_ours(ly):
                continue
            if layer_meta(ly).get("sample_id") == sample_id:
                if id(ly) in self._hidden:
                    ly.visible = True
                    self._hidden.discard(id(ly))
            elif ly.visible:
                ly.visible = False
                self._hidden.add(id(ly))
        self.sample_id = sample_id
        if self.sample_box.currentText() != sample_id:
            self.sample_box.blockSignals(True)
            self.sample_box.setCurrentText(sample_id)
            self.sample_box.blockSignals(False)
        self._update_overlays()
        if self.session.classifiers.get(self.target) is not None:
            self.preview()
        return self.cells_layer(sample_id)

    # ------------------------------------------------------------------ labelling
    def _on_mouse(self, viewer, event):
        """A click (press and release without dragging) labels the cell under the cursor; a drag pans."""
        if (event.type != "mouse_press" or event.button != 1 or not self.click_box.isChecked()
                or self.session is None or _drawing(viewer)):
            return
        start = np.asarray(event.position, dtype=float)[-2:]
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = dragged or bool(np.linalg.norm(np.asarray(event.position)[-2:] - start) > 0)
            yield
        if not dragged:
            self._guard(lambda: self.label_at(start))

    def pick_cell(self, world_yx) -> int | None:
        """``cell_id`` of the shown sample's cell under a world position (µm): the ``cells`` label there, else the
        nearest cell centre within two point sizes; None when there is none."""
        s, sid = self.session, self.sample_id
        world_yx = np.asarray(world_yx, dtype=float)
        for ly in self._sample_layers(sid):
            if layer_meta(ly).get("kind") == "labels" and layer_meta(ly).get("label") == "cells":
                val = ly.get_value(world_yx, world=True)
                val = val[-1] if isinstance(val, tuple) else val
                if val is not None and int(val) > 0 and s.rows(sid, [int(val)])[0] >= 0:
                    return int(val)
        coords = s.coords_um(sid)
        if not len(coords):
            return None
        d = np.hypot(*(coords - world_yx).T)
        i = int(np.argmin(d))
        layer = self.cells_layer()
        size = float(np.max(layer.size)) if layer is not None and np.size(layer.size) else 10.0
        return int(s.cells["cell_id"].to_numpy()[s.rows(sid)[i]]) if d[i] <= 2 * size else None

    def label_cells(self, cell_ids, label=None, sample_id: str | None = None) -> int:
        """Give cells of a sample (default: the shown one) a label (default: the chosen one); returns how many."""
        sid = sample_id or self.sample_id
        ids = np.atleast_1d(np.asarray(cell_ids, dtype=np.int64))
        if len(ids):
            self.session.label(sid, ids, target=self.target, label=self._label_value(label))
            self._update_label_rings()
        shown = label if label is not None else self.label_box.currentText()
        self.status.setText(f"{len(ids)} cell(s) of {sid} labelled {shown}")
        return len(ids)

    def label_at(self, world_yx, label=None) -> int | None:
        """Label the cell at a world position; the same label again removes it. Returns its ``cell_id``."""
        cid = self.pick_cell(world_yx)
        if cid is None:
            return None
        value = self._label_value(label)
        lab = self.session.labels(self.target, self.sample_id)
        old = lab.loc[lab["cell_id"] == cid, "label"].tolist()
        text = ("pos" if value else "neg") if isinstance(value, bool) else value
        if old == [text]:
            self.session.unlabel(self.sample_id, [cid], target=self.target)
            self._update_label_rings()
            self.status.setText(f"cell {cid}: label removed")
        else:
            self.label_cells([cid], value)
        return cid

    def start_lasso(self):
        """Add (or select) the lasso Shapes layer in free-hand polygon mode."""
        if LASSO_LAYER not in self.viewer.layers:
            self.viewer.add_shapes(name=LASSO_LAYER, edge_color="yellow", face_color=[1, 1, 0, 0.1], edge_width=1,
                                   metadata={"chemozone": {"kind": "classifier_lasso"}})
        layer = self.viewer.layers[LASSO_LAYER]
        self.viewer.layers.selection.active = layer
        layer.mode = "add_polygon_lasso"
        return layer

    def label_lasso(self, label=None) -> int:
        """Label every cell of the shown sample inside the lasso's shapes, then clear them; returns how many."""
        from matplotlib.path import Path as MplPath

        if LASSO_LAYER not in self.viewer.layers or not len(self.viewer.layers[LASSO_LAYER].data):
            self.status.setText("draw around cells with Lasso first")
            return 0
        layer = self.viewer.layers[LASSO_LAYER]
        coords = self.session.coords_um(self.sample_id)
        inside = np.zeros(len(coords), bool)
        scale, shift = np.asarray(layer.scale)[-2:], np.asarray(layer.translate)[-2:]
        for verts in layer.data:
            inside |= MplPath(np.asarray(verts)[:, -2:] * scale + shift).contains_points(coords)
        ids = self.session.cells["cell_id"].to_numpy()[self.session.rows(self.sample_id)[inside]]
        layer.data = []
        return self.label_cells(ids, label)

    # ------------------------------------------------------------------ overlays
    def _overlay(self, name: str, **kwargs):
        if name not in self.viewer.layers:
            self.viewer.add_points(np.zeros((0, 2)), name=name, metadata={"chemozone": {"kind": "classifier_overlay"}},
                                   **kwargs)
        return self.viewer.layers[name]

    def _set_overlay(self, name: str, coords: np.ndarray, colors: np.ndarray, size: float | np.ndarray) -> None:
        layer = self._overlay(name, symbol="ring", border_width=0)
        layer.data = coords
        if len(coords):
            layer.face_color = colors
            layer.size = size

    def _point_size(self) -> float:
        layer = self.cells_layer()
        return float(np.max(layer.size)) if layer is not None and np.size(layer.size) else 6.0

    def _update_overlays(self) -> None:
        self._update_label_rings()
        self._update_suggestion_rings()

    def _update_label_rings(self) -> None:
        """Rings on the shown sample's labelled cells (green positive, magenta negative; cell types: class colours)."""
        if self.session is None or self.sample_id is None:
            return
        s, sid = self.session, self.sample_id
        lab = s.labels(self.target, sid)
        rows = s.rows(sid, lab["cell_id"].to_numpy())
        ok = rows >= 0
        names = lab["label"].to_numpy()[ok]
        if self.target == CELL_TYPE_TARGET:
            from ._colors import category_colors

            colors = category_colors(names, category_color_map(self.classes))
        else:
            colors = np.where((names == "pos")[:, None], [[0.2, 1.0, 0.2, 1.0]], [[1.0, 0.2, 1.0, 1.0]])
        self._set_overlay(LABELS_LAYER, s.yx[rows[ok]], colors, 1.5 * self._point_size())

    def _update_suggestion_rings(self) -> None:
        """Yellow rings on the shown sample's suggested cells (the one on show larger)."""
        if self.session is None or self.sample_id is None:
            return
        s, sid, size = self.session, self.sample_id, self._point_size()
        sug = self.suggestions[self.suggestions["sample_id"] == sid] if self.suggestions is not None else None
        if sug is None or not len(sug):
            self._set_overlay(SUGGEST_LAYER, np.zeros((0, 2)), np.zeros((0, 4)), size)
            return
        focus = self.focused is not None and self.focused[0] == sid
        big = (sug["cell_id"].to_numpy() == self.focused[1]) if focus else np.zeros(len(sug), bool)
        self._set_overlay(SUGGEST_LAYER, s.yx[s.rows(sid, sug["cell_id"].to_numpy())],
                          np.tile([1.0, 0.9, 0.0, 1.0], (len(sug), 1)), np.where(big, 2.6, 1.8) * size)

    # ------------------------------------------------------------------ train, preview, suggest
    def train(self):
        """Train the target's classifier on its labels (all samples), show its CV metrics and preview it."""
        from chemozone.classify import format_metrics

        self.session.save_labels()
        self._update_info()
        clf = self.session.train(self.target)
        self.metrics.setText(format_metrics(clf))
        self.preview()
        return clf

    def preview(self) -> np.ndarray | None:
        """Colour the shown sample's cells by the classifier's probability (a marker: ``{target}_prob`` with a
        blue-white-red colormap; cell types: the most probable class, its opacity the probability); returns
        the probabilities of the layer's cells (positive class for a marker)."""
        s, layer = self.session, self.cells_layer()
        proba = s.probabilities(self.target) if s is not None else None
        if layer is None or proba is None:
            self.status.setText("train the classifier first")
            return None
        rows = s.rows(self.sample_id, layer.features["cell_id"].to_numpy())
        p = np.full((len(rows), proba.shape[1]), np.nan)
        p[rows >= 0] = proba[rows[rows >= 0]]
        clf = s.classifiers[self.target]
        if clf.kind == "marker":
            prob = p[:, list(clf.classes).index(True)]
            layer.features[f"{self.target}_prob"] = prob
            set_point_colors(layer, probability_colors(prob))
            return prob
        for j, c in enumerate(clf.classes):
            layer.features[f"{c}_prob"] = p[:, j]
        set_point_colors(layer, class_probability_colors(clf.classes, p))
        return p

    def suggest(self, k: int | None = None):
        """Ask for the next cells to label (uncertain, spread across samples) and show the first."""
        self.suggestions = self.session.suggest(self.target, int(k or self.k_spin.value()))
        self._next = 0
        n = self.suggestions["sample_id"].nunique()
        self.status.setText(f"{len(self.suggestions)} cells suggested from {n} sample(s)")
        self.next_suggestion()
        return self.suggestions

    def next_suggestion(self) -> tuple[str, int] | None:
        """Show the next suggested cell not yet labelled (its sample, centred and zoomed in); returns it."""
        if self.suggestions is None:
            self.suggest()
            return self.focused
        lab = self.session.labels(self.target)
        done = set(zip(lab["sample_id"], lab["cell_id"].astype(int)))
        while self._next < len(self.suggestions):
            sid, cid = self.suggestions.iloc[self._next][["sample_id", "cell_id"]].tolist()
            self._next += 1
            if (sid, int(cid)) not in done:
                self.focused = (str(sid), int(cid))
                self.show_sample(str(sid))
                y, x = self.session.yx[self.session.rows(sid, [cid])[0]]
                camera = _camera(self.viewer)
                camera.center = (float(y), float(x))
                camera.zoom = 800.0 / (FOCUS_FIELD_CELLS * self._point_size())
                self.status.setText(f"suggestion {self._next}/{len(self.suggestions)}: cell {cid} of {sid}")
                return self.focused
        self.focused = None
        self._update_suggestion_rings()
        self.status.setText("no suggestion left: train again and ask for more")
        return None

    def label_focused(self, label=None) -> int | None:
        """Label the suggested cell on show and go to the next one; returns its ``cell_id``."""
        if self.focused is None:
            self.status.setText("ask for suggestions first")
            return None
        sid, cid = self.focused
        self.label_cells([cid], label, sample_id=sid)
        self.next_suggestion()
        return cid

    # ------------------------------------------------------------------ save
    def save_labels(self) -> Path:
        path = self.session.save_labels()
        self._update_info()
        self.status.setText(f"{len(self.session.store.labels())} labels saved to {path}")
        return path

    def save_classifier(self) -> tuple[Path, Path] | None:
        """Save the labels, every trained classifier (classifier file) and their metrics (metrics JSON)."""
        if not self.session.classifiers:
            self.status.setText("train a classifier first")
            return None
        self.session.save_labels()
        self._update_info()
        path, metrics = self.session.save_classifiers()
        markers = [t for t, c in self.session.classifiers.items() if c.kind == "marker"]
        self.status.setText(f"saved {path} and {metrics.name}; to replay it in 'chemozone run' set "
                            f"phenotypes.classifier_file: {path}" +
                            (f" and gate: {{method: classifier}} for {markers}" if markers else ""))
        return path, metrics

    def _colour_by_phenotype(self) -> None:
        layer = self.cells_layer()
        if layer is not None:
            recolor_by_category(layer)


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _drawing(viewer) -> bool:
    """A shapes layer is active in a drawing or editing mode (its clicks are not labels)."""
    active = viewer.layers.selection.active
    return active is not None and active._type_string == "shapes" and str(active.mode) != "pan_zoom"


def _feature_channels(cells) -> list[str]:
    from chemozone.classify import feature_channels

    return feature_channels(cells)


def _column_values(cells, column: str) -> list[str]:
    if column not in cells.columns:
        return []
    return sorted({str(v) for v in cells[column].dropna().unique()} - {"Other", "nan", "None"})
