"""Hypothesis tests on per-sample tables and counts: mixed models, radiation comparisons, cognate tests.

:func:`mixed_model` and :func:`compare_radiation` (REML mixed models, OLS fallback), :func:`cognate_test`
(receptor+ vs receptor− enrichment), :func:`dose_rate_test` (quasi-Poisson GLM on counts with area offsets)
and :func:`bh_fdr` (Benjamini-Hochberg).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, MissingStepError, require_columns
from ._dose_response import _arms, _curve, _fit_one
from ._load import add_effective_dose
from ._tables import _aggregate_populations, _log2_enrichment, _pair, _receptor_status, split_phenotype


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


def _coef_table(res, alpha: float) -> pd.DataFrame:
    ci = res.conf_int(alpha=alpha)
    names = [n for n in res.fe_params.index]
    return pd.DataFrame({
        "term": names,
        "estimate": res.fe_params.to_numpy(float),
        "se": res.bse_fe.reindex(names).to_numpy(float),
        "p": res.pvalues.reindex(names).to_numpy(float),
        "ci_lo": ci.loc[names, 0].to_numpy(float),
        "ci_hi": ci.loc[names, 1].to_numpy(float),
    })


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
        One row per fixed-effect term: ``term, estimate, se, p, ci_lo, ci_hi`` plus ``metric, model,
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
    rads = sorted(set(d["rad"]))
    if reference not in rads:
        reference = rads[0]
    if dose_as == "continuous":
        others = [r for r in rads if r != reference]
        for r in others:
            d[f"x_{_safe_name(r)}"] = d["dose"] * (d["rad"] == r)
        formula = "y ~ dose" + "".join(f" + x_{_safe_name(r)}" for r in others)
        res, warn = _mixedlm(formula, d, "pat", vc)
        tab = _coef_table(res, alpha)
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
            from scipy import stats as sst

            se = float(np.sqrt(max(var, 0)))
            z = sst.norm.ppf(1 - alpha / 2)
            p = float(2 * sst.norm.sf(abs(est / se))) if se > 0 else np.nan
            extra.append({"term": f"slope[{r}]", "estimate": est, "se": se, "p": p,
                          "ci_lo": est - z * se, "ci_hi": est + z * se})
        ren = {f"x_{_safe_name(r)}": f"dose:radiation[{r}] - {reference}" for r in others}
        tab["term"] = tab["term"].replace(ren)
        tab = pd.concat([tab, pd.DataFrame(extra)], ignore_index=True)
    elif dose_as == "levels":
        d["arm"] = np.where(d["dose"] > 0, d["rad"] + "_" + d["dose"].map(lambda v: f"{v:g}") + "Gy", "control")
        res, warn = _mixedlm("y ~ C(arm, Treatment('control'))", d, "pat", vc)
        tab = _coef_table(res, alpha)
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


def compare_radiation(df: pd.DataFrame, *, metric: str, reference: str = "photon",
                      effectiveness: dict[str, float] | None = None, scale: str = "physical",
                      dose: str = "dose_gy", group: str = "radiation", patient: str = "patient",
                      model: str = "emax", alpha: float = 0.05) -> pd.DataFrame:
    """Each radiation type vs the reference at equal physical or equal effective dose.

    ``physical``: at every dose level both arms share, a mixed model ``y ~ radiation`` (random intercept
    per patient) on those samples; ``estimate`` = other − reference.
    ``effective``: the reference arm's dose-response curve (``model``, with patient offsets) is fitted on
    the effective dose and evaluated at each other sample's effective dose (factor × dose); the
    differences observed − expected are tested per dose level and pooled with a random intercept per
    patient. ``estimate`` < 0 means a weaker response than the reference at the same effective dose.

    Returns
    -------
    DataFrame
        ``metric, scale, radiation, dose_gy (NaN = pooled), effective_dose_gy, estimate, ci_lo, ci_hi,
        p, n_samples, warning``.
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
        rows = _compare_effective(d, metric, reference, others, effectiveness, model, alpha)
    else:
        raise ValueError(f"scale must be 'physical' or 'effective', got {scale!r}")
    return pd.DataFrame(rows, columns=["metric", "scale", "radiation", "dose_gy", "effective_dose_gy", "estimate",
                                       "ci_lo", "ci_hi", "p", "n_samples", "warning"])


def _intercept_test(sub: pd.DataFrame, formula: str, term: str, alpha: float
                    ) -> tuple[float, float, float, float, str]:
    """``term`` of ``formula``, random intercept per patient (``pat``) or OLS: (estimate, lo, hi, p, warning)."""
    # a random intercept is only identifiable with >= 3 patients and repeated samples per patient
    if sub["pat"].nunique() >= 3 and sub.groupby("pat").size().max() > 1:
        try:
            res, warn = _mixedlm(formula, sub, "pat")
            t = _coef_table(res, alpha).set_index("term")
            if term in t.index and np.isfinite(t.at[term, "se"]) and t.at[term, "se"] > 1e-12:
                return t.at[term, "estimate"], t.at[term, "ci_lo"], t.at[term, "ci_hi"], t.at[term, "p"], warn
        except (np.linalg.LinAlgError, ValueError):
            pass
    # fallback: OLS / t-test
    import statsmodels.formula.api as smf

    res = smf.ols(formula, sub).fit()
    ci = res.conf_int(alpha)
    return (float(res.params[term]), float(ci.loc[term, 0]), float(ci.loc[term, 1]), float(res.pvalues[term]),
            "OLS (one sample per patient, fewer than 3 patients, or a singular mixed model)")


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
            est, lo, hi, p, warn = _intercept_test(sub, "y ~ other", "other", alpha)
            rows.append({"metric": metric, "scale": "physical", "radiation": r, "dose_gy": lvl,
                         "effective_dose_gy": np.nan, "estimate": est, "ci_lo": lo, "ci_hi": hi, "p": p,
                         "n_samples": len(sub), "warning": warn})
    return rows


def _compare_effective(d: pd.DataFrame, metric: str, reference: str, others: list[str],
                       effectiveness: dict[str, float], model: str, alpha: float) -> list[dict[str, Any]]:
    """Rows of :func:`compare_radiation` at equal effective dose: residuals from the reference arm's curve."""
    d = add_effective_dose(d.rename(columns={"dose": "_dose"}), effectiveness, dose="_dose", radiation="rad")
    d = d.rename(columns={"_dose": "dose"})
    ref_arm = d[(d["dose"] == 0) | (d["rad"] == reference)]
    pats = {p: i for i, p in enumerate(sorted(ref_arm["pat"].unique()))}
    f = _fit_one(model, ref_arm["effective_dose_gy"].to_numpy(float), ref_arm["y"].to_numpy(float),
                 ref_arm["pat"].map(pats).to_numpy(), len(pats))
    if f is None:
        raise ValueError(f"too few reference samples to fit the {model} curve for {metric!r}")
    off = {p: f["offsets"][i] for p, i in pats.items()}
    rows = []
    for r in others:
        sub = d[(d["rad"] == r) & (d["dose"] > 0)].copy()
        sub["expected"] = _curve(model, sub["effective_dose_gy"].to_numpy(float), f["params"]) + \
            sub["pat"].map(off).fillna(0.0).to_numpy(float)
        sub["resid"] = sub["y"] - sub["expected"]
        for lvl in [*sorted(set(sub["dose"])), None]:
            s2 = sub if lvl is None else sub[np.isclose(sub["dose"], lvl)]
            if len(s2) < 2:
                continue
            est, lo, hi, p, warn = _intercept_test(s2, "resid ~ 1", "Intercept", alpha)
            rows.append({"metric": metric, "scale": "effective", "radiation": r,
                         "dose_gy": np.nan if lvl is None else lvl,
                         "effective_dose_gy": np.nan if lvl is None else float(s2["effective_dose_gy"].iloc[0]),
                         "estimate": est, "ci_lo": lo, "ci_hi": hi, "p": p, "n_samples": len(s2),
                         "warning": warn})
    return rows


def bh_fdr(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN kept).

    Examples
    --------
    >>> bh_fdr([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    q = p[ok]
    order = np.argsort(q)
    ranked = q[order] * len(q) / np.arange(1, len(q) + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty_like(q)
    res[order] = np.minimum(ranked, 1.0)
    out[ok] = res
    return out


def cognate_test(infiltration: pd.DataFrame, *, pairs: Sequence[Any], patient: str = "patient",
                 pseudocount_cells: float = 0.5, min_dose_gy: float | None = None, dose: str = "dose_gy",
                 alpha: float = 0.05) -> pd.DataFrame:
    """Receptor+ vs receptor− enrichment in each chemokine zone, tested across samples.

    For every ``(zone, receptor, cell_types)`` pair and cell type, the phenotype populations of that cell
    type are split by the receptor flag (``"{cell_type} ... {receptor}+"`` is positive, anything else
    negative) and summed; per sample, ``log2 enrichment = log2(density inside / density outside)``
    (pseudocount ``pseudocount_cells`` cells). A mixed model ``enrichment ~ receptor+`` with a random
    intercept per patient tests the difference (receptor+ minus receptor−); p-values are BH-adjusted.

    Parameters
    ----------
    infiltration : DataFrame
        The cohort infiltration table (``population_type == "phenotype"`` rows are used).
    pairs : sequence
        ``CognatePair`` configs, dicts or tuples ``(zone, receptor, cell_types)``.
    min_dose_gy : float, optional
        Only samples with dose ≥ this (e.g. irradiated samples, where zones exist).

    Returns
    -------
    DataFrame
        ``zone, receptor, cell_type, n_samples, mean_pos, mean_neg, estimate, ci_lo, ci_hi, p, p_adj,
        significant, warning``.
    """
    require_columns(infiltration, ["sample_id", "population", "zone", "region", "n_cells", "area_mm2"],
             "infiltration table", "the spatial step")
    inf = infiltration
    if "population_type" in inf.columns:
        inf = inf[inf["population_type"] == "phenotype"]
    if min_dose_gy is not None:
        inf = inf[inf[dose].astype(float) >= min_dose_gy]
    rows = []
    for pair in pairs:
        zone, receptor, cts = _pair(pair)
        sub = inf[inf["zone"] == zone]
        if not len(sub):
            raise MissingStepError(f"infiltration table has no zone '{zone}' (zones: {sorted(set(inf['zone']))}); "
                                   f"check spatial.cognate_pairs and the config's zones")
        if not cts:
            cts = sorted({split_phenotype(p)[0] for p in sub["population"] if f"{receptor}+" in split_phenotype(p)[1]})
        for ct in cts:
            mapping = {}
            for pop in sub["population"].unique():
                st = _receptor_status(pop, ct, receptor)
                if st is not None:
                    mapping[pop] = st
            if not mapping:
                continue
            agg = _aggregate_populations(sub, mapping)
            pin = agg[agg["region"] == "inside"].set_index(["sample_id", "population"])
            pout = agg[agg["region"] == "outside"].set_index(["sample_id", "population"])
            j = pin[["n_cells", "area_mm2"]].join(pout[["n_cells", "area_mm2"]], lsuffix="_in", rsuffix="_out",
                                                   how="inner").reset_index()
            j = j[(j["area_mm2_in"] > 0) & (j["area_mm2_out"] > 0)]
            j["enrichment"] = _log2_enrichment(j["n_cells_in"], j["area_mm2_in"], j["n_cells_out"],
                                               j["area_mm2_out"], pseudocount_cells)
            meta = inf[["sample_id", patient]].drop_duplicates("sample_id")
            j = j.merge(meta, on="sample_id", how="left")
            # keep samples that have both statuses
            cnt = j.groupby("sample_id")["population"].nunique()
            j = j[j["sample_id"].isin(cnt[cnt == 2].index)]
            row = {"zone": zone, "receptor": receptor, "cell_type": ct, "n_samples": j["sample_id"].nunique(),
                   "mean_pos": j.loc[j["population"] == "pos", "enrichment"].mean(),
                   "mean_neg": j.loc[j["population"] == "neg", "enrichment"].mean(),
                   "estimate": np.nan, "ci_lo": np.nan, "ci_hi": np.nan, "p": np.nan, "warning": ""}
            if row["n_samples"] >= 3:
                j["pos"] = (j["population"] == "pos").astype(float)
                j["pat"] = j[patient].astype(str)
                j["sid"] = j["sample_id"].astype(str)
                try:
                    # patient random intercept + sample variance component (pos and neg share a sample)
                    res, warn = _mixedlm("enrichment ~ pos", j, "pat", {"sample": "0 + C(sid)"})
                    t = _coef_table(res, alpha).set_index("term").loc["pos"]
                    if not np.isfinite(t["se"]):
                        raise ValueError("non-finite standard error")
                except (np.linalg.LinAlgError, ValueError, KeyError):
                    import statsmodels.formula.api as smf

                    # paired fallback: per-sample difference, OLS intercept
                    w = j.pivot_table(index="sid", columns="population", values="enrichment")
                    dd = pd.DataFrame({"diff": w["pos"] - w["neg"]})
                    r2 = smf.ols("diff ~ 1", dd).fit()
                    ci = r2.conf_int(alpha)
                    t = {"estimate": r2.params["Intercept"], "ci_lo": ci.loc["Intercept", 0],
                         "ci_hi": ci.loc["Intercept", 1], "p": r2.pvalues["Intercept"]}
                    warn = "paired OLS fallback (mixed model singular)"
                row.update(estimate=float(t["estimate"]), ci_lo=float(t["ci_lo"]), ci_hi=float(t["ci_hi"]),
                           p=float(t["p"]), warning=warn)
            rows.append(row)
    out = pd.DataFrame(rows, columns=["zone", "receptor", "cell_type", "n_samples", "mean_pos", "mean_neg",
                                      "estimate", "ci_lo", "ci_hi", "p", "warning"])
    out["p_adj"] = bh_fdr(out["p"].to_numpy(float)) if len(out) else []
    out["significant"] = out["p_adj"] < alpha
    return out


def dose_rate_test(counts: pd.DataFrame, *, contrast: str = "enrichment", dose: str = "dose_gy",
                   group: str = "radiation", patient: str = "patient", alpha: float = 0.05) -> pd.DataFrame:
    """Dose trend of an infiltration metric estimated from counts (quasi-Poisson GLM, area offsets).

    Per-sample densities in a zone that grows with dose are ratios of small counts over very different
    areas (a 0 Gy zone can be a few hundred µm²), so an average of per-sample densities is dominated by the
    smallest zones and a pseudocount biases enrichments. This test models the counts themselves:

    * ``contrast="density"`` – density inside the zone (cells per mm² of zone)::

          n_inside ~ Poisson(area_inside · exp(patient + β · dose))

    * ``contrast="enrichment"`` – log enrichment inside vs outside, within each sample::

          n_region ~ Poisson(area_region · exp(sample + inside · (patient + β · dose)))

      The per-sample terms absorb the population's overall abundance, so β is the change of the
      inside/outside density ratio with dose, free of zone size *and* of global abundance changes.

    Given :func:`receptor_overlap_counts` instead (regions are in/out combinations of several zones), both
    contrasts are **adjusted for the other zones**: each other zone ``o`` adds ``in_o · (γ_o + δ_o · dose)``
    to the linear predictor, so β is the dose trend attributable to the pair's own zone. This is the
    specificity control to use when zones co-localise (e.g. a CXCR2− cell that carries CXCR3 is drawn
    into CXCL10 zones, which overlap CXCL8 zones more as both grow with dose); ``adjusted_for`` names the
    zones adjusted for.

    β is reported as log2 units per Gy (``estimate``) with a t confidence interval whose standard error is
    inflated by the Pearson over-dispersion (never shrunk below Poisson). A population placed
    independently of the zones has β = 0 in both contrasts; attracted (cognate) cells have β > 0 in the
    enrichment only while attraction outpaces the zone's growth.

    Parameters
    ----------
    counts : DataFrame
        From :func:`receptor_count_table` (``n_cells, area_mm2, region`` + metadata) or
        :func:`receptor_overlap_counts` (+ ``inside``, ``in_{zone}``); the key columns present among
        ``zone, receptor, cell_type, status`` split it into separate tests.
    contrast : {"enrichment", "density"}
    dose, group, patient : str
        Columns. Each radiation type with doses > 0 is an arm, with all 0 Gy controls.
    alpha : float
        1 − confidence level.

    Returns
    -------
    DataFrame
        One row per key × arm: the key columns, ``arm, contrast, estimate`` (log2 per Gy), ``ci_lo, ci_hi,
        p, dispersion, n_samples, n_cells_inside, adjusted_for, warning``.
    """
    if contrast not in ("enrichment", "density"):
        raise ValueError(f"contrast must be 'enrichment' or 'density', got {contrast!r}")
    need = ["sample_id", "region", "n_cells", "area_mm2", dose, group, patient]
    require_columns(counts, need, "count table", "stats.receptor_count_table(...)")
    keys = [c for c in ("zone", "receptor", "cell_type", "status") if c in counts.columns]
    overlap = "inside" in counts.columns  # receptor_overlap_counts: regions are zone combinations
    rows = []
    groups = counts.groupby(keys, sort=False) if keys else [((), counts)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        g, others = _dose_rate_frame(g, overlap=overlap, contrast=contrast, dose=dose, patient=patient)
        for arm_name, arm in _arms(g, "dose", group).items():
            row = dict(zip(keys, key))
            row.update(_dose_rate_arm(arm.reset_index(drop=True), others, arm_name=arm_name, contrast=contrast,
                                      alpha=alpha))
            rows.append(row)
    return pd.DataFrame(rows, columns=keys + ["arm", "contrast", "estimate", "ci_lo", "ci_hi", "p", "dispersion",
                                              "n_samples", "n_cells_inside", "adjusted_for", "warning"])


def _dose_rate_frame(g: pd.DataFrame, *, overlap: bool, contrast: str, dose: str, patient: str
                     ) -> tuple[pd.DataFrame, list[str]]:
    """One key's counts ready for the GLM (``inside`` 0/1, ``dose, pat, sid``) and the other zones' ``in_`` columns."""
    others: list[str] = []
    if overlap:
        g = g.copy()
        g["inside"] = g["inside"].astype(bool).astype(float)
        own = f"in_{g['zone'].iloc[0]}" if "zone" in g.columns else None
        others = [c for c in g.columns if c.startswith("in_") and c != own]
    else:
        g = g[g["region"].isin(["inside", "outside"])].copy()
        g["inside"] = (g["region"] == "inside").astype(float)
    g["dose"] = g[dose].astype(float)
    g["pat"] = g[patient].astype(str)
    g["sid"] = g["sample_id"].astype(str)
    # a sample informs the test only where the regions it needs have area (and, for the enrichment, cells)
    a_in = g[g["inside"] == 1].groupby("sid")["area_mm2"].sum()
    ok_in = a_in[a_in > 0].index
    if contrast == "density":
        g = g[(g["inside"] == 1) & g["sid"].isin(ok_in) & (g["area_mm2"] > 0)]
    else:
        a_out = g[g["inside"] == 0].groupby("sid")["area_mm2"].sum()
        tot = g.groupby("sid")["n_cells"].sum()
        g = g[g["sid"].isin(set(ok_in) & set(a_out[a_out > 0].index) & set(tot[tot > 0].index))
              & (g["area_mm2"] > 0)]
    return g, others


def _dose_rate_formula(arm: pd.DataFrame, others: list[str], contrast: str) -> tuple[str, str, list[str]]:
    """GLM formula, the dose term to report and the other zones adjusted for (adds their ``adj{i}`` columns)."""
    n_pat = arm["pat"].nunique()
    adj = ""
    used = []
    for i, o in enumerate(others):  # another zone present in some but not all regions of this arm
        v = arm[o].astype(bool)
        if v.any() and not v.all():
            arm[f"adj{i}"] = v.astype(float)
            adj += f" + adj{i} + adj{i}:dose"
            used.append(o[3:])
    if contrast == "density":
        return "n_cells ~ dose" + (" + C(pat)" if n_pat > 1 else "") + adj, "dose", used
    formula = "n_cells ~ 0 + C(sid) + " + ("inside:C(pat)" if n_pat > 1 else "inside") + " + inside:dose" + adj
    return formula, "inside:dose", used


def _dose_rate_arm(arm: pd.DataFrame, others: list[str], *, arm_name: str, contrast: str, alpha: float
                   ) -> dict[str, Any]:
    """Fit the quasi-Poisson GLM of one arm: its row of :func:`dose_rate_test` (without the key columns)."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf
    from scipy import stats as sst

    row = dict(arm=arm_name, contrast=contrast, estimate=np.nan, ci_lo=np.nan, ci_hi=np.nan, p=np.nan,
               dispersion=np.nan, n_samples=int(arm["sid"].nunique()),
               n_cells_inside=int(arm.loc[arm["inside"] == 1, "n_cells"].sum()), adjusted_for="", warning="")
    formula, term, used = _dose_rate_formula(arm, others, contrast)
    row["adjusted_for"] = ", ".join(used)
    if row["n_cells_inside"] == 0 or arm["dose"].nunique() < 2:
        row["warning"] = "no cells inside the zone" if row["n_cells_inside"] == 0 else "one dose level"
        return row
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = smf.glm(formula, arm, family=sm.families.Poisson(),
                          offset=np.log(arm["area_mm2"].to_numpy(float))).fit()
        except (ValueError, np.linalg.LinAlgError) as e:  # pragma: no cover - degenerate data
            row["warning"] = f"fit failed: {str(e).splitlines()[0]}"
            return row
    dfr = max(float(res.df_resid), 1.0)
    phi = max(1.0, float(res.pearson_chi2) / dfr)
    se = float(res.bse[term]) * np.sqrt(phi)
    b = float(res.params[term])
    q = sst.t.ppf(1 - alpha / 2, dfr)
    ln2 = np.log(2.0)
    row.update(estimate=b / ln2, ci_lo=(b - q * se) / ln2, ci_hi=(b + q * se) / ln2,
               p=float(2 * sst.t.sf(abs(b / se), dfr)) if se > 0 else np.nan, dispersion=phi,
               warning="; ".join(sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
                                         for w in caught})))
    return row
