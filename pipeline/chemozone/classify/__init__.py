"""Cell classifiers trained from a few hundred labelled cells (issue 17).

Per-cell features from what quantification (or a table import) writes, one gradient-boosted classifier per
marker (positive/negative) and/or one for cell types, with calibrated probabilities and cross-validated
metrics; a classifier file that loads without running code and only on a matching panel; predictions
(``{marker}_prob``, ``{marker}_pos``); active-learning suggestions; a label store in the run folder.

Typical use (the napari widget does the same)::

    from chemozone import classify as cl
    feats = cl.cell_features(cells)                          # all cells, deterministic
    store = cl.LabelStore.for_run(run_dir)                   # run/classifier/labels.parquet
    store.add("s1", [12, 40], target="CXCR3", labels=[True, False]); store.save()
    x, y = store.training_set(cells, feats, target="CXCR3")
    clf = cl.train_marker_classifier(x, y, marker="CXCR3")   # prints CV balanced accuracy and F1
    cells = cl.predict_cells(cells, clf, features=feats)     # + CXCR3_prob, CXCR3_pos
    nxt = cl.suggest_cells(cells, clf, k=20, labelled=store.labels("CXCR3"), features=feats)
    cl.save_classifier(RunLayout(run_dir).classifier_file, [clf])
    cl.write_classifier_metrics(RunLayout(run_dir).classifier_metrics, [clf])   # what the report shows
    # batch replay: phenotypes.classifier_file + gate method "classifier" for CXCR3

Modules (one concept each): ``_features`` (:func:`cell_features`), ``_model`` (:class:`CellClassifier`),
``_train`` (training, calibration, metrics), ``_file`` (:func:`save_classifier`, :func:`load_classifier`,
:func:`write_classifier_metrics`),
``_predict`` (:func:`predict_cells`), ``_replay`` (``phenotypes.classifier_file`` in a run), ``_suggest``
(:func:`suggest_cells`), ``_labels`` (:class:`LabelStore`).
"""

from ._features import FEATURE_COMPARTMENTS, MORPHOLOGY_COLUMNS, cell_features, feature_channels, neighbour_indices
from ._file import (
    TRUSTED_TYPES,
    check_panel,
    load_classifier,
    read_classifier_metadata,
    save_classifier,
    write_classifier_metrics,
)
from ._labels import LABEL_COLUMNS, LabelStore, merge_labels
from ._model import CellClassifier
from ._predict import POSITIVE_PROBABILITY, classifier_probabilities, predict_cells
from ._replay import apply_classifier_file, check_classifier_file
from ._suggest import suggest_cells, uncertainty
from ._train import (
    GBM_PARAMS,
    MIN_LABELS_PER_CLASS,
    fit_calibrated,
    format_metrics,
    train_cell_type_classifier,
    train_marker_classifier,
)

__all__ = [
    "cell_features",
    "feature_channels",
    "neighbour_indices",
    "FEATURE_COMPARTMENTS",
    "MORPHOLOGY_COLUMNS",
    "CellClassifier",
    "train_marker_classifier",
    "train_cell_type_classifier",
    "fit_calibrated",
    "format_metrics",
    "GBM_PARAMS",
    "MIN_LABELS_PER_CLASS",
    "save_classifier",
    "load_classifier",
    "read_classifier_metadata",
    "write_classifier_metrics",
    "check_panel",
    "TRUSTED_TYPES",
    "predict_cells",
    "classifier_probabilities",
    "POSITIVE_PROBABILITY",
    "apply_classifier_file",
    "check_classifier_file",
    "suggest_cells",
    "uncertainty",
    "LabelStore",
    "merge_labels",
    "LABEL_COLUMNS",
]
