"""Soft (probability) receptor calls downstream: expected counts, Bernoulli resampling in the patient bootstrap,
truth/gate/classifier comparison, the report block, and the dim-receptor synthetic preset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from chemozone import stats
from chemozone.config import CognatePair, config_from_dict
from chemozone.errors import ConfigError, MissingStepError
from chemozone.options import cognate_options
from chemozone.spatial import call_weights, cognate_specificity

PAIR = CognatePair(zone="Z", receptor="CXCR2", cell_types=["NK"])


def _inf(samples, a_in=1.0, a_out=1.0, patients=None):
    rows = []
    for i, s in enumerate(samples):
        for reg, a in (("inside", a_in), ("outside", a_out)):
            rows.append({"sample_id": s, "population_type": "all", "zone": "Z", "region": reg, "area_mm2": a,
                         "patient": (patients or samples)[i]})
    return pd.DataFrame(rows)


def _four_cells():
    return pd.DataFrame({"sample_id": "s", "cell_type": "NK", "in_Z": [True, True, False, False],
                         "dist_tissue_edge_um": 10.0, "CXCR2_prob": [0.9, 0.6, 0.2, 0.1],
                         "CXCR2_pos": [True, True, False, False]})


def _log2e(n_in, n_out, a_in=1.0, a_out=1.0):
    p_in = a_in / (a_in + a_out)  # PSEUDOCOUNT 1 split by area
    return np.log2(((n_in + p_in) / a_in) / ((n_out + 1 - p_in) / a_out))


def test_soft_expected_counts_by_hand():
    r = cognate_specificity(_inf(["s"], 2.0, 1.0), cognate_pairs=[PAIR], cells=_four_cells(), calls="soft").iloc[0]
    # receptor+ = Σ p: inside 0.9 + 0.6, outside 0.2 + 0.1; receptor− = Σ (1 − p)
    assert r["n_pos_inside"] == pytest.approx(1.5) and r["n_pos_outside"] == pytest.approx(0.3)
    assert r["n_neg_inside"] == pytest.approx(0.5) and r["n_neg_outside"] == pytest.approx(1.7)
    ep, en = _log2e(1.5, 0.3, 2.0, 1.0), _log2e(0.5, 1.7, 2.0, 1.0)
    assert r["log2_specificity"] == pytest.approx(ep - en, abs=1e-12)
    boot = stats.cognate_call_bootstrap(_four_cells(), _inf(["s"], 2.0, 1.0), pairs=[PAIR], n_bootstrap=0).iloc[0]
    assert boot["estimate"] == pytest.approx(ep - en, abs=1e-12)
    assert boot["n_pos"] == pytest.approx(1.8) and boot["density_pos_inside_per_mm2"] == pytest.approx(0.75)
    assert boot["density_neg_inside_per_mm2"] == pytest.approx(0.25)


def _cohort(n_pat=4, n_cells=24, seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(n_pat):
        inside = rng.random(n_cells) < 0.5
        pos = np.where(inside, rng.random(n_cells) < 0.7, rng.random(n_cells) < 0.3)
        parts.append(pd.DataFrame({"sample_id": f"s{i}", "patient": f"P{i}", "cell_type": "NK", "in_Z": inside,
                                   "dist_tissue_edge_um": 20.0, "CXCR2_pos": pos}))
    cells = pd.concat(parts, ignore_index=True)
    return cells, _inf([f"s{i}" for i in range(n_pat)], patients=[f"P{i}" for i in range(n_pat)])


def test_binary_probabilities_reproduce_hard_exactly():
    cells, inf = _cohort()
    cells["CXCR2_prob"] = cells["CXCR2_pos"].astype(float)
    h = cognate_specificity(inf, cognate_pairs=[PAIR], cells=cells)
    s = cognate_specificity(inf, cognate_pairs=[PAIR], cells=cells, calls="soft")
    cols = ["n_pos_inside", "n_pos_outside", "n_neg_inside", "n_neg_outside", "log2_specificity"]
    np.testing.assert_array_equal(h[cols].to_numpy(float), s[cols].to_numpy(float))
    bh = stats.cognate_call_bootstrap(cells, inf, pairs=[PAIR], calls="hard", n_bootstrap=50, seed=3).iloc[0]
    bs = stats.cognate_call_bootstrap(cells, inf, pairs=[PAIR], calls="soft", n_bootstrap=50, seed=3).iloc[0]
    assert (bh["estimate"], bh["ci_lo"], bh["ci_hi"]) == (bs["estimate"], bs["ci_lo"], bs["ci_hi"])
    # the estimate is the mean over samples of cognate_specificity's per-sample value
    assert bh["estimate"] == pytest.approx(h["log2_specificity"].mean(), abs=1e-12)
    assert bh["n_patients"] == 4 and bh["n_bootstrap"] == 50


def test_bernoulli_resampling_widens_the_interval_at_half():
    cells, inf = _cohort()
    cells["CXCR2_prob"] = 0.5  # a classifier that knows nothing
    hard = stats.cognate_call_bootstrap(cells, inf, pairs=[PAIR], calls="hard", n_bootstrap=200).iloc[0]
    soft = stats.cognate_call_bootstrap(cells, inf, pairs=[PAIR], calls="soft", n_bootstrap=200).iloc[0]
    fixed = stats.cognate_call_bootstrap(cells, inf, pairs=[PAIR], calls="soft", n_bootstrap=200,
                                         resample_calls=False).iloc[0]
    # p = 0.5 everywhere: expected receptor+ = receptor− in every region, so the soft estimate is exactly 0
    assert soft["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert soft["ci_lo"] < 0.0 < soft["ci_hi"]
    assert hard["ci_lo"] > 0  # the hard calls carry the planted enrichment
    assert soft["ci_hi"] - soft["ci_lo"] > hard["ci_hi"] - hard["ci_lo"]
    assert fixed["ci_hi"] - fixed["ci_lo"] == pytest.approx(0.0, abs=1e-12)  # expected counts alone: no spread


def test_compare_cognate_calls_distance_to_truth():
    cells, inf = _cohort(seed=1)
    rng = np.random.default_rng(5)
    truth = cells["CXCR2_pos"].to_numpy()
    cells["truth_CXCR2"] = truth
    cells["gate"] = np.where(rng.random(len(cells)) < 0.3, ~truth, truth)  # 30 % of calls flipped
    cells["CXCR2_prob"] = np.where(truth, 0.95, 0.05)
    res = stats.compare_cognate_calls(cells, inf, pairs=[PAIR], n_bootstrap=0, sources={
        "truth": ("hard", "truth_{receptor}"), "gate": ("hard", "gate"), "clf": ("soft", "{receptor}_prob")})
    err = res.set_index("source")["abs_error"]
    assert err["truth"] == 0.0 and err["clf"] < err["gate"]
    est = res.set_index("source")["estimate"]
    assert 0 < est["clf"] < est["truth"]  # soft calls dilute the contrast a little, flipped calls a lot
    with pytest.raises(ConfigError, match="reference 'oracle' is not among the sources"):
        stats.compare_cognate_calls(cells, inf, pairs=[PAIR], sources={"gate": ("hard", "gate")}, reference="oracle")


def test_soft_call_errors():
    cells = _four_cells()
    inf = _inf(["s"])
    with pytest.raises(ConfigError, match=r"spatial.calls: must be one of \['hard', 'soft'\], got 'medium'"):
        cognate_specificity(inf, cognate_pairs=[PAIR], cells=cells, calls="medium")
    with pytest.raises(MissingStepError, match="needs the annotated cells table"):
        cognate_specificity(inf, cognate_pairs=[PAIR], calls="soft")
    with pytest.raises(MissingStepError, match="no 'CXCR2_prob' column .*spatial.calls: hard"):
        cognate_specificity(inf, cognate_pairs=[PAIR], cells=cells.drop(columns="CXCR2_prob"), calls="soft")
    with pytest.raises(ValueError, match="'CXCR2_prob' must hold probabilities in \\[0, 1\\]"):
        call_weights(cells.assign(CXCR2_prob=[0.1, 1.2, 0.3, np.nan]), "CXCR2", calls="soft")
    with pytest.raises(ValueError, match="'CXCR2_prob' must hold probabilities"):
        stats.cognate_call_bootstrap(cells.assign(CXCR2_prob=-0.1), inf, pairs=[PAIR], n_bootstrap=0)
    with pytest.raises(ConfigError, match="calls must be 'hard' or 'soft'"):
        stats.cognate_call_bootstrap(cells, inf, pairs=[PAIR], calls="maybe")
    with pytest.raises(ConfigError, match="ci_method must be one of"):
        stats.cognate_call_bootstrap(cells, inf, pairs=[PAIR], ci_method="normal")
    with pytest.raises(MissingStepError, match="zone 'Q' is not in the infiltration table"):
        stats.cognate_call_bootstrap(cells.assign(in_Q=True), inf, pairs=[("Q", "CXCR2", ["NK"])])
    with pytest.raises(MissingStepError, match="CXCR9_prob"):
        stats.cognate_call_bootstrap(cells, inf, pairs=[("Z", "CXCR9", ["NK"])])


def test_config_key_reaches_the_stage():
    cfg = config_from_dict({"zones": [{"name": "Z", "source": "pixels", "channels": ["Z"]}],
                            "spatial": {"calls": "soft"}})
    assert cognate_options(cfg)["calls"] == "soft"
    assert cognate_options(config_from_dict({}))["calls"] == "hard"
    with pytest.raises(ConfigError, match="spatial.calls"):
        config_from_dict({"spatial": {"calls": "fuzzy"}})


# ------------------------------------------------------------------------------------------ report
def test_report_block_hard_vs_soft_and_metrics(tmp_path):
    from chemozone._report_soft import classifier_metrics_table, soft_calls_section
    from chemozone.layout import RunLayout

    cells, inf = _cohort()
    cells["CXCR2_prob"] = 0.5
    run = {"cells": cells, "infiltration": inf.assign(population="all"),
           "run": {"config": {"spatial": {"cognate_pairs": [{"zone": "Z", "receptor": "CXCR2", "cell_types": ["NK"]}]}}}}
    html = soft_calls_section(run, tmp_path, 40, 0)
    assert "Hard vs soft receptor calls" in html and "<b>1 of 1</b> conclusions change" in html
    assert "No classifier metrics" in html
    lay = RunLayout(tmp_path)
    lay.classifier_metrics.parent.mkdir(parents=True)
    lay.classifier_metrics.write_text(json.dumps({"CXCR2": {"balanced_accuracy": 0.93, "f1": 0.91, "n_labels": 180}}))
    t = classifier_metrics_table(lay.classifier_metrics)
    assert t.to_dict("records") == [{"marker": "CXCR2", "balanced_accuracy": 0.93, "f1": 0.91, "n_labels": 180}]
    assert "0.93" in soft_calls_section(run, tmp_path, 40, 0)
    # nothing shown without probabilities or metrics
    assert soft_calls_section({**run, "cells": cells.drop(columns="CXCR2_prob")}, tmp_path / "none", 40, 0) == ""
    lay.classifier_metrics.write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        classifier_metrics_table(lay.classifier_metrics)
    lay.classifier_metrics.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"metrics.json: expected \{marker"):
        classifier_metrics_table(lay.classifier_metrics)


# ------------------------------------------------------------------------------------------ synth preset
def test_dim_receptor_preset_dims_receptors_and_spills_from_tumour_neighbours():
    from scipy import ndimage as ndi

    from chemozone import synth
    from chemozone.synth._params import preset_parameters

    dim = preset_parameters("dim_receptors")
    off = preset_parameters("dim_receptors")
    off["imaging"]["dim_receptors"]["neighbour_amplitude"] = 0.0
    kw = dict(size_px=192, dose_gy=20, seed=4)
    a, b = synth.generate_sample(params=dim, **kw), synth.generate_sample(params=off, **kw)
    base = synth.generate_sample(**kw)
    # the preset adds no random draws: same cells, same labels, same truth as the default parameters
    np.testing.assert_array_equal(a["cells"], base["cells"])
    pd.testing.assert_frame_equal(a["truth"], base["truth"])
    ch = a["channels"]
    np.testing.assert_array_equal(a["image"][ch.index("CD3")], base["image"][ch.index("CD3")])
    # spillover: where the images differ (receptor channels) the signal sits on and next to tumour membranes
    k = ch.index("CXCR3")
    diff = a["image"][k].astype(float) - b["image"][k].astype(float)
    tumour_ids = a["truth"].loc[a["truth"]["cell_type"] == "Tumor", "cell_id"].to_numpy()
    near_tumour = ndi.binary_dilation(np.isin(a["cells"], tumour_ids), iterations=3)
    assert diff[near_tumour].mean() > 20 * max(abs(diff[~near_tumour].mean()), 1.0)
    # dim: positive minus negative immune cells (away from tumour) is 800 / 2000 of the default contrast
    t = a["truth"]
    imm = t["cell_type"].isin(synth.IMMUNE_TYPES)
    m_pos = np.isin(a["cells"], t.loc[imm & t["CXCR3_pos"], "cell_id"].to_numpy()) & ~near_tumour
    m_neg = np.isin(a["cells"], t.loc[imm & ~t["CXCR3_pos"], "cell_id"].to_numpy()) & ~near_tumour
    assert m_pos.sum() > 50 and m_neg.sum() > 50

    def contrast(img):
        return img[k][m_pos].mean() - img[k][m_neg].mean()

    assert 2.0 < contrast(base["image"]) / contrast(a["image"]) < 3.2
