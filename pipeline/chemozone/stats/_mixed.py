"""Linear mixed models on per-sample tables (:func:`mixed_model`), REML via statsmodels.

Intervals and p-values use a t distribution with ``n_patients − 1`` degrees of freedom instead of
statsmodels' Wald z: with six patients the z interval is about 20 % too narrow (t_5 = 2.57 vs 1.96).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..errors import require_columns
from ._intervals import t_interval


def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(s))


def _mixedlm(formula: str, data: pd.DataFrame, groups: str, vc: dict[str, str] | None = None):
    """Fit a statsmodels MixedLM (REML); returns (result, warnings text)."""
    import statsmodels.formula.api as smf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smf.mixedlm(formula, data, groups=data[groups], vc_formula=vc)
        try:
            res = model.fit(reml=True, method=["lbfgs", "powell"])
        except (np.linalg.LinAlgError, ValueError):
            res = model.fit(reml=True, method=["powell"])
    msgs = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})
    return res, "; ".join(msgs)


def _coef_table(res, alpha: float, df: float) -> pd.DataFrame:
    """Fixed effects of a MixedLM result with t intervals and p-values on ``df`` degrees of freedom."""
    names = [n for n in res.fe_params.index]
    est = res.fe_params.to_numpy(float)
    se = res.bse_fe.reindex(names).to_numpy(float)
    lo, hi, p = zip(*[t_interval(e, s, df, alpha) for e, s in zip(est, se)]) if names else ((), (), ())
    return pd.DataFrame({"term": names, "estimate": est, "se": se, "p": np.array(p, float),
                         "ci_lo": np.array(lo, float), "ci_hi": np.array(hi, float), "df": float(df)})


def mixed_model(df: pd.DataFrame, *, metric: str, dose: str = "dose_gy", group: str = "radiation",
                patient: str = "patient", explant: str | None = None, dose_as: str = "continuous",
                reference: str = "photon", transform: str = "none", alpha: float = 0.05) -> pd.DataFrame:
    """Linear mixed model of a per-sample metric on dose and radiation type, random intercept per patient.

    ``continuous``: ``y ~ dose + dose:C(radiation)`` (one slope per radiation type, the reference's is
    ``dose``; the intercept is shared because a 0 Gy control received no radiation).
    ``levels``: ``y ~ C(arm)`` with ``arm`` = ``control`` (0 Gy) or ``{radiation}_{dose}Gy`` (each level vs
    the controls). With ``explant`` (a column naming the explant/slice), a variance component per explant
    within patient is added (use it when explants are imaged more than once).

    Parameters
    ----------
    transform : {"none", "log1p"}
        Transform of the metric before fitting (log1p for densities).

    Returns
    -------
    DataFrame
        One row per fixed-effect term: ``term, estimate, se, p, ci_lo, ci_hi, df`` (t intervals and p-values
        on ``df = n_patients − 1`` degrees of freedom, not Wald z) plus ``metric, model,
        n_samples, n_patients, converged, warning``. For ``continuous`` the term ``slope[{radiation}]``
        gives each radiation type's slope (per Gy) with its CI.
    """
    need = [metric, dose, group, patient] + ([explant] if explant else [])
    require_columns(df, need, "mixed-model table", "stats.metric_table(...)")
    d = df[need].copy()
    d = d[np.isfinite(d[metric].astype(float))]
    d["y"] = d[metric].astype(float)
    if transform == "log1p":
        d["y"] = np.log1p(d["y"])
    elif transform != "none":
        raise ValueError(f"transform must be 'none' or 'log1p', got {transform!r}")
    d["dose"] = d[dose].astype(float)
    d["rad"] = np.where(d["dose"] > 0, d[group].astype(str), reference)
    d["pat"] = d[patient].astype(str)
    vc = None
    if explant:
        d["exp"] = d[explant].astype(str)
        vc = {"explant": "0 + C(exp)"}
    df_t = float(max(d["pat"].nunique() - 1, 1))  # small-sample t reference (patients are the units)
    rads = sorted(set(d["rad"]))
    if reference not in rads:
        reference = rads[0]
    if dose_as == "continuous":
        others = [r for r in rads if r != reference]
        for r in others:
            d[f"x_{_safe_name(r)}"] = d["dose"] * (d["rad"] == r)
        formula = "y ~ dose" + "".join(f" + x_{_safe_name(r)}" for r in others)
        res, warn = _mixedlm(formula, d, "pat", vc)
        tab = _coef_table(res, alpha, df_t)
        # slopes per radiation type = reference slope + difference (delta-method CI from the covariance)
        cov = res.cov_params()
        extra = []
        b0 = res.fe_params["dose"]
        for r in [reference] + others:
            name = "dose" if r == reference else f"x_{_safe_name(r)}"
            if r == reference:
                est, var = b0, cov.loc["dose", "dose"]
            else:
                est = b0 + res.fe_params[name]
                var = cov.loc["dose", "dose"] + cov.loc[name, name] + 2 * cov.loc["dose", name]
            se = float(np.sqrt(max(var, 0)))
            lo, hi, p = t_interval(est, se, df_t, alpha)
            extra.append({"term": f"slope[{r}]", "estimate": est, "se": se, "p": p, "ci_lo": lo, "ci_hi": hi,
                          "df": df_t})
        ren = {f"x_{_safe_name(r)}": f"dose:radiation[{r}] - {reference}" for r in others}
        tab["term"] = tab["term"].replace(ren)
        tab = pd.concat([tab, pd.DataFrame(extra)], ignore_index=True)
    elif dose_as == "levels":
        d["arm"] = np.where(d["dose"] > 0, d["rad"] + "_" + d["dose"].map(lambda v: f"{v:g}") + "Gy", "control")
        res, warn = _mixedlm("y ~ C(arm, Treatment('control'))", d, "pat", vc)
        tab = _coef_table(res, alpha, df_t)
        tab["term"] = tab["term"].str.replace(r"C\(arm, Treatment\('control'\)\)\[T\.(.*)\]", r"\1 - control",
                                              regex=True)
    else:
        raise ValueError(f"dose_as must be 'continuous' or 'levels', got {dose_as!r}")
    tab = tab[~tab["term"].astype(str).str.endswith(" Var")]
    tab.insert(0, "metric", metric)
    tab.insert(1, "model", dose_as)
    tab["n_samples"] = len(d)
    tab["n_patients"] = d["pat"].nunique()
    tab["converged"] = bool(getattr(res, "converged", True))
    tab["warning"] = warn
    return tab.reset_index(drop=True)


