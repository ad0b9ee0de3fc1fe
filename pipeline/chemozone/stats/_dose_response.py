"""Dose-response curves: linear, log-linear, Emax and Hill fits per radiation arm and their predictions.

Models (``E0`` baseline, ``Emax`` the amplitude, so the plateau is ``E0 + Emax``)::

    linear     y = E0 + slope * D
    loglinear  y = E0 + log_slope * log(1 + D)      (concave without a plateau)
    emax       y = E0 + Emax * D / (ED50 + D)
    hill       y = E0 + Emax * D**h / (ED50**h + D**h)

fitted by least squares (or, for a proportion of counted cells, by quasi-binomial maximum likelihood) with
one additive offset per patient; CIs from a bootstrap over patients (BCa by default, see
:func:`bootstrap_interval`), failed refits counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ..errors import require_columns
from ._curves import _PARAMS, _curve, _fit_one
from ._intervals import CI_METHODS, bootstrap_interval, equivalence_test


def dose_response_models() -> dict[str, list[str]]:
    """Model names and their parameters."""
    return {k: list(v) for k, v in _PARAMS.items()}


def _arms(df: pd.DataFrame, dose: str, group: str | None) -> dict[str, pd.DataFrame]:
    """Arms: each radiation type with doses > 0, plus every 0 Gy control."""
    if group is None:
        return {"all": df}
    zero = df[df[dose] == 0]
    arms = {}
    for g in sorted(df.loc[df[dose] > 0, group].dropna().astype(str).unique()):
        arms[g] = pd.concat([zero, df[(df[dose] > 0) & (df[group].astype(str) == g)]], ignore_index=True)
    return arms


def _tost(arm: pd.DataFrame, y: str, dose: str, patient: str | None, doses: tuple[float, float],
          margin_rel: float, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """Paired TOST of dose ``doses[1]`` vs ``doses[0]`` per patient: (mean diff, margin, p, power at diff 0)."""
    lo, hi = doses
    a = arm[np.isclose(arm[dose], lo)]
    b = arm[np.isclose(arm[dose], hi)]
    if not len(a) or not len(b):
        return np.nan, np.nan, np.nan, np.nan
    if patient is not None:
        ma, mb = a.groupby(patient)[y].mean(), b.groupby(patient)[y].mean()
        both = ma.index.intersection(mb.index)
        diff = (mb[both] - ma[both]).to_numpy(float)
        ref = float(ma[both].mean()) if len(both) else np.nan
    else:
        diff = np.array([b[y].mean() - a[y].mean()])
        ref = float(a[y].mean())
    margin = margin_rel * abs(ref)
    if len(diff) < 2 or not (np.isfinite(margin) and margin > 0):
        return (float(diff.mean()) if len(diff) else np.nan), margin, np.nan, np.nan
    m, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
    r = equivalence_test(m, se, df=len(diff) - 1, margin=margin, alpha=alpha)
    return m, margin, r["p"], r["power"]


_PARAM_COLS = ["E0", "slope", "log_slope", "Emax", "ED50", "hill"]  # every model's parameters, in column order


class DoseResponseFit(NamedTuple):
    """What :func:`fit_dose_response_with_bootstrap` returns (unpacks as ``fits, boot = ...``).

    Attributes
    ----------
    fits : DataFrame
        The fits table of :func:`fit_dose_response`.
    boot : DataFrame
        The bootstrap draws, one row per (metric, group, model, draw): ``metric, group, model, draw, E0, slope,
        log_slope, Emax, ED50, hill`` (NaN where a model lacks a parameter); empty without a bootstrap. Pass it
        to :func:`predict_dose_response` for confidence bands.
    """

    fits: pd.DataFrame
    boot: pd.DataFrame


def fit_dose_response(
    df: pd.DataFrame,
    *,
    metric: str | Sequence[str],
    dose: str = "dose_gy",
    group: str | None = "radiation",
    patient: str | None = "patient",
    models: Sequence[str] = ("linear", "loglinear", "emax", "hill"),
    n_bootstrap: int = 200,
    seed: int = 0,
    tost_doses: tuple[float, float] = (10.0, 20.0),
    tost_margin: float = 0.15,
    alpha: float = 0.05,
    trials: str | None = None,
    ci_method: str = "student-t",
) -> pd.DataFrame:
    """Fit linear, log-linear, Emax and Hill dose-response curves per radiation arm and choose one by AIC.

    Parameters
    ----------
    df : DataFrame
        One row per sample (e.g. from :func:`metric_table`) with ``metric``, ``dose``, ``group`` and
        ``patient`` columns. Rows at dose 0 are controls shared by every arm.
    metric : str or sequence of str
        Column(s) to fit; a sequence fits each and stacks the results.
    dose : str
        ``dose_gy`` (physical) or ``effective_dose_gy`` (see :func:`add_effective_dose`).
    group : str or None
        Column that defines the arms (radiation type); None fits one curve.
    patient : str or None
        Patient column: patient offsets in the fit and the bootstrap unit; None = samples are independent.
    models : sequence of {"linear", "loglinear", "emax", "hill"}
    n_bootstrap : int
        Patient-bootstrap draws for the CIs (0 = no CIs).
    seed : int
        Seed of the bootstrap.
    tost_doses, tost_margin : tuple, float
        Plateau equivalence test of ``tost_doses[1]`` vs ``tost_doses[0]`` (paired by patient, TOST) with
        margin ``± tost_margin × |mean at tost_doses[0]|``.
    alpha : float
        1 − confidence level of the CIs; also the TOST level.
    trials : str, optional
        Column with the number of cells behind each proportion (e.g. ``n_tumor_cells`` of
        :func:`producer_fraction_table`): ``metric`` is then fitted as a proportion by quasi-binomial
        maximum likelihood (identity link, dispersion from the Pearson χ² of the largest model in the arm;
        models compared by QAIC = deviance / dispersion + 2k) instead of Gaussian least squares.
    ci_method : {"student-t", "bca", "bca-expanded", "percentile"}
        Bootstrap interval (:func:`bootstrap_interval`): ``student-t`` (default) is ``estimate ±
        t_{n-1}·sqrt(n/(n-1))·SD`` of the patient-bootstrap draws, on the log scale for ED50 and the Hill
        exponent; ``bca`` uses jackknife-over-patients acceleration; ``bca-expanded`` widens BCa for few
        patients; ``percentile`` is the former interval. Their coverage with six patients is measured by
        ``benchmarks/coverage_stats.py`` (percentile and BCa under-cover there).

    Returns
    -------
    DataFrame
        One row per (metric, group, model): ``n_samples, n_patients``, the parameters (``E0, slope,
        log_slope, Emax, ED50, hill``; NaN where a model lacks one), ``plateau_value`` (E0 + Emax),
        ``rss`` (deviance for quasi-binomial), ``aic`` (QAIC for quasi-binomial), ``delta_aic``, ``chosen``
        (lowest AIC in the arm), ``family, dispersion``, the CIs ``{param}_ci_lo/_ci_hi``, and per arm
        ``plateau_delta_aic`` (AIC linear − AIC emax), ``plateau_vs_loglinear_delta_aic`` (AIC loglinear −
        AIC emax), ``plateau_lrt_p`` (likelihood-ratio test emax vs linear, 1 df), ``plateau`` (bool: both
        ΔAIC > 2, the log-linear one where that model was fitted), ``tost_diff, tost_margin, tost_p,
        tost_power, equivalent_hi_lo``; ``n_bootstrap`` (successful draws), ``n_bootstrap_failed`` (draws
        whose refit failed or could not be made and were dropped), ``ci_method``.

    Warns
    -----
    RuntimeWarning
        When more than 5 % of a fit's bootstrap refits failed (its CI rests on the remaining draws).

    See Also
    --------
    fit_dose_response_with_bootstrap : the same fits plus the bootstrap draws (for confidence bands).

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"dose_gy": [0.0, 2, 5, 10, 20] * 2, "radiation": "photon",
    ...                   "patient": ["P1"] * 5 + ["P2"] * 5})
    >>> d["y"] = 1 + 4 * d["dose_gy"] / (3 + d["dose_gy"]) + 0.5 * (d["patient"] == "P2")
    >>> fits = fit_dose_response(d, metric="y", models=("linear", "emax"), n_bootstrap=0)
    >>> fits.loc[fits["chosen"], ["group", "model", "E0", "Emax", "ED50"]].round(3).values.tolist()
    [['photon', 'emax', 1.0, 4.0, 3.0]]
    """
    return fit_dose_response_with_bootstrap(
        df, metric=metric, dose=dose, group=group, patient=patient, models=models, n_bootstrap=n_bootstrap,
        seed=seed, tost_doses=tost_doses, tost_margin=tost_margin, alpha=alpha, trials=trials,
        ci_method=ci_method).fits


def fit_dose_response_with_bootstrap(
    df: pd.DataFrame,
    *,
    metric: str | Sequence[str],
    dose: str = "dose_gy",
    group: str | None = "radiation",
    patient: str | None = "patient",
    models: Sequence[str] = ("linear", "loglinear", "emax", "hill"),
    n_bootstrap: int = 200,
    seed: int = 0,
    tost_doses: tuple[float, float] = (10.0, 20.0),
    tost_margin: float = 0.15,
    alpha: float = 0.05,
    trials: str | None = None,
    ci_method: str = "student-t",
) -> DoseResponseFit:
    """:func:`fit_dose_response` that also returns the patient-bootstrap draws behind its CIs.

    Parameters are those of :func:`fit_dose_response` (same fits for the same arguments and seed).

    Returns
    -------
    DoseResponseFit
        ``(fits, boot)``: the fits table of :func:`fit_dose_response` and the bootstrap draws (long table
        ``metric, group, model, draw, E0, slope, log_slope, Emax, ED50, hill``), e.g. for
        :func:`predict_dose_response`'s bands.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    bad = [m for m in models if m not in _PARAMS]
    if bad:
        raise ValueError(f"unknown model(s) {bad}; choose from {sorted(_PARAMS)}")
    if ci_method not in CI_METHODS:
        raise ValueError(f"ci_method must be one of {CI_METHODS}, got {ci_method!r}")
    need = list(metrics) + [dose] + ([group] if group else []) + ([patient] if patient else []) \
        + ([trials] if trials else [])
    require_columns(df, need, "dose-response table", "stats.metric_table(...)")
    opts = dict(dose=dose, models=models, trials=trials)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    boots: list[dict[str, Any]] = []
    jack: list[dict[str, Any]] = []
    failed: dict[tuple[str, str, str], int] = {}
    for m in metrics:
        data, pcol = _metric_data(df, m, need, dose, patient, trials)
        arms = _arms(data, dose, group)
        full: dict[tuple[str, str], dict[str, Any] | None] = {}
        for g, arm in arms.items():
            arm_rows, arm_fits = _fit_arm(arm, m, g, patient=pcol, tost_doses=tost_doses, tost_margin=tost_margin,
                                          alpha=alpha, **opts)
            rows += arm_rows
            full.update({(g, mod): f for mod, f in arm_fits.items()})
        if n_bootstrap and patient is not None:
            b, fail = _bootstrap_fits(data, m, group=group, patient=pcol, arm_names=set(arms), full=full,
                                      n_bootstrap=n_bootstrap, rng=rng, **opts)
            boots += b
            failed.update({(m, *k): v for k, v in fail.items()})
            if ci_method.startswith("bca"):
                jack += _jackknife_fits(data, m, group=group, patient=pcol, arm_names=set(arms), full=full, **opts)
    boot_df = pd.DataFrame(boots, columns=["metric", "group", "model", "draw", *_PARAM_COLS])
    jack_df = pd.DataFrame(jack, columns=["metric", "group", "model", "draw", *_PARAM_COLS])
    fits = _add_bootstrap_cis(pd.DataFrame(rows), boot_df, jack_df, failed, alpha, ci_method)
    return DoseResponseFit(fits, boot_df)


def _metric_data(df: pd.DataFrame, metric: str, need: list[str], dose: str, patient: str | None,
                 trials: str | None = None) -> tuple[pd.DataFrame, str]:
    """The rows of ``df`` where ``metric`` and ``dose`` are finite (as float) and the patient column to use."""
    data = df[[c for c in dict.fromkeys(need)]].copy()
    data = data[np.isfinite(data[metric].astype(float)) & np.isfinite(data[dose].astype(float))]
    data[dose] = data[dose].astype(float)
    data[metric] = data[metric].astype(float)
    if trials:
        data[trials] = data[trials].astype(float)
        data = data[data[trials] > 0]
        bad = data[(data[metric] < 0) | (data[metric] > 1)]
        if len(bad):
            raise ValueError(f"{metric!r} has values outside [0, 1] ({bad[metric].iloc[0]:g}); trials={trials!r} "
                             f"fits a proportion: drop trials= for other metrics")
    if patient is None:
        data["_pat"] = "all"
        return data, "_pat"
    return data, patient


def _plateau_test(fits: dict[str, dict[str, Any] | None], phi: float = 1.0) -> tuple[float, float, float]:
    """(AIC linear − AIC emax, AIC loglinear − AIC emax, LR p of emax vs linear); NaN where a model is missing."""
    from scipy import stats as sst

    lin, llin, emx = fits.get("linear"), fits.get("loglinear"), fits.get("emax")
    d_ll = llin["aic"] - emx["aic"] if llin is not None and emx is not None else np.nan
    if lin is None or emx is None:
        return np.nan, d_ll, np.nan
    if "pearson" in emx:  # quasi-binomial: deviance difference over the dispersion
        lr = max((lin["rss"] - emx["rss"]) / phi, 0.0)
    else:
        lr = max(lin["n"] * np.log(lin["rss"] / max(emx["rss"], 1e-300)), 0.0)
    return lin["aic"] - emx["aic"], d_ll, float(sst.chi2.sf(lr, 1))


def _arm_index(arm: pd.DataFrame, patient: str) -> tuple[np.ndarray, int]:
    pats = {p: i for i, p in enumerate(sorted(arm[patient].astype(str).unique()))}
    return arm[patient].astype(str).map(pats).to_numpy(), len(pats)


def _fit_models(arm: pd.DataFrame, metric: str, *, dose: str, patient: str, models: Sequence[str],
                trials: str | None, full: dict[str, dict[str, Any] | None] | None = None
                ) -> dict[str, dict[str, Any] | None]:
    """Fit each model on one arm (starting from ``full[model]``'s curve when given); None where impossible."""
    pidx, n_pat = _arm_index(arm, patient)
    d, y = arm[dose].to_numpy(float), arm[metric].to_numpy(float)
    w = arm[trials].to_numpy(float) if trials else None
    out = {}
    for mod in models:
        if full is None:
            out[mod] = _fit_one(mod, d, y, pidx, n_pat, trials=w)
            continue
        f0 = full.get(mod)
        if f0 is None or len(np.unique(d)) < len(_PARAMS[mod]):
            out[mod] = None
            continue
        out[mod] = _fit_one(mod, d, y, pidx, n_pat, starts=[f0["theta"]], trials=w)
    return out


def _quasi_aic(fits: dict[str, dict[str, Any] | None]) -> float:
    """Quasi-binomial: dispersion from the largest fitted model, and every fit's ``aic`` set to its QAIC."""
    ok = [f for f in fits.values() if f is not None]
    if not ok or "pearson" not in ok[0]:
        return np.nan
    big = max(ok, key=lambda f: f["k"])
    phi = max(big["pearson"] / max(big["n"] - big["k"] + 1, 1), 1e-12)  # k counts the dispersion itself
    for f in ok:
        f["aic"] = float(f["rss"] / phi + 2 * f["k"])
    return float(phi)


def _fit_arm(arm: pd.DataFrame, metric: str, group_name: str, *, dose: str, patient: str, models: Sequence[str],
             tost_doses: tuple[float, float], tost_margin: float, alpha: float, trials: str | None = None
             ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | None]]:
    """Fit every model on one arm: the arm's rows of the fits table and ``{model: fit or None}``."""
    fits = _fit_models(arm, metric, dose=dose, patient=patient, models=models, trials=trials)
    phi = _quasi_aic(fits)
    aics = {k: v["aic"] for k, v in fits.items() if v is not None}
    best = min(aics, key=aics.get) if aics else None
    d_lin, d_ll, lrt_p = _plateau_test(fits, phi if np.isfinite(phi) else 1.0)
    plateau = bool(np.isfinite(d_lin) and d_lin > 2 and (not np.isfinite(d_ll) or d_ll > 2)
                   and ("loglinear" not in fits or fits["loglinear"] is not None))
    tdiff, tmarg, tp, tpow = _tost(arm, metric, dose, patient, tost_doses, tost_margin, alpha)
    rows = []
    for mod in models:
        f = fits[mod]
        row = {"metric": metric, "group": group_name, "model": mod, "n_samples": len(arm),
               "n_patients": arm[patient].nunique()}
        for p in _PARAM_COLS:
            row[p] = np.nan
        if f is not None:
            row.update(dict(zip(_PARAMS[mod], f["params"])))
            row.update(rss=f["rss"], aic=f["aic"], delta_aic=f["aic"] - aics[best], chosen=mod == best)
        else:
            row.update(rss=np.nan, aic=np.nan, delta_aic=np.nan, chosen=False)
        row["plateau_value"] = row["E0"] + row["Emax"] if mod in ("emax", "hill") else np.nan
        row.update(family="quasibinomial" if trials else "gaussian", dispersion=phi,
                   plateau_delta_aic=d_lin, plateau_vs_loglinear_delta_aic=d_ll, plateau_lrt_p=lrt_p,
                   plateau=plateau, tost_diff=tdiff, tost_margin=tmarg, tost_p=tp, tost_power=tpow,
                   equivalent_hi_lo=bool(np.isfinite(tp) and tp < alpha))
        rows.append(row)
    return rows, fits


def _resample_patients(by_pat: dict[str, pd.DataFrame], patients: np.ndarray, patient: str,
                       rng: np.random.Generator) -> pd.DataFrame:
    """One bootstrap sample: patients drawn with replacement, each draw renamed ``b{i}`` (its own offset)."""
    pick = rng.choice(patients, size=len(patients), replace=True)
    parts = []
    for i, p in enumerate(pick):
        part = by_pat[p].copy()
        part[patient] = f"b{i}"
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _refit_records(sample: pd.DataFrame, metric: str, draw: int, *, group: str | None, patient: str,
                   arm_names: set[str], full: dict[tuple[str, str], dict[str, Any] | None], dose: str,
                   models: Sequence[str], trials: str | None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Refit every arm × model of ``full`` on one resample: (parameter records, (arm, model) that failed)."""
    recs, failed = [], []
    arms = _arms(sample, dose, group)
    for g in sorted(arm_names):
        wanted = [mod for mod in models if full.get((g, mod)) is not None]
        if g not in arms:
            failed += [(g, mod) for mod in wanted]
            continue
        fits = _fit_models(arms[g], metric, dose=dose, patient=patient, models=wanted, trials=trials,
                           full={mod: full[(g, mod)] for mod in wanted})
        for mod, f in fits.items():
            if f is None or not f["converged"]:
                failed.append((g, mod))
                continue
            rec = {"metric": metric, "group": g, "model": mod, "draw": draw}
            rec.update(dict(zip(_PARAMS[mod], f["params"])))
            recs.append(rec)
    return recs, failed


def _bootstrap_fits(data: pd.DataFrame, metric: str, *, group: str | None, patient: str, arm_names: set[str],
                    full: dict[tuple[str, str], dict[str, Any] | None], n_bootstrap: int, rng: np.random.Generator,
                    dose: str, models: Sequence[str], trials: str | None
                    ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], int]]:
    """Refit each arm's models on patient resamples, starting from the full-data fit ``full[(arm, model)]``.

    One resample per draw, shared by all arms (so ratios between arms are paired). Returns the parameter
    records of the successful refits and the number of failed refits per (arm, model) (a resample whose arm
    has too few doses or samples, or an optimiser that did not converge).
    """
    boots: list[dict[str, Any]] = []
    failed: dict[tuple[str, str], int] = {}
    all_pats = np.array(sorted(data[patient].astype(str).unique()))
    by_pat = {p: data[data[patient].astype(str) == p] for p in all_pats}
    for b in range(n_bootstrap):
        bd = _resample_patients(by_pat, all_pats, patient, rng)
        recs, fail = _refit_records(bd, metric, b, group=group, patient=patient, arm_names=arm_names, full=full,
                                    dose=dose, models=models, trials=trials)
        boots += recs
        for key in fail:
            failed[key] = failed.get(key, 0) + 1
    return boots, failed


def _jackknife_fits(data: pd.DataFrame, metric: str, *, group: str | None, patient: str, arm_names: set[str],
                    full: dict[tuple[str, str], dict[str, Any] | None], dose: str, models: Sequence[str],
                    trials: str | None) -> list[dict[str, Any]]:
    """Leave-one-patient-out refits (``draw`` = index of the patient left out), for the BCa acceleration."""
    out: list[dict[str, Any]] = []
    pats = sorted(data[patient].astype(str).unique())
    if len(pats) < 3:
        return out
    for i, p in enumerate(pats):
        sub = data[data[patient].astype(str) != p]
        recs, _ = _refit_records(sub, metric, i, group=group, patient=patient, arm_names=arm_names, full=full,
                                 dose=dose, models=models, trials=trials)
        out += recs
    return out


def _add_bootstrap_cis(fits_df: pd.DataFrame, boot_df: pd.DataFrame, jack_df: pd.DataFrame,
                       failed: dict[tuple[str, str, str], int], alpha: float, method: str) -> pd.DataFrame:
    """Add the CIs ``{param}_ci_lo/_ci_hi``, ``n_bootstrap`` (successful draws), ``n_bootstrap_failed``."""
    for p in _PARAM_COLS:
        fits_df[f"{p}_ci_lo"] = np.nan
        fits_df[f"{p}_ci_hi"] = np.nan
    fits_df["n_bootstrap"] = 0
    fits_df["n_bootstrap_failed"] = 0
    fits_df["ci_method"] = method if len(boot_df) else ""
    if not len(fits_df):
        return fits_df
    bgroups = dict(tuple(boot_df.groupby(["metric", "group", "model"]))) if len(boot_df) else {}
    jgroups = dict(tuple(jack_df.groupby(["metric", "group", "model"]))) if len(jack_df) else {}
    for i, r in fits_df.iterrows():
        key = (r["metric"], r["group"], r["model"])
        nfail = int(failed.get(key, 0))
        fits_df.at[i, "n_bootstrap_failed"] = nfail
        b = bgroups.get(key)
        if b is None:
            continue
        fits_df.at[i, "n_bootstrap"] = len(b)
        j = jgroups.get(key)
        n_units = int(r["n_patients"])
        for p in _PARAMS[r["model"]]:
            lo, hi = bootstrap_interval(r[p], b[p].to_numpy(float), alpha=alpha, method=method, n_units=n_units,
                                        jackknife=None if j is None else j[p].to_numpy(float),
                                        log=p in ("ED50", "hill"))
            fits_df.at[i, f"{p}_ci_lo"], fits_df.at[i, f"{p}_ci_hi"] = lo, hi
        if nfail > 0.05 * (nfail + len(b)):
            warnings.warn(f"{key[0]} ({key[1]}, {key[2]}): {nfail} of {nfail + len(b)} bootstrap refits failed and "
                          f"were dropped; its CIs rest on the rest (column n_bootstrap_failed)", RuntimeWarning,
                          stacklevel=3)
    return fits_df


BANDS = ("pointwise", "simultaneous")
"""Kinds of bootstrap band of :func:`predict_dose_response`."""


def predict_dose_response(fits: pd.DataFrame, doses: np.ndarray, *, boot: pd.DataFrame | None = None,
                          metric: str | None = None, group: str | None = None, model: str | None = None,
                          alpha: float = 0.05, band: str = "pointwise") -> pd.DataFrame:
    """Fitted curve (population, patient offsets at 0) on a dose grid, with bootstrap bands when ``boot`` is given.

    Selects the row of ``fits`` by ``metric``/``group`` and ``model`` (default: the chosen model). ``fits`` and
    ``boot`` come from :func:`fit_dose_response_with_bootstrap` (or ``fits`` alone from :func:`fit_dose_response`).

    ``band="pointwise"``: at each dose the ``alpha/2`` and ``1 - alpha/2`` quantiles of the bootstrap curves (each
    dose covered on its own; the whole curve is covered less often). ``band="simultaneous"``: a sup-t band,
    ``fit ± c · sd(dose)`` with ``sd`` the bootstrap SD at each dose and ``c`` the ``1 - alpha`` quantile over the
    bootstrap curves of ``max over doses |curve - fit| / sd``: at least ``1 - alpha`` of the bootstrap curves lie
    inside it at every dose (Montiel Olea & Plagborg-Møller 2019). Read a curve's shape against this one.

    Returns
    -------
    DataFrame
        ``dose, fit`` (+ ``lo, hi``).
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    sel = fits
    if metric is not None:
        sel = sel[sel["metric"] == metric]
    if group is not None:
        sel = sel[sel["group"].astype(str) == str(group)]
    sel = sel[sel["model"] == model] if model is not None else sel[sel["chosen"]]
    if len(sel) != 1:
        raise ValueError(f"expected one fit for metric={metric!r} group={group!r} model={model!r}, found {len(sel)}")
    r = sel.iloc[0]
    mod = r["model"]
    doses = np.asarray(doses, float)
    out = pd.DataFrame({"dose": doses, "fit": _curve(mod, doses, [r[p] for p in _PARAMS[mod]])})
    if boot is not None and len(boot):
        b = boot[(boot["metric"] == r["metric"]) & (boot["group"].astype(str) == str(r["group"]))
                 & (boot["model"] == mod)]
        if len(b):
            curves = np.stack([_curve(mod, doses, row) for row in b[_PARAMS[mod]].to_numpy(float)])
            if band == "pointwise":
                out["lo"] = np.nanquantile(curves, alpha / 2, axis=0)
                out["hi"] = np.nanquantile(curves, 1 - alpha / 2, axis=0)
            else:
                out["lo"], out["hi"] = _sup_t_band(curves, out["fit"].to_numpy(float), alpha)
    return out


def _sup_t_band(curves: np.ndarray, fit: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous bootstrap band ``fit ± c · sd`` (sup-t; doses where the bootstrap SD is 0 get the fit)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.nanstd(curves, axis=0, ddof=1)
        z = np.abs(curves - fit) / np.where(sd > 0, sd, np.nan)
    sup = np.nanmax(np.where(np.isfinite(z), z, -np.inf), axis=1)
    sup = sup[np.isfinite(sup)]
    c = float(np.quantile(sup, 1 - alpha)) if sup.size else 0.0
    half = np.where(sd > 0, c * sd, 0.0)
    return fit - half, fit + half


