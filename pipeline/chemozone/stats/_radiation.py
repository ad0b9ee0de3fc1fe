"""Radiation types against a reference: amplitude ratios (:func:`relative_amplitude`) and contrasts at equal
physical or effective dose (:func:`compare_radiation`).

Both bootstrap the *whole* procedure over patients (the reference curve is refitted on every resample, and
the same resample serves every arm), so the reference curve's uncertainty is part of every interval.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, require_columns
from ._curves import _PARAMS, _curve, _fit_one
from ._dose_response import _arms
from ._intervals import CI_METHODS, bootstrap_interval, t_interval
from ._load import add_effective_dose
from ._mixed import _coef_table, _mixedlm


def _fit_arm_curve(arm: pd.DataFrame, model: str, *, dose: str | None, metric: str, patient: str,
                   x: np.ndarray | None = None, starts=None) -> dict[str, Any] | None:
    pats = {p: i for i, p in enumerate(sorted(arm[patient].unique()))}
    xx = arm[dose].to_numpy(float) if x is None else x
    return _fit_one(model, xx, arm[metric].to_numpy(float), arm[patient].map(pats).to_numpy(), len(pats),
                    starts=starts)


def _amplitudes(d_: pd.DataFrame, *, metric: str, reference: str, dose: str, group: str, patient: str, model: str,
                shared_shape: bool, starts=None) -> dict[str, Any]:
    """Amplitude per arm (``_theta``: the reference curve) on one (resampled) table; {} if the reference fails."""
    amp = "slope" if model == "linear" else "Emax"
    arms = _arms(d_, dose, group)
    if reference not in arms:
        raise ValueError(f"reference arm {reference!r} not in the data (arms: {sorted(arms)})")
    kw = dict(dose=dose, metric=metric, patient=patient)
    ref = _fit_arm_curve(arms[reference], model, starts=starts, **kw)
    if ref is None or not ref["converged"]:
        return {}
    out: dict[str, Any] = {"_theta": ref["theta"]}
    if not shared_shape or model == "linear":
        for g, arm in arms.items():
            f = _fit_arm_curve(arm, model, **kw) if g != reference else ref
            if f is not None and f["converged"]:
                out[g] = dict(zip(_PARAMS[model], f["params"]))[amp]
        return out
    p = list(ref["params"])
    for g, arm in arms.items():
        shape = _curve(model, arm[dose].to_numpy(float), [0.0, 1.0] + p[2:])
        f = _fit_arm_curve(arm, "linear", x=shape, **kw)
        if f is not None:
            out[g] = f["params"][1]
    return out


def relative_amplitude(df: pd.DataFrame, *, metric: str, reference: str = "photon",
                       dose: str = "effective_dose_gy", group: str = "radiation", patient: str = "patient",
                       model: str = "emax", shared_shape: bool = True, n_bootstrap: int = 200, seed: int = 0,
                       alpha: float = 0.05, ci_method: str = "student-t") -> pd.DataFrame:
    """How much of the reference arm's response each radiation type conserves.

    With ``shared_shape`` (default), the curve shape (ED50, and the Hill exponent for ``hill``) is fitted on
    the reference arm and shared: every arm is then fitted as ``y = E0 + A * H(dose)`` (plus patient
    offsets) and the ratio ``A_arm / A_reference`` is the conservation factor at equal ``dose`` (by default
    the effective dose). This is stable even when an arm's doses all lie near its plateau. Without it,
    each arm gets its own ``model`` fit and the ratio of the ``Emax`` (``slope`` for linear) is reported.
    CIs: paired patient bootstrap (the same patient resample for all arms, the reference curve refitted on
    each), by default ``ratio × exp(± t_{n-1}·sqrt(n/(n-1))·SD(log ratio draws))`` (``ci_method`` as in
    :func:`bootstrap_interval`; BCa uses leave-one-patient-out acceleration).

    Returns
    -------
    DataFrame
        ``metric, group, reference, amplitude, ratio, ratio_ci_lo, ratio_ci_hi, n_bootstrap,
        n_bootstrap_failed, ci_method``. A ratio below 1 whose CI excludes 1 is a weaker (partially conserved)
        response. ``n_bootstrap_failed`` counts resamples whose refit failed (dropped from the CI).
    """
    if ci_method not in CI_METHODS:
        raise ValueError(f"ci_method must be one of {CI_METHODS}, got {ci_method!r}")
    need = [metric, dose, group, patient]
    require_columns(df, need, "table", "stats.metric_table(...)")
    data = df[need].copy()
    data = data[np.isfinite(data[metric].astype(float)) & np.isfinite(data[dose].astype(float))]
    data[dose] = data[dose].astype(float)
    data[metric] = data[metric].astype(float)
    data[patient] = data[patient].astype(str)
    kw = dict(metric=metric, reference=reference, dose=dose, group=group, patient=patient, model=model,
              shared_shape=shared_shape)
    est = _amplitudes(data, **kw)
    if not est:
        raise ValueError(f"could not fit the reference arm {reference!r} for {metric!r}")
    theta = est.pop("_theta")

    def ratios(sample: pd.DataFrame) -> dict[str, float]:
        a = _amplitudes(sample, starts=[theta], **kw)
        a.pop("_theta", None)
        return {g: v / a[reference] for g, v in a.items()} if a.get(reference) else {}

    rng = np.random.default_rng(seed)
    pats = np.array(sorted(data[patient].unique()))
    by = {p: data[data[patient] == p] for p in pats}
    draws = []
    for _ in range(n_bootstrap):
        pick = rng.choice(pats, size=len(pats), replace=True)
        draws.append(ratios(pd.concat([by[p].assign(**{patient: f"b{i}"}) for i, p in enumerate(pick)],
                                      ignore_index=True)))
    jack = [ratios(data[data[patient] != p]) for p in pats] if ci_method.startswith("bca") and len(pats) >= 3 else []
    rows = []
    for g, v in est.items():
        r = {"metric": metric, "group": g, "reference": reference, "amplitude": v,
             "ratio": v / est[reference] if est[reference] else np.nan, "ratio_ci_lo": np.nan, "ratio_ci_hi": np.nan,
             "n_bootstrap": 0, "n_bootstrap_failed": 0, "ci_method": ci_method}
        vals = np.array([dr.get(g, np.nan) for dr in draws], float)
        ok = np.isfinite(vals)
        r["n_bootstrap"], r["n_bootstrap_failed"] = int(ok.sum()), int((~ok).sum())
        if ok.sum() >= 2 and g != reference:
            jk = np.array([j.get(g, np.nan) for j in jack], float) if jack else None
            r["ratio_ci_lo"], r["ratio_ci_hi"] = bootstrap_interval(r["ratio"], vals[ok], jackknife=jk, alpha=alpha,
                                                                    method=ci_method, n_units=len(pats), log=True)
        elif g == reference:
            r["ratio_ci_lo"] = r["ratio_ci_hi"] = 1.0
        rows.append(r)
    failed = {r["group"]: r["n_bootstrap_failed"] for r in rows if r["n_bootstrap_failed"] > 0.05 * n_bootstrap}
    if failed:
        warnings.warn(f"relative_amplitude {metric!r}: bootstrap refits failed and were dropped {failed} "
                      f"(of {n_bootstrap}; column n_bootstrap_failed)", RuntimeWarning, stacklevel=2)
    return pd.DataFrame(rows)


def compare_radiation(df: pd.DataFrame, *, metric: str, reference: str = "photon",
                      effectiveness: dict[str, float] | None = None, scale: str = "physical",
                      dose: str = "dose_gy", group: str = "radiation", patient: str = "patient",
                      model: str = "emax", alpha: float = 0.05, n_bootstrap: int = 200, seed: int = 0
                      ) -> pd.DataFrame:
    """Each radiation type vs the reference at equal physical or equal effective dose.

    ``physical``: at every dose level both arms share, a mixed model ``y ~ radiation`` (random intercept
    per patient, t interval with ``n_patients − 1`` degrees of freedom) on those samples; ``estimate`` =
    other − reference. Where a mixed model cannot be fitted (fewer than 3 patients, one sample per patient,
    a singular fit) an OLS t-test is used and a ``RuntimeWarning`` is issued (column ``method``).

    ``effective``: the reference arm's dose-response curve (``model``, with patient offsets) is fitted on
    the effective dose and evaluated at each other sample's effective dose (factor × dose); ``estimate`` is
    the mean over patients of each patient's mean difference observed − expected, per dose level and
    pooled (< 0: a weaker response than the reference at the same effective dose). Its uncertainty
    includes the reference curve's: the whole procedure (reference fit and differences) is repeated on
    ``n_bootstrap`` patient resamples; ``se`` is the bootstrap standard deviation × ``sqrt(n/(n−1))``
    (``n`` patients) and the interval and p-value are t with ``n − 1`` degrees of freedom.

    Returns
    -------
    DataFrame
        ``metric, scale, radiation, dose_gy (NaN = pooled), effective_dose_gy, estimate, se, ci_lo, ci_hi,
        p, n_samples, method, n_bootstrap_failed, warning``.
    """
    need = [metric, dose, group, patient]
    require_columns(df, need, "comparison table", "stats.metric_table(...)")
    d = df[need].copy()
    d = d[np.isfinite(d[metric].astype(float))]
    d["y"] = d[metric].astype(float)
    d["dose"] = d[dose].astype(float)
    d["rad"] = d[group].astype(str)
    d["pat"] = d[patient].astype(str)
    others = sorted(set(d.loc[(d["dose"] > 0) & (d["rad"] != reference), "rad"]))
    if reference not in set(d.loc[d["dose"] > 0, "rad"]):
        raise ValueError(f"reference radiation {reference!r} has no irradiated samples "
                         f"(types: {sorted(set(d.loc[d['dose'] > 0, 'rad']))})")
    if scale == "physical":
        rows = _compare_physical(d, metric, reference, others, alpha)
    elif scale == "effective":
        if not effectiveness:
            raise ConfigError("stats.effectiveness is empty; give one factor per radiation type to compare at "
                              "equal effective dose")
        rows = _compare_effective(d, metric, reference, others, effectiveness, model, alpha, n_bootstrap, seed)
    else:
        raise ValueError(f"scale must be 'physical' or 'effective', got {scale!r}")
    out = pd.DataFrame(rows, columns=["metric", "scale", "radiation", "dose_gy", "effective_dose_gy", "estimate",
                                      "se", "ci_lo", "ci_hi", "p", "n_samples", "method", "n_bootstrap_failed",
                                      "warning"])
    fallback = out[out["method"] == "ols"]
    if len(fallback):
        warnings.warn(f"compare_radiation {metric!r}: OLS instead of a mixed model at {len(fallback)} comparison(s) "
                      f"({fallback['warning'].iloc[0]}); see the columns method and warning", RuntimeWarning,
                      stacklevel=2)
    return out


def _intercept_test(sub: pd.DataFrame, formula: str, term: str, alpha: float
                    ) -> tuple[float, float, float, float, float, str, str]:
    """``term`` of ``formula``, random intercept per patient (``pat``) or OLS.

    Returns (estimate, se, lo, hi, p, method ``mixed``/``ols``, warning).
    """
    n_pat = sub["pat"].nunique()
    reason = "fewer than 3 patients" if n_pat < 3 else "one sample per patient"
    # a random intercept is only identifiable with >= 3 patients and repeated samples per patient
    if n_pat >= 3 and sub.groupby("pat").size().max() > 1:
        reason = "singular mixed model"
        try:
            res, warn = _mixedlm(formula, sub, "pat")
            t = _coef_table(res, alpha, df=n_pat - 1).set_index("term")
            if term in t.index and np.isfinite(t.at[term, "se"]) and t.at[term, "se"] > 1e-12:
                return (t.at[term, "estimate"], t.at[term, "se"], t.at[term, "ci_lo"], t.at[term, "ci_hi"],
                        t.at[term, "p"], "mixed", warn)
        except (np.linalg.LinAlgError, ValueError):
            pass
    import statsmodels.formula.api as smf

    res = smf.ols(formula, sub).fit()
    ci = res.conf_int(alpha)
    return (float(res.params[term]), float(res.bse[term]), float(ci.loc[term, 0]), float(ci.loc[term, 1]),
            float(res.pvalues[term]), "ols", f"OLS fallback ({reason})")


def _compare_physical(d: pd.DataFrame, metric: str, reference: str, others: list[str], alpha: float
                      ) -> list[dict[str, Any]]:
    """Rows of :func:`compare_radiation` at equal physical dose (``d``: columns ``y, dose, rad, pat``)."""
    rows = []
    for r in others:
        for lvl in sorted(set(d.loc[d["rad"] == r, "dose"]) & set(d.loc[d["rad"] == reference, "dose"])):
            if lvl <= 0:
                continue
            sub = d[np.isclose(d["dose"], lvl) & d["rad"].isin([r, reference])].copy()
            sub["other"] = (sub["rad"] == r).astype(float)
            est, se, lo, hi, p, method, warn = _intercept_test(sub, "y ~ other", "other", alpha)
            rows.append({"metric": metric, "scale": "physical", "radiation": r, "dose_gy": lvl,
                         "effective_dose_gy": np.nan, "estimate": est, "se": se, "ci_lo": lo, "ci_hi": hi, "p": p,
                         "n_samples": len(sub), "method": method, "n_bootstrap_failed": 0, "warning": warn})
    return rows


def _effective_differences(d: pd.DataFrame, reference: str, others: list[str], model: str, starts=None
                           ) -> dict[tuple[str, float | None], float] | None:
    """Mean over patients of per-patient mean (observed − reference curve), per (radiation, dose level or None).

    ``d`` has ``effective_dose_gy``; None when the reference curve cannot be fitted.
    """
    ref_arm = d[(d["dose"] == 0) | (d["rad"] == reference)]
    pats = {p: i for i, p in enumerate(sorted(ref_arm["pat"].unique()))}
    f = _fit_one(model, ref_arm["effective_dose_gy"].to_numpy(float), ref_arm["y"].to_numpy(float),
                 ref_arm["pat"].map(pats).to_numpy(), len(pats), starts=starts)
    if f is None or not f["converged"]:
        return None
    off = {p: f["offsets"][i] for p, i in pats.items()}
    out: dict[tuple[str, float | None], Any] = {"_theta": f["theta"]}
    for r in others:
        sub = d[(d["rad"] == r) & (d["dose"] > 0)]
        resid = sub["y"].to_numpy(float) - _curve(model, sub["effective_dose_gy"].to_numpy(float), f["params"]) \
            - sub["pat"].map(off).fillna(0.0).to_numpy(float)
        sub = sub.assign(resid=resid)
        for lvl in [*sorted(set(sub["dose"])), None]:
            s2 = sub if lvl is None else sub[np.isclose(sub["dose"], lvl)]
            out[(r, lvl)] = float(s2.groupby("pat")["resid"].mean().mean()) if len(s2) else np.nan
    return out


def _compare_effective(d: pd.DataFrame, metric: str, reference: str, others: list[str],
                       effectiveness: dict[str, float], model: str, alpha: float, n_bootstrap: int, seed: int
                       ) -> list[dict[str, Any]]:
    """Rows of :func:`compare_radiation` at equal effective dose (joint patient bootstrap, see there)."""
    d = add_effective_dose(d.rename(columns={"dose": "_dose"}), effectiveness, dose="_dose", radiation="rad")
    d = d.rename(columns={"_dose": "dose"})
    est = _effective_differences(d, reference, others, model)
    if est is None:
        raise ValueError(f"too few reference samples to fit the {model} curve for {metric!r}")
    theta = est.pop("_theta")
    pats = np.array(sorted(d["pat"].unique()))
    by = {p: d[d["pat"] == p] for p in pats}
    rng = np.random.default_rng(seed)
    draws, n_failed = [], 0
    for _ in range(n_bootstrap):
        pick = rng.choice(pats, size=len(pats), replace=True)
        bd = pd.concat([by[p].assign(pat=f"b{i}") for i, p in enumerate(pick)], ignore_index=True)
        b = _effective_differences(bd, reference, others, model, starts=[theta])
        if b is None:
            n_failed += 1
        else:
            b.pop("_theta")
            draws.append(b)
    n = len(pats)
    rows = []
    for (r, lvl), e in est.items():
        s2 = d[(d["rad"] == r) & (d["dose"] > 0) & (np.isclose(d["dose"], lvl) if lvl is not None else True)]
        if len(s2) < 2 or not np.isfinite(e):
            continue
        vals = np.array([b.get((r, lvl), np.nan) for b in draws], float)
        vals = vals[np.isfinite(vals)]
        se = float(np.std(vals, ddof=1) * np.sqrt(n / (n - 1))) if len(vals) > 1 and n > 1 else np.nan
        lo, hi, p = t_interval(e, se, max(n - 1, 1), alpha)
        warn = f"{n_failed} of {n_bootstrap} bootstrap refits of the reference curve failed" if n_failed else ""
        rows.append({"metric": metric, "scale": "effective", "radiation": r,
                     "dose_gy": np.nan if lvl is None else lvl,
                     "effective_dose_gy": np.nan if lvl is None else float(s2["effective_dose_gy"].iloc[0]),
                     "estimate": e, "se": se, "ci_lo": lo, "ci_hi": hi, "p": p, "n_samples": len(s2),
                     "method": "patient bootstrap (reference curve refitted)", "n_bootstrap_failed": n_failed,
                     "warning": warn})
    if n_failed > 0.05 * max(n_bootstrap, 1):
        warnings.warn(f"compare_radiation {metric!r}: {n_failed} of {n_bootstrap} bootstrap refits of the reference "
                      f"curve failed and were dropped (column n_bootstrap_failed)", RuntimeWarning, stacklevel=3)
    return rows
