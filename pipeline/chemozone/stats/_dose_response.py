"""Dose-response curves: linear, Emax and Hill fits per radiation arm, their predictions and amplitude ratios.

Models (``E0`` baseline, ``Emax`` the amplitude, so the plateau is ``E0 + Emax``)::

    linear  y = E0 + slope * D
    emax    y = E0 + Emax * D / (ED50 + D)
    hill    y = E0 + Emax * D**h / (ED50**h + D**h)

fitted by least squares with one additive offset per patient; CIs from a bootstrap over patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ..errors import require_columns

_PARAMS = {"linear": ["E0", "slope"], "emax": ["E0", "Emax", "ED50"], "hill": ["E0", "Emax", "ED50", "hill"]}


def dose_response_models() -> dict[str, list[str]]:
    """Model names and their parameters."""
    return {k: list(v) for k, v in _PARAMS.items()}


def _curve(model: str, d: np.ndarray, p: Sequence[float]) -> np.ndarray:
    d = np.asarray(d, float)
    if model == "linear":
        return p[0] + p[1] * d
    if model == "emax":
        return p[0] + p[1] * d / (p[2] + d)
    if model == "hill":
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            dh = np.power(d, p[3])
            return p[0] + p[1] * dh / (np.power(p[2], p[3]) + dh)
    raise ValueError(f"unknown model {model!r}; choose from {sorted(_PARAMS)}")


def _unpack(model: str, theta: np.ndarray) -> list[float]:
    if model == "linear":
        return [theta[0], theta[1]]
    if model == "emax":
        return [theta[0], theta[1], float(np.exp(theta[2]))]
    return [theta[0], theta[1], float(np.exp(theta[2])), float(np.exp(theta[3]))]


def _fit_one(model: str, d: np.ndarray, y: np.ndarray, pidx: np.ndarray, n_pat: int,
             starts: Sequence[np.ndarray] | None = None) -> dict[str, Any] | None:
    """Least squares of one model with patient offsets; returns params, rss, k, n or None."""
    from scipy.optimize import least_squares

    n = len(y)
    k_curve = len(_PARAMS[model])
    n_off = max(n_pat - 1, 0)
    if n < k_curve + n_off + 1:
        return None
    dmax = float(np.max(d)) if np.max(d) > 0 else 1.0
    onehot = np.zeros((n, n_off))
    for j in range(n_off):
        onehot[:, j] = pidx == j + 1

    def resid(theta):
        return _curve(model, d, _unpack(model, theta[:k_curve])) + onehot @ theta[k_curve:] - y

    pos_d = d[d > 0]
    # ED50 between a tenth of the lowest tested dose and 1000x the highest (no step functions below the data)
    lo_d, hi_d = np.log((float(pos_d.min()) if len(pos_d) else dmax) * 0.1), np.log(dmax * 1e3)
    if starts is None:
        e0 = float(np.mean(y[d == d.min()]))
        top = float(np.mean(y[d == d.max()]))
        if model == "linear":
            starts = [np.array([e0, (top - e0) / dmax])]
        else:
            pos = np.unique(d[d > 0])
            cands = np.unique(np.clip(np.quantile(pos, [0.1, 0.5, 0.9]) if len(pos) else [dmax / 2],
                                      np.exp(lo_d) * 1.01, dmax * 5e2))
            starts = []
            for c in cands:
                base = [e0, (top - e0) * (1 + c / dmax), np.log(c)]
                starts.append(np.array(base if model == "emax" else base + [np.log(1.0)]))
                if model == "hill":
                    starts.append(np.array(base[:2] + [np.log(c), np.log(2.5)]))
    lb = [-np.inf, -np.inf] + ([lo_d] if model != "linear" else []) + ([np.log(0.3)] if model == "hill" else [])
    ub = [np.inf, np.inf] + ([hi_d] if model != "linear" else []) + ([np.log(10.0)] if model == "hill" else [])
    lb += [-np.inf] * n_off
    ub += [np.inf] * n_off
    best = None
    for s in starts:
        s = np.asarray(s, float)[:k_curve]
        x0 = np.concatenate([s, np.zeros(n_off)])
        x0 = np.clip(x0, np.array(lb) + 1e-9, np.array(ub) - 1e-9)
        with np.errstate(all="ignore"):
            r = least_squares(resid, x0, bounds=(lb, ub), method="trf", x_scale="jac", max_nfev=2000)
        rss = float(np.sum(r.fun ** 2))
        if np.isfinite(rss) and (best is None or rss < best[1]):
            best = (r.x, rss)
    if best is None:
        return None
    theta, rss = best
    k = k_curve + n_off + 1
    aic = n * np.log(max(rss, 1e-300) / n) + 2 * k
    return {"theta": theta[:k_curve], "params": _unpack(model, theta[:k_curve]), "rss": rss, "k": k, "n": n,
            "aic": float(aic), "offsets": np.concatenate([[0.0], theta[k_curve:]])}


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
          margin_rel: float) -> tuple[float, float, float]:
    """Paired TOST of dose ``doses[1]`` vs ``doses[0]`` per patient; returns (mean diff, margin, p)."""
    from scipy import stats as sst

    lo, hi = doses
    a = arm[np.isclose(arm[dose], lo)]
    b = arm[np.isclose(arm[dose], hi)]
    if not len(a) or not len(b):
        return np.nan, np.nan, np.nan
    if patient is not None:
        ma, mb = a.groupby(patient)[y].mean(), b.groupby(patient)[y].mean()
        both = ma.index.intersection(mb.index)
        diff = (mb[both] - ma[both]).to_numpy(float)
        ref = float(ma[both].mean()) if len(both) else np.nan
    else:
        diff = np.array([b[y].mean() - a[y].mean()])
        ref = float(a[y].mean())
    margin = margin_rel * abs(ref)
    if len(diff) < 2 or not np.isfinite(margin):
        return (float(diff.mean()) if len(diff) else np.nan), margin, np.nan
    m, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
    if se == 0:
        return m, margin, 0.0 if abs(m) < margin else 1.0
    df_ = len(diff) - 1
    p_low = 1 - sst.t.cdf((m + margin) / se, df_)
    p_up = sst.t.cdf((m - margin) / se, df_)
    return m, margin, float(max(p_low, p_up))


_PARAM_COLS = ["E0", "slope", "Emax", "ED50", "hill"]  # every model's parameters, in column order


class DoseResponseFit(NamedTuple):
    """What :func:`fit_dose_response_with_bootstrap` returns (unpacks as ``fits, boot = ...``).

    Attributes
    ----------
    fits : DataFrame
        The fits table of :func:`fit_dose_response`.
    boot : DataFrame
        The bootstrap draws, one row per (metric, group, model, draw): ``metric, group, model, draw, E0, slope,
        Emax, ED50, hill`` (NaN where a model lacks a parameter); empty without a bootstrap. Pass it to
        :func:`predict_dose_response` for confidence bands.
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
    models: Sequence[str] = ("linear", "emax", "hill"),
    n_bootstrap: int = 200,
    seed: int = 0,
    tost_doses: tuple[float, float] = (10.0, 20.0),
    tost_margin: float = 0.15,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Fit linear, Emax and Hill dose-response curves per radiation arm and choose one by AIC.

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
    models : sequence of {"linear", "emax", "hill"}
    n_bootstrap : int
        Patient-bootstrap draws for the CIs (0 = no CIs).
    seed : int
        Seed of the bootstrap.
    tost_doses, tost_margin : tuple, float
        Plateau equivalence test of ``tost_doses[1]`` vs ``tost_doses[0]`` (paired by patient, TOST) with
        margin ``± tost_margin × |mean at tost_doses[0]|``.
    alpha : float
        1 − confidence level of the CIs; also the TOST level.

    Returns
    -------
    DataFrame
        One row per (metric, group, model): ``n_samples, n_patients``, the parameters (``E0, slope, Emax,
        ED50, hill``; NaN where a model lacks one), ``plateau_value`` (E0 + Emax), ``rss, aic, delta_aic``,
        ``chosen`` (lowest AIC in the arm), the CIs ``{param}_ci_lo/_ci_hi``, and per arm
        ``plateau_delta_aic`` (AIC linear − AIC emax; > 2 means Emax is preferred, i.e. a plateau),
        ``plateau_lrt_p`` (likelihood-ratio test emax vs linear, 1 df), ``plateau`` (bool),
        ``tost_diff, tost_margin, tost_p, equivalent_hi_lo``; ``n_bootstrap`` (successful draws).

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
        seed=seed, tost_doses=tost_doses, tost_margin=tost_margin, alpha=alpha).fits


def fit_dose_response_with_bootstrap(
    df: pd.DataFrame,
    *,
    metric: str | Sequence[str],
    dose: str = "dose_gy",
    group: str | None = "radiation",
    patient: str | None = "patient",
    models: Sequence[str] = ("linear", "emax", "hill"),
    n_bootstrap: int = 200,
    seed: int = 0,
    tost_doses: tuple[float, float] = (10.0, 20.0),
    tost_margin: float = 0.15,
    alpha: float = 0.05,
) -> DoseResponseFit:
    """:func:`fit_dose_response` that also returns the patient-bootstrap draws behind its CIs.

    Parameters are those of :func:`fit_dose_response` (same fits for the same arguments and seed).

    Returns
    -------
    DoseResponseFit
        ``(fits, boot)``: the fits table of :func:`fit_dose_response` and the bootstrap draws (long table
        ``metric, group, model, draw, E0, slope, Emax, ED50, hill``), e.g. for
        :func:`predict_dose_response`'s bands.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    bad = [m for m in models if m not in _PARAMS]
    if bad:
        raise ValueError(f"unknown model(s) {bad}; choose from {sorted(_PARAMS)}")
    need = list(metrics) + [dose] + ([group] if group else []) + ([patient] if patient else [])
    require_columns(df, need, "dose-response table", "stats.metric_table(...)")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    boots: list[dict[str, Any]] = []
    for m in metrics:
        data, pcol = _metric_data(df, m, need, dose, patient)
        arms = _arms(data, dose, group)
        full: dict[tuple[str, str], dict[str, Any] | None] = {}
        for g, arm in arms.items():
            arm_rows, arm_fits = _fit_arm(arm, m, g, dose=dose, patient=pcol, models=models, tost_doses=tost_doses,
                                          tost_margin=tost_margin, alpha=alpha)
            rows += arm_rows
            full.update({(g, mod): f for mod, f in arm_fits.items()})
        if n_bootstrap and patient is not None:
            boots += _bootstrap_fits(data, m, dose=dose, group=group, patient=pcol, models=models, arm_names=set(arms),
                                     full=full, n_bootstrap=n_bootstrap, rng=rng)
    boot_df = pd.DataFrame(boots, columns=["metric", "group", "model", "draw", *_PARAM_COLS])
    return DoseResponseFit(_add_bootstrap_cis(pd.DataFrame(rows), boot_df, alpha), boot_df)


def _metric_data(df: pd.DataFrame, metric: str, need: list[str], dose: str, patient: str | None
                 ) -> tuple[pd.DataFrame, str]:
    """The rows of ``df`` where ``metric`` and ``dose`` are finite (as float) and the patient column to use."""
    data = df[[c for c in dict.fromkeys(need)]].copy()
    data = data[np.isfinite(data[metric].astype(float)) & np.isfinite(data[dose].astype(float))]
    data[dose] = data[dose].astype(float)
    data[metric] = data[metric].astype(float)
    if patient is None:
        data["_pat"] = "all"
        return data, "_pat"
    return data, patient


def _plateau_test(fits: dict[str, dict[str, Any] | None]) -> tuple[float, float]:
    """(AIC linear − AIC emax, likelihood-ratio p of emax vs linear); NaN unless both models were fitted."""
    from scipy import stats as sst

    lin, emx = fits.get("linear"), fits.get("emax")
    if lin is None or emx is None:
        return np.nan, np.nan
    lr = max(lin["n"] * np.log(lin["rss"] / max(emx["rss"], 1e-300)), 0.0)
    return lin["aic"] - emx["aic"], float(sst.chi2.sf(lr, 1))


def _fit_arm(arm: pd.DataFrame, metric: str, group_name: str, *, dose: str, patient: str, models: Sequence[str],
             tost_doses: tuple[float, float], tost_margin: float, alpha: float
             ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | None]]:
    """Fit every model on one arm: the arm's rows of the fits table and ``{model: fit or None}``."""
    pats = {p: i for i, p in enumerate(sorted(arm[patient].astype(str).unique()))}
    pidx = arm[patient].astype(str).map(pats).to_numpy()
    d, y = arm[dose].to_numpy(float), arm[metric].to_numpy(float)
    fits = {mod: _fit_one(mod, d, y, pidx, len(pats)) for mod in models}
    aics = {k: v["aic"] for k, v in fits.items() if v is not None}
    best = min(aics, key=aics.get) if aics else None
    dAIC, lrt_p = _plateau_test(fits)
    tdiff, tmarg, tp = _tost(arm, metric, dose, patient, tost_doses, tost_margin)
    rows = []
    for mod in models:
        f = fits[mod]
        row = {"metric": metric, "group": group_name, "model": mod, "n_samples": len(arm), "n_patients": len(pats)}
        for p in _PARAM_COLS:
            row[p] = np.nan
        if f is not None:
            row.update(dict(zip(_PARAMS[mod], f["params"])))
            row.update(rss=f["rss"], aic=f["aic"], delta_aic=f["aic"] - aics[best], chosen=mod == best)
        else:
            row.update(rss=np.nan, aic=np.nan, delta_aic=np.nan, chosen=False)
        row["plateau_value"] = row["E0"] + row["Emax"] if mod != "linear" else np.nan
        row.update(plateau_delta_aic=dAIC, plateau_lrt_p=lrt_p,
                   plateau=bool(np.isfinite(dAIC) and dAIC > 2),
                   tost_diff=tdiff, tost_margin=tmarg, tost_p=tp,
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


def _bootstrap_fits(data: pd.DataFrame, metric: str, *, dose: str, group: str | None, patient: str,
                    models: Sequence[str], arm_names: set[str], full: dict[tuple[str, str], dict[str, Any] | None],
                    n_bootstrap: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Refit each arm's models on patient resamples, starting from the full-data fit ``full[(arm, model)]``.

    One resample per draw, shared by all arms (so ratios between arms are paired). Returns one record
    ``metric, group, model, draw`` + the parameters per successful fit.
    """
    boots = []
    all_pats = np.array(sorted(data[patient].astype(str).unique()))
    by_pat = {p: data[data[patient].astype(str) == p] for p in all_pats}
    for b in range(n_bootstrap):
        bd = _resample_patients(by_pat, all_pats, patient, rng)
        for g, arm in _arms(bd, dose, group).items():
            if g not in arm_names:
                continue
            pats = {p: i for i, p in enumerate(sorted(arm[patient].unique()))}
            pidx = arm[patient].map(pats).to_numpy()
            d, y = arm[dose].to_numpy(float), arm[metric].to_numpy(float)
            for mod in models:
                f0 = full.get((g, mod))
                if f0 is None or len(np.unique(d)) < len(_PARAMS[mod]):
                    continue
                f = _fit_one(mod, d, y, pidx, len(pats), starts=[f0["theta"]])
                if f is None:
                    continue
                rec = {"metric": metric, "group": g, "model": mod, "draw": b}
                rec.update(dict(zip(_PARAMS[mod], f["params"])))
                boots.append(rec)
    return boots


def _add_bootstrap_cis(fits_df: pd.DataFrame, boot_df: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Add the percentile CIs ``{param}_ci_lo/_ci_hi`` and ``n_bootstrap`` (draws per fit) to ``fits_df``."""
    for p in _PARAM_COLS:
        fits_df[f"{p}_ci_lo"] = np.nan
        fits_df[f"{p}_ci_hi"] = np.nan
    if not len(boot_df):
        fits_df["n_bootstrap"] = 0
        return fits_df
    q = boot_df.groupby(["metric", "group", "model"])
    lo = q[_PARAM_COLS].quantile(alpha / 2)
    hi = q[_PARAM_COLS].quantile(1 - alpha / 2)
    for i, r in fits_df.iterrows():
        key = (r["metric"], r["group"], r["model"])
        if key in lo.index:
            for p in _PARAMS[r["model"]]:
                fits_df.at[i, f"{p}_ci_lo"] = lo.at[key, p]
                fits_df.at[i, f"{p}_ci_hi"] = hi.at[key, p]
    fits_df["n_bootstrap"] = fits_df.apply(
        lambda r: int(((boot_df["metric"] == r["metric"]) & (boot_df["group"] == r["group"])
                       & (boot_df["model"] == r["model"])).sum()), axis=1)
    return fits_df


def predict_dose_response(fits: pd.DataFrame, doses: np.ndarray, *, boot: pd.DataFrame | None = None,
                          metric: str | None = None, group: str | None = None, model: str | None = None,
                          alpha: float = 0.05) -> pd.DataFrame:
    """Fitted curve (population, patient offsets at 0) on a dose grid, with bootstrap bands when ``boot`` is given.

    Selects the row of ``fits`` by ``metric``/``group`` and ``model`` (default: the chosen model). ``fits`` and
    ``boot`` come from :func:`fit_dose_response_with_bootstrap` (or ``fits`` alone from :func:`fit_dose_response`).

    Returns
    -------
    DataFrame
        ``dose, fit`` (+ ``lo, hi``).
    """
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
            out["lo"] = np.nanquantile(curves, alpha / 2, axis=0)
            out["hi"] = np.nanquantile(curves, 1 - alpha / 2, axis=0)
    return out


def relative_amplitude(df: pd.DataFrame, *, metric: str, reference: str = "photon",
                       dose: str = "effective_dose_gy", group: str = "radiation", patient: str = "patient",
                       model: str = "emax", shared_shape: bool = True, n_bootstrap: int = 200, seed: int = 0,
                       alpha: float = 0.05) -> pd.DataFrame:
    """How much of the reference arm's response each radiation type conserves.

    With ``shared_shape`` (default), the curve shape (ED50, and the Hill exponent for ``hill``) is fitted on
    the reference arm and shared: every arm is then fitted as ``y = E0 + A * H(dose)`` (plus patient
    offsets) and the ratio ``A_arm / A_reference`` is the conservation factor at equal ``dose`` (by default
    the effective dose). This is stable even when an arm's doses all lie near its plateau. Without it,
    each arm gets its own ``model`` fit and the ratio of the ``Emax`` (``slope`` for linear) is reported.
    CIs: paired patient bootstrap (the same patient resample for all arms).

    Returns
    -------
    DataFrame
        ``metric, group, reference, amplitude, ratio, ratio_ci_lo, ratio_ci_hi, n_bootstrap``. A ratio below 1
        whose CI excludes 1 is a weaker (partially conserved) response.
    """
    need = [metric, dose, group, patient]
    require_columns(df, need, "table", "stats.metric_table(...)")
    data = df[need].copy()
    data = data[np.isfinite(data[metric].astype(float)) & np.isfinite(data[dose].astype(float))]
    data[dose] = data[dose].astype(float)
    data[metric] = data[metric].astype(float)
    data[patient] = data[patient].astype(str)
    amp = "slope" if model == "linear" else "Emax"

    def _amps(d_: pd.DataFrame, starts=None) -> dict[str, float]:
        arms = _arms(d_, dose, group)
        if reference not in arms:
            raise ValueError(f"reference arm {reference!r} not in the data (arms: {sorted(arms)})")

        def fit(arm, mod, x=None, st=None):
            pats = {p: i for i, p in enumerate(sorted(arm[patient].unique()))}
            xx = arm[dose].to_numpy(float) if x is None else x
            return _fit_one(mod, xx, arm[metric].to_numpy(float), arm[patient].map(pats).to_numpy(), len(pats),
                            starts=st)

        ref = fit(arms[reference], model, st=starts)
        if ref is None:
            return {}
        out = {"_theta": ref["theta"]}
        if not shared_shape or model == "linear":
            for g, arm in arms.items():
                f = fit(arm, model) if g != reference else ref
                if f is not None:
                    out[g] = dict(zip(_PARAMS[model], f["params"]))[amp]
            return out
        p = list(ref["params"])
        for g, arm in arms.items():
            shape = _curve(model, arm[dose].to_numpy(float), [0.0, 1.0] + p[2:])
            f = fit(arm, "linear", x=shape)
            if f is not None:
                out[g] = f["params"][1]
        return out

    est = _amps(data)
    if not est:
        raise ValueError(f"could not fit the reference arm {reference!r} for {metric!r}")
    theta = est.pop("_theta")
    rng = np.random.default_rng(seed)
    pats = np.array(sorted(data[patient].unique()))
    by = {p: data[data[patient] == p] for p in pats}
    draws = []
    for _ in range(n_bootstrap):
        pick = rng.choice(pats, size=len(pats), replace=True)
        bd = pd.concat([by[p].assign(**{patient: f"b{i}"}) for i, p in enumerate(pick)], ignore_index=True)
        a = _amps(bd, starts=[theta])
        a.pop("_theta", None)
        if reference in a and a[reference]:
            draws.append({g: v / a[reference] for g, v in a.items()})
    dr = pd.DataFrame(draws)
    rows = []
    for g, v in est.items():
        r = {"metric": metric, "group": g, "reference": reference, "amplitude": v,
             "ratio": v / est[reference] if est[reference] else np.nan, "ratio_ci_lo": np.nan, "ratio_ci_hi": np.nan,
             "n_bootstrap": 0}
        if g in dr:
            vals = dr[g].to_numpy(float)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                r["ratio_ci_lo"], r["ratio_ci_hi"] = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
                r["n_bootstrap"] = len(vals)
        rows.append(r)
    return pd.DataFrame(rows)
