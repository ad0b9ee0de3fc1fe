"""Per-cell zone annotation, per-sample infiltration metrics and cell–cell metrics.

Distances to zones are exact Euclidean distance transforms (``scipy.ndimage.distance_transform_edt``)
on the analysis grid, in µm. A cell is assigned the grid pixel ``(y_um // grid_um, x_um // grid_um)``, and
every per-cell value is the value of that pixel; the zone edge lies half a pixel beyond the last pixel
centre, so the **signed distance** of a pixel is::

    outside the zone:  +(distance from its centre to the nearest zone pixel centre - grid_um / 2)
    inside the zone:   -(distance from its centre to the nearest non-zone pixel centre - grid_um / 2)

(``+inf`` everywhere for an empty zone, ``-inf`` for a zone that covers the whole grid). The depth
``dist_tissue_edge_um`` uses the same rule with the opposite sign: positive inside the tissue (the
distance to the explant edge), negative outside. The image border is not treated as an edge.

Because cells take the value of their grid pixel, cell counts and tissue areas in
:func:`infiltration_metrics` are always consistent (a cell is counted in a region exactly when its pixel's
area is), including under the tissue-edge correction.

Enrichment uses a pseudocount of ``PSEUDOCOUNT`` cell in total, split between inside and outside in
proportion to their areas (``a_in = a * A_in / (A_in + A_out)``), so it is finite when a region holds no cell
and shrinks towards 0 (no enrichment) when counts are small — a fixed pseudocount per side would instead
inflate the density of a small zone: ``log2(((n_in + a_in) / A_in) / ((n_out + a_out) / A_out))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .config import MAX_OVERLAP_ZONES, SpatialConfig
from .errors import ConfigError, MissingStepError
from .grid import cell_grid_index, signed_distance

__all__ = [
    "PSEUDOCOUNT",
    "signed_distance",
    "tissue_depth",
    "band_names",
    "annotate_cells",
    "infiltration_metrics",
    "cognate_specificity",
    "overlap_zone_names",
    "zone_overlap_metrics",
    "nearest_distances",
    "count_within",
    "neighbourhood_enrichment",
]

PSEUDOCOUNT = 1.0
"""Cells added (split by area between inside and outside) before the log2 enrichment."""


# ---------------------------------------------------------------------------------- distances
def tissue_depth(tissue: np.ndarray, *, grid_um: float) -> np.ndarray:
    """Distance to the tissue edge (µm): positive inside the tissue, negative outside (``-signed_distance``)."""
    return -signed_distance(tissue, grid_um=grid_um)


def band_names(edges_um: Sequence[float]) -> list[str]:
    """Region names of distance bands, e.g. ``[0, 25, 50]`` → ``['band_0_25_um', 'band_25_50_um']``."""
    return [f"band_{lo:g}_{hi:g}_um" for lo, hi in zip(edges_um, edges_um[1:])]


def _check_masks(masks: Mapping[str, np.ndarray], tissue: np.ndarray) -> np.ndarray:
    tissue = np.asarray(tissue, bool)
    for name, m in masks.items():
        if np.shape(m) != tissue.shape:
            raise ValueError(f"zone mask '{name}' has shape {np.shape(m)} but the tissue mask has {tissue.shape}")
    return tissue


def annotate_cells(
    cells: pd.DataFrame, masks: Mapping[str, np.ndarray], tissue: np.ndarray, *, grid_um: float
) -> pd.DataFrame:
    """Add ``in_{zone}``, ``dist_{zone}_um`` (signed, negative inside) and ``dist_tissue_edge_um``.

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um``
    masks : dict zone name -> bool ndarray (Ygrid, Xgrid)
    tissue : bool ndarray (Ygrid, Xgrid)
    grid_um : float
        Grid pixel size (µm) — as returned by ``tissue_mask``.

    Returns
    -------
    DataFrame
        A copy of ``cells`` with the new columns (the input is not modified).
    """
    tissue = _check_masks(masks, tissue)
    r, c = cell_grid_index(cells, grid_um=grid_um, shape=tissue.shape)
    out = cells.copy()
    new: dict[str, Any] = {}
    for name, m in masks.items():
        m = np.asarray(m, bool)
        new[f"in_{name}"] = m[r, c]
        new[f"dist_{name}_um"] = signed_distance(m, grid_um=grid_um)[r, c]
    new["dist_tissue_edge_um"] = tissue_depth(tissue, grid_um=grid_um)[r, c]
    for k, v in new.items():
        out[k] = v
    return out


# ------------------------------------------------------------------------------- infiltration
def _populations(cells: pd.DataFrame, config: SpatialConfig) -> list[tuple[str, str, np.ndarray]]:
    pops: list[tuple[str, str, np.ndarray]] = [("all", "all", np.ones(len(cells), bool))]
    for ptype in config.populations:
        if ptype not in cells.columns:
            raise MissingStepError(
                f"cells table has no '{ptype}' column; run phenotyping (phenotype_cells) before infiltration_metrics"
            )
        col = cells[ptype].astype(str).to_numpy()
        for val in sorted(pd.unique(col)):
            pops.append((ptype, val, col == val))
    return pops


def infiltration_metrics(
    cells: pd.DataFrame,
    masks: Mapping[str, np.ndarray],
    tissue: np.ndarray,
    *,
    grid_um: float,
    config: SpatialConfig | None = None,
    sample_id: str,
) -> pd.DataFrame:
    """Cell counts, tissue areas and densities per population, zone and region.

    Regions: ``inside`` (zone ∩ tissue), ``outside`` (tissue − zone) and ``band_{lo}_{hi}_um`` (tissue
    outside the zone with ``lo < dist ≤ hi``, edges from ``config.distance_bands_um``). With
    ``config.edge_exclusion_um = E > 0`` the tissue rim with depth ``< E`` is removed from both counts and
    areas. Only cells in (the kept) tissue are counted.

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um`` and the population columns (``cell_type``, ``phenotype``)
    masks : dict zone name -> bool ndarray (Ygrid, Xgrid)
    tissue : bool ndarray (Ygrid, Xgrid)
    grid_um : float
    config : SpatialConfig
    sample_id : str

    Returns
    -------
    DataFrame
        ``sample_id, population_type, population, zone, region, n_cells, area_mm2, density_per_mm2,
        log2_enrichment``; ``population_type`` is ``all`` (every cell), ``cell_type`` or ``phenotype``.
        ``log2_enrichment`` (inside vs outside, with :data:`PSEUDOCOUNT`) is repeated on every row of a
        (population, zone). Density is NaN where the area is 0.
    """
    config = config or SpatialConfig()
    tissue = _check_masks(masks, tissue)
    r, c = cell_grid_index(cells, grid_um=grid_um, shape=tissue.shape)
    keep = tissue.copy()
    if config.edge_exclusion_um > 0:
        keep &= tissue_depth(tissue, grid_um=grid_um) >= config.edge_exclusion_um
    px_mm2 = (float(grid_um) * 1e-3) ** 2
    edges = list(config.distance_bands_um)
    bnames = band_names(edges)
    pops = _populations(cells, config)
    cell_keep = keep[r, c]
    rows: list[dict[str, Any]] = []
    for zname, m in masks.items():
        m = np.asarray(m, bool)
        d = signed_distance(m, grid_um=grid_um)
        regions = {"inside": keep & m, "outside": keep & ~m}
        for bn, lo, hi in zip(bnames, edges, edges[1:]):
            regions[bn] = keep & ~m & (d > lo) & (d <= hi)
        # region code per grid pixel is not unique (bands overlap 'outside'), so count each region separately
        cell_regions = {k: v[r, c] for k, v in regions.items()}
        areas = {k: float(v.sum()) * px_mm2 for k, v in regions.items()}
        for ptype, pname, psel in pops:
            sel = psel & cell_keep
            counts = {k: int(np.count_nonzero(sel & v)) for k, v in cell_regions.items()}
            enr = _enrichment(counts["inside"], counts["outside"], areas["inside"], areas["outside"])
            for k in regions:
                rows.append(
                    dict(sample_id=str(sample_id), population_type=ptype, population=pname, zone=zname, region=k,
                         n_cells=counts[k], area_mm2=areas[k],
                         density_per_mm2=counts[k] / areas[k] if areas[k] > 0 else float("nan"),
                         log2_enrichment=enr)
                )
    cols = ["sample_id", "population_type", "population", "zone", "region", "n_cells", "area_mm2", "density_per_mm2", "log2_enrichment"]
    return pd.DataFrame(rows, columns=cols)


def overlap_zone_names(config: SpatialConfig) -> list[str]:
    """The zones combined in :func:`zone_overlap_metrics`: ``config.overlap_zones`` or the cognate pairs' zones."""
    if config.overlap_zones is not None:
        return list(config.overlap_zones)
    return list(dict.fromkeys(p.zone for p in config.cognate_pairs))


def overlap_region_name(flags: Sequence[bool], zones: Sequence[str]) -> str:
    """``"CXCL8+ CXCL10- CCL5+"`` for the region inside CXCL8 and CCL5 and outside CXCL10."""
    return " ".join(f"{z}{'+' if f else '-'}" for z, f in zip(zones, flags))


def zone_overlap_metrics(
    cells: pd.DataFrame,
    masks: Mapping[str, np.ndarray],
    tissue: np.ndarray,
    *,
    grid_um: float,
    config: SpatialConfig | None = None,
    sample_id: str,
    zones: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Cell counts and tissue areas in every in/out combination of several zones.

    Zones that co-localise (chemokine modules induced in the same irradiated regions) confound each other:
    a CXCR2− cell that carries CXCR3 is drawn into CXCL10 zones, and so appears enriched in an overlapping
    CXCL8 zone. Counting cells per combination region (``CXCL8+ CXCL10- ...``) lets a model separate the
    zones' effects (:func:`chemozone.stats.dose_rate_test` on :func:`chemozone.stats.receptor_overlap_counts`).
    Regions, rim exclusion and cell assignment are those of :func:`infiltration_metrics`, so summing the
    rows with ``in_{zone}`` true gives its ``inside`` counts and areas exactly.

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um`` and the population columns
    masks : dict zone name -> bool ndarray (Ygrid, Xgrid)
    tissue : bool ndarray (Ygrid, Xgrid)
    grid_um : float
    config : SpatialConfig
    sample_id : str
    zones : sequence of str, optional
        Zones to combine (default :func:`overlap_zone_names`); at most :data:`MAX_OVERLAP_ZONES`.

    Returns
    -------
    DataFrame
        ``sample_id, population_type, population, region, in_{zone}`` (bool, one per zone), ``n_cells,
        area_mm2``; one row per population and region of non-zero area (counts zero-filled). Empty (with
        these columns) when no zone is named.
    """
    config = config or SpatialConfig()
    tissue = _check_masks(masks, tissue)
    names = list(zones) if zones is not None else overlap_zone_names(config)
    missing = [z for z in names if z not in masks]
    if missing:
        raise ConfigError(f"spatial.overlap_zones: zone(s) {missing} have no mask; use names from {sorted(masks)}")
    if len(names) > MAX_OVERLAP_ZONES:
        raise ConfigError(f"spatial.overlap_zones: {len(names)} zones give 2**{len(names)} regions; "
                          f"name at most {MAX_OVERLAP_ZONES}")
    cols = ["sample_id", "population_type", "population", "region"] + [f"in_{z}" for z in names] + ["n_cells", "area_mm2"]
    if not names:
        return pd.DataFrame(columns=cols)
    keep = tissue.copy()
    if config.edge_exclusion_um > 0:
        keep &= tissue_depth(tissue, grid_um=grid_um) >= config.edge_exclusion_um
    code = np.zeros(tissue.shape, np.int64)
    for i, z in enumerate(names):
        code |= np.asarray(masks[z], bool).astype(np.int64) << i
    n_codes = 1 << len(names)
    px_mm2 = (float(grid_um) * 1e-3) ** 2
    area = np.bincount(code[keep], minlength=n_codes) * px_mm2
    r, c = cell_grid_index(cells, grid_um=grid_um, shape=tissue.shape)
    cell_code = code[r, c]
    cell_keep = keep[r, c]
    present = np.nonzero(area > 0)[0]
    flags = {f"in_{z}": ((present >> i) & 1).astype(bool) for i, z in enumerate(names)}
    region = [overlap_region_name([(k >> i) & 1 for i in range(len(names))], names) for k in present]
    parts = []
    for ptype, pname, psel in _populations(cells, config):
        n = np.bincount(cell_code[psel & cell_keep], minlength=n_codes)
        parts.append(pd.DataFrame({"sample_id": str(sample_id), "population_type": ptype, "population": pname,
                                   "region": region, **flags, "n_cells": n[present].astype(np.int64),
                                   "area_mm2": area[present]}))
    return pd.concat(parts, ignore_index=True)[cols]


def _enrichment(n_in: float, n_out: float, a_in: float, a_out: float) -> float:
    if not (a_in > 0 and a_out > 0):
        return float("nan")
    p_in = PSEUDOCOUNT * a_in / (a_in + a_out)
    return float(np.log2(((n_in + p_in) / a_in) / ((n_out + PSEUDOCOUNT - p_in) / a_out)))


def cognate_specificity(
    infiltration: pd.DataFrame, *, config: SpatialConfig, cells: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Receptor+ vs receptor− cells of the same lineage in each configured zone ↔ receptor pair.

    Parameters
    ----------
    infiltration : DataFrame
        From :func:`infiltration_metrics` (one or many samples); gives the inside/outside areas, and the
        counts when ``cells`` is None (then phenotype labels are parsed: a phenotype of lineage ``L`` is
        ``L`` followed by flags; it is receptor+ when one flag is ``{receptor}+``).
    config : SpatialConfig
        ``cognate_pairs`` (zone, receptor, cell_types) and ``edge_exclusion_um``.
    cells : DataFrame, optional
        Annotated cells (:func:`annotate_cells`) with ``sample_id``, ``cell_type``, ``{receptor}_pos``,
        ``in_{zone}``, ``dist_tissue_edge_um``: counts are then taken from it exactly.

    Returns
    -------
    DataFrame
        ``sample_id, zone, receptor, cell_type, n_pos_inside, n_pos_outside, n_neg_inside, n_neg_outside,
        log2_enrichment_pos, log2_enrichment_neg, log2_specificity`` (= pos − neg, the log2 ratio of the two
        enrichments; > 0 when receptor+ cells favour the zone more than receptor− cells).
    """
    cols = ["sample_id", "zone", "receptor", "cell_type", "n_pos_inside", "n_pos_outside", "n_neg_inside",
            "n_neg_outside", "log2_enrichment_pos", "log2_enrichment_neg", "log2_specificity"]
    rows: list[dict[str, Any]] = []
    inf = infiltration
    for pair in config.cognate_pairs:
        zi = inf[(inf["zone"] == pair.zone) & (inf["population_type"] == "all")]
        if zi.empty:
            raise MissingStepError(
                f"spatial.cognate_pairs: zone '{pair.zone}' is not in the infiltration table; run infiltration_metrics with its mask"
            )
        for sid, zs in zi.groupby("sample_id", sort=True):
            a_in = float(zs.loc[zs["region"] == "inside", "area_mm2"].iloc[0])
            a_out = float(zs.loc[zs["region"] == "outside", "area_mm2"].iloc[0])
            if cells is not None:
                need = ["cell_type", f"{pair.receptor}_pos", f"in_{pair.zone}", "dist_tissue_edge_um"]
                miss = [n for n in need if n not in cells.columns]
                if miss:
                    raise MissingStepError(
                        f"cognate_specificity: cells table lacks {miss}; run phenotyping (receptor gate) and annotate_cells first"
                    )
                cs = cells[cells["sample_id"].astype(str) == str(sid)] if "sample_id" in cells.columns else cells
                depth = cs["dist_tissue_edge_um"].to_numpy(np.float64)
                cs = cs[(depth > 0) & (depth >= config.edge_exclusion_um)]  # the cells infiltration_metrics counts
                lineages = pair.cell_types or sorted(cs.loc[cs[f"{pair.receptor}_pos"].astype(bool), "cell_type"].astype(str).unique())
                for lin in lineages:
                    cl = cs[cs["cell_type"].astype(str) == lin]
                    pos = cl[f"{pair.receptor}_pos"].astype(bool).to_numpy()
                    inside = cl[f"in_{pair.zone}"].astype(bool).to_numpy()
                    n = dict(n_pos_inside=int((pos & inside).sum()), n_pos_outside=int((pos & ~inside).sum()),
                             n_neg_inside=int((~pos & inside).sum()), n_neg_outside=int((~pos & ~inside).sum()))
                    rows.append(_cognate_row(sid, pair, lin, n, a_in, a_out))
            else:
                ph = inf[(inf["sample_id"] == sid) & (inf["zone"] == pair.zone) & (inf["population_type"] == "phenotype")]
                flag = f"{pair.receptor}+"
                names = ph["population"].astype(str).unique()
                lineages = pair.cell_types or sorted({p[: -len(flag)].strip().split(" ")[0] for p in names if p.endswith(flag)} |
                                                     {p.split(f" {flag}")[0] for p in names if f" {flag}" in p})
                for lin in lineages:
                    mine = [p for p in names if p == lin or p.startswith(lin + " ")]
                    is_pos = {p: flag in p[len(lin):].split() for p in mine}
                    sub = ph[ph["population"].isin(mine)]
                    def _cnt(region: str, positive: bool) -> int:
                        s = sub[(sub["region"] == region) & sub["population"].map(lambda p: is_pos[p] == positive)]
                        return int(s["n_cells"].sum())
                    n = dict(n_pos_inside=_cnt("inside", True), n_pos_outside=_cnt("outside", True),
                             n_neg_inside=_cnt("inside", False), n_neg_outside=_cnt("outside", False))
                    rows.append(_cognate_row(sid, pair, lin, n, a_in, a_out))
    return pd.DataFrame(rows, columns=cols)


def _cognate_row(sid: Any, pair: Any, lin: str, n: dict[str, int], a_in: float, a_out: float) -> dict[str, Any]:
    ep = _enrichment(n["n_pos_inside"], n["n_pos_outside"], a_in, a_out)
    en = _enrichment(n["n_neg_inside"], n["n_neg_outside"], a_in, a_out)
    return dict(sample_id=sid, zone=pair.zone, receptor=pair.receptor, cell_type=lin, **n,
                log2_enrichment_pos=ep, log2_enrichment_neg=en, log2_specificity=ep - en)


# --------------------------------------------------------------------------- cell-cell metrics
def _xy(cells: pd.DataFrame) -> np.ndarray:
    for c in ("x_um", "y_um"):
        if c not in cells.columns:
            raise MissingStepError(f"cells table has no '{c}' column; run quantification (quantify_cells) first")
    return np.column_stack([cells["x_um"].to_numpy(np.float64), cells["y_um"].to_numpy(np.float64)])


def _labels(cells: pd.DataFrame, population: str) -> tuple[np.ndarray, list[str]]:
    if population not in cells.columns:
        raise MissingStepError(
            f"cells table has no '{population}' column; run phenotyping (phenotype_cells) first, or pass an existing column"
        )
    cat = pd.Categorical(cells[population].astype(str))
    return cat.codes.astype(np.int64), [str(c) for c in cat.categories]


def _sample_groups(cells: pd.DataFrame) -> list[np.ndarray]:
    if "sample_id" not in cells.columns:
        return [np.arange(len(cells))]
    codes = pd.factorize(cells["sample_id"])[0]
    order = np.argsort(codes, kind="stable")
    splits = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, splits)


def _locality_order(pts: np.ndarray) -> np.ndarray:
    """Order points in horizontal bands a few cell spacings high (boustrophedon), for cache-friendly queries."""
    n = len(pts)
    if n < 2:
        return np.arange(n)
    span = np.ptp(pts, axis=0)
    h = max(float(np.sqrt(max(span[0] * span[1], 1e-12) / n)) * 4.0, 1e-9)
    band = np.floor((pts[:, 1] - pts[:, 1].min()) / h).astype(np.int64)
    x = np.where(band % 2 == 0, pts[:, 0], -pts[:, 0])
    return np.lexsort((x, band))


def nearest_distances(cells: pd.DataFrame, *, population: str = "cell_type", workers: int = 1) -> pd.DataFrame:
    """Distance from every cell to the nearest *other* cell of each population (within its sample).

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um``, the ``population`` column (and ``sample_id`` when several samples)
    population : str
        Column whose values define the populations.
    workers : int
        Threads for the KD-tree queries (1 = one core).

    Returns
    -------
    DataFrame
        Same index as ``cells``, one column ``dist_nearest_{value}_um`` per population value (NaN when the
        sample has no other cell of that population), and ``nearest_{value}_cell_id`` when ``cell_id``
        exists (-1 when none).
    """
    xy = _xy(cells)
    codes, names = _labels(cells, population)
    n = len(cells)
    dist = np.full((n, len(names)), np.nan)
    nn = np.full((n, len(names)), -1, dtype=np.int64)
    for idx in _sample_groups(cells):
        idx = idx[_locality_order(xy[idx])]  # queries in spatial order are ~3x faster (cache locality)
        pts = xy[idx]
        cod = codes[idx]
        for k in range(len(names)):
            members = np.flatnonzero(cod == k)
            if members.size == 0:
                continue
            tree = cKDTree(pts[members])
            d, j = tree.query(pts, k=1, workers=workers)
            j = members[j]
            if members.size > 1:
                # members whose nearest is themselves: take the first neighbour that is not the cell
                self_hit = np.flatnonzero(j[members] == members)
                if self_hit.size:
                    q = members[self_hit]
                    d2, j2 = tree.query(pts[q], k=2, workers=workers)
                    j2 = members[j2]
                    pick = np.where(j2[:, 0] == q, 1, 0)
                    d[q] = d2[np.arange(q.size), pick]
                    j[q] = j2[np.arange(q.size), pick]
            else:
                d[members] = np.nan
                j[members] = -1
            dist[idx, k] = d
            nn[idx, k] = np.where(j >= 0, idx[np.maximum(j, 0)], -1)
    out = pd.DataFrame(dist, index=cells.index, columns=[f"dist_nearest_{v}_um" for v in names])
    if "cell_id" in cells.columns:
        ids = cells["cell_id"].to_numpy()
        for k, v in enumerate(names):
            out[f"nearest_{v}_cell_id"] = np.where(nn[:, k] >= 0, ids[np.maximum(nn[:, k], 0)], -1)
    return out


def count_within(cells: pd.DataFrame, *, population: str, source: str, target: str, radius_um: float) -> pd.DataFrame:
    """Target cells within ``radius_um`` of each source cell (phenoptr's ``count_within``).

    For each source cell, ``within`` = number of target cells (other than itself) at distance ≤
    ``radius_um``.

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um``, ``population`` (and ``sample_id`` for several samples)
    population : str
        Column holding the labels.
    source, target : str
        Label values (phenoptr's ``from`` and ``to``).
    radius_um : float

    Returns
    -------
    DataFrame
        One row per sample (a single row without ``sample_id``): ``sample_id, radius_um, source, target,
        from_count, to_count, from_with`` (source cells with at least one target within the radius),
        ``within_mean`` (mean of ``within`` over all source cells).
    """
    xy = _xy(cells)
    if population not in cells.columns:
        raise MissingStepError(f"cells table has no '{population}' column; run phenotyping first")
    lab = cells[population].astype(str).to_numpy()
    sids = cells["sample_id"].astype(str).to_numpy() if "sample_id" in cells.columns else None
    rows = []
    for idx in _sample_groups(cells):
        s = np.flatnonzero(lab[idx] == source)
        t = np.flatnonzero(lab[idx] == target)
        within = np.zeros(s.size, dtype=np.int64)
        if s.size and t.size:
            tree_t = cKDTree(xy[idx][t])
            within = np.asarray(tree_t.query_ball_point(xy[idx][s], r=radius_um, return_length=True), dtype=np.int64)
            if source == target:
                within -= 1  # the cell itself
        rows.append(
            dict(sample_id=sids[idx[0]] if sids is not None and idx.size else None, radius_um=float(radius_um),
                 source=source, target=target, from_count=int(s.size), to_count=int(t.size),
                 from_with=int((within > 0).sum()), within_mean=float(within.mean()) if s.size else float("nan"))
        )
    return pd.DataFrame(rows)


def _graph_edges(cells: pd.DataFrame, radius_um: float | None, n_neighbors: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (i, j) of the spatial graph, within samples (i != j)."""
    xy = _xy(cells)
    rows, cols = [], []
    for idx in _sample_groups(cells):
        pts = xy[idx]
        tree = cKDTree(pts)
        if n_neighbors is not None:
            k = min(int(n_neighbors) + 1, len(idx))
            _, j = tree.query(pts, k=k)
            j = np.atleast_2d(j)[:, 1:] if k > 1 else np.empty((len(idx), 0), int)
            i = np.repeat(np.arange(len(idx)), j.shape[1])
            rows.append(idx[i])
            cols.append(idx[j.ravel()])
        else:
            pairs = tree.query_pairs(float(radius_um), output_type="ndarray")
            rows += [idx[pairs[:, 0]], idx[pairs[:, 1]]]
            cols += [idx[pairs[:, 1]], idx[pairs[:, 0]]]
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def neighbourhood_enrichment(
    cells: pd.DataFrame,
    *,
    population: str,
    radius_um: float | None = None,
    n_neighbors: int | None = None,
    n_permutations: int = 200,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Neighbourhood enrichment z-scores by seeded permutation of the labels (as squidpy's ``nhood_enrichment``).

    The graph joins cells within ``radius_um`` (symmetric) or each cell to its ``n_neighbors`` nearest
    cells (directed), within each sample. ``count[a, b]`` = number of directed edges from a cell of
    population ``a`` to one of ``b``. Labels are permuted within samples ``n_permutations`` times
    (``numpy.random.default_rng(seed)``) and ``z = (count - mean_perm) / std_perm``.

    Returns
    -------
    zscore, counts : DataFrame (populations × populations)
    """
    if (radius_um is None) == (n_neighbors is None):
        raise ValueError("give exactly one of radius_um or n_neighbors")
    codes, names = _labels(cells, population)
    k = len(names)
    i, j = _graph_edges(cells, radius_um, n_neighbors)
    count = np.bincount(codes[i] * k + codes[j], minlength=k * k).reshape(k, k).astype(np.float64)
    rng = np.random.default_rng(seed)
    groups = _sample_groups(cells)
    perm_counts = np.empty((int(n_permutations), k, k))
    lab = codes.copy()
    for p in range(int(n_permutations)):
        for idx in groups:
            lab[idx] = codes[idx][rng.permutation(idx.size)]
        perm_counts[p] = np.bincount(lab[i] * k + lab[j], minlength=k * k).reshape(k, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (count - perm_counts.mean(axis=0)) / perm_counts.std(axis=0)
    return pd.DataFrame(z, index=names, columns=names), pd.DataFrame(count.astype(np.int64), index=names, columns=names)
