"""Intervals, equivalence tests, quasi-binomial fits and bootstrap bookkeeping of chemozone.stats."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from chemozone import stats


# ------------------------------------------------------------------------------------ BCa
def test_bca_equals_scipy_on_a_fixed_sample():
    x = np.random.default_rng(7).lognormal(0, 0.8, 25)
    res = sst.bootstrap((x,), np.mean, method="BCa", n_resamples=2000, confidence_level=0.95,
                        random_state=np.random.default_rng(3), vectorized=True)
    jack = np.array([np.delete(x, i).mean() for i in range(len(x))])
    lo, hi = stats.bootstrap_interval(x.mean(), res.bootstrap_distribution, jackknife=jack, method="bca")
    assert lo == pytest.approx(res.confidence_interval.low, rel=1e-10)
    assert hi == pytest.approx(res.confidence_interval.high, rel=1e-10)
    # percentile: the plain quantiles; skewed data -> BCa moves right of the percentile interval
    plo, phi = stats.bootstrap_interval(x.mean(), res.bootstrap_distribution, method="percentile")
    assert (plo, phi) == pytest.approx(tuple(np.quantile(res.bootstrap_distribution, [0.025, 0.975])))
    assert lo > plo and hi > phi


def test_expanded_bca_is_wider_by_the_small_sample_factor():
    b = np.random.default_rng(0).normal(0, 1, 20000)
    lo, hi = stats.bootstrap_interval(0.0, b, method="bca")
    elo, ehi = stats.bootstrap_interval(0.0, b, method="bca-expanded", n_units=6)
    # expanded quantile sqrt(6/5) * t_5(0.975) = 2.817 vs 1.960
    assert (ehi - elo) / (hi - lo) == pytest.approx(np.sqrt(6 / 5) * sst.t.ppf(0.975, 5) / 1.96, rel=0.03)
    with pytest.raises(ValueError, match="ci_method must be one of"):
        stats.bootstrap_interval(0.0, b, method="studentized")
    assert np.isnan(stats.bootstrap_interval(5.0, b, method="bca")[0])  # every draw below the estimate


# ------------------------------------------------------------------------------------ TOST
def test_equivalence_test_known_answers():
    # hand computation: (0.01 ± margin 0.1) / se 0.02 on 5 df
    r = stats.equivalence_test(0.01, 0.02, df=5, margin=0.1)
    assert r["p"] == pytest.approx(sst.t.cdf((0.01 - 0.1) / 0.02, 5))
    assert r["equivalent"] and r["ci_hi"] == pytest.approx(0.01 + sst.t.ppf(0.95, 5) * 0.02)
    # an effect of the size of the margin is never shown equivalent; a noisy estimate neither
    assert not stats.equivalence_test(0.1, 0.02, df=5, margin=0.1)["equivalent"]
    noisy = stats.equivalence_test(0.0, 0.08, df=5, margin=0.1)
    assert not noisy["equivalent"] and noisy["power"] == 0.0
    with pytest.raises(ValueError, match="margin must be a positive number"):
        stats.equivalence_test(0.0, 0.01, df=5, margin=0)


def _counts(beta_log2, n_pat=6, seed=0, base=40.0):
    """Inside/outside counts per sample with a known log2 dose trend of the inside density."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pat):
        u = rng.normal(0, 0.2)
        for d in (0.0, 1, 2, 5, 10, 20):
            sid = f"P{p}_{d}"
            for region, area, lam in (("inside", 0.5, base * 2 ** (beta_log2 * d + u)), ("outside", 2.0, base)):
                rows.append({"sample_id": sid, "patient": f"P{p}", "radiation": "photon" if d else "sham",
                             "dose_gy": d, "region": region, "area_mm2": area,
                             "n_cells": rng.poisson(lam * area)})
    return pd.DataFrame(rows)


def test_dose_rate_equivalence_shows_no_effect_and_rejects_a_trend():
    margin = np.log2(1.5) / 20  # < 1.5-fold over 0-20 Gy
    flat = stats.dose_rate_test(_counts(0.0), contrast="density", equivalence_margin=margin).iloc[0]
    assert flat["equivalent"] and flat["tost_p"] < 0.05 and flat["tost_power"] > 0.5
    assert flat["se"] > 0 and flat["df"] > 10
    trend = stats.dose_rate_test(_counts(0.06), contrast="density", equivalence_margin=margin).iloc[0]
    assert not trend["equivalent"] and trend["ci_lo"] > 0
    with pytest.raises(ValueError, match="equivalence_margin must be a positive"):
        stats.dose_rate_test(_counts(0.0), equivalence_margin=-1)


# --------------------------------------------------------------------------- quasi-binomial fit
def _proportions(n_pat=6, seed=0, n_cells=400, e0=0.05, emax=0.5, ed50=3.0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pat):
        u = rng.normal(0, 0.02)
        for d in (0.0, 1, 2, 5, 10, 20):
            n = int(rng.integers(n_cells // 2, n_cells * 2))
            pr = e0 + u + emax * d / (ed50 + d)
            rows.append({"patient": f"P{p}", "radiation": "photon" if d else "sham", "dose_gy": d,
                         "n_tumor_cells": n, "frac": rng.binomial(n, pr) / n})
    return pd.DataFrame(rows)


def test_quasibinomial_emax_recovers_known_parameters():
    f = stats.fit_dose_response(_proportions(), metric="frac", trials="n_tumor_cells", models=("linear", "emax"),
                                n_bootstrap=0)
    em = f[f["model"] == "emax"].iloc[0]
    assert em["family"] == "quasibinomial"
    assert em["ED50"] == pytest.approx(3.0, rel=0.2) and em["Emax"] == pytest.approx(0.5, abs=0.05)
    assert em["dispersion"] == pytest.approx(1.0, abs=0.6)  # binomial data: no over-dispersion
    assert bool(em["chosen"]) and bool(em["plateau"])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        stats.fit_dose_response(_proportions().assign(frac=2.0), metric="frac", trials="n_tumor_cells")


def test_quasibinomial_linear_fit_matches_statsmodels_glm():
    import warnings

    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import DomainWarning

    df = _proportions(n_pat=1, emax=0.0)
    df["frac"] = np.clip(df["frac"] + 0.01 * df["dose_gy"], 0, 1)
    f = stats.fit_dose_response(df, metric="frac", trials="n_tumor_cells", models=("linear",), n_bootstrap=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DomainWarning)  # identity link: fine inside (0, 1)
        glm = sm.GLM(df["frac"], sm.add_constant(df["dose_gy"]),
                     family=sm.families.Binomial(link=sm.families.links.Identity()),
                     var_weights=df["n_tumor_cells"]).fit()
    r = f.iloc[0]
    assert r["E0"] == pytest.approx(glm.params["const"], rel=1e-4)
    assert r["slope"] == pytest.approx(glm.params["dose_gy"], rel=1e-4)
    assert r["rss"] == pytest.approx(glm.deviance, rel=1e-4)


# ------------------------------------------------------------------------- plateau vs log-linear
def test_plateau_needs_to_beat_the_loglinear_curve():
    rng = np.random.default_rng(1)
    rows = []
    for p in range(6):
        for d in (0.0, 1, 2, 5, 10, 20):
            rows.append({"patient": f"P{p}", "radiation": "photon", "dose_gy": d,
                         "loglin": 1 + 0.8 * np.log1p(d) + rng.normal(0, 0.05),
                         "emax": 1 + 3 * d / (3 + d) + rng.normal(0, 0.05)})
    df = pd.DataFrame(rows)
    f = stats.fit_dose_response(df, metric=["loglin", "emax"], n_bootstrap=0).set_index(["metric", "model"])
    ll = f.loc[("loglin", "emax")]
    # the concave curve without plateau beats the straight line by far, but not the log-linear model
    assert ll["plateau_delta_aic"] > 10 and ll["plateau_vs_loglinear_delta_aic"] < 2 and not ll["plateau"]
    assert f.loc[("loglin", "loglinear"), "log_slope"] == pytest.approx(0.8, abs=0.03)
    em = f.loc[("emax", "emax")]
    assert em["plateau_vs_loglinear_delta_aic"] > 10 and em["plateau"]


# --------------------------------------------------------------------------- failed refits
def test_failed_bootstrap_refits_are_counted():
    # only patient P0 has doses beyond 1 Gy: a resample without P0 has two doses, too few for the Emax curve
    rng = np.random.default_rng(0)
    rows = []
    for p in range(5):
        for d in ((0.0, 1, 2, 5, 10, 20) if p == 0 else (0.0, 1)):
            rows.append({"patient": f"P{p}", "radiation": "photon", "dose_gy": d,
                         "y": 1 + 3 * d / (3 + d) + rng.normal(0, 0.05)})
    df = pd.DataFrame(rows)
    n_boot, seed = 60, 4
    draws = np.random.default_rng(seed)
    pats = np.array(sorted(df["patient"].unique()))
    want = sum("P0" not in draws.choice(pats, size=len(pats), replace=True) for _ in range(n_boot))
    assert want > 3  # (4/5)^5 = 33 % of the resamples miss P0
    with pytest.warns(RuntimeWarning, match=f"{want} of {n_boot} bootstrap refits failed"):
        f = stats.fit_dose_response(df, metric="y", models=("emax",), n_bootstrap=n_boot, seed=seed)
    r = f.iloc[0]
    assert r["n_bootstrap_failed"] == want and r["n_bootstrap"] == n_boot - want


# --------------------------------------------------------------------------- compare_radiation
def _radiation_frame(ref_noise, seed=0):
    """Photon arm (reference, noise ``ref_noise``) and a carbon arm conserving 60 % at effective factor 2."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(6):
        u = rng.normal(0, 0.1)
        for d in (0.0, 1, 2, 5, 10, 20):
            rows.append({"patient": f"P{p}", "radiation": "photon" if d else "sham", "dose_gy": d,
                         "y": 1 + u + 2 * d / (3 + d) + rng.normal(0, ref_noise)})
        for d in (1.0, 2, 5, 10):
            de = 2 * d
            rows.append({"patient": f"P{p}", "radiation": "carbon", "dose_gy": d,
                         "y": 1 + u + 0.6 * 2 * de / (3 + de) + rng.normal(0, 0.02)})
    return pd.DataFrame(rows)


def test_compare_radiation_interval_widens_with_a_noisier_reference():
    eff = {"photon": 1.0, "carbon": 2.0}
    kw = dict(metric="y", scale="effective", effectiveness=eff, n_bootstrap=60)
    quiet = stats.compare_radiation(_radiation_frame(0.01), **kw)
    noisy = stats.compare_radiation(_radiation_frame(0.15), **kw)
    q, n = quiet[quiet["dose_gy"].isna()].iloc[0], noisy[noisy["dose_gy"].isna()].iloc[0]
    # same carbon noise: only the reference curve's uncertainty differs
    assert (n["ci_hi"] - n["ci_lo"]) > 3 * (q["ci_hi"] - q["ci_lo"])
    # truth: -0.4 * 2 * mean(de / (3 + de)) over 2, 4, 10, 20 Gy effective
    de = np.array([2.0, 4, 10, 20])
    truth = float(np.mean(-0.4 * 2 * de / (3 + de)))
    assert q["ci_lo"] < truth < q["ci_hi"] and q["method"].startswith("patient bootstrap")


def test_compare_radiation_ols_fallback_is_a_warning():
    df = _radiation_frame(0.05)
    df = df[df["patient"].isin(["P0", "P1"])]  # two patients: no random intercept
    with pytest.warns(RuntimeWarning, match="OLS instead of a mixed model"):
        out = stats.compare_radiation(df, metric="y", scale="physical")
    assert set(out["method"]) == {"ols"} and out["warning"].str.contains("fewer than 3 patients").all()


# --------------------------------------------------------------------------- mixed model t
def test_mixed_model_uses_t_with_patients_minus_one_df():
    rng = np.random.default_rng(2)
    rows = [{"patient": f"P{p}", "radiation": "photon", "dose_gy": d, "y": 1 + u + 0.3 * d + rng.normal(0, 0.3)}
            for p, u in enumerate(rng.normal(0, 0.5, 6)) for d in (0.0, 2, 5, 10)]
    tab = stats.mixed_model(pd.DataFrame(rows), metric="y").set_index("term")
    r = tab.loc["slope[photon]"]
    assert r["df"] == 5
    assert (r["ci_hi"] - r["estimate"]) == pytest.approx(sst.t.ppf(0.975, 5) * r["se"], rel=1e-9)
    assert r["p"] == pytest.approx(2 * sst.t.sf(abs(r["estimate"] / r["se"]), 5), rel=1e-9)


def test_ci_method_is_validated():
    df = _proportions()
    with pytest.raises(ValueError, match="ci_method must be one of"):
        stats.fit_dose_response(df, metric="frac", ci_method="normal")
    with pytest.raises(ValueError, match="ci_method must be one of"):
        stats.relative_amplitude(df, metric="frac", dose="dose_gy", ci_method="normal")


def test_student_t_interval_hand_computed():
    b = np.random.default_rng(5).lognormal(np.log(3.0), 0.2, 500)
    half = sst.t.ppf(0.975, 5) * np.sqrt(6 / 5) * np.std(np.log(b), ddof=1)
    lo, hi = stats.bootstrap_interval(3.0, b, method="student-t", n_units=6, log=True)
    assert (lo, hi) == pytest.approx((3.0 * np.exp(-half), 3.0 * np.exp(half)), rel=1e-12)
    lo, hi = stats.bootstrap_interval(1.0, b, method="student-t", n_units=6)
    assert hi - lo == pytest.approx(2 * sst.t.ppf(0.975, 5) * np.sqrt(6 / 5) * np.std(b, ddof=1), rel=1e-12)
    with pytest.raises(ValueError, match="needs n_units"):
        stats.bootstrap_interval(1.0, b, method="student-t")
