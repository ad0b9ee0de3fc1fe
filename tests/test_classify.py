"""chemozone.classify: features, training, the classifier file, prediction, suggestions, labels, batch replay."""
from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from chemozone import classify as cl
from chemozone.errors import ChannelError, ClassifierError, ConfigError, MissingStepError


def _cells(n_per_sample: int = 150, samples=("s1", "s2"), seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two samples; CD3+ cells (30 %) are bright in CD3; CK is a second, uninformative channel."""
    rng = np.random.default_rng(seed)
    frames, truth = [], []
    for s in samples:
        pos = rng.random(n_per_sample) < 0.3
        cd3 = np.where(pos, rng.normal(3.0, 0.6, n_per_sample), rng.normal(1.0, 0.6, n_per_sample))
        frames.append(pd.DataFrame({
            "sample_id": s, "cell_id": np.arange(1, n_per_sample + 1),
            "x_um": rng.uniform(0, 300, n_per_sample), "y_um": rng.uniform(0, 300, n_per_sample),
            "CD3_nucleus": cd3 * 0.5, "CD3_cytoplasm": cd3, "CD3_cell": cd3 * 0.8,
            "CK_cytoplasm": rng.normal(2, 1, n_per_sample), "CK_cell": rng.normal(2, 1, n_per_sample),
            "area_um2": rng.uniform(40, 120, n_per_sample)}))
        truth.append(pos)
    return pd.concat(frames, ignore_index=True), np.concatenate(truth)


@pytest.fixture(scope="module")
def trained():
    cells, truth = _cells()
    feats = cl.cell_features(cells)
    lab = np.arange(0, len(cells), 3)  # every third cell labelled
    clf = cl.train_marker_classifier(feats.iloc[lab], truth[lab], marker="CD3", verbose=False)
    return cells, truth, feats, lab, clf


# ------------------------------------------------------------------------------------------------ features
def test_features_by_hand_and_per_sample():
    cells = pd.DataFrame({"sample_id": ["a", "a", "a", "b"], "cell_id": [1, 2, 3, 1],
                          "x_um": [0.0, 1.0, 10.0, 0.5], "y_um": 0.0, "CD3_cell": [2.0, 6.0, 4.0, 100.0],
                          "CD3_membrane": [3.0, 6.0, 1.0, 100.0], "CD3_cell_p90": [5.0, 9.0, 6.0, 200.0],
                          "cell_area_um2": [50.0, 60.0, 70.0, 80.0]})
    f = cl.cell_features(cells, k_neighbors=1)
    assert list(f.columns) == ["CD3_membrane", "CD3_cell", "CD3_cell_p90", "CD3_nbr", "CD3_own_nbr", "cell_area_um2"]
    # neighbours within the sample only: a1<->a2, a3->a2; b alone has none (NaN)
    np.testing.assert_array_equal(f["CD3_nbr"].to_numpy()[:3], [6.0, 2.0, 6.0])
    assert np.isnan(f["CD3_nbr"].iloc[3])
    # own membrane vs neighbour mean: (own - nbr) / (|own| + |nbr|)
    np.testing.assert_allclose(f["CD3_own_nbr"].to_numpy()[:3], [(3 - 6) / 9, (6 - 2) / 8, (1 - 6) / 7])
    assert f.attrs == {"channels": ["CD3"], "k_neighbors": 1}
    again = cl.cell_features(cells.iloc[::-1], k_neighbors=1).loc[cells.index]
    pd.testing.assert_frame_equal(f, again)  # row order does not change a cell's features


def test_features_of_an_imported_inform_table(shared_data):
    from chemozone.io import read_cell_table

    cells = read_cell_table(shared_data / "vectra_phenoptr" / "sample_cell_seg_data.csv").cells.iloc[:400]
    f = cl.cell_features(cells)
    assert cl.feature_channels(cells) == ["PDL1", "CD8", "FoxP3", "CD68", "PD1", "CK", "DAPI", "Autofluorescence"]
    assert {"CK_membrane", "CK_nbr", "CK_own_nbr", "cell_area_um2", "nucleus_area_um2"} <= set(f.columns)
    assert "Entire Cell CK (Opal 690) Max" not in f.columns and f.shape == (400, 8 * 4 + 8 * 2 + 2)


def test_feature_errors():
    cells = pd.DataFrame({"CD3_cell": [1.0, 2.0]})
    with pytest.raises(MissingStepError, match=r"lacks column\(s\) \['x_um', 'y_um'\]"):
        cl.cell_features(cells)
    with pytest.raises(ChannelError, match=r"no compartment mean of channel 'CD8'.*pick channels from \['CD3'\]"):
        cl.cell_features(cells, ["CD8"], k_neighbors=0)
    with pytest.raises(MissingStepError, match="no compartment means"):
        cl.cell_features(pd.DataFrame({"x_um": [1.0]}), k_neighbors=0)


# ------------------------------------------------------------------------------------------------ training
def test_marker_classifier_learns_and_reports_cv_metrics(trained, capsys):
    cells, truth, feats, lab, clf = trained
    held = np.setdiff1d(np.arange(len(cells)), lab)
    out = cl.predict_cells(cells, clf, features=feats)
    from sklearn.metrics import balanced_accuracy_score

    assert balanced_accuracy_score(truth[held], out["CD3_pos"].to_numpy()[held]) > 0.85
    m = clf.metrics
    assert m["n_labels"] == len(lab) and m["n_folds"] == 5 and m["balanced_accuracy"] > 0.8 and 0.7 < m["f1"] <= 1
    assert clf.channels == ["CD3", "CK"] and clf.k_neighbors == 6 and clf.features == list(feats.columns)
    # calibrated: the mean probability of held-out cells is close to the positive fraction
    assert abs(out["CD3_prob"].to_numpy()[held].mean() - truth[held].mean()) < 0.05
    cl.train_marker_classifier(feats.iloc[lab], truth[lab], marker="CD3")
    assert "classifier 'CD3' (marker): 100 labels" in capsys.readouterr().out


def test_too_few_labels():
    f = pd.DataFrame({"CD3_cell": np.arange(10.0)})
    with pytest.raises(ClassifierError, match=r"labels per class \{'False': 8, 'True': 2\}; label at least 3"):
        cl.train_marker_classifier(f, np.arange(10) >= 8, marker="CD3", channels=["CD3"], k_neighbors=0)
    with pytest.raises(ClassifierError, match="9 labels for 10 feature rows"):
        cl.train_marker_classifier(f, np.arange(9) >= 5, marker="CD3", channels=["CD3"], k_neighbors=0)
    with pytest.raises(ClassifierError, match=r"pass channels=\.\.\."):
        cl.train_marker_classifier(f, np.arange(10) >= 5, marker="CD3")
    y = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    with pytest.warns(UserWarning, match=r"classes \['c'\] have fewer than 3 labels and are left out"):
        clf = cl.train_cell_type_classifier(f, y, channels=["CD3"], k_neighbors=0, verbose=False,
                                            gbm_params={"max_iter": 10})
    assert clf.classes == ["a", "b"] and clf.metrics["label_counts"] == {"a": 5, "b": 3}


def test_cell_type_classifier_columns():
    rng = np.random.default_rng(3)
    f = pd.DataFrame({"CD3_cell": np.r_[rng.normal(0, .3, 20), rng.normal(2, .3, 20), rng.normal(4, .3, 20)]})
    y = ["tumor"] * 20 + ["T"] * 20 + ["B"] * 20
    clf = cl.train_cell_type_classifier(f, y, channels=["CD3"], k_neighbors=0, verbose=False, gbm_params={"max_iter": 20})
    assert clf.model.max_iter == 20 and clf.metrics["balanced_accuracy"] > 0.9
    out = cl.predict_cells(pd.DataFrame({"CD3_cell": [0.0, 2.0, 4.0]}), clf)
    assert out["classifier_cell_type"].tolist() == ["tumor", "T", "B"]
    np.testing.assert_allclose(out[["B_prob", "T_prob", "tumor_prob"]].sum(axis=1), 1.0)


# --------------------------------------------------------------------------------------------- model file
def test_file_round_trip_bit_for_bit_and_metadata(trained, tmp_path):
    cells, truth, feats, lab, clf = trained
    path = cl.save_classifier(tmp_path / "m.czclf", [clf])
    meta = cl.read_classifier_metadata(path)
    with zipfile.ZipFile(path) as zf:
        assert meta["model_sha256"] == hashlib.sha256(zf.read("model.skops")).hexdigest()
    e = meta["classifiers"][0]
    assert meta["channels"] == ["CD3", "CK"] and e["features"] == clf.features and e["n_labels"] == 100
    assert meta["chemozone_version"] and e["kind"] == "marker" and e["classes"] == [False, True]
    (back,) = cl.load_classifier(path, channels=["DAPI", "CD3", "CK"])
    a, b = cl.predict_cells(cells, clf), cl.predict_cells(cells, back)
    assert a["CD3_prob"].to_numpy().tobytes() == b["CD3_prob"].to_numpy().tobytes()
    assert (a["CD3_pos"] == (a["CD3_prob"] >= 0.5)).all() and a["CD3_pos"].dtype == bool


def test_file_refusals(trained, tmp_path):
    clf = trained[-1]
    path = cl.save_classifier(tmp_path / "m.czclf", clf)
    with pytest.raises(ClassifierError, match=r"m\.czclf: classifier trained on panel \['CD3', 'CK'\], but this panel "
                                              r"lacks \['CK'\]"):
        cl.load_classifier(path, channels=["DAPI", "CD3", "CD8"])
    # altered model bytes: the hash no longer matches
    with zipfile.ZipFile(path) as zf:
        meta, blob = zf.read("metadata.json"), zf.read("model.skops")
    bad = tmp_path / "bad.czclf"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("metadata.json", meta)
        zf.writestr("model.skops", blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ClassifierError, match=r"bad\.czclf: model\.skops has sha256 .* the file was altered"):
        cl.load_classifier(bad)
    # a model of another type (with a matching hash) is refused before it is built
    import skops.io as sio
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    def forged(obj, name):
        other = sio.dumps(obj)
        m = json.loads(meta)
        m["model_sha256"] = hashlib.sha256(other).hexdigest()
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("metadata.json", json.dumps(m))
            zf.writestr("model.skops", other)
        return tmp_path / name

    x, y = np.arange(20.0)[:, None], np.arange(20) >= 10
    cal = CalibratedClassifierCV(LogisticRegression(), cv=2).fit(x, y)  # holds types skops does not trust
    with pytest.raises(ClassifierError, match=r"evil\.czclf: model\.skops contains types outside chemozone's "
                                              r"classifiers \['sklearn\.calibration\._CalibratedClassifier'"):
        cl.load_classifier(forged({"models": [cal], "calibrators": [None]}, "evil.czclf"))
    with pytest.raises(ClassifierError, match=r"other\.czclf: model\.skops holds \['NoneType', 'Pipeline'\], not the 1 "
                                              r"gradient-boosted"):
        cl.load_classifier(forged({"models": [Pipeline([("s", StandardScaler())])], "calibrators": [None]}, "other.czclf"))
    (tmp_path / "x.czclf").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ClassifierError, match=r"x\.czclf: not a chemozone classifier file"):
        cl.load_classifier(tmp_path / "x.czclf")
    with pytest.raises(ClassifierError, match=r"repeat target\(s\) \['CD3'\]"):
        cl.save_classifier(tmp_path / "two.czclf", [clf, clf])
    with pytest.raises(MissingStepError, match=r"needs feature\(s\) \['CD3_nucleus'"):
        cl.predict_cells(trained[0].drop(columns="CD3_nucleus"), clf)


# ---------------------------------------------------------------------------------------------- suggestions
def test_suggestions_uncertain_spread_deterministic(trained):
    cells, truth, feats, lab, clf = trained
    labelled = cells.iloc[lab][["sample_id", "cell_id"]]
    s1 = cl.suggest_cells(cells, clf, k=20, labelled=labelled, features=feats, seed=1)
    s2 = cl.suggest_cells(cells, clf, k=20, labelled=labelled, features=feats, seed=1)
    pd.testing.assert_frame_equal(s1, s2)
    assert s1["sample_id"].value_counts().to_dict() == {"s1": 10, "s2": 10}
    assert not set(s1.index) & set(cells.index[lab])
    u_all = cl.uncertainty(clf.predict_proba(feats))
    free = np.setdiff1d(np.arange(len(cells)), lab)
    assert s1["uncertainty"].mean() > np.quantile(u_all[free], 0.8)  # among the most uncertain cells
    assert list(s1["rank"]) == list(range(20))


def test_suggestions_skip_near_duplicates():
    base = pd.DataFrame({"sample_id": "s", "cell_id": np.arange(1, 21), "x_um": np.arange(20.0), "y_um": 0.0,
                         "CD3_cell": np.r_[np.full(10, 5.0), np.linspace(0, 10, 10)]})
    s = cl.suggest_cells(base, k=5, seed=0)
    assert (s["cell_id"] <= 10).sum() <= 1  # ten identical cells: at most one suggested
    s = cl.suggest_cells(base, k=5, seed=0, duplicate_quantile=0)  # no filter: random order of equal uncertainty
    assert (s["cell_id"] <= 10).sum() >= 2
    assert len(cl.suggest_cells(base, k=30, seed=0)) == 20  # fewer unlabelled cells than asked


# ---------------------------------------------------------------------------------------------- label store
def test_label_store_save_continue_merge(tmp_path):
    store = cl.LabelStore.for_run(tmp_path / "run")
    assert store.path == tmp_path / "run" / "classifier" / "labels.parquet"
    store.add("s1", [1, 2, 3], target="CD3", labels=[True, False, True], timestamp="2024-01-01T00:00:00+00:00")
    store.add("s1", [4], target="cell_type", labels="T")
    store.save()
    later = cl.LabelStore.for_run(tmp_path / "run")
    later.add("s1", [2], target="CD3", labels=True, timestamp="2024-01-02T00:00:00+00:00")
    later.remove("s1", [3], target="CD3")
    assert later.labels("CD3")[["cell_id", "label"]].values.tolist() == [[1, "pos"], [2, "pos"]]
    other = cl.LabelStore(tmp_path / "other.parquet")
    other.add("s1", [1], target="CD3", labels=False, timestamp="2023-12-31T00:00:00+00:00")  # older: loses
    other.add("s2", [1], target="CD3", labels=False, timestamp="2023-12-31T00:00:00+00:00")
    later.merge(other)
    assert later.labels("CD3")[["sample_id", "cell_id", "label"]].values.tolist() == [
        ["s1", 1, "pos"], ["s1", 2, "pos"], ["s2", 1, "neg"]]
    cells = pd.DataFrame({"sample_id": ["s1", "s1", "s2", "s3"], "cell_id": [2, 1, 1, 1]})
    feats = pd.DataFrame({"f": [20.0, 10.0, 30.0, 40.0]})
    x, y = later.training_set(cells, feats, target="CD3")
    assert x["f"].tolist() == [20.0, 10.0, 30.0] and y.tolist() == [True, True, False]
    with pytest.raises(ClassifierError, match=r"no label of 'CXCR3' matches a cell"):
        later.training_set(cells, feats, target="CXCR3")
    with pytest.raises(ClassifierError, match=r"labels of \['CD3'\] are both marker"):
        later.add("s1", [9], target="CD3", labels="T")
    (tmp_path / "junk.parquet").write_bytes(pd.DataFrame({"a": [1]}).to_parquet())
    with pytest.raises(ClassifierError, match=r"junk\.parquet: not a label file"):
        cl.LabelStore(tmp_path / "junk.parquet")


# ----------------------------------------------------------------------------------------------- batch replay
def _scimap_csv(cells: pd.DataFrame, path):
    pd.DataFrame({"CellID": cells["cell_id"], "imageid": cells["sample_id"], "X_centroid": cells["x_um"],
                  "Y_centroid": cells["y_um"], "CD3_nucleiMask": cells["CD3_nucleus"],
                  "CD3_cellMask": cells["CD3_cell"], "CK_cellMask": cells["CK_cell"],
                  "Area": cells["area_um2"]}).to_csv(path, index=False)


def test_run_replays_the_classifier_exactly(tmp_path):
    from chemozone.io import read_cell_table
    from chemozone.table_run import run_cell_tables

    raw, truth = _cells(120)
    _scimap_csv(raw, tmp_path / "cells.csv")
    cells = read_cell_table(tmp_path / "cells.csv", "scimap", pixel_size_um=1.0).cells
    feats = cl.cell_features(cells)
    clf = cl.train_marker_classifier(feats.iloc[::2], truth[::2], marker="CD3", verbose=False)
    model = cl.save_classifier(tmp_path / "m.czclf", clf)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"panel: {{pixel_size_um: 1.0}}\ncell_tables: {{format: scimap}}\nphenotypes:\n"
                   f"  classifier_file: {model}\n  markers:\n    CD3: {{gate: {{method: classifier}}}}\n"
                   "  rules:\n    - {cell_type: T, pos: [CD3]}\n")
    assert run_cell_tables(tmp_path / "cells.csv", cfg, tmp_path / "run").exit_code == 0
    run = pd.read_parquet(tmp_path / "run" / "cells.parquet")
    direct = cl.predict_cells(cells, cl.load_classifier(model))
    key = ["sample_id", "cell_id"]
    m = run[key + ["CD3_prob", "CD3_pos", "cell_type"]].merge(direct[key + ["CD3_prob", "CD3_pos"]], on=key)
    assert len(m) == len(cells)
    assert m["CD3_prob_x"].to_numpy().tobytes() == m["CD3_prob_y"].to_numpy().tobytes()
    assert (m["CD3_pos_x"] == m["CD3_pos_y"]).all() and (m["cell_type"].eq("T") == m["CD3_pos_x"]).all()
    gates = pd.read_parquet(tmp_path / "run" / "gates.parquet")
    assert set(gates["method"]) == {"classifier"}
    # a panel without CK: refused before anything runs, naming the missing channel
    _scimap_csv(raw.assign(CK_cell=np.nan), tmp_path / "noCK.csv")
    pd.read_csv(tmp_path / "noCK.csv").drop(columns="CK_cellMask").to_csv(tmp_path / "noCK.csv", index=False)
    with pytest.raises(ClassifierError, match=r"m\.czclf: classifier trained on panel \['CD3', 'CK'\], but this panel "
                                              r"lacks \['CK'\]"):
        run_cell_tables(tmp_path / "noCK.csv", cfg, tmp_path / "run2")
    cfg.write_text(cfg.read_text().replace("    CD3: {gate: {method: classifier}}\n",
                                           "    CD3: {gate: {method: classifier}}\n    CK: {gate: {method: classifier}}\n"))
    with pytest.raises(ClassifierError, match=r"has marker classifiers \['CD3'\] but not \['CK'\]"):
        run_cell_tables(tmp_path / "cells.csv", cfg, tmp_path / "run3")


def test_image_run_validation_checks_the_classifier_panel(trained, tmp_path):
    """``chemozone run`` on images checks the classifier file against each image's (canonical) channel names."""
    from types import SimpleNamespace

    from chemozone.config import config_from_dict
    from chemozone.run import _validate_stage_config

    model = cl.save_classifier(tmp_path / "m.czclf", trained[-1])
    cfg = config_from_dict({"panel": {"aliases": {"CK": ["panCK"]}}, "phenotypes": {
        "classifier_file": str(model), "markers": {"CD3": {"gate": {"method": "classifier"}}}}})
    _validate_stage_config(cfg, SimpleNamespace(images={"s1": {"channels": ["DAPI", "CD3", "panCK (Opal 690)"]}}))
    with pytest.raises(ClassifierError, match=r"but this panel lacks \['CK'\] \(channels here: \['CD3', 'DAPI', 'PD1'\]\)"):
        _validate_stage_config(cfg, SimpleNamespace(images={"s1": {"channels": ["DAPI", "CD3", "PD1"]}}))


def test_classifier_gate_config_errors():
    from chemozone.config import MarkerConfig, config_from_dict
    from chemozone.phenotype import apply_gates, compute_gates

    with pytest.raises(ConfigError, match=r"phenotypes.*\['CD3'\] use gate method 'classifier' but "
                                          r"phenotypes.classifier_file is not set"):
        config_from_dict({"phenotypes": {"markers": {"CD3": {"gate": {"method": "classifier"}}}}})
    markers = {"CD3": MarkerConfig(gate={"method": "classifier"})}
    cells = pd.DataFrame({"sample_id": "s", "CD3_cell": [1.0, 5.0]})
    g = compute_gates(cells, markers=markers)
    with pytest.raises(MissingStepError, match=r"lacks column\(s\) \['CD3_prob', 'CD3_pos'\]; run "
                                               r"chemozone.classify.predict_cells"):
        apply_gates(cells, g, markers=markers)
    with pytest.raises(ClassifierError, match=r"phenotypes.classifier_file: .*nope\.czclf does not exist"):
        cl.check_classifier_file("nope.czclf")


def test_inform_subset_beats_chance_and_suggestions_repeat(shared_data):
    """Real inForm table (1,500 of its 6,072 cells): 150 random labels of inForm's 5 phenotypes give a held-out balanced
    accuracy far above chance (0.2); the suggested next cells are uncertain ones and the same on every call."""
    from sklearn.metrics import balanced_accuracy_score

    from chemozone.io import read_cell_table

    cells = read_cell_table(shared_data / "vectra_phenoptr" / "sample_cell_seg_data.csv").cells
    cells = cells.iloc[np.random.default_rng(0).permutation(len(cells))[:1500]].reset_index(drop=True)
    truth = cells["vendor_phenotype"].astype(str).to_numpy()
    feats = cl.cell_features(cells)
    lab = np.arange(150)
    with pytest.warns(UserWarning, match="left out") if min(pd.Series(truth[lab]).value_counts()) < 3 else _no_warning():
        clf = cl.train_cell_type_classifier(feats.iloc[lab], truth[lab], verbose=False, gbm_params={"max_iter": 30})
    pred = cl.predict_cells(cells, clf, features=feats)["classifier_cell_type"].to_numpy()
    assert balanced_accuracy_score(truth[150:], pred[150:]) > 0.6
    labelled = cells.iloc[lab][["sample_id", "cell_id"]]
    a, b = (cl.suggest_cells(cells, clf, k=30, labelled=labelled, features=feats, seed=0) for _ in range(2))
    pd.testing.assert_frame_equal(a, b)
    u = cl.uncertainty(clf.predict_proba(feats))[150:]
    assert not set(a.index) & set(lab) and a["uncertainty"].min() > np.median(u)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()
