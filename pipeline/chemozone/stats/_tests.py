"""Hypothesis tests on per-sample tables and counts: cognate tests, dose trends from counts, FDR.

:func:`cognate_test` (receptor+ vs receptor− enrichment, mixed model with t intervals), :func:`dose_rate_test`
(quasi-Poisson GLM on counts with area offsets, optionally an equivalence test of "no dose effect") and
:func:`bh_fdr` (Benjamini-Hochberg). Mixed models live in ``_mixed.py``, radiation comparisons in
``_radiation.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MissingStepError, require_columns
from ._dose_response import _arms
from ._intervals import equivalence_test
from ._mixed import _coef_table, _mixedlm
from ._tables import _aggregate_populations, _log2_enrichment, _pair, _receptor_status, split_phenotype


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
                    t = _coef_table(res, alpha, df=max(j["pat"].nunique() - 1, 1)).set_index("term").loc["pos"]
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
                   group: str = "radiation", patient: str = "patient", alpha: float = 0.05,
                   equivalence_margin: float | None = None) -> pd.DataFrame:
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
        1 − confidence level; also the level of each one-sided equivalence test.
    equivalence_margin : float, optional
        "No dose effect" as an equivalence test: TOST (:func:`equivalence_test`) of ``|β| <
        equivalence_margin`` (log2 per Gy; fix it before looking at the data, e.g. ``log2(1.5) / 20``: less
        than a 1.5-fold change over 0–20 Gy), on the same t reference as the CI.

    Returns
    -------
    DataFrame
        One row per key × arm: the key columns, ``arm, contrast, estimate`` (log2 per Gy), ``se, df, ci_lo,
        ci_hi, p, dispersion, n_samples, n_cells_inside, adjusted_for, warning`` and, with a margin,
        ``equivalence_margin, tost_p, equivalent, tost_power`` (power to show equivalence if β were 0).
    """
    if equivalence_margin is not None and not (np.isfinite(equivalence_margin) and equivalence_margin > 0):
        raise ValueError(f"equivalence_margin must be a positive number (log2 per Gy), got {equivalence_margin!r}")
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
            if equivalence_margin is not None:
                eq = equivalence_test(row["estimate"], row["se"], df=row["df"], margin=equivalence_margin,
                                      alpha=alpha)
                row.update(equivalence_margin=equivalence_margin, tost_p=eq["p"], equivalent=eq["equivalent"],
                           tost_power=eq["power"])
            rows.append(row)
    extra = ["equivalence_margin", "tost_p", "equivalent", "tost_power"] if equivalence_margin is not None else []
    return pd.DataFrame(rows, columns=keys + ["arm", "contrast", "estimate", "se", "df", "ci_lo", "ci_hi", "p",
                                              "dispersion", "n_samples", "n_cells_inside", "adjusted_for",
                                              "warning", *extra])


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

    row = dict(arm=arm_name, contrast=contrast, estimate=np.nan, se=np.nan, df=np.nan, ci_lo=np.nan, ci_hi=np.nan,
               p=np.nan,
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
    row.update(estimate=b / ln2, se=se / ln2, df=dfr, ci_lo=(b - q * se) / ln2, ci_hi=(b + q * se) / ln2,
               p=float(2 * sst.t.sf(abs(b / se), dfr)) if se > 0 else np.nan, dispersion=phi,
               warning="; ".join(sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
                                         for w in caught})))
    return row
