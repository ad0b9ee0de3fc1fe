"""The classifier file: a zip of ``metadata.json`` and ``model.skops`` (skops: loading runs no code).

``model.skops`` holds the fitted scikit-learn objects, written by ``skops.io.dumps`` and read back by
``skops.io.loads`` with only the scikit-learn types listed in :data:`TRUSTED_TYPES` trusted (a file naming any
other type is refused before anything is built; skops never unpickles). ``metadata.json`` records the format,
the chemozone version, the creation time, the sha256 of the ``model.skops`` bytes and, per classifier, its
target, kind, classes, feature list, channels, neighbour count and cross-validated metrics (with the number of
labels used).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ClassifierError, MissingDependencyError
from ._model import CellClassifier

FORMAT = "chemozone-classifier"
FORMAT_VERSION = 1
TRUSTED_TYPES = (
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.Interval",
    "sklearn.linear_model._logistic.LogisticRegression",
)
"""The only types a classifier file may contain (scikit-learn's gradient boosting and logistic regression)."""


def _skops():
    try:
        import skops.io as sio
    except ImportError:  # pragma: no cover - skops is a core dependency
        raise MissingDependencyError("classifier files need skops; pip install skops (or reinstall chemozone)") from None
    return sio


def _as_list(classifiers: CellClassifier | Sequence[CellClassifier]) -> list[CellClassifier]:
    items = [classifiers] if isinstance(classifiers, CellClassifier) else list(classifiers)
    if not items:
        raise ClassifierError("no classifier to save; train one first")
    targets = [c.target for c in items]
    dup = sorted({t for t in targets if targets.count(t) > 1})
    cols = [col for c in items for col in c.output_columns()]
    clash = sorted({col for col in cols if cols.count(col) > 1})
    if dup or clash:
        raise ClassifierError(f"classifiers {targets} repeat target(s) {dup} or output column(s) {clash}; "
                              "save one classifier per marker and rename clashing cell types")
    return items


def _entry(c: CellClassifier) -> dict:
    return {"target": c.target, "kind": c.kind, "classes": list(c.classes), "features": list(c.features),
            "channels": list(c.channels), "k_neighbors": int(c.k_neighbors), "metrics": c.metrics,
            "n_labels": c.n_labels, "chemozone_version": c.chemozone_version}


def save_classifier(path: str | Path, classifiers: CellClassifier | Sequence[CellClassifier]) -> Path:
    """Write one or more classifiers (e.g. one per marker and one for cell types) to a classifier file.

    Parameters
    ----------
    path : str or Path
        Destination (suggested suffix ``.czclf``); written atomically.
    classifiers : CellClassifier or sequence of CellClassifier
        Distinct targets whose output columns do not clash.

    Returns
    -------
    Path

    Raises
    ------
    ClassifierError
        Nothing to save, or repeated targets / output columns.
    """
    from .. import __version__
    from ..layout import atomic_path

    items = _as_list(classifiers)
    blob = _skops().dumps({"models": [c.model for c in items], "calibrators": [c.calibrator for c in items]})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "chemozone_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(), "model_sha256": hashlib.sha256(blob).hexdigest(),
            "channels": list(dict.fromkeys(ch for c in items for ch in c.channels)),
            "classifiers": [_entry(c) for c in items]}
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("metadata.json", json.dumps(meta, indent=1, sort_keys=True))
            zf.writestr("model.skops", blob)
    return path


def read_classifier_metadata(path: str | Path) -> dict:
    """The ``metadata.json`` of a classifier file (no model is loaded).

    Raises
    ------
    ClassifierError
        Not a chemozone classifier file (names the file).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("metadata.json"))
    except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise ClassifierError(f"{path}: not a chemozone classifier file ({type(e).__name__}: {e}); save one "
                              "with chemozone.classify.save_classifier") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ClassifierError(f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                              f"this chemozone reads {FORMAT!r} version {FORMAT_VERSION}")
    return meta


def check_panel(meta: dict, channels: Sequence[str], path: str | Path) -> None:
    """Refuse a classifier whose channels are not all in ``channels`` (one line naming the missing ones).

    Examples
    --------
    >>> check_panel({"channels": ["CD3", "CD8"]}, ["DAPI", "CD3", "CD8"], "m.czclf")
    >>> check_panel({"channels": ["CD3", "CXCR3"]}, ["DAPI", "CD3"], "m.czclf")
    Traceback (most recent call last):
    ...
    chemozone.errors.ClassifierError: m.czclf: classifier trained on panel ['CD3', 'CXCR3'], but this panel lacks ['CXCR3'] ...
    """
    have = set(map(str, channels))
    missing = [c for c in meta["channels"] if c not in have]
    if missing:
        raise ClassifierError(f"{path}: classifier trained on panel {meta['channels']}, but this panel lacks "
                              f"{missing} (channels here: {sorted(have)}); train a classifier on this panel")


def _verified_blob(path: Path, meta: dict) -> bytes:
    with zipfile.ZipFile(path) as zf:
        try:
            blob = zf.read("model.skops")
        except KeyError:
            raise ClassifierError(f"{path}: no model.skops inside; save the classifier again") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("model_sha256"):
        raise ClassifierError(f"{path}: model.skops has sha256 {digest[:12]}…, metadata records "
                              f"{str(meta.get('model_sha256'))[:12]}…; the file was altered or damaged, save it again")
    return blob


def _check_objects(objs, meta: dict, path: Path) -> None:
    """The loaded objects are what chemozone writes: one gradient-boosted model and one calibrator per entry."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    n = len(meta["classifiers"])
    ok = (isinstance(objs, dict) and len(objs.get("models", [])) == n and len(objs.get("calibrators", [])) == n
          and all(isinstance(m, HistGradientBoostingClassifier) for m in objs["models"])
          and all(c is None or isinstance(c, LogisticRegression) for c in objs["calibrators"]))
    if not ok:
        found = sorted({type(o).__name__ for v in (objs.values() if isinstance(objs, dict) else [objs]) for o in v})
        raise ClassifierError(f"{path}: model.skops holds {found}, not the {n} gradient-boosted model(s) and "
                              "calibrator(s) its metadata lists; refusing it")


def load_classifier(path: str | Path, *, channels: Sequence[str] | None = None) -> list[CellClassifier]:
    """Load the classifiers of a classifier file, after checking its hash, its types and (optionally) the panel.

    Parameters
    ----------
    path : str or Path
    channels : sequence of str, optional
        The panel the classifiers will be applied to (e.g. the run's channel names); every channel the
        classifiers were trained on must be in it.

    Returns
    -------
    list of CellClassifier
        In the order they were saved.

    Raises
    ------
    ClassifierError
        Not a classifier file, the model bytes do not match the recorded sha256, the model contains a type
        outside :data:`TRUSTED_TYPES`, or the panel lacks channels (named).
    """
    path = Path(path)
    meta = read_classifier_metadata(path)
    if channels is not None:
        check_panel(meta, channels, path)
    blob = _verified_blob(path, meta)
    sio = _skops()
    untrusted = [t for t in sio.get_untrusted_types(data=blob) if t not in TRUSTED_TYPES]
    if untrusted:
        raise ClassifierError(f"{path}: model.skops contains types outside chemozone's classifiers {untrusted[:4]}; "
                              "refusing to load it")
    objs = sio.loads(blob, trusted=list(TRUSTED_TYPES))
    _check_objects(objs, meta, path)
    out = []
    for e, model, cal in zip(meta["classifiers"], objs["models"], objs["calibrators"]):
        out.append(CellClassifier(target=e["target"], kind=e["kind"], classes=list(e["classes"]), model=model,
                                  calibrator=cal, features=list(e["features"]), channels=list(e["channels"]),
                                  k_neighbors=int(e["k_neighbors"]), metrics=dict(e["metrics"]),
                                  chemozone_version=e.get("chemozone_version", "")))
    return out


def write_classifier_metrics(path: str | Path, classifiers: CellClassifier | Sequence[CellClassifier]) -> Path:
    """Write the classifiers' cross-validated metrics as the JSON the report reads.

    The file (by default :attr:`chemozone.layout.RunLayout.classifier_metrics`, ``classifier/metrics.json``)
    holds ``{target: {"balanced_accuracy": float, "f1": float, "n_labels": int}}``: one entry per classifier
    (a marker, or the cell-type classification's name), from :attr:`CellClassifier.metrics`. Written
    atomically; an existing file is replaced (save it beside the classifier file it describes).

    Parameters
    ----------
    path : str or Path
    classifiers : CellClassifier or sequence of CellClassifier
        Distinct targets (as for :func:`save_classifier`).

    Returns
    -------
    Path

    Raises
    ------
    ClassifierError
        Nothing to write, or repeated targets.

    Examples
    --------
    >>> import json, tempfile
    >>> c = CellClassifier("CXCR3", "marker", [False, True], None, None, [], [], 6,
    ...                    {"balanced_accuracy": 0.91, "f1": 0.88, "n_folds": 5, "n_labels": 120})
    >>> p = write_classifier_metrics(Path(tempfile.mkdtemp()) / "metrics.json", [c])
    >>> json.loads(p.read_text())
    {'CXCR3': {'balanced_accuracy': 0.91, 'f1': 0.88, 'n_labels': 120}}
    """
    from ..layout import atomic_write_json

    items = _as_list(classifiers)
    data = {c.target: {"balanced_accuracy": float(c.metrics.get("balanced_accuracy", float("nan"))),
                       "f1": float(c.metrics.get("f1", float("nan"))), "n_labels": c.n_labels} for c in items}
    return atomic_write_json(path, data)
