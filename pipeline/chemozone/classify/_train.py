"""Training: histogram gradient boosting, cross-validated metrics and a calibration fitted out of fold."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ClassifierError
from ._features import DEFAULT_K_NEIGHBORS
from ._model import CellClassifier, calibration_inputs

MIN_LABELS_PER_CLASS = 3
"""Fewest labelled cells per class: below it training is refused (no cross-validation is possible)."""
MAX_FOLDS = 5
GBM_PARAMS: dict[str, Any] = {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 5,
                              "l2_regularization": 1.0, "early_stopping": False}
"""scikit-learn ``HistGradientBoostingClassifier`` settings (small-sample friendly: leaves of >= 5 cells,
no early stopping so that the model does not depend on an internal validation split)."""


def _gbm(seed: int, params: Mapping[str, Any] | None = None):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=seed, **{**GBM_PARAMS, **(params or {})})


def _check_labels(y: np.ndarray, n_rows: int, target: str, kind: str) -> np.ndarray:
    """Rows to train on: all for a marker (refused below 3 labels of either class); for cell types, classes
    with fewer than 3 labels are left out with a warning (refused when fewer than two classes remain)."""
    if len(y) != n_rows:
        raise ClassifierError(f"classifier '{target}': {len(y)} labels for {n_rows} feature rows; pass one label per row")
    classes, counts = np.unique(y, return_counts=True)
    have = {str(c): int(n) for c, n in zip(classes, counts)}
    few = [c for c, n in zip(classes, counts) if n < MIN_LABELS_PER_CLASS]
    if kind == "cell_type" and few and len(classes) - len(few) >= 2:
        warnings.warn(f"classifier '{target}': classes {[str(c) for c in few]} have fewer than {MIN_LABELS_PER_CLASS} "
                      "labels and are left out (no cell is predicted as them); label more of them", stacklevel=3)
        return ~np.isin(y, few)
    if len(classes) < 2 or few:
        raise ClassifierError(
            f"classifier '{target}': labels per class {have}; label at least {MIN_LABELS_PER_CLASS} cells of each "
            "of at least two classes (e.g. positive and negative) before training"
        )
    return np.ones(len(y), dtype=bool)


def _cv_metrics(y: np.ndarray, proba: np.ndarray, classes: np.ndarray, binary: bool) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    pred = classes[np.argmax(proba, axis=1)]
    if binary:
        f1 = f1_score(y, pred, pos_label=classes[1], average="binary", zero_division=0.0)
    else:
        f1 = f1_score(y, pred, average="macro", zero_division=0.0)
    return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)), "f1": float(f1)}


def fit_calibrated(x: np.ndarray, y: np.ndarray, *, seed: int = 0,
                   gbm_params: Mapping[str, Any] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Fit the gradient-boosted model on all rows, a calibrator on its out-of-fold probabilities, and score it.

    Stratified ``n_folds = min(5, smallest class count)`` folds (shuffled with ``seed``): each fold's rows
    are predicted by a model fitted on the other folds (``sklearn.model_selection.cross_val_predict``); a
    logistic regression on the log of those out-of-fold probabilities (Platt scaling for two classes,
    multinomial for more) is the calibrator, as ``CalibratedClassifierCV(ensemble=False)`` would fit it.
    The metrics score calibrated out-of-fold predictions whose calibrator was itself fitted out of fold
    (``cross_val_predict`` again), so no label scores a model that saw it.

    Parameters
    ----------
    x : float ndarray, shape (n_labels, n_features)
    y : ndarray, shape (n_labels,)
        Class labels (bool for a marker; str for cell types).
    seed : int
    gbm_params : mapping, optional
        Overrides of :data:`GBM_PARAMS`.

    Returns
    -------
    model, calibrator, metrics
        ``metrics``: ``balanced_accuracy``, ``f1``, ``n_folds``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(60, 2)); y = x[:, 0] > 0
    >>> model, cal, m = fit_calibrated(x, y)
    >>> m["n_folds"], m["balanced_accuracy"] > 0.8
    (5, True)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    classes, counts = np.unique(y, return_counts=True)
    n_folds = int(min(MAX_FOLDS, counts.min()))
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    # one OpenMP thread: on a few hundred labels the threads cost more than they save, and on a busy machine
    # spinning threads make a fit several times slower (2.6 s vs 15 s for 300 cells x 50 features, 5 classes)
    with threadpool_limits(limits=1, user_api="openmp"):
        oof = cross_val_predict(_gbm(seed, gbm_params), x, y, cv=folds, method="predict_proba")
        z = calibration_inputs(oof)
        calibrator = LogisticRegression(C=1.0, max_iter=1000)
        cal_oof = cross_val_predict(calibrator, z, y, cv=folds, method="predict_proba")
        calibrator.fit(z, y)
        model = _gbm(seed, gbm_params).fit(x, y)
    metrics = {**_cv_metrics(y, cal_oof, classes, binary=len(classes) == 2), "n_folds": n_folds}
    return model, calibrator, metrics


def _features_meta(features: pd.DataFrame, channels, k_neighbors) -> tuple[list[str], int]:
    chans = channels if channels is not None else features.attrs.get("channels")
    if chans is None:
        raise ClassifierError("pass channels=... (the features were not made by chemozone.classify.cell_features)")
    k = k_neighbors if k_neighbors is not None else features.attrs.get("k_neighbors", DEFAULT_K_NEIGHBORS)
    return [str(c) for c in chans], int(k)


def _train(features: pd.DataFrame, y: np.ndarray, *, target: str, kind: str, channels, k_neighbors, seed: int,
           verbose: bool, gbm_params: Mapping[str, Any] | None) -> CellClassifier:
    from .. import __version__

    chans, k = _features_meta(features, channels, k_neighbors)
    keep = _check_labels(y, len(features), target, kind)
    y = y[keep]
    classes, counts = np.unique(y, return_counts=True)
    model, calibrator, metrics = fit_calibrated(features.to_numpy(dtype=np.float64)[keep], y, seed=seed,
                                                gbm_params=gbm_params)
    metrics.update(n_labels=int(len(y)), label_counts={str(c): int(n) for c, n in zip(classes, counts)},
                   calibrated=True)
    clf = CellClassifier(target=target, kind=kind, classes=[c.item() if hasattr(c, "item") else c for c in classes],
                         model=model, calibrator=calibrator, features=[str(c) for c in features.columns],
                         channels=chans, k_neighbors=k, metrics=metrics, chemozone_version=__version__)
    if verbose:
        print(format_metrics(clf))
    return clf


def format_metrics(clf: CellClassifier) -> str:
    """One line: the classifier's cross-validated balanced accuracy and F1, folds and labels per class.

    Examples
    --------
    >>> c = CellClassifier("CD3", "marker", [False, True], None, None, [], [], 6,
    ...                    {"balanced_accuracy": 0.9, "f1": 0.85, "n_folds": 5, "n_labels": 40,
    ...                     "label_counts": {"False": 30, "True": 10}})
    >>> format_metrics(c)
    "classifier 'CD3' (marker): 40 labels {'False': 30, 'True': 10}, 5-fold CV balanced accuracy 0.900, F1 0.850"
    """
    m = clf.metrics
    f1 = "F1" if clf.kind == "marker" else "macro F1"
    return (f"classifier '{clf.target}' ({clf.kind}): {m.get('n_labels')} labels {m.get('label_counts')}, "
            f"{m.get('n_folds')}-fold CV balanced accuracy {m.get('balanced_accuracy', float('nan')):.3f}, "
            f"{f1} {m.get('f1', float('nan')):.3f}")


def train_marker_classifier(features: pd.DataFrame, labels: Sequence[bool] | np.ndarray | pd.Series, *, marker: str,
                            channels: Sequence[str] | None = None, k_neighbors: int | None = None, seed: int = 0,
                            verbose: bool = True, gbm_params: Mapping[str, Any] | None = None) -> CellClassifier:
    """Train a marker's positive/negative classifier on labelled cells; prints its cross-validated metrics.

    Parameters
    ----------
    features : DataFrame, shape (n_labels, n_features)
        Rows of :func:`chemozone.classify.cell_features` for the labelled cells (e.g. from
        :meth:`chemozone.classify.LabelStore.training_set`).
    labels : array-like of bool, shape (n_labels,)
        True = positive.
    marker : str
        The marker; predictions become ``{marker}_prob`` / ``{marker}_pos``.
    channels, k_neighbors : optional
        How the features were made; default: recorded by :func:`cell_features` in ``features.attrs``.
    seed : int
        Folds and the model's random state.
    verbose : bool
        Print :func:`format_metrics`.
    gbm_params : mapping, optional
        Overrides of :data:`GBM_PARAMS` (e.g. ``{"max_iter": 50}``).

    Returns
    -------
    CellClassifier
        ``metrics`` holds the cross-validated balanced accuracy and F1 (see :func:`fit_calibrated`).

    Raises
    ------
    ClassifierError
        Fewer than 3 labelled cells of either class, or labels and rows of different lengths.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> f = pd.DataFrame({"CD3_cell": np.r_[rng.normal(1, .3, 30), rng.normal(3, .3, 30)]})
    >>> clf = train_marker_classifier(f, np.r_[[False] * 30, [True] * 30], marker="CD3", channels=["CD3"],
    ...                               k_neighbors=0, verbose=False)
    >>> clf.metrics["balanced_accuracy"] > 0.9, clf.classes
    (True, [False, True])
    """
    y = np.asarray(labels)
    if y.dtype != bool:
        y = pd.Series(y).astype(bool).to_numpy()
    return _train(features, y, target=marker, kind="marker", channels=channels, k_neighbors=k_neighbors, seed=seed,
                  verbose=verbose, gbm_params=gbm_params)


def train_cell_type_classifier(features: pd.DataFrame, labels: Sequence[str] | np.ndarray | pd.Series, *,
                               name: str = "cell_type", channels: Sequence[str] | None = None,
                               k_neighbors: int | None = None, seed: int = 0, verbose: bool = True,
                               gbm_params: Mapping[str, Any] | None = None) -> CellClassifier:
    """Train a multi-class cell-type classifier on labelled cells; prints its cross-validated metrics.

    Same as :func:`train_marker_classifier` with class names as labels; the F1 is the macro F1 over the
    classes. Predictions become ``{class}_prob`` per class and ``classifier_{name}`` (the most probable class).

    Raises
    ------
    ClassifierError
        Fewer than two classes with at least 3 labelled cells each.

    Warns
    -----
    UserWarning
        Classes with fewer than 3 labelled cells are left out of the classifier (named); the cross-validated
        metrics then score the remaining classes only.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> f = pd.DataFrame({"CD3_cell": np.r_[rng.normal(1, .2, 20), rng.normal(3, .2, 20), rng.normal(5, .2, 20)]})
    >>> clf = train_cell_type_classifier(f, ["tumor"] * 20 + ["T"] * 20 + ["B"] * 20, channels=["CD3"],
    ...                                  k_neighbors=0, verbose=False)
    >>> clf.classes, clf.metrics["f1"] > 0.9
    (['B', 'T', 'tumor'], True)
    """
    y = np.asarray([str(v) for v in labels], dtype=object)
    return _train(features, y, target=name, kind="cell_type", channels=channels, k_neighbors=k_neighbors, seed=seed,
                  verbose=verbose, gbm_params=gbm_params)
