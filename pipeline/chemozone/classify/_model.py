"""The trained classifier: a gradient-boosted model, its probability calibration and what it was trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import MissingStepError

_EPS = 1e-6


def calibration_inputs(proba: np.ndarray) -> np.ndarray:
    """What the calibrator sees: log of the model's clipped probabilities (the logit for two classes).

    Parameters
    ----------
    proba : ndarray, shape (n_cells, n_classes)

    Returns
    -------
    ndarray, shape (n_cells, 1) for two classes, (n_cells, n_classes) otherwise

    Examples
    --------
    >>> calibration_inputs(np.array([[0.5, 0.5], [0.2, 0.8]])).round(3).ravel().tolist()
    [0.0, 1.386]
    """
    p = np.clip(np.asarray(proba, dtype=float), _EPS, 1 - _EPS)
    if p.shape[1] == 2:
        return np.log(p[:, 1:] / p[:, :1])
    return np.log(p)


@dataclass
class CellClassifier:
    """One trained classifier: a marker's positivity (``kind="marker"``, classes ``[False, True]``) or cell
    types (``kind="cell_type"``, classes = the labelled cell-type names, sorted).

    Attributes
    ----------
    target : str
        The marker (``CXCR3``) or the name of the cell-type classification (``cell_type``).
    kind : {"marker", "cell_type"}
    classes : list
        Class labels, in the column order of :meth:`predict_proba`.
    model : HistGradientBoostingClassifier
        Fitted on every labelled cell.
    calibrator : LogisticRegression
        Maps :func:`calibration_inputs` of ``model``'s probabilities to calibrated probabilities (fitted on
        out-of-fold predictions); None when there were too few labels to calibrate.
    features : list of str
        Feature columns, in the order the model expects (from :func:`chemozone.classify.cell_features`).
    channels : list of str
        The panel's channels the features were computed from.
    k_neighbors : int
        Neighbours averaged by the neighbour features.
    metrics : dict
        Cross-validated metrics: ``balanced_accuracy``, ``f1`` (binary F1 of the positive class; macro F1 for
        cell types), ``n_folds``, ``n_labels``, ``label_counts``, ``calibrated``.
    chemozone_version : str
    """

    target: str
    kind: Literal["marker", "cell_type"]
    classes: list[Any]
    model: Any
    calibrator: Any
    features: list[str]
    channels: list[str]
    k_neighbors: int
    metrics: dict[str, Any] = field(default_factory=dict)
    chemozone_version: str = ""

    @property
    def n_labels(self) -> int:
        """Number of labelled cells the classifier was trained on."""
        return int(self.metrics.get("n_labels", 0))

    def output_columns(self) -> list[str]:
        """Columns :func:`chemozone.classify.predict_cells` adds for this classifier."""
        if self.kind == "marker":
            return [f"{self.target}_prob", f"{self.target}_pos"]
        return [f"{c}_prob" for c in self.classes] + [f"classifier_{self.target}"]

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Calibrated class probabilities.

        Parameters
        ----------
        features : DataFrame, shape (n_cells, >= n_features)
            With every column of :attr:`features` (extra columns are ignored).

        Returns
        -------
        float64 ndarray, shape (n_cells, n_classes)
            Rows sum to 1; columns in the order of :attr:`classes`.

        Raises
        ------
        MissingStepError
            A feature column is missing (names them).
        """
        missing = [f for f in self.features if f not in features.columns]
        if missing:
            raise MissingStepError(
                f"classifier '{self.target}' needs feature(s) {missing[:6]} that these cells lack; quantify the "
                "same compartments and statistics as the training cells (or retrain on these cells)"
            )
        x = features[self.features].to_numpy(dtype=np.float64)
        if len(x) == 0:
            return np.zeros((0, len(self.classes)))
        p = self.model.predict_proba(x)
        if self.calibrator is not None:
            p = self.calibrator.predict_proba(calibration_inputs(p))
        return np.asarray(p, dtype=np.float64)
