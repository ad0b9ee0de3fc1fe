"""chemozone.stats on a fabricated run folder with known dose-response truth (no runner needed)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chemozone import stats
from chemozone.errors import ConfigError, MissingStepError, RunError
from chemozone.testing import fabricate_run


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    out = tmp_path_factory.mktemp("fabrun") / "run"
    info = fabricate_run(out, n_patients=5, seed=1)
    return info


@pytest.fixture(scope="module")
def run(fab):
    return stats.load_run(fab["out"])


# ------------------------------------------------------------------------------------------ load_run
def test_load_run_tables_and_metadata(run, fab):
    for name in ("cells", "infiltration", "zones", "samples", "gates"):
        assert isinstance(run[name], pd.DataFrame) and len(run[name])
    assert {"patient", "radiation", "dose_gy", "effective_dose_gy"} <= set(run["cells"].columns)
    s = run["samples"].set_index("sample_id")
    assert s.loc["P01_carbon_2Gy", "effective_dose_gy"] == pytest.approx(5.0)
    assert s.loc["P01_sham_hit_0Gy", "effective_dose_gy"] == 0
    assert run["effectiveness"]["carbon"] == 2.5
    assert run["run"]["samples"][fab["failed"][0]]["status"] == "failed"


def test_load_run_errors(tmp_path, fab):
    with pytest.raises(RunError, match="run folder not found"):
        stats.load_run(tmp_path / "nope")
    with pytest.raises(RunError, match="no run.json"):
        stats.load_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"config": {}, "samples": {}}))
    with pytest.raises(MissingStepError, match=r"samples.parquet.*chemozone run"):
        stats.load_run(tmp_path)
    pd.DataFrame({"sample_id": ["a"], "patient": ["P"], "radiation": ["photon"], "dose_gy": [0.0]}).to_parquet(
        tmp_path / "samples.parquet")
    with pytest.raises(MissingStepError, match=r"zones.parquet.*zones step"):
        stats.load_run(tmp_path, tables=("zones",))
    got = stats.load_run(tmp_path, missing="empty")
    assert got["cells"].empty and list(got["samples"]["sample_id"]) == ["a"]
    with pytest.raises(ValueError, match="unknown tables"):
        stats.load_run(tmp_path, tables=("cellz",))


def test_effective_dose_unknown_radiation():
    d = pd.DataFrame({"radiation": ["helium", "sham"], "dose_gy": [2.0, 0.0]})
    with pytest.raises(ConfigError, match=r"stats.effectiveness.*helium"):
        stats.add_effective_dose(d, {"photon": 1.0})
    assert stats.add_effective_dose(d, {"photon": 1.0}, strict=False)["effective_dose_gy"].iloc[1] == 0


# --------------------------------------------------------------------------------------- metrics
def test_metric_tables(run, fab):
    za = stats.metric_table(run, "zone_area")
    assert fab["failed"][0] not in set(za["sample_id"])
    assert len(za) == len(fab["samples"]) - len(fab["failed"])
    z = run["zones"]
    row = z[(z["sample_id"] == "P02_photon_10Gy") & (z["zone"] == "CXCL8")].iloc[0]
    assert za.set_index("sample_id").at["P02_photon_10Gy", "area_fraction_CXCL8"] == pytest.approx(row["area_fraction"])
    dens = stats.metric_table(run, "density", zone="CXCL8", region="inside")
    inf = run["infiltration"]
    r = inf[(inf["sample_id"] == "P02_photon_10Gy") & (inf["zone"] == "CXCL8") & (inf["region"] == "inside")
            & (inf["population"] == "NK CXCR2+") & (inf["population_type"] == "phenotype")].iloc[0]
    assert dens.set_index("sample_id").at["P02_photon_10Gy", "density_NK CXCR2+"] == pytest.approx(
        r["n_cells"] / r["area_mm2"])
    enr = stats.metric_table(run, "enrichment", zone="CXCL8", pseudocount_cells=0)
    o = inf[(inf["sample_id"] == "P02_photon_10Gy") & (inf["zone"] == "CXCL8") & (inf["region"] == "outside")
            & (inf["population"] == "NK CXCR2+") & (inf["population_type"] == "phenotype")].iloc[0]
    want = np.log2((r["n_cells"] / r["area_mm2"]) / (o["n_cells"] / o["area_mm2"]))
    assert enr.set_index("sample_id").at["P02_photon_10Gy", "log2_enrichment_NK CXCR2+"] == pytest.approx(want)
    pf = stats.metric_table(run, "producer_fraction")
    c = run["cells"]
    t = c[(c["sample_id"] == "P02_photon_10Gy") & c["cell_type"].str.startswith("Tumor")]
    assert pf.set_index("sample_id").at["P02_photon_10Gy", "producer_fraction_CXCL8"] == pytest.approx(
        t["CXCL8_pos"].mean())
    with pytest.raises(MissingStepError, match="no zone 'CCL5'"):
        stats.density_table(run, zone="CCL5")
    with pytest.raises(ValueError, match="unknown metric kind"):
        stats.metric_table(run, "nope")
    with pytest.raises(MissingStepError, match=r"\['CCL5_pos'\].*phenotype step"):
        stats.producer_fraction_table(run, markers=["CCL5"])


# --------------------------------------------------------------------------------- dose-response
def _emax_frame(e0=1.0, emax=4.0, ed50=3.0, doses=(0, 2, 5, 10, 20), n_pat=4, offsets=True, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pat):
        off = 0.3 * p if offsets else 0.0
        for d in doses:
            y = e0 + off + emax * d / (ed50 + d) + rng.normal(0, noise)
            rows.append({"patient": f"P{p}", "radiation": "photon" if d else "sham", "dose_gy": float(d), "y": y})
    return pd.DataFrame(rows)


def test_emax_exact_recovery_and_plateau():
    df = _emax_frame()
    fits = stats.fit_dose_response(df, metric="y", n_bootstrap=0)
    em = fits[(fits["model"] == "emax")].iloc[0]
    assert em["ED50"] == pytest.approx(3.0, rel=1e-4)
    assert em["Emax"] == pytest.approx(4.0, rel=1e-4)
    assert em["E0"] == pytest.approx(1.0, abs=1e-4)  # patient P0 is the reference offset
    assert em["plateau_value"] == pytest.approx(5.0, rel=1e-4)
    assert set(fits["group"]) == {"photon"}
    assert fits.loc[fits["model"] != "linear", "chosen"].any()
    assert bool(em["plateau"]) and em["plateau_delta_aic"] > 10


def test_linear_data_prefers_linear_no_plateau():
    df = _emax_frame(emax=0)
    df["y"] = df["y"] + 0.2 * df["dose_gy"] + np.random.default_rng(0).normal(0, 0.05, len(df))
    fits = stats.fit_dose_response(df, metric="y", models=("linear", "emax"), n_bootstrap=0)
    lin = fits[fits["model"] == "linear"].iloc[0]
    assert lin["slope"] == pytest.approx(0.2, abs=0.02)
    assert bool(lin["chosen"]) and not bool(lin["plateau"])


def test_fabricated_cohort_dose_response(run, fab):
    za = stats.metric_table(run, "zone_area")
    fits = stats.fit_dose_response(za, metric="area_fraction_CXCL8", n_bootstrap=40, seed=0)
    ph = fits[(fits["group"] == "photon")]
    assert bool(ph["plateau"].iloc[0])
    em = ph[ph["model"] == "emax"].iloc[0]
    truth = fab["truth"]["CXCL8"]["ed50"]
    assert abs(em["ED50"] / truth - 1) < 0.35
    assert em["ED50_ci_lo"] < truth < em["ED50_ci_hi"] or abs(em["ED50"] / truth - 1) < 0.2
    assert em["n_bootstrap"] > 30
    # carbon on the physical scale responds ~2.5x earlier
    ca = fits[(fits["group"] == "carbon") & (fits["model"] == "emax")].iloc[0]
    assert ca["ED50"] < em["ED50"] / 1.5
    # same seed, same result
    again = stats.fit_dose_response(za, metric="area_fraction_CXCL8", n_bootstrap=40, seed=0)
    pd.testing.assert_frame_equal(fits, again)


def _boot_curves(fits, boot, grid, group):
    """The chosen model's curve of every bootstrap draw, by hand from the model formulas."""
    from chemozone.stats._dose_response import _PARAMS, _curve

    ch = fits[(fits["group"] == group) & fits["chosen"]].iloc[0]
    b = boot[(boot["group"].astype(str) == group) & (boot["model"] == ch["model"]) & (boot["metric"] == ch["metric"])]
    return np.stack([_curve(ch["model"], grid, row) for row in b[_PARAMS[ch["model"]]].to_numpy(float)])


def test_predict_dose_response_bands(run):
    za = stats.metric_table(run, "zone_area")
    fits, boot = stats.fit_dose_response_with_bootstrap(za, metric="area_fraction_CXCL8", models=("linear", "emax"),
                                                        n_bootstrap=20)
    grid = np.linspace(0, 20, 11)
    cur = stats.predict_dose_response(fits, grid, boot=boot, group="photon")
    assert list(cur.columns) == ["dose", "fit", "lo", "hi"]
    assert (cur["lo"] <= cur["fit"] + 1e-9).all() and (cur["fit"] <= cur["hi"] + 1e-9).all()
    assert cur["fit"].is_monotonic_increasing
    with pytest.raises(ValueError, match="expected one fit"):
        stats.predict_dose_response(fits, grid, group="helium")
    # the simultaneous (sup-t) band holds >= 95 % of the bootstrap curves whole; the pointwise one need not
    sim = stats.predict_dose_response(fits, grid, boot=boot, group="photon", band="simultaneous")
    curves = _boot_curves(fits, boot, grid, "photon")
    inside = ((curves >= sim["lo"].to_numpy() - 1e-12) & (curves <= sim["hi"].to_numpy() + 1e-12)).all(axis=1)
    assert inside.mean() >= 0.95
    assert (sim["lo"] <= sim["fit"]).all() and (sim["fit"] <= sim["hi"]).all()
    with pytest.raises(ValueError, match="band must be one of"):
        stats.predict_dose_response(fits, grid, boot=boot, group="photon", band="pointwize")


def test_tost_hand_computed():
    # per-patient 10 and 20 Gy values: diffs 0.1, -0.1, 0.0, 0.05 on a level of 10 -> margin 1.5: equivalent
    rows = []
    for p, (a, b) in enumerate([(10, 10.1), (10, 9.9), (10, 10.0), (10, 10.05)]):
        rows += [{"patient": f"P{p}", "radiation": "photon", "dose_gy": 10.0, "y": a},
                 {"patient": f"P{p}", "radiation": "photon", "dose_gy": 20.0, "y": b},
                 {"patient": f"P{p}", "radiation": "photon", "dose_gy": 0.0, "y": 1.0 + 0.01 * p},
                 {"patient": f"P{p}", "radiation": "photon", "dose_gy": 5.0, "y": 8.0}]
    fits = stats.fit_dose_response(pd.DataFrame(rows), metric="y", models=("linear", "emax"), n_bootstrap=0)
    r = fits.iloc[0]
    diffs = np.array([0.1, -0.1, 0.0, 0.05])
    from scipy import stats as sst

    se = diffs.std(ddof=1) / 2
    want = max(1 - sst.t.cdf((diffs.mean() + 1.5) / se, 3), sst.t.cdf((diffs.mean() - 1.5) / se, 3))
    assert r["tost_margin"] == pytest.approx(1.5)
    assert r["tost_diff"] == pytest.approx(diffs.mean())
    assert r["tost_p"] == pytest.approx(want)
    assert bool(r["equivalent_hi_lo"])


def test_fit_errors():
    df = _emax_frame()
    with pytest.raises(MissingStepError, match=r"lacks column\(s\) \['nope'\]"):
        stats.fit_dose_response(df, metric="nope")
    with pytest.raises(ValueError, match="unknown model"):
        stats.fit_dose_response(df, metric="y", models=("logistic",))


def test_relative_amplitude_detects_weaker_module(run):
    za = stats.metric_table(run, "zone_area")
    a = stats.relative_amplitude(za, metric="area_fraction_CXCL8", n_bootstrap=40).set_index("group")
    b = stats.relative_amplitude(za, metric="area_fraction_CXCL10", n_bootstrap=40).set_index("group")
    assert b.at["carbon", "ratio"] == pytest.approx(0.5, abs=0.15)
    assert b.at["carbon", "ratio_ci_hi"] < 1
    assert b.at["carbon", "ratio"] < a.at["carbon", "ratio"]
    assert a.at["photon", "ratio"] == 1


# ---------------------------------------------------------------------------------- mixed models
def test_mixed_model_recovers_slopes():
    rng = np.random.default_rng(3)
    rows = []
    for p in range(8):
        u = rng.normal(0, 1.0)
        for rad, slope in (("photon", 0.5), ("carbon", 1.25)):
            for d in (0.0, 2.0, 5.0, 10.0):
                rows.append({"patient": f"P{p}", "radiation": rad, "dose_gy": d,
                             "y": 2 + u + slope * d + rng.normal(0, 0.2)})
    tab = stats.mixed_model(pd.DataFrame(rows), metric="y").set_index("term")
    assert tab.at["slope[photon]", "estimate"] == pytest.approx(0.5, abs=0.05)
    assert tab.at["slope[carbon]", "estimate"] == pytest.approx(1.25, abs=0.05)
    assert tab.at["dose:radiation[carbon] - photon", "ci_lo"] > 0.6
    lv = stats.mixed_model(pd.DataFrame(rows), metric="y", dose_as="levels").set_index("term")
    assert lv.at["carbon_10Gy - control", "estimate"] == pytest.approx(12.5, abs=0.3)
    with pytest.raises(ValueError, match="dose_as"):
        stats.mixed_model(pd.DataFrame(rows), metric="y", dose_as="spline")
    with pytest.raises(MissingStepError, match="lacks column"):
        stats.mixed_model(pd.DataFrame(rows), metric="z")


def test_receptor_negative_has_no_dose_effect(run):
    dens = stats.metric_table(run, "density", zone="CXCL8")
    neg = stats.mixed_model(dens, metric="density_NK", transform="log1p").set_index("term")
    assert neg.at["slope[photon]", "ci_lo"] < 0 < neg.at["slope[photon]", "ci_hi"]
    pos = stats.mixed_model(dens, metric="density_NK CXCR2+", transform="log1p").set_index("term")
    assert pos.at["slope[photon]", "ci_lo"] > 0


def test_compare_radiation(run):
    za = stats.metric_table(run, "zone_area")
    eff = stats.compare_radiation(za, metric="area_fraction_CXCL10", scale="effective",
                                  effectiveness=run["effectiveness"])
    pooled = eff[eff["dose_gy"].isna()].iloc[0]
    assert pooled["estimate"] < 0 and pooled["ci_hi"] < 0  # carbon conserves only half of module B
    assert set(eff["effective_dose_gy"].dropna()) == {5.0, 12.5, 25.0}
    phys = stats.compare_radiation(za, metric="area_fraction_CXCL8", scale="physical")
    assert set(phys["dose_gy"]) == {2.0, 5.0, 10.0}
    # at 2 Gy physical, carbon (5 Gy effective) gives a larger zone than photon
    assert phys.set_index("dose_gy").at[2.0, "estimate"] > 0
    with pytest.raises(ConfigError, match="effectiveness is empty"):
        stats.compare_radiation(za, metric="area_fraction_CXCL8", scale="effective")
    with pytest.raises(ValueError, match="reference radiation 'x-ray'"):
        stats.compare_radiation(za, metric="area_fraction_CXCL8", reference="x-ray")


# ------------------------------------------------------------------------------------- cognate
def test_cognate_test(run):
    pairs = run["run"]["config"]["spatial"]["cognate_pairs"]
    res = stats.cognate_test(run["infiltration"], pairs=pairs).set_index(["zone", "cell_type"])
    assert res.at[("CXCL8", "NK"), "estimate"] > 1 and bool(res.at[("CXCL8", "NK"), "significant"])
    assert res.at[("CXCL8", "NK"), "mean_neg"] == pytest.approx(0, abs=0.2)
    assert bool(res.at[("CXCL10", "CD8_T"), "significant"])
    # non-cognate: CXCR2 in the CXCL10 zone is not enriched
    non = stats.cognate_test(run["infiltration"], pairs=[("CXCL10", "CXCR2", ["NK"])]).iloc[0]
    assert non["ci_lo"] < 0 < non["ci_hi"]
    with pytest.raises(MissingStepError, match="no zone 'CCL5'"):
        stats.cognate_test(run["infiltration"], pairs=[("CCL5", "CCR5", ["NK"])])


# ------------------------------------------------------------------------------------- modules
def test_chemokine_modules_recovered(run):
    res = stats.chemokine_modules(run["cells"])
    mods = res["modules"]
    assert mods["CXCL8"] == mods["CXCL1"]
    assert mods["CXCL10"] == mods["CXCL9"]
    assert len({mods["CXCL8"], mods["CXCL10"], mods["CCL20"]}) == 3
    assert res["corr"].loc["CXCL8", "CXCL1"] > 0.6 and abs(res["corr"].loc["CXCL8", "CXCL10"]) < 0.2
    two = stats.chemokine_modules(run["cells"], n_modules=2)["modules"]
    assert two.nunique() == 2
    nb = stats.chemokine_modules(run["cells"], level="neighbourhood", bin_um=100)
    assert nb["modules"]["CXCL10"] == nb["modules"]["CXCL9"]
    with pytest.raises(MissingStepError, match="at least two gated chemokine markers"):
        stats.chemokine_modules(run["cells"], markers=["CXCL8"])
    # a panel with exactly two chemokines (spearmanr then returns one coefficient, not a matrix)
    pair = stats.chemokine_modules(run["cells"], markers=["CXCL8", "CXCL1"])
    assert pair["modules"]["CXCL8"] == pair["modules"]["CXCL1"]
    assert pair["corr"].loc["CXCL8", "CXCL1"] == pytest.approx(res["corr"].loc["CXCL8", "CXCL1"])


def test_bh_fdr_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.001, 0.2, 0.03, 0.04, 0.5, np.nan])
    got = stats.bh_fdr(p)
    want = multipletests(p[:-1], method="fdr_bh")[1]
    np.testing.assert_allclose(got[:-1], want)
    assert np.isnan(got[-1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_bh_fdr_invariants(p):
    q = stats.bh_fdr(p)
    p = np.asarray(p)
    assert np.all(q >= p - 1e-12) and np.all(q <= 1)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(q[order]) >= -1e-12)


def test_receptor_density_table(run):
    t = stats.metric_table(run, "receptor_density")
    assert {"NK CXCR2+ in CXCL8", "NK CXCR2- in CXCL8", "CD8_T CXCR3+ in CXCL10"} <= set(t.columns)
    inf = run["infiltration"]
    r = inf[(inf["sample_id"] == "P02_photon_10Gy") & (inf["zone"] == "CXCL8") & (inf["region"] == "inside")
            & (inf["population"] == "NK") & (inf["population_type"] == "phenotype")].iloc[0]
    assert t.set_index("sample_id").at["P02_photon_10Gy", "NK CXCR2- in CXCL8"] == pytest.approx(
        r["n_cells"] / r["area_mm2"])
    per_t = stats.receptor_density_table(run, per="tissue")
    tissue = run["zones"].query("sample_id == 'P02_photon_10Gy' and zone == 'CXCL8'")["tissue_area_mm2"].iloc[0]
    assert per_t.set_index("sample_id").at["P02_photon_10Gy", "NK CXCR2- in CXCL8"] == pytest.approx(
        r["n_cells"] / tissue)
    assert stats.split_phenotype("CD8 T CXCR3+ CCR5-") == ("CD8 T", frozenset({"CXCR3+", "CCR5-"}))
    with pytest.raises(ValueError, match="per must be"):
        stats.receptor_density_table(run, per="cell")


# ------------------------------------------------------------------ counts and area-offset dose tests
def _synthetic_counts(rng, beta_in_log2: float, *, zone_grows: bool = True) -> pd.DataFrame:
    """Counts of one population inside/outside a zone: density outside 1000/mm², inside 1000·2**(β·dose)/mm²."""
    rows = []
    for p in range(6):
        pmult = np.exp(rng.normal(0, 0.2))
        for rad, doses in (("sham", [0.0]), ("photon", [2.0, 5.0, 10.0, 20.0])):
            for d in doses:
                a_t = 0.05
                a_in = a_t * (0.01 + 0.3 * d / (4 + d) if zone_grows else 0.2)
                a_out = a_t - a_in
                lam_in = 1000 * pmult * a_in * 2 ** (beta_in_log2 * d)
                lam_out = 1000 * pmult * a_out
                sid = f"P{p}_{rad}_{d:g}"
                for reg, lam, a in (("inside", lam_in, a_in), ("outside", lam_out, a_out)):
                    rows.append({"sample_id": sid, "patient": f"P{p}", "radiation": rad, "dose_gy": d,
                                 "region": reg, "n_cells": int(rng.poisson(lam)), "area_mm2": a,
                                 "tissue_area_mm2": a_t, "cell_type": "NK", "status": "neg"})
    return pd.DataFrame(rows)


def test_dose_rate_test_flat_vs_attracted():
    rng = np.random.default_rng(3)
    flat = _synthetic_counts(rng, 0.0)
    # placed independently of a growing zone: no trend in zone density or enrichment ...
    for contrast in ("enrichment", "density"):
        r = stats.dose_rate_test(flat, contrast=contrast).set_index("arm").loc["photon"]
        assert r["ci_lo"] <= 0 <= r["ci_hi"], (contrast, r)
    # ... while the per-tissue count inside the zone rises (the confounded metric)
    ins = flat[flat["region"] == "inside"].groupby("dose_gy")["n_cells"].sum()
    assert ins.loc[20.0] > 5 * max(ins.loc[0.0], 1)
    up = _synthetic_counts(rng, 0.08)
    for contrast in ("enrichment", "density"):
        r = stats.dose_rate_test(up, contrast=contrast).set_index("arm").loc["photon"]
        assert r["ci_lo"] > 0 and r["estimate"] == pytest.approx(0.08, abs=0.03)
    with pytest.raises(ValueError, match="contrast must be"):
        stats.dose_rate_test(flat, contrast="ratio")
    with pytest.raises(MissingStepError, match="receptor_count_table"):
        stats.dose_rate_test(flat.drop(columns=["area_mm2"]))


def test_receptor_count_table_zero_fill_and_pool(run):
    pairs = [("CXCL8", "CXCR2", ["NK", "CD8_T"])]
    c = stats.receptor_count_table(run, pairs=pairs, pool=True)
    assert set(c["status"]) == {"pos", "neg"} and set(c["region"]) == {"inside", "outside"}
    assert any(" & " in ct for ct in c["cell_type"])
    # every (sample, region) where the zone was measured appears for every population, zero-filled
    k = c[(c["zone"] == "CXCL8") & (c["cell_type"] == "NK")]
    assert k.groupby("status")["sample_id"].nunique().nunique() == 1
    assert (k["n_cells"] >= 0).all()
    # the pooled count is the sum of its lineages
    g = c[(c["zone"] == "CXCL8") & (c["region"] == "inside") & (c["status"] == "pos")]
    piv = g.pivot_table(index="sample_id", columns="cell_type", values="n_cells", aggfunc="sum")
    pooled = [ct for ct in piv.columns if " & " in ct][0]
    parts = pooled.split(" & ")
    assert (piv[pooled] == piv[parts].sum(axis=1)).all()
    per_z = stats.receptor_density_table(run, pairs=pairs, per="zone", pool=True)
    assert f"{pooled} CXCR2+ in CXCL8" in per_z.columns


# ------------------------------------------------------------- co-localised zones: adjusted dose tests
def _overlap_counts(rng, *, beta_a_log2: float, gamma_b: float = 2.0) -> pd.DataFrame:
    """Counts per (zone A, zone B) combination: B overlaps A more as dose rises; cells attracted to B by
    ``exp(gamma_b)`` and to A by ``2**(beta_a · dose)``."""
    rows = []
    for p in range(6):
        pmult = np.exp(rng.normal(0, 0.2))
        for rad, doses in (("sham", [0.0]), ("photon", [2.0, 5.0, 10.0, 20.0])):
            for d in doses:
                a_t = 0.05
                fa = 0.05 + 0.3 * d / (4 + d)          # A's area fraction
                fb = 0.05 + 0.3 * d / (4 + d)          # B's area fraction
                p_b_given_a = min(0.95, fb * (1 + 0.1 * d))  # co-localisation grows with dose
                ab = fa * p_b_given_a
                parts = {(1, 1): ab, (1, 0): fa - ab, (0, 1): fb - ab, (0, 0): 1 - fa - fb + ab}
                sid = f"P{p}_{rad}_{d:g}"
                for (ia, ib), frac in parts.items():
                    a = a_t * frac
                    lam = 1000 * pmult * a * np.exp(gamma_b * ib) * 2 ** (beta_a_log2 * d * ia)
                    rows.append({"sample_id": sid, "patient": f"P{p}", "radiation": rad, "dose_gy": d,
                                 "zone": "A", "receptor": "R", "cell_type": "NK", "status": "neg",
                                 "region": f"A{'+' if ia else '-'} B{'+' if ib else '-'}", "inside": bool(ia),
                                 "in_A": bool(ia), "in_B": bool(ib), "n_cells": int(rng.poisson(lam)), "area_mm2": a})
    return pd.DataFrame(rows)


def test_dose_rate_test_adjusts_for_colocalised_zone():
    rng = np.random.default_rng(5)
    ov = _overlap_counts(rng, beta_a_log2=0.0)
    # the unadjusted test (regions collapsed to inside/outside A) sees a spurious trend: B's cells follow B into A
    plain = ov.assign(region=np.where(ov["in_A"], "inside", "outside")).drop(columns=["inside", "in_A", "in_B"])
    plain = plain.groupby([c for c in plain.columns if c not in ("n_cells", "area_mm2")], as_index=False)[
        ["n_cells", "area_mm2"]].sum()
    r0 = stats.dose_rate_test(plain, contrast="enrichment").set_index("arm").loc["photon"]
    assert r0["ci_lo"] > 0 and r0["adjusted_for"] == ""
    for contrast in ("enrichment", "density"):
        r = stats.dose_rate_test(ov, contrast=contrast).set_index("arm").loc["photon"]
        assert r["ci_lo"] <= 0 <= r["ci_hi"] and abs(r["estimate"]) < {"enrichment": 0.03, "density": 0.06}[contrast]
        assert r["adjusted_for"] == "B"
    # a true trend in A is still recovered after the adjustment
    up = _overlap_counts(rng, beta_a_log2=0.08)
    for contrast in ("enrichment", "density"):
        r = stats.dose_rate_test(up, contrast=contrast).set_index("arm").loc["photon"]
        assert r["ci_lo"] > 0 and r["estimate"] == pytest.approx(0.08, abs=0.03), (contrast, r)


def test_receptor_overlap_counts_from_run_tables():
    samples = pd.DataFrame({"sample_id": ["s1", "s2"], "patient": ["P1", "P1"], "radiation": ["sham", "photon"],
                            "dose_gy": [0.0, 10.0]})
    ov = []
    for sid in ("s1", "s2"):
        for ia in (True, False):
            for ib in (True, False):
                reg = f"A{'+' if ia else '-'} B{'+' if ib else '-'}"
                for pop, n in (("NK CXCR2+", 3), ("NK", 2), ("CD8 T CXCR2+", 1), ("CD8 T", 4)):
                    ov.append({"sample_id": sid, "population_type": "phenotype", "population": pop, "region": reg,
                               "in_A": ia, "in_B": ib, "n_cells": n + int(ia), "area_mm2": 0.01 + 0.01 * ib})
    run = {"samples": samples, "zone_overlap": pd.DataFrame(ov), "run": {"samples": {}}}
    c = stats.receptor_overlap_counts(run, pairs=[("A", "CXCR2", ["NK", "CD8 T"])], pool=True)
    assert set(c["cell_type"]) == {"NK", "CD8 T", "NK & CD8 T"} and len(c) == 2 * 4 * 3 * 2
    k = c[(c["sample_id"] == "s2") & (c["region"] == "A+ B-")].set_index(["cell_type", "status"])["n_cells"]
    assert k[("NK", "pos")] == 4 and k[("NK", "neg")] == 3 and k[("NK & CD8 T", "neg")] == 3 + 5
    assert (c["inside"] == c["in_A"]).all() and "dose_gy" in c
    with pytest.raises(MissingStepError, match="no zone 'Q'"):
        stats.receptor_overlap_counts(run, pairs=[("Q", "CXCR2", ["NK"])])
    with pytest.raises(MissingStepError, match="zone_overlap.parquet"):
        stats.receptor_overlap_counts({**run, "zone_overlap": pd.DataFrame()}, pairs=[("A", "CXCR2", ["NK"])])
