"""Batch replay: ``phenotypes.classifier_file`` in ``chemozone run`` (checked up front, applied per sample)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import ClassifierError
from ._features import feature_channels
from ._file import check_panel, load_classifier, read_classifier_metadata
from ._predict import predict_cells


def check_classifier_file(path: str | Path, *, channels: Sequence[str] | None = None,
                          classifier_markers: Sequence[str] = ()) -> dict:
    """Check a configured classifier file before a run: readable, trained on this panel, and holding a marker
    classifier for every marker whose gate method is ``classifier``.

    Parameters
    ----------
    path : str or Path
        ``phenotypes.classifier_file``.
    channels : sequence of str, optional
        The run's channel names (as the cell tables name them).
    classifier_markers : sequence of str
        Markers configured with ``gate.method: classifier``.

    Returns
    -------
    dict
        The file's metadata.

    Raises
    ------
    ClassifierError
        Names ``phenotypes.classifier_file``, the file and what is missing (channels or marker classifiers).
    """
    if not Path(path).is_file():
        raise ClassifierError(f"phenotypes.classifier_file: {path} does not exist; save a classifier from napari "
                              "(chemozone.classify.save_classifier) or fix the path")
    meta = read_classifier_metadata(path)
    if channels is not None:
        check_panel(meta, channels, path)
    have = [e["target"] for e in meta["classifiers"] if e["kind"] == "marker"]
    missing = [m for m in classifier_markers if m not in have]
    if missing:
        raise ClassifierError(f"phenotypes.classifier_file: {path} has marker classifiers {have} but not {missing}, "
                              "whose gate method is 'classifier'; train them or change their gate method")
    return meta


def apply_classifier_file(cells: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """:func:`predict_cells` with every classifier of a classifier file (the run's step; panel checked on
    the table's channels).

    Parameters
    ----------
    cells : DataFrame, shape (n_cells, ...)
    path : str or Path

    Returns
    -------
    DataFrame
        ``cells`` with the classifiers' columns.
    """
    return predict_cells(cells, load_classifier(path, channels=feature_channels(cells)))
