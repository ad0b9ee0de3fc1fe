"""The oracle labelling loop of ``benchmarks/eval_classifier_dim.py`` (issue 17's synthetic "Done when"):
suggestions labelled from a given truth, within the label budget, deterministic."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FAST = {"max_iter": 15}  # fewer boosting rounds: the loop is under test, not the model
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("eval_classifier_dim", BENCH / "eval_classifier_dim.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eval_classifier_dim"] = mod
    spec.loader.exec_module(mod)
    return mod


def _table(n=120, seed=0):
    """Two samples; CD3 bright in the positives; every fourth cell has no truth (the oracle cannot label it)."""
    rng = np.random.default_rng(seed)
    pos = rng.random(n) < 0.4
    cd3 = np.where(pos, 3.0, 1.0) * rng.lognormal(0, 0.25, n)
    cells = pd.DataFrame({"sample_id": np.where(np.arange(n) < n // 2, "a", "b"), "cell_id": np.arange(1, n + 1),
                          "x_um": rng.uniform(0, 200, n), "y_um": rng.uniform(0, 200, n),
                          "CD3_cell": cd3, "CD3_cytoplasm": cd3 * 1.1})
    truth = pd.Series(list(pos), index=cells.index, dtype=object)
    truth[np.arange(n) % 4 == 3] = None
    return cells, truth


def test_oracle_labelling_budget_truth_and_determinism():
    from chemozone.classify import cell_features

    ev = _bench()
    cells, truth = _table()
    feats = cell_features(cells, k_neighbors=2)
    clf, labels, log = ev.oracle_labelling(cells, feats, truth, marker="CD3", seed=3, start=10, batch=15,
                                           budget=25, gbm_params=FAST)
    assert len(labels) == 25 and labels.index.is_unique  # exactly the budget (not a multiple of the batch), never more
    assert truth.loc[labels.index].notna().all()  # never a cell without truth
    assert (labels == truth.loc[labels.index].astype(bool)).all()  # every label is the truth's
    assert log["n_labels"].tolist()[-1] == 25 and (np.diff(log["n_labels"]) > 0).all()
    assert log["n_skipped"].iloc[-1] > 0  # cells without truth were suggested and skipped
    assert clf.n_labels == 25 and clf.metrics["f1"] > 0.8  # separable marker
    clf2, labels2, log2 = ev.oracle_labelling(cells, feats, truth, marker="CD3", seed=3, start=10, batch=15,
                                              budget=25, gbm_params=FAST)
    assert labels2.index.tolist() == labels.index.tolist() and log2.equals(log)
    assert np.array_equal(clf2.predict_proba(feats), clf.predict_proba(feats))


def test_oracle_labelling_errors():
    from chemozone.classify import cell_features

    ev = _bench()
    cells, truth = _table()
    feats = cell_features(cells, k_neighbors=0)
    with pytest.raises(ValueError, match="same index"):
        ev.oracle_labelling(cells, feats, truth.iloc[1:], marker="CD3", seed=0)
    only_neg = pd.Series(False, index=cells.index, dtype=object)
    with pytest.raises(ValueError, match="never had 3 labels of each class"):
        ev.oracle_labelling(cells, feats, only_neg, marker="CD3", seed=0, budget=40)
