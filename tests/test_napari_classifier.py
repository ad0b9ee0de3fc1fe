"""The napari cell classifier widget (issue 17): label by click and lasso, train, preview, suggestions across
samples, labels kept in the run folder, the saved classifier replayed as batch does.

GUI tests (marked ``gui``) need an X server: run under ``xvfb-run -a``. The fixture ``clf_run`` fabricates a
tiny table run of three samples (6 x 6 cells each, CXCR3 bright in a known third of them; sample ``s1`` also
has a ``cells`` label image), so the truth of every cell is known.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from chemozone.layout import RunLayout

SAMPLES = ("s1", "s2", "s3")
N_SIDE, STEP_UM, RADIUS_UM = 6, 10.0, 3


def gui(func):
    for mark in (pytest.mark.gui, pytest.mark.filterwarnings("ignore::DeprecationWarning:vispy.*"),
                 pytest.mark.filterwarnings("ignore::DeprecationWarning:napari.*")):
        func = mark(func)
    return func


def _truth(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return (i + 2 * j) % 3 == 0  # CXCR3+ cells, scattered (12 of 36)


def _centre(cell_id: int) -> np.ndarray:
    """(y_um, x_um) of a cell (ids 1..36 row by row)."""
    i, j = divmod(cell_id - 1, N_SIDE)
    return np.array([5.0 + STEP_UM * i, 5.0 + STEP_UM * j])


def _cells(sid: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    i, j = np.divmod(np.arange(N_SIDE * N_SIDE), N_SIDE)
    pos = _truth(i, j)
    n = len(i)
    return pd.DataFrame({
        "sample_id": sid, "cell_id": np.arange(1, n + 1, dtype=np.uint32),
        "x_um": 5.0 + STEP_UM * j, "y_um": 5.0 + STEP_UM * i, "area_um2": rng.normal(30, 2, n),
        "CXCR3_cell": np.where(pos, 300.0, 100.0) + rng.normal(0, 15, n),
        "CXCR3_nucleus": np.where(pos, 150.0, 90.0) + rng.normal(0, 15, n),
        "CD3_cell": rng.normal(200, 30, n), "DAPI_nucleus": rng.normal(800, 50, n),
        "cell_type": np.where(pos, "T cell", "Tumor"), "phenotype": np.where(pos, "T cell", "Tumor"),
    })


@pytest.fixture
def clf_run(tmp_path) -> Path:
    """A table run with samples s1..s3 (cells.parquet each; s1 with a cells label image at 1 µm/px)."""
    from chemozone.config import config_from_dict
    from chemozone.io import write_labels_zarr
    from chemozone.layout import atomic_write_json, new_provenance, write_parquet

    lay = RunLayout(tmp_path / "run")
    for k, sid in enumerate(SAMPLES):
        lay.sample_dir(sid).mkdir(parents=True)
        write_parquet(_cells(sid, k), lay.cells(sid))
    yy, xx = np.mgrid[:60, :60] + 0.5
    lbl = np.zeros((60, 60), np.uint32)
    for cid in range(1, N_SIDE * N_SIDE + 1):
        y, x = _centre(cid)
        lbl[(yy - y) ** 2 + (xx - x) ** 2 <= RADIUS_UM ** 2] = cid
    write_labels_zarr(lay.masks("s1"), "cells", lbl, pixel_size_um=1.0)
    cfg = config_from_dict({"phenotypes": {"markers": {"CXCR3": {"gate": {"method": "otsu"}}}}})
    atomic_write_json(lay.run_json, new_provenance(cfg))
    return lay.root


def _is_pos(cell_ids) -> np.ndarray:
    i, j = np.divmod(np.asarray(cell_ids, dtype=int) - 1, N_SIDE)
    return _truth(i, j)


def _box(cell_ids) -> np.ndarray:
    """A rectangle (world µm) around the given cells."""
    c = np.array([_centre(k) for k in cell_ids])
    lo, hi = c.min(axis=0) - 4, c.max(axis=0) + 4
    return np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]], [hi[0], lo[1]]])


@gui
def test_classifier_widget_label_train_preview_suggest_save_and_replay(make_napari_viewer, clf_run):
    from chemozone.classify import apply_classifier_file, format_metrics
    from chemozone_napari._classifier_widget import NEGATIVE, POSITIVE, CellClassifierWidget, _camera
    from chemozone_napari._colors import probability_colors

    viewer = make_napari_viewer()
    viewer.open(str(clf_run), plugin="chemozone")
    w = CellClassifierWidget(viewer)
    assert (w.sample_id, w.target, w.session.sample_ids) == ("s1", "CXCR3", list(SAMPLES))
    # clicking: off-centre inside cell 13's label (the labels layer decides), then toggling a label off
    assert w.label_at(_centre(13) + [2.0, -1.5], POSITIVE) == 13
    assert w.label_at(_centre(13) + [2.0, -1.5], POSITIVE) == 13  # same label again: removed
    assert len(w.session.labels("CXCR3")) == 0
    pos_s1 = [1, 4, 8, 11]  # (i + 2j) % 3 == 0
    for cid in pos_s1:
        assert w.label_at(_centre(cid) + 0.5, POSITIVE) == cid
    assert w.label_at([500.0, 500.0]) is None  # no cell there
    # lasso: two rectangles around four negative cells
    w.start_lasso()
    viewer.layers["classifier lasso"].add_rectangles([_box([2, 3]), _box([5, 6])])
    assert w.label_lasso(NEGATIVE) == 4 and len(viewer.layers["classifier lasso"].data) == 0
    assert len(viewer.layers["classifier labels"].data) == 8
    # another sample: opened through the reader, s1 hidden
    w.show_sample("s2")
    s2 = w.cells_layer("s2")
    assert s2 is not None and s2.visible and not w.cells_layer("s1").visible
    w.label_cells([15, 18, 19], POSITIVE)
    w.label_cells([7, 9, 10], NEGATIVE)
    lab = w.session.labels("CXCR3")
    assert (lab["label"] == "pos").tolist() == _is_pos(lab["cell_id"]).tolist()

    clf = w.train()
    assert w.metrics.text() == format_metrics(clf) and "balanced accuracy" in w.metrics.text()
    assert clf.n_labels == 14
    prob = s2.features["CXCR3_prob"].to_numpy()
    truth = _is_pos(s2.features["cell_id"])
    assert ((prob >= 0.5) == truth).mean() >= 0.95  # unlabelled cells of s2 called right
    np.testing.assert_allclose(s2.face_color, probability_colors(prob), atol=1e-6)

    sug = w.suggest(6)
    assert sug["sample_id"].nunique() == 3 and len(sug) == 6  # spread across the samples
    assert not set(zip(sug["sample_id"], sug["cell_id"].astype(int))) & set(zip(lab["sample_id"], lab["cell_id"]))
    seen = []
    while w.focused is not None:
        sid, cid = w.focused
        seen.append(sid)
        assert w.sample_id == sid and w.cells_layer(sid).visible
        np.testing.assert_allclose(_camera(viewer).center[-2:], _centre(cid))
        w.label_focused(POSITIVE if _is_pos([cid])[0] else NEGATIVE)
    assert set(seen) == set(SAMPLES) and len(w.session.labels("CXCR3")) == 20

    clf_path, metrics_path = w.save_classifier()
    assert clf_path == RunLayout(clf_run).classifier_file and metrics_path == RunLayout(clf_run).classifier_metrics
    m = json.loads(metrics_path.read_text())
    assert m == {"CXCR3": {"balanced_accuracy": clf.metrics["balanced_accuracy"], "f1": clf.metrics["f1"],
                           "n_labels": 14}}
    # batch replay of the saved file on a sample's table gives exactly the probabilities on the canvas
    w.show_sample("s3")
    shown = w.preview()
    replayed = apply_classifier_file(pd.read_parquet(RunLayout(clf_run).cells("s3")), clf_path)
    np.testing.assert_array_equal(replayed["CXCR3_prob"].to_numpy(), shown)

    # a new widget continues: labels and the classifier come back from the run folder
    labels_before = w.session.labels("CXCR3")
    w.close()
    w2 = CellClassifierWidget(viewer)
    assert w2.sample_id == "s3" and "20 labels saved" in w2.run_info.text()  # the sample on show
    pd.testing.assert_frame_equal(w2.session.labels("CXCR3"), labels_before)
    assert w2.metrics.text() == format_metrics(clf)
    np.testing.assert_array_equal(w2.preview(), shown)


@gui
def test_classifier_widget_cell_types_and_its_messages(make_napari_viewer, clf_run):
    from chemozone.errors import ClassifierError
    from chemozone_napari._classifier_widget import CellClassifierWidget

    viewer = make_napari_viewer()
    w = CellClassifierWidget(viewer)  # before the run is open
    w.train_btn.click()
    assert "open a run folder first" in w.status.text()
    viewer.open(str(clf_run), plugin="chemozone")
    assert w.session is not None and w.sample_id == "s1"  # it attaches to the run as it opens
    assert w.label_lasso() == 0 and "Lasso first" in w.status.text()
    assert w.preview() is None and "train" in w.status.text()
    w.set_target("cell type", classes=[])
    with pytest.raises(ClassifierError, match="type the cell-type class names"):
        w.label_at(_centre(1))
    w.set_target("cell type", classes=["T cell", "Tumor"])
    assert [w.label_box.itemText(k) for k in range(w.label_box.count())] == ["T cell", "Tumor"]
    # the canvas callback: a click (press, release) labels the cell under it with the chosen class; a drag does not
    for moves, expected in (([], ["T cell"]), ([_centre(20) + 6.0], ["T cell"])):
        w.label_box.setCurrentText("T cell")
        event = SimpleNamespace(type="mouse_press", button=1, position=tuple(_centre(20 if moves else 1)))
        gen = w._on_mouse(viewer, event)
        next(gen)
        for pos in moves:
            event.type, event.position = "mouse_move", tuple(pos)
            next(gen)
        event.type = "mouse_release"
        next(gen, None)
        lab = w.session.labels("cell_type")
        assert lab["label"].tolist() == expected and lab["cell_id"].tolist() == [1]
    w.label_cells([4], "T cell")
    w.label_cells([2, 3, 5, 6, 7, 9], "Tumor")
    w.train_btn.click()  # two T cells only: refused, said in one line
    assert "label at least 3 cells of each" in w.status.text() and "cell_type" not in w.session.classifiers
    w.label_cells([8, 11, 15, 18], "T cell")
    clf = w.train()
    assert clf.kind == "cell_type" and clf.classes == ["T cell", "Tumor"]
    layer = w.cells_layer()
    best = np.where(layer.features["T cell_prob"] > layer.features["Tumor_prob"], "T cell", "Tumor")
    assert (best == layer.features["cell_type"]).mean() >= 0.9
    assert np.ptp(layer.face_color[:, 3]) > 0  # opacity follows the probability


def test_session_refuses_a_classifier_of_another_panel(clf_run):
    """A classifier file trained on other channels is not loaded; the widget says which channels are missing."""
    from chemozone import classify as cl
    from chemozone.errors import ClassifierError
    from chemozone_napari._classifier import ClassifierSession

    other = pd.DataFrame({"sample_id": "x", "cell_id": np.arange(1, 21), "x_um": np.arange(20.0), "y_um": 0.0,
                          "CCR5_cell": np.r_[np.full(10, 1.0), np.full(10, 5.0)] + np.linspace(0, 0.1, 20)})
    clf = cl.train_marker_classifier(cl.cell_features(other), np.arange(20) >= 10, marker="CCR5", verbose=False)
    cl.save_classifier(RunLayout(clf_run).classifier_file, clf)
    s = ClassifierSession(clf_run)
    assert s.classifiers == {} and "lacks ['CCR5']" in s.note
    with pytest.raises(ClassifierError, match="no classifier to save; train one first"):
        cl.write_classifier_metrics(RunLayout(clf_run).classifier_metrics, [])
