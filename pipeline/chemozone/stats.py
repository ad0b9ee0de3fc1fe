"""Cohort statistics on a run folder's tables: dose-response, mixed models, cognate specificity, modules.

Every function is pure: tables in, tables out (pandas). The usual flow::

    run = load_run("chemozone-demo/run")
    areas = zone_area_table(run)                       # one row per sample, area_fraction_{zone}
    fits = fit_dose_response(areas, metric="area_fraction_CXCL8")
    mm = mixed_model(areas, metric="area_fraction_CXCL8")
    cog = cognate_test(run["infiltration"], pairs=[("CXCL8", "CXCR2", ["NK"])])
    mods = chemokine_modules(run["cells"], markers=["CXCL8", "CXCL10", "CCL20"])

Conventions
-----------
* Samples at 0 Gy are controls shared by every radiation arm (a facility sham such as ``sham_linac`` is a
  0 Gy photon, ``sham_hit`` a 0 Gy particle control); an arm is a radiation type with doses > 0.
* Dose-response models (``E0`` baseline, ``Emax`` the amplitude, so the plateau is ``E0 + Emax``)::

      linear  y = E0 + slope * D
      emax    y = E0 + Emax * D / (ED50 + D)
      hill    y = E0 + Emax * D**h / (ED50**h + D**h)

  fitted by least squares with one additive offset per patient (a fixed patient block), so that
  between-patient differences in level do not blur the curve. AIC = n log(RSS/n) + 2k (k counts the curve
  parameters, the patient offsets and the residual variance; the offsets cancel in comparisons).
* Infiltration metrics against zones that grow with dose: cells inside a zone per mm² of *tissue*
  (``receptor_density_table(per="tissue")``) measures the infiltration *amount* and grows with the zone
  for any population, so it is used only for attracted (cognate receptor+) cells. Whether a population
  responds to dose at all (the receptor− specificity control) is judged on metrics not confounded by zone
  size: the density inside the zone (per mm² of zone) and the log2 enrichment inside/outside, both
  estimated from counts with area offsets by :func:`dose_rate_test` (:func:`receptor_count_table`).
* Confidence intervals come from a bootstrap over patients (resampled with replacement; every arm of one
  draw uses the same resample, so ratios between arms are paired).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, MissingStepError, RunError, require_columns

__all__ = [
    "TABLES",
    "load_run",
    "add_effective_dose",
    "zone_area_table",
    "density_table",
    "enrichment_table",
    "producer_fraction_table",
    "metric_table",
    "dose_response_models",
    "fit_dose_response",
    "predict_dose_response",
    "relative_amplitude",
    "mixed_model",
    "compare_radiation",
    "cognate_test",
    "chemokine_modules",
    "bh_fdr",
    "split_phenotype",
    "receptor_density_table",
    "receptor_count_table",
    "receptor_overlap_counts",
    "dose_rate_test",
]

TABLES = ("cells", "infiltration", "zones", "samples", "gates", "zone_overlap")
_OPTIONAL = {"zone_overlap"}  # absent in run folders written before it existed: empty, not an error
_STEP = {
    "zone_overlap": "chemozone run (spatial step)",
    "cells": "chemozone run (quantify + phenotype + spatial)",
    "infiltration": "chemozone run (spatial step)",
    "zones": "chemozone run (zones step)",
    "samples": "chemozone run",
    "gates": "chemozone run (phenotype step)",
}
_BASE_META = ("patient", "radiation", "dose_gy")


# ================================================================================================ load
def load_run(out: str | os.PathLike, *, tables: Sequence[str] = TABLES, missing: str = "raise") -> dict[str, Any]:
    """Load a run folder's cohort tables with the sample metadata joined.

    Parameters
    ----------
    out : path
        The run folder (holds ``run.json``).
    tables : sequence of str
        Which of ``cells, infiltration, zones, samples, gates, zone_overlap`` to read (``samples`` is always
        read).
    missing : {"raise", "empty"}
        A requested table that is absent raises :class:`MissingStepError` (``"raise"``) or comes back as
        an empty DataFrame (``"empty"``). ``zone_overlap`` (new in run folders of this version) always
        comes back empty when absent; :func:`receptor_overlap_counts` then says what to re-run.

    Returns
    -------
    dict
        ``{name: DataFrame}`` for each table plus ``"run"`` (the parsed ``run.json``) and
        ``"effectiveness"`` (``config.stats.effectiveness`` of the run). Every table carries the sample
        sheet's metadata columns and ``effective_dose_gy``.

    Raises
    ------
    RunError
        No run folder / no ``run.json``.
    MissingStepError
        A requested table is missing (names the file and the step that writes it).
    """
    from .layout import RunLayout, read_run_json

    out = Path(out)
    if not out.is_dir():
        raise RunError(f"{out}: run folder not found; run 'chemozone run INPUT --config CFG --out {out}' first")
    if missing not in ("raise", "empty"):
        raise ValueError(f"missing must be 'raise' or 'empty', got {missing!r}")
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown tables {unknown}; choose from {list(TABLES)}")
    run = read_run_json(out)
    lay = RunLayout(out)
    paths = {"cells": lay.cohort_cells, "infiltration": lay.cohort_infiltration, "zones": lay.cohort_zones,
             "samples": lay.cohort_samples, "gates": lay.gates, "zone_overlap": lay.cohort_zone_overlap}
    eff = dict(((run.get("config") or {}).get("stats") or {}).get("effectiveness") or {})
    result: dict[str, Any] = {"run": run, "effectiveness": eff}
    wanted = ["samples"] + [t for t in tables if t != "samples"]
    for name in wanted:
        p = paths[name]
        if p.is_file():
            result[name] = pd.read_parquet(p)
        elif missing == "raise" and name not in _OPTIONAL:
            raise MissingStepError(f"{p}: '{name}' table not found; run '{_STEP[name]}' into {out} first")
        else:
            result[name] = pd.DataFrame({"sample_id": pd.Series(dtype=str)})
    samples = result["samples"]
    if len(samples) and eff and {"dose_gy", "radiation"} <= set(samples.columns):
        samples = add_effective_dose(samples, eff, strict=False)
    result["samples"] = samples
    for name in wanted:
        if name != "samples":
            result[name] = _join_meta(result[name], samples)
    return result


def _join_meta(df: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Add the sample sheet's columns that ``df`` lacks (by ``sample_id``)."""
    if "sample_id" not in df.columns or "sample_id" not in samples.columns or not len(samples):
        return df
    extra = [c for c in samples.columns if c not in df.columns and c != "image"]
    if not extra:
        return df
    meta = samples[["sample_id"] + extra].drop_duplicates("sample_id")
    return df.merge(meta, on="sample_id", how="left")


def add_effective_dose(df: pd.DataFrame, effectiveness: dict[str, float], *, dose: str = "dose_gy",
                       radiation: str = "radiation", strict: bool = True) -> pd.DataFrame:
    """Return a copy of ``df`` with ``effective_dose_gy = factor[radiation] * dose`` (0 Gy stays 0).

    Raises
    ------
    ConfigError
        (``strict``) an irradiated sample whose radiation type has no factor in ``stats.effectiveness``.

    Examples
    --------
    >>> d = pd.DataFrame({"radiation": ["photon", "carbon", "sham"], "dose_gy": [2.0, 2.0, 0.0]})
    >>> add_effective_dose(d, {"photon": 1.0, "carbon": 2.5})["effective_dose_gy"].tolist()
    [2.0, 5.0, 0.0]
    """
    out = df.copy()
    d = out[dose].astype(float)
    fac = out[radiation].map(lambda r: effectiveness.get(r, np.nan)).astype(float)
    bad = sorted(set(out.loc[(d > 0) & fac.isna(), radiation].astype(str)))
    if bad and strict:
        raise ConfigError(f"stats.effectiveness: no factor for radiation type(s) {bad} "
                          f"(have {sorted(effectiveness)}); add them to the config's stats.effectiveness")
    out["effective_dose_gy"] = np.where(d == 0, 0.0, d * fac)
    return out


# ========================================================================================== metrics
def _meta_cols(df: pd.DataFrame, samples: pd.DataFrame | None = None) -> list[str]:
    src = samples if samples is not None and len(samples) else df
    skip = {"image"}
    cols = [c for c in src.columns if c not in skip]
    return [c for c in cols if c in df.columns or samples is not None]


def _sample_frame(run: dict[str, Any]) -> pd.DataFrame:
    s = run["samples"]
    return s.drop(columns=[c for c in ("image",) if c in s.columns]).drop_duplicates("sample_id")


def _done_samples(run: dict[str, Any]) -> pd.DataFrame:
    s = _sample_frame(run)
    status = (run.get("run") or {}).get("samples") or {}
    if status:
        ok = [sid for sid in s["sample_id"] if (status.get(sid) or {}).get("status", "done") == "done"]
        s = s[s["sample_id"].isin(ok)]
    return s.reset_index(drop=True)


def zone_area_table(run: dict[str, Any]) -> pd.DataFrame:
    """Per-sample zone area fractions: one row per sample, columns ``area_fraction_{zone}`` + metadata.

    ``area_fraction = area_mm2 / tissue_area_mm2`` (recomputed when the column is absent).
    """
    z = run["zones"]
    require_columns(z, ["sample_id", "zone", "area_mm2"], "zones table", "the zones step")
    z = z.copy()
    if "area_fraction" not in z.columns:
        z["area_fraction"] = z["area_mm2"] / z["tissue_area_mm2"].where(z["tissue_area_mm2"] > 0)
    wide = z.pivot_table(index="sample_id", columns="zone", values="area_fraction", aggfunc="first")
    wide.columns = [f"area_fraction_{c}" for c in wide.columns]
    return _done_samples(run).merge(wide.reset_index(), on="sample_id", how="inner")


def _aggregate_populations(inf: pd.DataFrame, mapping: dict[str, str]) -> pd.DataFrame:
    """Sum n_cells of populations mapped to the same name, per sample, zone and region."""
    sub = inf[inf["population"].isin(mapping)].copy()
    sub["population"] = sub["population"].map(mapping)
    g = sub.groupby(["sample_id", "zone", "region", "population"], as_index=False).agg(
        n_cells=("n_cells", "sum"), area_mm2=("area_mm2", "first"))
    return g


def density_table(run: dict[str, Any], *, zone: str, region: str = "inside",
                  population_type: str = "phenotype", populations: Sequence[str] | None = None,
                  pseudocount_cells: float = 0.0) -> pd.DataFrame:
    """Per-sample density (cells/mm²) of each population in one zone region: columns ``density_{population}``.

    Parameters
    ----------
    zone, region : str
        E.g. ``zone="CXCL8", region="inside"`` (``region`` ∈ inside, outside, ``band_{lo}_{hi}_um``).
    population_type : {"cell_type", "phenotype"}
    populations : sequence of str, optional
        Keep only these populations (default all).
    """
    inf = _infiltration(run, population_type)
    if zone not in set(inf["zone"]):
        raise MissingStepError(f"infiltration table has no zone '{zone}' (zones: {sorted(set(inf['zone']))}); "
                               f"add it to the config's zones and re-run")
    sub = inf[(inf["zone"] == zone) & (inf["region"] == region)]
    if populations is not None:
        sub = sub[sub["population"].isin(populations)]
    dens = (sub["n_cells"] + pseudocount_cells) / sub["area_mm2"].where(sub["area_mm2"] > 0)
    sub = sub.assign(density=dens)
    wide = sub.pivot_table(index="sample_id", columns="population", values="density", aggfunc="first")
    wide.columns = [f"density_{c}" for c in wide.columns]
    return _done_samples(run).merge(wide.reset_index(), on="sample_id", how="inner")


def _infiltration(run: dict[str, Any], population_type: str) -> pd.DataFrame:
    inf = run["infiltration"]
    require_columns(inf, ["sample_id", "population", "zone", "region", "n_cells", "area_mm2"],
             "infiltration table", "the spatial step")
    if "population_type" in inf.columns:
        inf = inf[inf["population_type"] == population_type]
    if "region" in inf.columns:
        inf = inf[inf["region"].isin(["inside", "outside"]) | inf["region"].astype(str).str.startswith("band_")]
    return inf


def _log2_enrichment(n_in, a_in, n_out, a_out, pseudocount_cells: float):
    n_in, a_in, n_out, a_out = (np.asarray(v, float) for v in (n_in, a_in, n_out, a_out))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log2(((n_in + pseudocount_cells) / a_in) / ((n_out + pseudocount_cells) / a_out))


def enrichment_table(run: dict[str, Any], *, zone: str, population_type: str = "phenotype",
                     populations: Sequence[str] | None = None, pseudocount_cells: float = 0.5) -> pd.DataFrame:
    """Per-sample log2 enrichment ``log2(density inside / density outside)`` of each population in a zone.

    A pseudocount of ``pseudocount_cells`` cells is added to both counts so empty regions stay finite.
    Columns ``log2_enrichment_{population}`` + metadata.
    """
    inf = _infiltration(run, population_type)
    sub = inf[inf["zone"] == zone]
    if populations is not None:
        sub = sub[sub["population"].isin(populations)]
    pin = sub[sub["region"] == "inside"].set_index(["sample_id", "population"])
    pout = sub[sub["region"] == "outside"].set_index(["sample_id", "population"])
    j = pin[["n_cells", "area_mm2"]].join(pout[["n_cells", "area_mm2"]], lsuffix="_in", rsuffix="_out", how="inner")
    j["e"] = _log2_enrichment(j["n_cells_in"], j["area_mm2_in"], j["n_cells_out"], j["area_mm2_out"],
                              pseudocount_cells)
    wide = j["e"].unstack("population")
    wide.columns = [f"log2_enrichment_{c}" for c in wide.columns]
    return _done_samples(run).merge(wide.reset_index(), on="sample_id", how="inner")


def _status_groups(populations, receptor: str, cell_types: Sequence[str], pool: bool
                   ) -> list[tuple[str, dict[str, str]]]:
    """``[(label, {phenotype: "pos" | "neg"})]`` per lineage of a cognate pair (+ the lineages pooled).

    Lineages default to those with a ``{receptor}+`` phenotype among ``populations``.
    """
    cts = list(cell_types) or sorted({split_phenotype(p)[0] for p in populations
                                      if f"{receptor}+" in split_phenotype(p)[1]})
    groups = [(ct, [ct]) for ct in cts] + ([(" & ".join(cts), cts)] if pool and len(cts) > 1 else [])
    out = []
    for label, members in groups:
        mapping = {}
        for p in populations:
            for ct in members:
                if (st := _receptor_status(p, ct, receptor)):
                    mapping[p] = st
        out.append((label, mapping))
    return out


def receptor_count_table(run: dict[str, Any], *, pairs: Sequence[Any] | None = None,
                         regions: Sequence[str] = ("inside", "outside"), pool: bool = False) -> pd.DataFrame:
    """Counts of receptor+ and receptor− cells of each cognate pair's lineages, per sample, zone and region.

    The raw material of every honest infiltration metric: cell counts with the area they were counted
    in, zero-filled (a sample whose zone exists but holds none of a population gets ``n_cells = 0``, not a
    missing row).

    Parameters
    ----------
    run : dict
        From :func:`load_run` (``infiltration`` needed; ``zones`` gives the tissue area when present).
    pairs : sequence, optional
        ``(zone, receptor, cell_types)`` tuples, dicts or ``CognatePair`` (default: the run config's
        ``spatial.cognate_pairs``).
    regions : sequence of str
        Zone regions to keep (``inside``, ``outside``, ``band_{lo}_{hi}_um``).
    pool : bool
        Also add rows for the pair's cell types pooled (``cell_type = "NK & CD8 T"``).

    Returns
    -------
    DataFrame
        Long table, one row per (sample, zone, receptor, cell_type, status, region): ``n_cells``,
        ``area_mm2`` (of the region), ``tissue_area_mm2``; ``status`` is ``pos`` (carries the receptor) or
        ``neg``; plus the sample metadata.
    """
    if pairs is None:
        pairs = ((run.get("run") or {}).get("config") or {}).get("spatial", {}).get("cognate_pairs") or []
    inf = _infiltration(run, "phenotype")
    inf = inf[inf["region"].isin(list(regions))]
    zt = run.get("zones")
    tissue = None
    if zt is not None and len(zt) and {"sample_id", "zone", "tissue_area_mm2"} <= set(zt.columns):
        tissue = zt.drop_duplicates(["sample_id", "zone"]).set_index(["sample_id", "zone"])["tissue_area_mm2"]
    parts = []
    for pair in pairs:
        zone, receptor, cts = _pair(pair)
        sub = inf[inf["zone"] == zone]
        if not len(sub):
            continue
        # the area of each (sample, region) where the zone was measured, whatever the population
        areas = sub.groupby(["sample_id", "region"], as_index=False)["area_mm2"].first()
        for label, mapping in _status_groups(sub["population"].unique(), receptor, cts, pool):
            agg = _aggregate_populations(sub, mapping) if mapping else pd.DataFrame(
                columns=["sample_id", "zone", "region", "population", "n_cells", "area_mm2"])
            n = agg.groupby(["sample_id", "region", "population"])["n_cells"].sum()
            for st in ("pos", "neg"):
                a = areas.copy()
                a["n_cells"] = [int(n.get((sid, reg, st), 0)) for sid, reg in zip(a["sample_id"], a["region"])]
                a["zone"], a["receptor"], a["cell_type"], a["status"] = zone, receptor, label, st
                if tissue is not None:
                    a["tissue_area_mm2"] = [tissue.get((sid, zone), np.nan) for sid in a["sample_id"]]
                else:
                    a["tissue_area_mm2"] = np.nan
                parts.append(a)
    cols = ["sample_id", "zone", "receptor", "cell_type", "status", "region", "n_cells", "area_mm2", "tissue_area_mm2"]
    if not parts:
        return _done_samples(run).merge(pd.DataFrame(columns=cols), on="sample_id", how="inner")
    out = pd.concat(parts, ignore_index=True)
    miss = out["tissue_area_mm2"].isna()
    if miss.any() and {"inside", "outside"} <= set(out["region"]):
        io = out[out["region"].isin(["inside", "outside"])].groupby(
            ["sample_id", "zone", "cell_type", "status"])["area_mm2"].transform("sum")
        out.loc[miss & out["region"].isin(["inside", "outside"]), "tissue_area_mm2"] = io
    out = out[cols]
    return _done_samples(run).merge(out, on="sample_id", how="inner")


def receptor_overlap_counts(run: dict[str, Any], *, pairs: Sequence[Any] | None = None,
                            pool: bool = False) -> pd.DataFrame:
    """Counts of receptor+ and receptor− cells of each cognate pair's lineages per zone-combination region.

    Like :func:`receptor_count_table`, but the regions are the in/out combinations of the run's overlap
    zones (``zone_overlap.parquet``: ``CXCL8+ CXCL10- CCL5+``, ...), so that :func:`dose_rate_test` can
    estimate a zone's effect adjusted for the other zones it co-localises with.

    Parameters
    ----------
    run : dict
        From :func:`load_run` (``zone_overlap`` needed).
    pairs : sequence, optional
        As for :func:`receptor_count_table` (default: the run config's ``spatial.cognate_pairs``).
    pool : bool
        Also add rows for the pair's cell types pooled.

    Returns
    -------
    DataFrame
        One row per (sample, zone, receptor, cell_type, status, region): ``region`` (combination name),
        ``inside`` (bool: the region lies in the pair's zone), ``in_{zone}`` for every overlap zone,
        ``n_cells``, ``area_mm2`` (of the region); plus the sample metadata. Zero-filled.

    Raises
    ------
    MissingStepError
        No ``zone_overlap`` table, or a pair's zone is not among its zones.
    """
    if pairs is None:
        pairs = ((run.get("run") or {}).get("config") or {}).get("spatial", {}).get("cognate_pairs") or []
    ov = run.get("zone_overlap")
    if ov is None or not len(ov):
        raise MissingStepError("run has no zone_overlap table (zone_overlap.parquet); re-run 'chemozone run' "
                               "with this version (spatial step) to write it")
    require_columns(ov, ["sample_id", "population_type", "population", "region", "n_cells", "area_mm2"],
                    "zone_overlap table", "the spatial step")
    flags = [c for c in ov.columns if c.startswith("in_")]
    ov = ov[ov["population_type"] == "phenotype"]
    regions = ov.drop_duplicates(["sample_id", "region"])[["sample_id", "region", "area_mm2"] + flags]
    parts = []
    for pair in pairs:
        zone, receptor, cts = _pair(pair)
        if f"in_{zone}" not in flags:
            raise MissingStepError(f"zone_overlap table has no zone '{zone}' (zones: {[f[3:] for f in flags]}); "
                                   f"add it to spatial.overlap_zones and re-run")
        for label, mapping in _status_groups(ov["population"].unique(), receptor, cts, pool):
            sub = ov[ov["population"].isin(mapping)]
            n = sub.assign(status=sub["population"].map(mapping)).groupby(
                ["sample_id", "region", "status"])["n_cells"].sum()
            for st in ("pos", "neg"):
                a = regions.copy()
                a["n_cells"] = [int(n.get((sid, reg, st), 0)) for sid, reg in zip(a["sample_id"], a["region"])]
                a["zone"], a["receptor"], a["cell_type"], a["status"] = zone, receptor, label, st
                a["inside"] = a[f"in_{zone}"].astype(bool)
                parts.append(a)
    cols = ["sample_id", "zone", "receptor", "cell_type", "status", "region", "inside"] + flags + ["n_cells", "area_mm2"]
    if not parts:
        return _done_samples(run).merge(pd.DataFrame(columns=cols), on="sample_id", how="inner")
    out = pd.concat(parts, ignore_index=True)[cols]
    return _done_samples(run).merge(out, on="sample_id", how="inner")


def receptor_density_table(run: dict[str, Any], *, pairs: Sequence[Any] | None = None, region: str = "inside",
                           per: str = "zone", pool: bool = False) -> pd.DataFrame:
    """Per-sample density of receptor+ and receptor− cells of each cognate pair's lineages in its zone.

    Which denominator answers which question (the zones grow with dose, so this matters):

    * ``per="zone"`` – cells per mm² **of the zone**: how densely the zone is infiltrated. Not confounded by
      the zone's size: a population placed independently of the zones has the same density inside a small
      and a large zone. Use it (or the log2 enrichment inside/outside, :func:`dose_rate_test`) to judge
      whether receptor− cells respond to dose.
    * ``per="tissue"`` – cells inside the zone per mm² **of tissue**: the *amount* of infiltration the zone
      has gathered. It grows with the zone for any population, attracted or not, so it measures the
      infiltration amount of attracted (cognate receptor+) cells, never specificity.

    Samples whose zone exists but holds none of a population get 0 (not NaN); samples with an empty zone
    get NaN for ``per="zone"``.

    Parameters
    ----------
    pairs : sequence, optional
        ``(zone, receptor, cell_types)`` tuples, dicts or ``CognatePair`` (default: the run config's
        ``spatial.cognate_pairs``).
    region : str
        Zone region (``inside``, ``outside``, ``band_{lo}_{hi}_um``).
    per : {"zone", "tissue"}
        Denominator, see above.
    pool : bool
        Also add the pair's cell types pooled (``"NK & CD8 T CXCR2+ in CXCL8"``).

    Returns
    -------
    DataFrame
        One row per sample, columns ``"{cell_type} {receptor}+ in {zone}"`` and ``"... {receptor}- in {zone}"``.
    """
    if per not in ("zone", "tissue"):
        raise ValueError(f"per must be 'zone' or 'tissue', got {per!r}")
    ct = receptor_count_table(run, pairs=pairs, regions=(region,) if per == "zone" else (region, "inside", "outside"),
                              pool=pool)
    ct = ct[ct["region"] == region]
    cols: dict[str, pd.Series] = {}
    for (zone, receptor, cell_type, status), g in ct.groupby(["zone", "receptor", "cell_type", "status"], sort=False):
        g = g.set_index("sample_id")
        den = g["area_mm2"] if per == "zone" else g["tissue_area_mm2"]
        sign = "+" if status == "pos" else "-"
        cols[f"{cell_type} {receptor}{sign} in {zone}"] = g["n_cells"] / den.where(den > 0)
    wide = pd.DataFrame(cols)
    wide.index.name = "sample_id"
    return _done_samples(run).merge(wide.reset_index(), on="sample_id", how="inner")


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
    import statsmodels.api as sm
    import statsmodels.formula.api as smf
    from scipy import stats as sst

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
        for arm_name, arm in _arms(g, "dose", group).items():
            arm = arm.reset_index(drop=True)
            row = dict(zip(keys, key))
            row.update(arm=arm_name, contrast=contrast, estimate=np.nan, ci_lo=np.nan, ci_hi=np.nan, p=np.nan,
                       dispersion=np.nan, n_samples=int(arm["sid"].nunique()),
                       n_cells_inside=int(arm.loc[arm["inside"] == 1, "n_cells"].sum()), adjusted_for="",
                       warning="")
            n_pat = arm["pat"].nunique()
            adj = ""
            used = []
            for i, o in enumerate(others):  # another zone present in some but not all regions of this arm
                v = arm[o].astype(bool)
                if v.any() and not v.all():
                    arm[f"adj{i}"] = v.astype(float)
                    adj += f" + adj{i} + adj{i}:dose"
                    used.append(o[3:])
            row["adjusted_for"] = ", ".join(used)
            if contrast == "density":
                formula = "n_cells ~ dose" + (" + C(pat)" if n_pat > 1 else "") + adj
                term = "dose"
            else:
                formula = ("n_cells ~ 0 + C(sid) + " + ("inside:C(pat)" if n_pat > 1 else "inside")
                           + " + inside:dose" + adj)
                term = "inside:dose"
            if row["n_cells_inside"] == 0 or arm["dose"].nunique() < 2:
                row["warning"] = "no cells inside the zone" if row["n_cells_inside"] == 0 else "one dose level"
                rows.append(row)
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    res = smf.glm(formula, arm, family=sm.families.Poisson(),
                                  offset=np.log(arm["area_mm2"].to_numpy(float))).fit()
                except (ValueError, np.linalg.LinAlgError) as e:  # pragma: no cover - degenerate data
                    row["warning"] = f"fit failed: {str(e).splitlines()[0]}"
                    rows.append(row)
                    continue
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
            rows.append(row)
    return pd.DataFrame(rows, columns=keys + ["arm", "contrast", "estimate", "ci_lo", "ci_hi", "p", "dispersion",
                                              "n_samples", "n_cells_inside", "adjusted_for", "warning"])


def _pair(pair: Any) -> tuple[str, str, list[str]]:
    if isinstance(pair, dict):
        return pair["zone"], pair["receptor"], list(pair.get("cell_types") or [])
    if hasattr(pair, "zone"):
        return pair.zone, pair.receptor, list(pair.cell_types or [])
    return pair[0], pair[1], list(pair[2]) if len(pair) > 2 else []


def producer_fraction_table(run: dict[str, Any], *, markers: Sequence[str] | None = None,
                            cell_types: Sequence[str] | None = None, tumor_prefix: str = "Tumor") -> pd.DataFrame:
    """Per-sample fraction of tumor cells positive for each chemokine marker: ``producer_fraction_{marker}``.

    Parameters
    ----------
    markers : sequence of str, optional
        Markers with a ``{marker}_pos`` column (default: every ``_pos`` column whose marker starts with CXCL/CCL/CX3CL).
    cell_types : sequence of str, optional
        Cell types counted as tumor (default: those starting with ``tumor_prefix``).
    """
    cells = run["cells"]
    require_columns(cells, ["sample_id", "cell_type"], "cells table", "the phenotype step")
    if markers is None:
        markers = [c[:-4] for c in cells.columns if c.endswith("_pos")
                   and c.upper().startswith(("CXCL", "CCL", "CX3CL", "XCL"))]
    require_columns(cells, [f"{m}_pos" for m in markers], "cells table", "the phenotype step (gate the chemokine markers)")
    ct = cells["cell_type"].astype(str)
    is_t = ct.isin(cell_types) if cell_types is not None else ct.str.startswith(tumor_prefix)
    t = cells.loc[is_t, ["sample_id"] + [f"{m}_pos" for m in markers]]
    frac = t.groupby("sample_id").mean(numeric_only=False).astype(float)
    frac.columns = [f"producer_fraction_{c[:-4]}" for c in frac.columns]
    frac["n_tumor_cells"] = t.groupby("sample_id").size()
    return _done_samples(run).merge(frac.reset_index(), on="sample_id", how="inner")


def metric_table(run: dict[str, Any], kind: str, **kwargs) -> pd.DataFrame:
    """Dispatch to a per-sample metric helper.

    ``kind`` ∈ ``zone_area`` (:func:`zone_area_table`), ``density`` (:func:`density_table`),
    ``enrichment`` (:func:`enrichment_table`), ``producer_fraction`` (:func:`producer_fraction_table`),
    ``receptor_density`` (:func:`receptor_density_table`).
    """
    funcs = {"zone_area": zone_area_table, "density": density_table, "enrichment": enrichment_table,
             "producer_fraction": producer_fraction_table, "receptor_density": receptor_density_table}
    if kind not in funcs:
        raise ValueError(f"unknown metric kind {kind!r}; choose from {sorted(funcs)}")
    out = funcs[kind](run, **kwargs)
    if run.get("effectiveness") and "effective_dose_gy" not in out.columns:
        out = add_effective_dose(out, run["effectiveness"], strict=False)
    return out


# ==================================================================================== dose-response
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
    return_bootstrap: bool = False,
):
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
    return_bootstrap : bool
        Also return the bootstrap draws (long table: metric, group, model, draw, parameters).

    Returns
    -------
    fits : DataFrame
        One row per (metric, group, model): ``n_samples, n_patients``, the parameters (``E0, slope, Emax,
        ED50, hill``; NaN where a model lacks one), ``plateau_value`` (E0 + Emax), ``rss, aic, delta_aic``,
        ``chosen`` (lowest AIC in the arm), the CIs ``{param}_ci_lo/_ci_hi``, and per arm
        ``plateau_delta_aic`` (AIC linear − AIC emax; > 2 means Emax is preferred, i.e. a plateau),
        ``plateau_lrt_p`` (likelihood-ratio test emax vs linear, 1 df), ``plateau`` (bool),
        ``tost_diff, tost_margin, tost_p, equivalent_hi_lo``.
    boot : DataFrame
        Only with ``return_bootstrap``.
    """
    from scipy import stats as sst

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
        data = df[[c for c in dict.fromkeys(need)]].copy()
        data = data[np.isfinite(data[m].astype(float)) & np.isfinite(data[dose].astype(float))]
        data[dose] = data[dose].astype(float)
        data[m] = data[m].astype(float)
        if patient is None:
            data["_pat"] = "all"
            pcol = "_pat"
        else:
            pcol = patient
        arms = _arms(data, dose, group)
        full: dict[tuple[str, str], dict[str, Any]] = {}
        for g, arm in arms.items():
            pats = {p: i for i, p in enumerate(sorted(arm[pcol].astype(str).unique()))}
            pidx = arm[pcol].astype(str).map(pats).to_numpy()
            d, y = arm[dose].to_numpy(float), arm[m].to_numpy(float)
            fits = {mod: _fit_one(mod, d, y, pidx, len(pats)) for mod in models}
            aics = {k: v["aic"] for k, v in fits.items() if v is not None}
            best = min(aics, key=aics.get) if aics else None
            lin, emx = fits.get("linear"), fits.get("emax")
            if lin is not None and emx is not None:
                dAIC = lin["aic"] - emx["aic"]
                lr = max(lin["n"] * np.log(lin["rss"] / max(emx["rss"], 1e-300)), 0.0)
                lrt_p = float(sst.chi2.sf(lr, 1))
            else:
                dAIC, lrt_p = np.nan, np.nan
            tdiff, tmarg, tp = _tost(arm, m, dose, pcol, tost_doses, tost_margin)
            for mod in models:
                f = fits[mod]
                row = {"metric": m, "group": g, "model": mod, "n_samples": len(arm), "n_patients": len(pats)}
                for p in ("E0", "slope", "Emax", "ED50", "hill"):
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
                full[(g, mod)] = f
        # ---- bootstrap over patients (one resample per draw, shared by all arms)
        if n_bootstrap and patient is not None:
            all_pats = np.array(sorted(data[pcol].astype(str).unique()))
            by_pat = {p: data[data[pcol].astype(str) == p] for p in all_pats}
            for b in range(n_bootstrap):
                pick = rng.choice(all_pats, size=len(all_pats), replace=True)
                parts = []
                for i, p in enumerate(pick):
                    part = by_pat[p].copy()
                    part[pcol] = f"b{i}"
                    parts.append(part)
                bd = pd.concat(parts, ignore_index=True)
                for g, arm in _arms(bd, dose, group).items():
                    if g not in arms:
                        continue
                    pats = {p: i for i, p in enumerate(sorted(arm[pcol].unique()))}
                    pidx = arm[pcol].map(pats).to_numpy()
                    d, y = arm[dose].to_numpy(float), arm[m].to_numpy(float)
                    for mod in models:
                        f0 = full.get((g, mod))
                        if f0 is None or len(np.unique(d)) < len(_PARAMS[mod]):
                            continue
                        f = _fit_one(mod, d, y, pidx, len(pats), starts=[f0["theta"]])
                        if f is None:
                            continue
                        rec = {"metric": m, "group": g, "model": mod, "draw": b}
                        rec.update(dict(zip(_PARAMS[mod], f["params"])))
                        boots.append(rec)
    fits_df = pd.DataFrame(rows)
    boot_df = pd.DataFrame(boots, columns=["metric", "group", "model", "draw", "E0", "slope", "Emax", "ED50", "hill"])
    for p in ("E0", "slope", "Emax", "ED50", "hill"):
        fits_df[f"{p}_ci_lo"] = np.nan
        fits_df[f"{p}_ci_hi"] = np.nan
    if len(boot_df):
        q = boot_df.groupby(["metric", "group", "model"])
        lo = q[["E0", "slope", "Emax", "ED50", "hill"]].quantile(alpha / 2)
        hi = q[["E0", "slope", "Emax", "ED50", "hill"]].quantile(1 - alpha / 2)
        for i, r in fits_df.iterrows():
            key = (r["metric"], r["group"], r["model"])
            if key in lo.index:
                for p in _PARAMS[r["model"]]:
                    fits_df.at[i, f"{p}_ci_lo"] = lo.at[key, p]
                    fits_df.at[i, f"{p}_ci_hi"] = hi.at[key, p]
        fits_df["n_bootstrap"] = fits_df.apply(
            lambda r: int(((boot_df["metric"] == r["metric"]) & (boot_df["group"] == r["group"])
                           & (boot_df["model"] == r["model"])).sum()), axis=1)
    else:
        fits_df["n_bootstrap"] = 0
    return (fits_df, boot_df) if return_bootstrap else fits_df


def predict_dose_response(fits: pd.DataFrame, doses: np.ndarray, *, boot: pd.DataFrame | None = None,
                          metric: str | None = None, group: str | None = None, model: str | None = None,
                          alpha: float = 0.05) -> pd.DataFrame:
    """Fitted curve (population, patient offsets at 0) on a dose grid, with bootstrap bands when ``boot`` is given.

    Selects the row of ``fits`` by ``metric``/``group`` and ``model`` (default: the chosen model).

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
    for b in range(n_bootstrap):
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


# ===================================================================================== mixed models
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
    from scipy import stats as sst

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
    rows = []

    def _intercept_test(sub: pd.DataFrame, formula: str, term: str) -> tuple[float, float, float, float, str]:
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

    if scale == "physical":
        for r in others:
            for lvl in sorted(set(d.loc[d["rad"] == r, "dose"]) & set(d.loc[d["rad"] == reference, "dose"])):
                if lvl <= 0:
                    continue
                sub = d[np.isclose(d["dose"], lvl) & d["rad"].isin([r, reference])].copy()
                sub["other"] = (sub["rad"] == r).astype(float)
                est, lo, hi, p, warn = _intercept_test(sub, "y ~ other", "other")
                rows.append({"metric": metric, "scale": "physical", "radiation": r, "dose_gy": lvl,
                             "effective_dose_gy": np.nan, "estimate": est, "ci_lo": lo, "ci_hi": hi, "p": p,
                             "n_samples": len(sub), "warning": warn})
    elif scale == "effective":
        if not effectiveness:
            raise ConfigError("stats.effectiveness is empty; give one factor per radiation type to compare at "
                              "equal effective dose")
        d = add_effective_dose(d.rename(columns={"dose": "_dose"}), effectiveness, dose="_dose", radiation="rad")
        d = d.rename(columns={"_dose": "dose"})
        ref_arm = d[(d["dose"] == 0) | (d["rad"] == reference)]
        pats = {p: i for i, p in enumerate(sorted(ref_arm["pat"].unique()))}
        f = _fit_one(model, ref_arm["effective_dose_gy"].to_numpy(float), ref_arm["y"].to_numpy(float),
                     ref_arm["pat"].map(pats).to_numpy(), len(pats))
        if f is None:
            raise ValueError(f"too few reference samples to fit the {model} curve for {metric!r}")
        off = {p: f["offsets"][i] for p, i in pats.items()}
        for r in others:
            sub = d[(d["rad"] == r) & (d["dose"] > 0)].copy()
            sub["expected"] = _curve(model, sub["effective_dose_gy"].to_numpy(float), f["params"]) + \
                sub["pat"].map(off).fillna(0.0).to_numpy(float)
            sub["resid"] = sub["y"] - sub["expected"]
            for lvl in [*sorted(set(sub["dose"])), None]:
                s2 = sub if lvl is None else sub[np.isclose(sub["dose"], lvl)]
                if len(s2) < 2:
                    continue
                est, lo, hi, p, warn = _intercept_test(s2, "resid ~ 1", "Intercept")
                rows.append({"metric": metric, "scale": "effective", "radiation": r,
                             "dose_gy": np.nan if lvl is None else lvl,
                             "effective_dose_gy": np.nan if lvl is None else float(s2["effective_dose_gy"].iloc[0]),
                             "estimate": est, "ci_lo": lo, "ci_hi": hi, "p": p, "n_samples": len(s2),
                             "warning": warn})
    else:
        raise ValueError(f"scale must be 'physical' or 'effective', got {scale!r}")
    del sst
    return pd.DataFrame(rows, columns=["metric", "scale", "radiation", "dose_gy", "effective_dose_gy", "estimate",
                                       "ci_lo", "ci_hi", "p", "n_samples", "warning"])


# ============================================================================== cognate vs non-cognate
def split_phenotype(population: str) -> tuple[str, frozenset[str]]:
    """Split a phenotype label into its cell type and its receptor flags.

    Examples
    --------
    >>> cell_type, flags = split_phenotype("CD8 T CXCR3+ CCR5+")
    >>> cell_type, sorted(flags)
    ('CD8 T', ['CCR5+', 'CXCR3+'])
    >>> split_phenotype("NK")
    ('NK', frozenset())
    """
    toks = str(population).split()
    k = len(toks)
    while k > 1 and toks[k - 1][-1:] in ("+", "-"):
        k -= 1
    return " ".join(toks[:k]), frozenset(toks[k:])


def _receptor_status(population: str, cell_type: str, receptor: str) -> str | None:
    ct, flags = split_phenotype(population)
    if ct != cell_type:
        return None
    return "pos" if f"{receptor}+" in flags else "neg"


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


# ========================================================================================== modules
def chemokine_modules(cells: pd.DataFrame, *, markers: Sequence[str] | None = None,
                      cell_types: Sequence[str] | None = None, tumor_prefix: str = "Tumor",
                      level: str = "cell", bin_um: float = 50.0, min_cells_per_bin: int = 5,
                      n_modules: int | None = None, distance_threshold: float = 0.7,
                      method: str = "average") -> dict[str, Any]:
    """Chemokine co-expression modules: Spearman correlation of positivity, hierarchically clustered.

    Parameters
    ----------
    cells : DataFrame
        Cells with ``{marker}_pos`` columns, ``cell_type`` and (for ``neighbourhood``) ``x_um, y_um, sample_id``.
    markers : sequence of str, optional
        Chemokine markers (default: every ``_pos`` marker starting with CXCL/CCL/CX3CL/XCL).
    cell_types : sequence of str, optional
        Cells used (default: cell types starting with ``tumor_prefix``).
    level : {"cell", "neighbourhood"}
        Correlate per tumor cell, or per square neighbourhood of ``bin_um`` (fraction positive, bins with at
        least ``min_cells_per_bin`` tumor cells, per sample).
    n_modules : int, optional
        Cut the tree into this many clusters; else cut at ``distance_threshold`` on ``1 − ρ``.
    method : str
        scipy linkage method.

    Returns
    -------
    dict
        ``corr`` (markers × markers Spearman ρ DataFrame), ``modules`` (Series marker → module number,
        1-based, ordered by the dendrogram), ``linkage`` (scipy linkage matrix), ``order`` (leaf order),
        ``n_units`` (cells or neighbourhoods used).
    """
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
    from scipy.spatial.distance import squareform
    from scipy.stats import spearmanr

    if markers is None:
        markers = [c[:-4] for c in cells.columns if c.endswith("_pos") and c.upper().startswith(("CXCL", "CCL", "CX3CL", "XCL"))]
    markers = list(markers)
    if len(markers) < 2:
        raise MissingStepError(f"need at least two gated chemokine markers ({{marker}}_pos columns), found {markers}; "
                               f"gate the chemokine channels in phenotypes.markers")
    require_columns(cells, [f"{m}_pos" for m in markers] + ["cell_type"], "cells table", "the phenotype step")
    ct = cells["cell_type"].astype(str)
    t = cells[ct.isin(cell_types) if cell_types is not None else ct.str.startswith(tumor_prefix)]
    X = t[[f"{m}_pos" for m in markers]].astype(float)
    if level == "neighbourhood":
        require_columns(t, ["x_um", "y_um", "sample_id"], "cells table", "quantification")
        key = [t["sample_id"].astype(str), (t["x_um"] // bin_um).astype(int), (t["y_um"] // bin_um).astype(int)]
        g = X.groupby(key)
        X = g.mean()[g.size() >= min_cells_per_bin]
    elif level != "cell":
        raise ValueError(f"level must be 'cell' or 'neighbourhood', got {level!r}")
    X.columns = markers
    if len(X) < 3:
        raise MissingStepError(f"only {len(X)} tumor cells/neighbourhoods to correlate; need at least 3")
    const = [m for m in markers if X[m].nunique() < 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant columns give NaN (set to 0 below)
        rho = spearmanr(X.to_numpy(), axis=0).statistic
    rho = np.atleast_2d(np.asarray(rho, float))
    if rho.shape != (len(markers), len(markers)):
        rho = np.array([[1.0, float(rho)], [float(rho), 1.0]]) if rho.size == 1 else rho
    rho = np.nan_to_num(rho, nan=0.0)
    np.fill_diagonal(rho, 1.0)
    dist = np.clip(1 - rho, 0, 2)
    np.fill_diagonal(dist, 0)
    Z = linkage(squareform((dist + dist.T) / 2, checks=False), method=method)
    if n_modules is not None:
        lab = fcluster(Z, t=n_modules, criterion="maxclust")
    else:
        lab = fcluster(Z, t=distance_threshold, criterion="distance")
    order = leaves_list(Z)
    # renumber modules by first appearance in the dendrogram order
    ren: dict[int, int] = {}
    for i in order:
        ren.setdefault(int(lab[i]), len(ren) + 1)
    modules = pd.Series([ren[int(v)] for v in lab], index=markers, name="module")
    corr = pd.DataFrame(rho, index=markers, columns=markers)
    return {"corr": corr, "modules": modules, "linkage": Z, "order": [markers[i] for i in order],
            "n_units": int(len(X)), "constant": const}
