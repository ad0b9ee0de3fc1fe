"""Threshold mode ``halfmax``: reference median + a fraction of one producer cell's smoothed signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chemozone._zone_halfmax import MIN_PRODUCERS, producer_levels, signal_at_cells
from chemozone.config import ThresholdConfig, ZoneConfig, config_from_dict
from chemozone.errors import ConfigError, MissingStepError
from chemozone.zones import compute_zone_thresholds, signal_summary

SAMPLES = pd.DataFrame({"sample_id": ["p1_0", "p1_8", "p2_0", "p2_8"], "patient": ["p1", "p1", "p2", "p2"],
                        "dose_gy": [0, 8, 0, 8]})


def _summ(vals: dict[str, np.ndarray], zone: ZoneConfig) -> pd.DataFrame:
    return pd.concat([signal_summary(np.asarray(v, np.float32).reshape(1, 1, -1), None, sample_id=s, zone=zone.name,
                                     channels=zone.channels) for s, v in vals.items()], ignore_index=True)


def _cells(sid: str, xy: list[tuple[float, float]], signal: list[float], producer: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": sid, "zone": "C", "channel": "C", "cell_id": np.arange(1, len(xy) + 1),
                         "x_um": [p[0] for p in xy], "y_um": [p[1] for p in xy], "signal": signal,
                         "producer": producer})


def _inputs(zone: ZoneConfig):
    # sham medians by hand: p1 = 10, p2 = 20 (odd-length integer ranges)
    vals = {"p1_0": np.arange(0, 21.0), "p1_8": np.arange(0, 101.0), "p2_0": np.arange(10, 31.0),
            "p2_8": np.arange(0, 101.0)}
    cells = pd.concat([
        # p1_8: a lone producer (60 - 10 = 50) and a touching pair (each 110 - 10 = 100, shared by 2 -> 50 each);
        # a bright non-producer that must not count
        _cells("p1_8", [(0, 0), (500, 0), (500, 0), (900, 900)], [60, 110, 110, 400], [True, True, True, False]),
        # p2_8: two lone producers, 20 + 70 and 20 + 30 -> 70 and 30
        _cells("p2_8", [(0, 0), (0, 800)], [90, 50], [True, True]),
        # a sham producer (never used for the level: reference samples are the background)
        _cells("p1_0", [(0, 0)], [1000], [True]),
    ], ignore_index=True)
    return _summ(vals, zone), cells


def test_halfmax_threshold_by_hand():
    """Level of one producer = median(50, 50, 50, 70, 30) = 50; threshold = sham median + 0.5 * 50."""
    z = ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(mode="halfmax"))
    summ, cells = _inputs(z)
    t = compute_zone_thresholds(summ, SAMPLES, zones=[z], cell_signals=cells).set_index("sample_id")
    assert t.loc["p1_8", "threshold"] == pytest.approx(10 + 25) and t.loc["p1_0", "threshold"] == pytest.approx(35)
    assert t.loc["p2_8", "threshold"] == pytest.approx(20 + 25)
    assert (t["mode"] == "halfmax_f0.5").all()
    # 5 producers < MIN_PRODUCERS: said in the table
    assert t["warning"].str.contains(f"only 5 producer cells \\(< {MIN_PRODUCERS}\\)").all()
    z3 = ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(mode="halfmax", fraction=0.3))
    t3 = compute_zone_thresholds(summ, SAMPLES, zones=[z3], cell_signals=cells).set_index("sample_id")
    assert t3.loc["p2_8", "threshold"] == pytest.approx(20 + 0.3 * 50)


def test_producer_levels_take_out_the_neighbours_share():
    # two producers 10 µm apart with sigma 10: each weight 1 + exp(-0.5)
    r = producer_levels([0, 10], [0, 0], [30, 30], background=0.0, smooth_um=10.0)
    np.testing.assert_allclose(r, 30 / (1 + np.exp(-0.5)))
    assert producer_levels([], [], [], background=0.0, smooth_um=10.0).size == 0


def test_signal_at_cells_reads_the_grid_pixel_of_each_centre():
    sig = np.arange(12.0).reshape(2, 2, 3)
    cells = pd.DataFrame({"cell_id": [7, 9], "x_um": [5.9, 0.0], "y_um": [0.5, 3.9]})
    out = signal_at_cells(sig, cells, grid_um=2.0, sample_id="s", zone="M", channels=["A", "B"])
    assert out[["channel", "cell_id", "signal"]].values.tolist() == [["A", 7, 2.0], ["A", 9, 3.0], ["B", 7, 8.0],
                                                                     ["B", 9, 9.0]]


def test_halfmax_without_producers_falls_back_to_the_background_mode_with_a_warning():
    z = ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(mode="halfmax"))
    summ, cells = _inputs(z)
    cells["producer"] = False
    t = compute_zone_thresholds(summ, SAMPLES, zones=[z], cell_signals=cells)
    zb = ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(mode="background"))
    tb = compute_zone_thresholds(summ, SAMPLES, zones=[zb])
    np.testing.assert_allclose(t["threshold"], tb["threshold"])
    assert t["warning"].str.contains("halfmax: no gated producer cell in 2 non-reference samples").all()
    cells["producer"] = True
    cells["signal"] = 0.0  # producers, but not above the sham medians (10, 20)
    t = compute_zone_thresholds(summ, SAMPLES, zones=[z], cell_signals=cells)
    assert t["warning"].str.contains("the median signal of 6 producer cells is not above the reference").all()


def test_halfmax_borrows_the_other_shams_when_a_patients_sham_has_no_tissue():
    """An empty sham (no tissue) used to leave its patient's thresholds NaN, i.e. every zone of that patient
    silently empty. Now that patient's background is the median of all reference samples (here p1's sham, 10),
    with a warning, and its producers count towards the level: [50, 50, 50] of p1 and 90 - 10, 50 - 10 of p2."""
    z = ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(mode="halfmax"))
    summ, cells = _inputs(z)
    empty = _summ({"p2_0": np.array([])}, z)
    summ = pd.concat([summ[summ["sample_id"] != "p2_0"], empty], ignore_index=True)
    t = compute_zone_thresholds(summ, SAMPLES, zones=[z], cell_signals=cells).set_index("sample_id")
    assert t.loc["p1_8", "threshold"] == pytest.approx(10 + 0.5 * 50)
    assert t.loc["p2_8", "threshold"] == pytest.approx(10 + 0.5 * 50)
    assert t.loc["p2_8", "warning"].startswith("the reference samples of patient=p2 (p2_0) have no tissue pixels")
    assert "have no tissue" not in t.loc["p1_8", "warning"]


def test_halfmax_errors_name_the_missing_step_and_config_key():
    z = ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(mode="halfmax"))
    summ, _ = _inputs(z)
    with pytest.raises(MissingStepError, match=r"zones\[0\].threshold: mode 'halfmax' needs the signal at every cell"):
        compute_zone_thresholds(summ, SAMPLES, zones=[z])
    with pytest.raises(ConfigError, match=r"zones\[0\]: zone 'T': threshold mode 'halfmax' needs producer cells"):
        config_from_dict({"zones": [{"name": "T", "source": "tumor", "channels": ["panCK"],
                                     "threshold": {"mode": "halfmax"}}]})
    with pytest.raises(ConfigError, match=r"'halfmax' gates the producer cells, but \['CXCL8'\] is not in phenotypes.markers"):
        config_from_dict({"zones": [{"name": "C8", "channels": ["CXCL8"], "threshold": {"mode": "halfmax"}}]})
    with pytest.raises(ConfigError, match="fraction"):
        config_from_dict({"zones": [{"name": "C8", "channels": ["CXCL8"], "threshold": {"mode": "halfmax", "fraction": 1.5}}]})


def test_one_producer_per_footprint():
    """A dimmer 'producer' within smooth_um of a brighter one (spillover, blur, diffuse chemokine) is not counted;
    beyond smooth_um both count and share by their Gaussian weight."""
    r = producer_levels([0, 6], [0, 0], [50, 20], background=0.0, smooth_um=10.0)
    assert r.tolist() == [50.0]
    r = producer_levels([0, 12], [0, 0], [50, 20], background=0.0, smooth_um=10.0)
    w = 1 + np.exp(-144 / 200)
    np.testing.assert_allclose(r, [50 / w, 20 / w])


@pytest.mark.slow
def test_halfmax_counts_the_producers_of_a_saved_classifier(tmp_path):
    """A producer marker gated by a saved cell classifier (``phenotypes.classifier_file``, gate method
    ``classifier``) in an image run: the cohort step gates producers with the classifier's calls (it stopped
    with "run chemozone.classify.predict_cells" before); the producers counted are those calls, one per footprint."""
    import yaml

    from chemozone import classify as cl
    from chemozone.run import run_batch
    from chemozone.synth import generate_cohort

    cohort = generate_cohort(tmp_path / "cohort", preset="tiny", seed=3)
    assert run_batch(cohort, cohort / "config.yaml", tmp_path / "gated", in_process=True, progress=False).exit_code == 0
    meas = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "gated" / "samples").glob("*/measurements.parquet"))],
                     ignore_index=True)
    gated = pd.read_parquet(tmp_path / "gated" / "cells.parquet")
    labels = meas[["sample_id", "cell_id"]].merge(gated[["sample_id", "cell_id", "CXCL10_pos"]], how="left")["CXCL10_pos"]
    feats = cl.cell_features(meas)
    clf = cl.train_marker_classifier(feats, labels.fillna(False).to_numpy(bool), marker="CXCL10", verbose=False)
    model = cl.save_classifier(tmp_path / "cxcl10.czclf", clf)
    cfg = yaml.safe_load((cohort / "config.yaml").read_text())
    cfg["phenotypes"]["classifier_file"] = str(model)
    cfg["phenotypes"]["markers"]["CXCL10"]["gate"] = {"method": "classifier"}
    (tmp_path / "clf.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = run_batch(cohort, tmp_path / "clf.yaml", tmp_path / "clf", in_process=True, progress=False)
    assert res.exit_code == 0
    thr = pd.read_parquet(tmp_path / "clf" / "zone_thresholds.parquet")
    row = thr[thr["zone"] == "CXCL10"].iloc[0]
    assert row["mode"].startswith("halfmax")
    # the count the cohort step reports = the classifier's producers in irradiated samples, one per footprint
    calls = cl.predict_cells(meas, cl.load_classifier(model))[["sample_id", "cell_id", "CXCL10_pos"]]
    samples = pd.read_csv(cohort / "samples.csv")
    smooth = next(z for z in cfg["zones"] if z["name"] == "CXCL10").get("smooth_um", 10.0)
    n = 0
    for sid in samples.loc[samples["dose_gy"] > 0, "sample_id"]:
        sig = pd.read_parquet(tmp_path / "clf" / "samples" / sid / "zone_cell_signal.parquet")
        sig = sig[sig["zone"] == "CXCL10"].merge(calls, on=["sample_id", "cell_id"])
        p = sig[sig["CXCL10_pos"]]
        n += int(np.isfinite(producer_levels(p["x_um"], p["y_um"], p["signal"], background=0.0, smooth_um=smooth)).sum())
    assert 0 < n < MIN_PRODUCERS
    assert f"only {n} producer cells" in row["warning"]
