"""The cell classifier widget's state, without Qt: a run's cells, their features, the user's labels and the
trained classifiers (all science is :mod:`chemozone.classify`).

A :class:`ClassifierSession` works on every sample of a run folder at once (labels, training and suggestions
span the samples); the widget shows one sample at a time. The cells are the tables the run's classifier
replay sees: each sample's ``measurements.parquet`` (:attr:`chemozone.layout.SampleLayout.measurements`),
else its ``cells.parquet`` (runs on imported tables), so that a classifier trained here gives in
``chemozone run`` (``phenotypes.classifier_file``) the probabilities it shows here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CELL_TYPE_TARGET = "cell_type"
"""Target name of the cell-type classifier (its labels are class names; predictions ``classifier_cell_type``)."""


def load_run_cells(layout) -> pd.DataFrame:
    """Cells of every sample of a run (``sample_id`` set), in sample order; empty when none has a table.

    Parameters
    ----------
    layout : chemozone.layout.RunLayout
    """
    parts = []
    for sid in layout.sample_ids():
        sample = layout.sample(sid)
        path = sample.measurements if sample.measurements.is_file() else sample.cells
        if not path.is_file():
            continue
        df = pd.read_parquet(path)
        if "cell_id" not in df.columns:
            from chemozone.errors import MissingStepError

            raise MissingStepError(f"{path}: no cell_id column; re-run 'chemozone run' on this run folder")
        df["sample_id"] = sid
        parts.append(df)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"sample_id": [], "cell_id": []})


class ClassifierSession:
    """Labels, classifiers and probabilities of one run folder.

    Parameters
    ----------
    run_dir : path
        The run folder (``chemozone run``'s ``OUT``). Its label store (:attr:`RunLayout.cell_labels`) and
        classifier file (:attr:`RunLayout.classifier_file`) are loaded when present, so work continues where
        it was saved.
    """

    def __init__(self, run_dir: str | Path):
        from chemozone import classify as cl
        from chemozone.layout import RunLayout

        self.layout = RunLayout(run_dir)
        self.cells = load_run_cells(self.layout)
        self.store = cl.LabelStore.for_run(self.layout.root)
        self.n_saved = len(self.store.labels())  # labels in the run folder
        self.classifiers: dict[str, cl.CellClassifier] = {}
        self.note = ""
        self._features: pd.DataFrame | None = None
        self._proba: dict[str, np.ndarray] = {}
        self.yx = self.cells[["y_um", "x_um"]].to_numpy(float) if len(self.cells) else np.zeros((0, 2))
        """``(n_cells, 2)`` ``(y_um, x_um)``: world coordinates of the viewer."""
        sid = self.cells["sample_id"].astype(str).to_numpy()
        self._rows = {s: np.flatnonzero(sid == s) for s in pd.unique(sid)}
        self._ids = {s: pd.Index(self.cells["cell_id"].to_numpy(np.int64)[r]) for s, r in self._rows.items()}
        self._load_classifiers()

    def _load_classifiers(self) -> None:
        from chemozone import classify as cl
        from chemozone.errors import ChemozoneError

        path = self.layout.classifier_file
        if not path.is_file() or not len(self.cells):
            return
        try:
            for clf in cl.load_classifier(path, channels=cl.feature_channels(self.cells)):
                self.classifiers[clf.target] = clf
        except ChemozoneError as exc:  # another panel's file: start afresh, say why
            self.note = f"saved classifier not loaded: {exc}"

    # ------------------------------------------------------------------ cells
    @property
    def sample_ids(self) -> list[str]:
        return list(self._rows)

    @property
    def features(self) -> pd.DataFrame:
        """:func:`chemozone.classify.cell_features` of every cell (computed once, on first use)."""
        if self._features is None:
            from chemozone import classify as cl

            self._features = cl.cell_features(self.cells)
        return self._features

    def rows(self, sample_id: str, cell_ids=None) -> np.ndarray:
        """Rows of :attr:`cells` of a sample (all, or of ``cell_ids`` in their order; -1 where absent)."""
        rows = self._rows.get(str(sample_id), np.zeros(0, dtype=int))
        if cell_ids is None:
            return rows
        ids = np.atleast_1d(np.asarray(cell_ids, dtype=np.int64))
        if not len(rows):
            return np.full(len(ids), -1)
        pos = self._ids[str(sample_id)].get_indexer(ids)
        return np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)

    def coords_um(self, sample_id: str) -> np.ndarray:
        """``(n, 2)`` ``(y_um, x_um)`` of a sample's cells (world coordinates of the viewer)."""
        return self.yx[self.rows(sample_id)]

    # ------------------------------------------------------------------ labels
    def kind(self, target: str) -> str:
        """``"cell_type"`` for the cell-type target, else ``"marker"``."""
        return "cell_type" if target == CELL_TYPE_TARGET else "marker"

    def label(self, sample_id: str, cell_ids, *, target: str, label) -> None:
        """Label cells (``label``: True/False for a marker, a class name for cell types)."""
        self.store.add(sample_id, cell_ids, target=target, labels=label)

    def unlabel(self, sample_id: str, cell_ids, *, target: str) -> None:
        self.store.remove(sample_id, cell_ids, target=target)

    def labels(self, target: str, sample_id: str | None = None) -> pd.DataFrame:
        """Labels of ``target`` (of one sample, or all)."""
        lab = self.store.labels(target)
        return lab if sample_id is None else lab[lab["sample_id"] == str(sample_id)].reset_index(drop=True)

    def save_labels(self) -> Path:
        path = self.store.save()
        self.n_saved = len(self.store.labels())
        return path

    # ------------------------------------------------------------------ classifiers
    def train(self, target: str):
        """Train ``target``'s classifier on its labels (all samples); returns the :class:`CellClassifier`."""
        from chemozone import classify as cl

        x, y = self.store.training_set(self.cells, self.features, target=target)
        if self.kind(target) == "marker":
            clf = cl.train_marker_classifier(x, y, marker=target, verbose=False)
        else:
            clf = cl.train_cell_type_classifier(x, y, name=target, verbose=False)
        self.classifiers[target] = clf
        self._proba.pop(target, None)
        return clf

    def probabilities(self, target: str) -> np.ndarray | None:
        """Calibrated probabilities ``(n_cells, n_classes)`` of ``target``'s classifier (None before training)."""
        clf = self.classifiers.get(target)
        if clf is None:
            return None
        if target not in self._proba:
            from chemozone import classify as cl

            self._proba[target] = cl.classifier_probabilities(self.cells, clf, features=self.features)
        return self._proba[target]

    def suggest(self, target: str, k: int = 10, *, seed: int = 0) -> pd.DataFrame:
        """The next ``k`` cells to label (:func:`chemozone.classify.suggest_cells`: uncertain, across samples)."""
        from chemozone import classify as cl

        return cl.suggest_cells(self.cells, self.classifiers.get(target), k=k, labelled=self.store.labels(target),
                                features=self.features, seed=seed)

    def save_classifiers(self) -> tuple[Path, Path]:
        """Write every trained classifier to :attr:`RunLayout.classifier_file` and their cross-validated
        metrics to :attr:`RunLayout.classifier_metrics`; returns both paths."""
        from chemozone import classify as cl

        items = list(self.classifiers.values())
        path = cl.save_classifier(self.layout.classifier_file, items)
        return path, cl.write_classifier_metrics(self.layout.classifier_metrics, items)
