"""Applying classifiers to cells: ``{marker}_prob`` / ``{marker}_pos`` and ``{class}_prob`` columns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._features import cell_features
from ._model import CellClassifier

POSITIVE_PROBABILITY = 0.5
"""A marker classifier calls a cell positive when its calibrated probability is >= this."""


def _features_for(cells: pd.DataFrame, clf: CellClassifier, cache: dict) -> pd.DataFrame:
    key = (tuple(clf.channels), clf.k_neighbors)
    if key not in cache:
        cache[key] = cell_features(cells, clf.channels, k_neighbors=clf.k_neighbors)
    return cache[key]


def classifier_probabilities(cells: pd.DataFrame, classifier: CellClassifier, *,
                             features: pd.DataFrame | None = None) -> np.ndarray:
    """Calibrated class probabilities of every cell (features computed as the classifier was trained).

    Parameters
    ----------
    cells : DataFrame, shape (n_cells, ...)
    classifier : CellClassifier
    features : DataFrame, optional
        Precomputed :func:`cell_features` of ``cells`` (same rows); computed when None.

    Returns
    -------
    float64 ndarray, shape (n_cells, n_classes)
    """
    feats = features if features is not None else _features_for(cells, classifier, {})
    return classifier.predict_proba(feats)


def predict_cells(cells: pd.DataFrame, classifiers: CellClassifier | Sequence[CellClassifier], *,
                  features: pd.DataFrame | None = None) -> pd.DataFrame:
    """Add each classifier's calibrated probabilities and calls to a cells table.

    A marker classifier adds ``{marker}_prob`` (float64, calibrated probability of positive) and
    ``{marker}_pos`` (``prob >= 0.5``); a cell-type classifier adds ``{class}_prob`` per class and
    ``classifier_{name}`` (the most probable class; ties go to the first class in sorted order). Existing
    columns of those names are replaced. Deterministic: the same cells and classifier file give the same
    columns bit for bit (``chemozone run`` replays a classifier file through this function).

    Parameters
    ----------
    cells : DataFrame, shape (n_cells, ...)
        Per-cell table with the columns the classifiers' features need (compartment means, ``x_um``,
        ``y_um``, ``sample_id``).
    classifiers : CellClassifier or sequence of CellClassifier
        E.g. from :func:`load_classifier`.
    features : DataFrame, optional
        Precomputed :func:`cell_features` of ``cells`` (a superset of every classifier's features).

    Returns
    -------
    DataFrame
        A copy of ``cells`` with the new columns.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> from chemozone.classify import train_marker_classifier
    >>> cells = pd.DataFrame({"CD3_cell": np.r_[rng.normal(1, .3, 30), rng.normal(3, .3, 30)]})
    >>> f = cell_features(cells, k_neighbors=0)
    >>> clf = train_marker_classifier(f, np.arange(60) >= 30, marker="CD3", verbose=False)
    >>> out = predict_cells(cells, clf)
    >>> out[["CD3_prob", "CD3_pos"]].dtypes.astype(str).tolist(), int(out["CD3_pos"].sum())
    (['float64', 'bool'], 30)
    """
    items = [classifiers] if isinstance(classifiers, CellClassifier) else list(classifiers)
    out = cells.copy()
    cache: dict = {}
    for clf in items:
        feats = features if features is not None else _features_for(cells, clf, cache)
        p = clf.predict_proba(feats)
        if clf.kind == "marker":
            prob = p[:, list(clf.classes).index(True)]
            out[f"{clf.target}_prob"] = prob
            out[f"{clf.target}_pos"] = prob >= POSITIVE_PROBABILITY
        else:
            for j, c in enumerate(clf.classes):
                out[f"{c}_prob"] = p[:, j]
            names = np.asarray(clf.classes, dtype=object)
            out[f"classifier_{clf.target}"] = names[np.argmax(p, axis=1)] if len(p) else np.array([], dtype=object)
    return out
