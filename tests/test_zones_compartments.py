"""``halfmax`` zones with a background per tissue compartment (tumor, stroma): chemozone._zone_compartments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chemozone._zone_compartments import (
    MIN_CELLS,
    PURE,
    compartment_offsets,
    offset_rows,
    tumor_cells,
    tumor_fraction_at,
    tumor_fraction_lattice,
)
from chemozone.config import ThresholdConfig, ZoneConfig
from chemozone.errors import MissingStepError
from chemozone.zones import build_zones, compute_zone_thresholds, signal_summary

TUMOR_ZONE = ZoneConfig(name="tumor", source="tumor", channels=["panCK"])
SAMPLES = pd.DataFrame({"sample_id": ["s0", "s8"], "patient": ["p", "p"], "dose_gy": [0, 8]})


def _two_compartments(n_side: int = 30, spacing: float = 10.0):
    """A 600 x 300 µm field of cells on a 10 µm lattice: tumor in x < 300, stroma in x >= 300."""
    yy, xx = np.mgrid[:n_side, : 2 * n_side]
    x, y = (xx.ravel() + 0.5) * spacing, (yy.ravel() + 0.5) * spacing
    return x, y, x < n_side * spacing


def test_tumor_fraction_is_one_in_nests_zero_in_stroma_and_a_half_at_the_border():
    x, y, tum = _two_compartments()
    lat, s = tumor_fraction_lattice(x, y, tum)
    t = tumor_fraction_at(lat, s, x, y)
    assert s == 5.0
    deep_t, deep_s = (x < 200) & (y > 100) & (y < 200), (x > 400) & (y > 100) & (y < 200)
    assert t[deep_t].min() > 0.999 and t[deep_s].max() < 0.001
    border = np.abs(tumor_fraction_at(lat, s, [300.0], [150.0])[0] - 0.5)
    assert border < 0.02  # the lattice cell just right of the border: a half, up to half a lattice cell of slope


def test_empty_space_reads_the_overall_fraction_and_positions_beyond_read_the_edge():
    x = np.array([5.0, 6.0, 7.0, 500.0])
    lat, s = tumor_fraction_lattice(x, np.full(4, 5.0), [True, True, True, False])
    assert tumor_fraction_at(lat, s, [250.0], [5.0])[0] == pytest.approx(0.75)  # > 4 sigma from every cell
    assert tumor_fraction_at(lat, s, [10_000.0], [10_000.0])[0] == tumor_fraction_at(lat, s, [500.0], [5.0])[0]


def test_offsets_by_hand_and_the_minimum_cells():
    sig = [1.0] * MIN_CELLS + [80.0] * MIN_CELLS + [40.0, np.nan]
    t = [PURE] * MIN_CELLS + [1 - PURE] * MIN_CELLS + [0.5, 1.0]
    m, off_t, off_s, warn = compartment_offsets(sig, t)
    assert (m, off_t, off_s, warn) == (40.0, -39.0, 40.0, "")
    m, off_t, off_s, warn = compartment_offsets(sig[1:], t[1:])
    assert (off_t, off_s) == (0.0, 0.0) and m == 60.0  # 49 ones, one 40, 50 eighties
    assert warn.startswith(f"compartment background: {MIN_CELLS - 1} tumor and {MIN_CELLS} stroma reference cells")


@settings(max_examples=30, deadline=None)
@given(a=st.floats(-50, 50), b=st.floats(-50, 50), r0=st.integers(0, 20), n=st.integers(1, 10))
def test_offset_rows_interpolate_between_the_two_offsets(a, b, r0, n):
    lat = np.random.default_rng(r0).random((8, 9)).astype(np.float32)
    band = offset_rows(lat, 5.0, a, b, grid_um=2.0, rows=(r0, r0 + n), n_cols=23)
    assert band.shape == (n, 23) and band.dtype == np.float32
    assert np.all(band >= min(a, b) - 1e-4) and np.all(band <= max(a, b) + 1e-4)
    yc, xc = (r0 + 0.5) * 2.0, 10 * 2.0 + 1.0
    t = lat[min(7, int(yc // 5)), min(8, int(xc // 5))]
    assert band[0, 10] == pytest.approx(t * a + (1 - t) * b, abs=1e-4)


def test_tumor_cells_from_the_tumor_zones_gated_marker():
    cells = pd.DataFrame({"panCK_pos": [True, False, None], "CD3_pos": [False, True, True]})
    assert tumor_cells(cells, [TUMOR_ZONE]).tolist() == [True, False, False]
    assert tumor_cells(cells, [ZoneConfig(name="C", channels=["C"])]) is None  # no tumor zone
    assert tumor_cells(cells[["CD3_pos"]], [TUMOR_ZONE]) is None  # its marker is not gated
    # the zone may spell its channel as the image does: matched as channel names are
    other = [ZoneConfig(name="tumor", source="tumor", channels=["Pan-CK (Opal 690)"])]
    assert tumor_cells(cells, other).tolist() == [True, False, False]


def _cohort(n_side: int = 30):
    """Sham s0 and irradiated s8 with the same cells: background 1 in the nests, 80 in stroma; s8 has a lone
    producer in each compartment (+40 at its own position); a producer's stain is its signal above background."""
    x, y, tum = _two_compartments(n_side)
    n = x.size
    frames = []
    for sid in ("s0", "s8"):
        bg = np.where(tum, 1.0, 80.0)
        sig, prod = bg.copy(), np.zeros(n, bool)
        if sid == "s8":
            for px, py in ((150.0, 155.0), (455.0, 155.0)):
                i = int(np.argmin((x - px) ** 2 + (y - py) ** 2))
                sig[i] += 40.0
                prod[i] = True
        frames.append(pd.DataFrame({"sample_id": sid, "zone": "C", "channel": "C", "cell_id": np.arange(1, n + 1),
                                    "x_um": x, "y_um": y, "signal": sig, "producer": prod,
                                    "intensity": np.where(prod, 140.0, 100.0), "panCK_pos": tum}))
    return pd.concat(frames, ignore_index=True)


def _thresholds(cells: pd.DataFrame, **tc):
    z = ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(mode="halfmax", **tc))
    # pixel summaries: the sham's tissue is 3/4 stroma (median 80), whatever the cells say
    summ = pd.concat([signal_summary(np.array([[[1.0] * 25 + [80.0] * 75]], np.float32), None, sample_id=s, zone="C",
                                     channels=["C"]) for s in ("s0", "s8")], ignore_index=True)
    lat = tumor_fraction_lattice(cells["x_um"][cells.sample_id == "s0"], cells["y_um"][cells.sample_id == "s0"],
                                 cells["panCK_pos"][cells.sample_id == "s0"])
    cells = cells.assign(tumor_fraction=tumor_fraction_at(*lat, cells["x_um"], cells["y_um"]))
    return compute_zone_thresholds(summ, SAMPLES, zones=[z], cell_signals=cells).set_index("sample_id"), lat, z


def test_thresholds_with_compartments_by_hand():
    """Sham cells: half tumor (1), half stroma (80); median of all 40.5 (the two middle cells 1 and 80). Offsets
    1 - 40.5 and 80 - 40.5. Each producer's level is its own 40 above its compartment's background; threshold
    40.5 + 0.5 * 40. Without compartments the background is the sham's median pixel, 80, and the tumor producer's
    level is 41 - 80 < 0: the median level of (-39, 40) is 0.5."""
    t, _, _ = _thresholds(_cohort())
    assert t.loc["s8", "tumor_offset"] == pytest.approx(1 - 40.5) and t.loc["s8", "stroma_offset"] == pytest.approx(39.5)
    assert t.loc["s8", "threshold"] == pytest.approx(40.5 + 20.0)
    assert (t["tumor_offset"] == t.loc["s8", "tumor_offset"]).all()  # the sham uses its own background too
    off, _, _ = _thresholds(_cohort(), compartments=False)
    assert (off["tumor_offset"] == 0).all() and (off["stroma_offset"] == 0).all()
    assert off.loc["s8", "threshold"] == pytest.approx(80 + 0.5 * 0.5)


def test_too_few_reference_cells_keep_the_tissue_wide_background():
    cells = _cohort()
    cells = cells[(cells.sample_id == "s8") | (cells.x_um > 290)]  # the sham keeps stroma and one column of nest
    t, _, _ = _thresholds(cells)
    assert (t["tumor_offset"] == 0).all() and (t["stroma_offset"] == 0).all()
    assert t["warning"].str.contains(r"compartment background: \d+ tumor and \d+ stroma reference cells \(< 50\); "
                                     "one background for the whole tissue").all()
    off, _, _ = _thresholds(cells, compartments=False)
    assert t.loc["s8", "threshold"] == off.loc["s8", "threshold"]  # the pixel median, as without compartments


def _masks(cells: pd.DataFrame, thr: pd.DataFrame, z: ZoneConfig, signal: np.ndarray):
    tissue = np.ones(signal.shape, bool)
    z = z.model_copy(update={"min_area_um2": 0.0})
    tz = pd.DataFrame({"sample_id": ["s8"], "zone": ["tumor"], "channel": ["panCK"], "threshold": [0.5],
                       "tumor_offset": [0.0], "stroma_offset": [0.0]})
    thr = pd.concat([thr.reset_index(), tz], ignore_index=True)
    sigs = {"C": signal[None], "tumor": np.zeros((1,) + signal.shape, np.float32)}
    return build_zones(None, cells, tissue, pixel_size_um=2.0, grid_um=2.0, zones=[z, TUMOR_ZONE], thresholds=thr,
                       sample_id="s8", channels=["C", "panCK"], signals=sigs)[0]["C"]


def test_step_b_subtracts_the_offset_map():
    """On a 2 µm grid whose background follows the compartments (the reference median + the offset map: 1 in the
    nest, x < 300 µm, 80 in stroma, in between at the border), a producer's bump of +40 in each compartment. With
    compartments both bumps are zones and nothing else; with one tissue-wide background (80.25: the sham's median
    pixel + half the median level) the nest's producer is missed."""
    cells = _cohort()
    t, lat, z = _thresholds(cells)
    off_t, off_s = float(t.loc["s8", "tumor_offset"]), float(t.loc["s8", "stroma_offset"])
    sig = 40.5 + offset_rows(*lat, off_t, off_s, grid_um=2.0, rows=(0, 150), n_cols=300)
    yy, xx = (np.mgrid[:150, :300] + 0.5) * 2.0
    for px in (150.0, 455.0):
        sig += (40.0 * np.exp(-((xx - px) ** 2 + (yy - 155.0) ** 2) / (2 * 10.0**2))).astype(np.float32)
    s8 = cells[cells.sample_id == "s8"]
    m = _masks(s8, t, z, sig)
    r = np.hypot(xx - 150.0, yy - 155.0), np.hypot(xx - 455.0, yy - 155.0)
    assert m[r[0] < 8].all() and m[r[1] < 8].all()  # the half-maximum footprints (radius ~11.8 µm)
    assert not m[(r[0] > 16) & (r[1] > 16)].any()
    off, _, _ = _thresholds(cells, compartments=False)
    m_off = _masks(s8, off, z, sig)
    assert not m_off[r[0] < 8].any() and m_off[r[1] < 8].all()


def test_offsets_without_the_tumor_gate_in_step_b_name_the_missing_column():
    cells = _cohort()
    t, _, z = _thresholds(cells)
    with pytest.raises(MissingStepError, match=r"zones 'C': its thresholds have tumor and stroma background offsets.*"
                                               r"\{channel\}_pos"):
        _masks(cells[cells.sample_id == "s8"].drop(columns="panCK_pos"), t, z, np.zeros((4, 4), np.float32))


def test_a_sharp_nest_border_leaves_a_strip_of_stroma_zone_a_known_limit():
    """The tumor fraction is smooth over ~20 µm, a step in the autofluorescence is not: with a background that
    jumps from 1 (nest) to 80 (stroma) at x = 300 µm and no producer at all, the stroma just outside the border reads
    too low a background and becomes zone in a strip along it; nothing else does (README, "How good are the zones")."""
    cells = _cohort()
    t, _, z = _thresholds(cells)
    yy, xx = (np.mgrid[:150, :300] + 0.5) * 2.0
    sig = np.where(xx < 300, 1.0, 80.0).astype(np.float32)
    m = _masks(cells[cells.sample_id == "s8"], t, z, sig)
    assert m.any() and (xx[m] > 300).all() and (xx[m] < 300 + 2 * 20).all()


def test_an_absolute_threshold_with_the_runs_offsets_builds_the_runs_zone():
    """What the zone review saves (``mode: absolute`` with the value and the two offsets of a halfmax run) gives the
    same thresholds table row and, through step B, the same mask as the halfmax run; without the offsets the nest's
    producer is lost. ``zone_offset_map`` is the map step B subtracts (as the napari review previews it)."""
    from chemozone.config import config_from_dict
    from chemozone.zones import zone_offset_map

    cells = _cohort()
    t, lat, z = _thresholds(cells)
    value, off_t, off_s = (float(t.loc["s8", k]) for k in ("threshold", "tumor_offset", "stroma_offset"))
    cfg = config_from_dict({"phenotypes": {"markers": {"panCK": {}}},
                            "zones": [{"name": "C", "channels": ["C"], "threshold": {
                                "mode": "absolute", "value": value, "tumor_offset": off_t, "stroma_offset": off_s}},
                                      {"name": "tumor", "source": "tumor", "channels": ["panCK"]}]})
    za = cfg.zones[0]
    assert za.threshold.offsets == (off_t, off_s)
    summ = pd.concat([signal_summary(np.ones((1, 2, 2), np.float32), None, sample_id=s, zone="C", channels=["C"])
                      for s in ("s0", "s8")], ignore_index=True)
    ta = compute_zone_thresholds(summ, SAMPLES, zones=[za]).set_index("sample_id")
    assert ta.loc["s8", ["threshold", "tumor_offset", "stroma_offset"]].tolist() == pytest.approx([value, off_t, off_s])
    assert (ta["mode"] == "absolute").all()
    sig = 40.5 + offset_rows(*lat, off_t, off_s, grid_um=2.0, rows=(0, 150), n_cols=300)
    yy, xx = (np.mgrid[:150, :300] + 0.5) * 2.0
    for px in (150.0, 455.0):
        sig += (40.0 * np.exp(-((xx - px) ** 2 + (yy - 155.0) ** 2) / (2 * 10.0**2))).astype(np.float32)
    s8 = cells[cells.sample_id == "s8"]
    m_half, m_abs = _masks(s8, t, z, sig), _masks(s8, ta, za, sig)
    assert m_half.any() and (m_abs == m_half).all()
    plain = compute_zone_thresholds(summ, SAMPLES, zones=[ZoneConfig(name="C", channels=["C"], threshold=ThresholdConfig(
        mode="absolute", value=value))]).set_index("sample_id")
    assert (plain["tumor_offset"] == 0).all()
    assert not _masks(s8, plain, za, sig)[np.hypot(xx - 150.0, yy - 155.0) < 8].any()
    omap = zone_offset_map(ta.reset_index(), za, "s8", cells=s8, zones=[za, TUMOR_ZONE], grid_um=2.0, n_cols=300)
    assert omap((0, 150))[0] == pytest.approx(offset_rows(*lat, off_t, off_s, grid_um=2.0, rows=(0, 150), n_cols=300))
    assert zone_offset_map(plain.reset_index(), za, "s8", cells=s8, zones=[za], grid_um=2.0, n_cols=300) is None


@pytest.mark.parametrize(("threshold", "match"), [
    ({"mode": "absolute", "value": 1.0, "tumor_offset": -3.0},
     "give both 'tumor_offset' and 'stroma_offset'"),
    ({"mode": "halfmax", "tumor_offset": -3.0, "stroma_offset": 4.0},
     "'tumor_offset' and 'stroma_offset' are for mode 'absolute' \\(mode 'halfmax' computes its own"),
])
def test_threshold_offsets_that_cannot_be_used_are_refused(threshold, match):
    from chemozone.config import config_from_dict
    from chemozone.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        config_from_dict({"phenotypes": {"markers": {"C": {}, "panCK": {}}},
                          "zones": [{"name": "C", "channels": ["C"], "threshold": threshold},
                                    {"name": "tumor", "source": "tumor", "channels": ["panCK"]}]})


def test_absolute_offsets_without_a_gated_tumor_zone_are_refused():
    from chemozone.config import config_from_dict
    from chemozone.errors import ConfigError

    zone = {"name": "C", "channels": ["C"],
            "threshold": {"mode": "absolute", "value": 1.0, "tumor_offset": -3.0, "stroma_offset": 4.0}}
    with pytest.raises(ConfigError, match=r"zones\[0\] 'C': threshold tumor_offset/stroma_offset follow the tumor "
                                          r"fraction, which needs a 'source: tumor' zone whose channel is in "
                                          r"phenotypes.markers \(tumor zone channels: none\)"):
        config_from_dict({"zones": [zone]})
    with pytest.raises(ConfigError, match=r"tumor zone channels: \['panCK'\]"):
        config_from_dict({"zones": [zone, {"name": "tumor", "source": "tumor", "channels": ["panCK"]}]})
    cfg = config_from_dict({"phenotypes": {"markers": {"PanCK": {}}},  # gated under another spelling
                            "zones": [zone, {"name": "tumor", "source": "tumor", "channels": ["Pan-CK (Opal 690)"]}]})
    assert cfg.zones[0].threshold.offsets == (-3.0, 4.0)
