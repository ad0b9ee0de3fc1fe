"""Threshold mode ``halfmax``: reference median + a fraction of one producer cell's smoothed signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    # no intensities in cell_signals: equal stains, said in the table; with them, not
    assert t["warning"].str.contains("the cells table has no intensity of the producer marker; gated producers "
                                     "counted as equal stains").all()
    stained = cells.assign(intensity=np.where(cells["producer"], cells["signal"], 0.0))
    ts = compute_zone_thresholds(summ, SAMPLES, zones=[z], cell_signals=stained)
    assert ts["warning"].str.contains("only 3 producer cells").all()  # the pair in p1_8 and p2_8's brighter one
    assert not ts["warning"].str.contains("no intensity").any()
    z3 = ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(mode="halfmax", fraction=0.3))
    t3 = compute_zone_thresholds(summ, SAMPLES, zones=[z3], cell_signals=cells).set_index("sample_id")
    assert t3.loc["p2_8", "threshold"] == pytest.approx(20 + 0.3 * 50)


def test_producer_levels_take_out_the_neighbours_share():
    # two producers 10 µm apart with sigma 10: each weight 1 + exp(-0.5); without intensities, equal stains
    r = producer_levels([0, 10], [0, 0], [30, 30], [True, True], background=0.0, smooth_um=10.0)
    np.testing.assert_allclose(r, 30 / (1 + np.exp(-0.5)))
    assert producer_levels([], [], [], [], background=0.0, smooth_um=10.0).size == 0
    assert producer_levels([0], [0], [30], [False], background=0.0, smooth_um=10.0).size == 0


def _field(n_bg: int = 40, seed: int = 0):
    """Unstained cells (intensity 100 +- 1) on a 300 µm square, away from the producers placed at x, y < 60."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(100, 400, size=(n_bg, 2))
    return xy, 100 + rng.uniform(-1, 1, n_bg)


def test_producers_the_gate_missed_still_take_their_share():
    """Three equal producers at the same spot (signal 3 x 20 above background) of which the gate called one:
    from the stains, the called one's level is 20 (one producer's); counting gated producers only gives 60."""
    bg_xy, bg_i = _field()
    x = np.r_[[0.0, 0.0, 0.0], bg_xy[:, 0]]
    y = np.r_[[0.0, 0.0, 0.0], bg_xy[:, 1]]
    signal = np.r_[[65.0, 65.0, 65.0], np.full(len(bg_i), 5.0)]
    producer = np.r_[[True, False, False], np.zeros(len(bg_i), bool)]
    inten = np.r_[[150.0, 150.0, 150.0], bg_i]
    r = producer_levels(x, y, signal, producer, background=5.0, smooth_um=10.0, intensity=inten)
    med = np.median(inten)
    np.testing.assert_allclose(r, [60.0 * (150 - med) / (3 * (150 - med))])  # 20
    assert producer_levels(x, y, signal, producer, background=5.0, smooth_um=10.0).tolist() == [60.0]


def test_a_gated_cell_lit_by_its_neighbour_is_not_counted():
    """A gated cell 15 µm from a producer (within 2 sigma) whose stain is a fifth of the producer's: the halo of
    the producer, not a producer. At 25 µm (beyond 2 sigma) or at half the producer's stain it counts."""
    bg_xy, bg_i = _field()
    for dist, stain, counted in ((15.0, 10.0, 1), (25.0, 10.0, 2), (15.0, 25.0, 2)):
        x = np.r_[[0.0, dist], bg_xy[:, 0]]
        y = np.r_[[0.0, 0.0], bg_xy[:, 1]]
        med = np.median(np.r_[[150.0, 100.0 + stain], bg_i])
        inten = np.r_[[150.0, med + stain], bg_i]
        e0 = 150.0 - med
        r = producer_levels(x, y, np.r_[[50.0, 30.0], np.zeros(len(bg_i))], np.r_[[True, True], np.zeros(len(bg_i), bool)],
                            background=0.0, smooth_um=10.0, intensity=inten)
        assert r.size == counted, (dist, stain)
        w = np.exp(-dist * dist / 200.0)
        np.testing.assert_allclose(r[0], 50.0 * e0 / (e0 + w * stain))


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.01, 100.0), offset=st.floats(-1e3, 1e3), seed=st.integers(0, 10_000))
def test_producer_levels_do_not_depend_on_the_stains_units(scale, offset, seed):
    """Levels are in the signal's units: a gain and an offset of the producer channel's cell intensities change
    nothing; scaling the signal and its background scales the levels."""
    rng = np.random.default_rng(seed)
    n = 60
    x, y = rng.uniform(0, 150, n), rng.uniform(0, 150, n)
    inten = 100 + rng.gamma(1.0, 5.0, n) + np.where(rng.random(n) < 0.2, rng.uniform(20, 200, n), 0)
    producer = inten > 130
    signal = rng.uniform(0, 100, n)
    r = producer_levels(x, y, signal, producer, background=3.0, smooth_um=10.0, intensity=inten)
    r2 = producer_levels(x, y, signal, producer, background=3.0, smooth_um=10.0, intensity=inten * scale + offset)
    np.testing.assert_allclose(r2, r, rtol=1e-6, atol=1e-9)
    r3 = producer_levels(x, y, signal * 7.0, producer, background=21.0, smooth_um=10.0, intensity=inten)
    np.testing.assert_allclose(r3, 7.0 * r, rtol=1e-9, atol=1e-9)


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


@pytest.mark.slow
def test_halfmax_counts_the_producers_of_a_saved_classifier(tmp_path):
    """A producer marker gated by a saved cell classifier (``phenotypes.classifier_file``, gate method
    ``classifier``) in an image run: the cohort step gates producers with the classifier's calls (it stopped
    with "run chemozone.classify.predict_cells" before); the producers counted are those calls that are the main
    stain around them."""
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
    # the count the cohort step reports = the classifier's producers in irradiated samples that dominate their stain
    calls = cl.predict_cells(meas, cl.load_classifier(model))[["sample_id", "cell_id", "CXCL10_pos"]]
    samples = pd.read_csv(cohort / "samples.csv")
    smooth = next(z for z in cfg["zones"] if z["name"] == "CXCL10").get("smooth_um", 10.0)
    comp = cfg["phenotypes"]["markers"]["CXCL10"]["compartment"]
    n = 0
    for sid in samples.loc[samples["dose_gy"] > 0, "sample_id"]:
        sig = pd.read_parquet(tmp_path / "clf" / "samples" / sid / "zone_cell_signal.parquet")
        sig = sig[sig["zone"] == "CXCL10"].merge(calls, on=["sample_id", "cell_id"]).merge(
            meas[["sample_id", "cell_id", f"CXCL10_{comp}"]], on=["sample_id", "cell_id"])
        n += int(np.isfinite(producer_levels(sig["x_um"], sig["y_um"], sig["signal"], sig["CXCL10_pos"], background=0.0,
                                             smooth_um=smooth, intensity=sig[f"CXCL10_{comp}"])).sum())
    assert 0 < n < MIN_PRODUCERS
    assert f"only {n} producer cells" in row["warning"]
