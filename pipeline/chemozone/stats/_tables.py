"""Per-sample metric tables and receptor counts built from a loaded run (:func:`~chemozone.stats.load_run`).

Every table keeps only the samples whose run status is ``done`` and carries the sample sheet's metadata.
Phenotype labels are ``"<cell_type> <receptor>+ ..."`` (:func:`split_phenotype`); a cognate pair is
``(zone, receptor, cell_types)`` given as a tuple, dict or ``CognatePair``. The population helpers here
(``_aggregate_populations``, ``_log2_enrichment``, ``_receptor_status``, ``_pair``) are shared with
:func:`~chemozone.stats.cognate_test`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MissingStepError, require_columns
from ._load import add_effective_dose


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
