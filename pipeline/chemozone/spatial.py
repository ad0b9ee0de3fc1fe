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

Options are plain keywords (``distance_bands_um``, ``edge_exclusion_um``, ``populations``, ``cognate_pairs``,
``zones``); :mod:`chemozone.run` passes them from the ``spatial:`` section of the config. The cell–cell
metrics live in ``chemozone._cell_cell`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._cell_cell import count_within, nearest_distances, neighbourhood_enrichment
from .config import MAX_OVERLAP_ZONES, CognatePair
from .errors import ConfigError, MissingStepError
from .grid import cell_grid_index, iter_signed_distance, signed_distance

__all__ = [
    "PSEUDOCOUNT",
    "signed_distance",
    "tissue_depth",
    "band_names",
    "annotate_cells",
    "infiltration_metrics",
    "annotate_and_infiltrate",
    "INFILTRATION_COLUMNS",
    "cognate_specificity",
    "CALLS",
    "call_weights",
    "overlap_zone_names",
    "overlap_region_name",
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
    d = signed_distance(tissue, grid_um=grid_um)
    return np.negative(d, out=d)  # in place: a whole section's grid is 800 MB per float64 copy


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
    cg = _CellPixels(cells, grid_um=grid_um, shape=tissue.shape)
    new: dict[str, Any] = {}
    for name, m in masks.items():
        m = np.asarray(m, bool)
        new.update(_zone_columns(name, m, _sampled_distances(m, cg, grid_um=grid_um)[0], cg))
    new["dist_tissue_edge_um"] = _tissue_depth_and_keep(tissue, cg, grid_um=grid_um, edge_exclusion_um=0.0)[0]
    return _with_columns(cells, new)


def _zone_columns(name: str, m: np.ndarray, dist: np.ndarray, cg: _CellPixels) -> dict[str, np.ndarray]:
    """``in_{zone}`` and ``dist_{zone}_um`` of the cells; ``dist``: the zone's signed distance at each cell."""
    return {f"in_{name}": m[cg.r, cg.c], f"dist_{name}_um": dist}


class _CellPixels:
    """The grid pixel ``(r, c)`` of each cell (:func:`chemozone.grid.cell_grid_index`), and the cells of any band
    of grid rows (cells sorted by row once)."""

    def __init__(self, cells: pd.DataFrame, *, grid_um: float, shape: tuple[int, int]) -> None:
        self.r, self.c = cell_grid_index(cells, grid_um=grid_um, shape=shape)
        self.order = np.argsort(self.r, kind="stable")
        self.sorted_r = self.r[self.order]

    def take(self, r0: int, r1: int, sel: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = values[r_i - r0, c_i]`` for the cells ``i`` in grid rows ``r0:r1`` whose pixel is in ``sel``
        (both of shape ``(r1 - r0, X)``)."""
        i0, i1 = np.searchsorted(self.sorted_r, [r0, r1])
        idx = self.order[i0:i1]
        rr, cc = self.r[idx] - r0, self.c[idx]
        hit = sel[rr, cc]
        out[idx[hit]] = values[rr[hit], cc[hit]]


def _sampled_distances(m: np.ndarray, cg: _CellPixels, *, grid_um: float, where: np.ndarray | None = None,
                       edges: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """``signed_distance(m)`` at each cell's pixel, and the number of pixels of ``where`` outside ``m`` whose
    distance lies in each band ``(edges[k], edges[k + 1]]``, from one band of rows at a time
    (:func:`chemozone.grid.iter_signed_distance`: bit for bit the values of the whole map, without it)."""
    vals = np.empty(cg.r.size, np.float64)
    counts = np.zeros(max(0, len(edges) - 1), np.int64)
    for r0, r1, inside, sel, d in iter_signed_distance(m, grid_um=grid_um):
        cg.take(r0, r1, sel, d, vals)
        if counts.size and not inside and where is not None:
            dd = d[sel & where[r0:r1]]
            for k, (lo, hi) in enumerate(zip(edges, edges[1:])):
                counts[k] += int(np.count_nonzero((dd > lo) & (dd <= hi)))
    return vals, counts


def _tissue_depth_and_keep(tissue: np.ndarray, cg: _CellPixels | None, *, grid_um: float, edge_exclusion_um: float
                           ) -> tuple[np.ndarray | None, np.ndarray]:
    """:func:`tissue_depth` at each cell (None without ``cg``), and the tissue without the rim of depth
    ``< edge_exclusion_um`` (all tissue when 0), from one pass of the tissue's distances, a band of rows at a time."""
    keep = tissue.copy()
    if cg is None and not edge_exclusion_um > 0:
        return None, keep
    depth = None if cg is None else np.empty(cg.r.size, np.float64)
    for r0, r1, inside, sel, d in iter_signed_distance(tissue, grid_um=grid_um):
        np.negative(d, out=d)  # depth = -signed distance, as tissue_depth
        if cg is not None:
            cg.take(r0, r1, sel, d, depth)
        if edge_exclusion_um > 0 and inside:
            keep[r0:r1] &= ~sel | (d >= edge_exclusion_um)
    return depth, keep


def _with_columns(cells: pd.DataFrame, new: Mapping[str, Any]) -> pd.DataFrame:
    out = cells.copy(deep=False)  # new columns go to the copy only; the input's columns are not written
    for k, v in new.items():
        out[k] = v
    return out


# ------------------------------------------------------------------------------- infiltration
POPULATIONS = ("cell_type", "phenotype")
"""Default population columns of :func:`infiltration_metrics` and :func:`zone_overlap_metrics`."""


def _populations(cells: pd.DataFrame, populations: Sequence[str]) -> list[tuple[str, str, np.ndarray]]:
    pops: list[tuple[str, str, np.ndarray]] = [("all", "all", np.ones(len(cells), bool))]
    for ptype in populations:
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
    sample_id: str,
    distance_bands_um: Sequence[float],
    edge_exclusion_um: float = 0.0,
    populations: Sequence[str] = POPULATIONS,
) -> pd.DataFrame:
    """Cell counts, tissue areas and densities per population, zone and region.

    Regions: ``inside`` (zone ∩ tissue), ``outside`` (tissue − zone) and ``band_{lo}_{hi}_um`` (tissue
    outside the zone with ``lo < dist ≤ hi``, edges from ``distance_bands_um``). With
    ``edge_exclusion_um = E > 0`` the tissue rim with depth ``< E`` is removed from both counts and
    areas. Only cells in (the kept) tissue are counted.

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um`` and the population columns (``cell_type``, ``phenotype``)
    masks : dict zone name -> bool ndarray (Ygrid, Xgrid)
    tissue : bool ndarray (Ygrid, Xgrid)
    grid_um : float
    sample_id : str
    distance_bands_um : sequence of float
        Increasing edges of the distance bands outside each zone (µm), e.g. ``[0, 25, 50, 100, 200]``.
    edge_exclusion_um : float
        Depth of the tissue rim left out (µm; 0 = off).
    populations : sequence of {"cell_type", "phenotype"}
        Columns whose values are counted as populations (besides ``all``).

    Returns
    -------
    DataFrame
        ``sample_id, population_type, population, zone, region, n_cells, area_mm2, density_per_mm2,
        log2_enrichment``; ``population_type`` is ``all`` (every cell), ``cell_type`` or ``phenotype``.
        ``log2_enrichment`` (inside vs outside, with :data:`PSEUDOCOUNT`) is repeated on every row of a
        (population, zone). Density is NaN where the area is 0.

    Examples
    --------
    >>> tissue = np.ones((1, 4), bool); zone = np.array([[True, True, False, False]])
    >>> cells = pd.DataFrame({"x_um": [0.5, 1.5, 2.5], "y_um": [0.5, 0.5, 0.5]})
    >>> df = infiltration_metrics(cells, {"Z": zone}, tissue, grid_um=1.0, sample_id="s",
    ...                           distance_bands_um=[0, 1], populations=[])
    >>> df[["region", "n_cells", "area_mm2"]].values.tolist()
    [['inside', 2, 2e-06], ['outside', 1, 2e-06], ['band_0_1_um', 1, 1e-06]]
    """
    return annotate_and_infiltrate(cells, masks, tissue, grid_um=grid_um, sample_id=sample_id,
                                   distance_bands_um=distance_bands_um, edge_exclusion_um=edge_exclusion_um,
                                   populations=populations)[1]


INFILTRATION_COLUMNS = ["sample_id", "population_type", "population", "zone", "region", "n_cells", "area_mm2",
                        "density_per_mm2", "log2_enrichment"]
"""Columns of :func:`infiltration_metrics`."""


def annotate_and_infiltrate(
    cells: pd.DataFrame,
    masks: Mapping[str, np.ndarray],
    tissue: np.ndarray,
    *,
    grid_um: float,
    sample_id: str,
    distance_bands_um: Sequence[float],
    edge_exclusion_um: float = 0.0,
    populations: Sequence[str] = POPULATIONS,
    n_threads: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`annotate_cells` and :func:`infiltration_metrics` in one pass over the zones.

    Each zone's signed distances are computed once, for both, one band of rows at a time: only the cells' values
    and the distance bands' pixel counts are kept, never a whole float map (a whole section's grid has 10⁸
    pixels; :func:`chemozone.grid.iter_signed_distance`). Same results, bit for bit, as calling the two in turn
    (parameters as there).

    Parameters
    ----------
    n_threads : int
        Zones computed at a time (the distance transform releases the GIL). Each adds about 3 bytes per grid pixel
        (:func:`chemozone.grid.iter_signed_distance`) and a band of rows; the runner passes the worker threads the
        other samples leave idle (:func:`chemozone.scheduler.spare_threads`: 1 when every worker has a sample).

    Returns
    -------
    cells : DataFrame
        As :func:`annotate_cells` returns it.
    infiltration : DataFrame
        As :func:`infiltration_metrics` returns it.

    Examples
    --------
    >>> tissue = np.ones((1, 4), bool); zone = np.array([[True, True, False, False]])
    >>> cells = pd.DataFrame({"x_um": [0.5, 1.5, 2.5], "y_um": [0.5, 0.5, 0.5]})
    >>> ann, inf = annotate_and_infiltrate(cells, {"Z": zone}, tissue, grid_um=1.0, sample_id="s",
    ...                                    distance_bands_um=[0, 1], populations=[])
    >>> ann["dist_Z_um"].tolist(), inf["n_cells"].tolist()
    ([-1.5, -0.5, 0.5], [2, 1, 1])
    """
    if int(n_threads) < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    tissue = _check_masks(masks, tissue)
    cg = _CellPixels(cells, grid_um=grid_um, shape=tissue.shape)
    cell_depth, keep = _tissue_depth_and_keep(tissue, cg, grid_um=grid_um, edge_exclusion_um=edge_exclusion_um)
    edges = list(distance_bands_um)
    pops = _populations(cells, populations)

    def one_zone(item):
        zname, m = item
        m = np.asarray(m, bool)
        dist, band_px = _sampled_distances(m, cg, grid_um=grid_um, where=keep, edges=edges)
        rows = _zone_infiltration(str(sample_id), zname, m, dist, band_px, keep, cg, pops, edges, grid_um=grid_um)
        return _zone_columns(zname, m, dist, cg), rows

    items = list(masks.items())
    if int(n_threads) > 1 and len(items) > 1:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        with ThreadPoolExecutor(min(int(n_threads), len(items))) as pool:
            results = list(pool.map(one_zone, items))  # in the zones' order
    else:
        results = [one_zone(it) for it in items]
    new: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for cols, zrows in results:
        new.update(cols)
        rows += zrows
    new["dist_tissue_edge_um"] = cell_depth
    return _with_columns(cells, new), pd.DataFrame(rows, columns=INFILTRATION_COLUMNS)


def _zone_infiltration(sid: str, zname: str, m: np.ndarray, dist: np.ndarray, band_px: np.ndarray, keep: np.ndarray,
                       cg: _CellPixels, pops, edges: Sequence[float], *, grid_um: float) -> list[dict[str, Any]]:
    """:func:`infiltration_metrics`'s rows of one zone; ``dist``: its signed distance at each cell, ``band_px``:
    the kept pixels outside it in each distance band."""
    px_mm2 = (float(grid_um) * 1e-3) ** 2
    r, c = cg.r, cg.c
    cell_keep = keep[r, c]
    # region code per grid pixel is not unique (bands overlap 'outside'), so count each region separately
    cell_regions, areas = {}, {}
    for k, (cell_in, n_px) in _regions(m, keep, band_names(edges), edges, dist, band_px, r, c):
        cell_regions[k] = cell_in
        areas[k] = float(n_px) * px_mm2
    rows = []
    for ptype, pname, psel in pops:
        sel = psel & cell_keep
        counts = {k: int(np.count_nonzero(sel & v)) for k, v in cell_regions.items()}
        enr = _enrichment(counts["inside"], counts["outside"], areas["inside"], areas["outside"])
        for k in cell_regions:
            rows.append(
                dict(sample_id=sid, population_type=ptype, population=pname, zone=zname, region=k,
                     n_cells=counts[k], area_mm2=areas[k],
                     density_per_mm2=counts[k] / areas[k] if areas[k] > 0 else float("nan"),
                     log2_enrichment=enr)
            )
    return rows


def _regions(m: np.ndarray, keep: np.ndarray, bnames: Sequence[str], edges: Sequence[float], dist: np.ndarray,
             band_px: np.ndarray, r: np.ndarray, c: np.ndarray):
    """``(name, (whether each cell is in it, its kept pixels))`` of ``inside``, ``outside`` and each distance band
    of a zone (``dist``: the zone's signed distance at each cell)."""
    in_m = m[r, c]
    yield "inside", (in_m, np.count_nonzero(keep & m))
    yield "outside", (~in_m, np.count_nonzero(keep & ~m))
    for k, (bn, lo, hi) in enumerate(zip(bnames, edges, edges[1:])):
        yield bn, ((dist > lo) & (dist <= hi) & ~in_m, band_px[k])


def overlap_zone_names(*, overlap_zones: Sequence[str] | None, cognate_pairs: Sequence[CognatePair]) -> list[str]:
    """The zones combined in :func:`zone_overlap_metrics`: ``overlap_zones`` when set, else the cognate pairs' zones.

    Examples
    --------
    >>> pairs = [CognatePair(zone="CXCL8", receptor="CXCR2"), CognatePair(zone="CXCL8", receptor="CXCR1")]
    >>> overlap_zone_names(overlap_zones=None, cognate_pairs=pairs), overlap_zone_names(overlap_zones=[], cognate_pairs=pairs)
    (['CXCL8'], [])
    """
    if overlap_zones is not None:
        return list(overlap_zones)
    return list(dict.fromkeys(p.zone for p in cognate_pairs))


def overlap_region_name(flags: Sequence[bool], zones: Sequence[str]) -> str:
    """``"CXCL8+ CXCL10- CCL5+"`` for the region inside CXCL8 and CCL5 and outside CXCL10."""
    return " ".join(f"{z}{'+' if f else '-'}" for z, f in zip(zones, flags))


def zone_overlap_metrics(
    cells: pd.DataFrame,
    masks: Mapping[str, np.ndarray],
    tissue: np.ndarray,
    *,
    grid_um: float,
    sample_id: str,
    zones: Sequence[str],
    edge_exclusion_um: float = 0.0,
    populations: Sequence[str] = POPULATIONS,
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
    sample_id : str
    zones : sequence of str
        Zones to combine (the run uses :func:`overlap_zone_names`); at most :data:`MAX_OVERLAP_ZONES`.
    edge_exclusion_um : float
        Depth of the tissue rim left out (µm; 0 = off), as in :func:`infiltration_metrics`.
    populations : sequence of {"cell_type", "phenotype"}
        As in :func:`infiltration_metrics`.

    Returns
    -------
    DataFrame
        ``sample_id, population_type, population, region, in_{zone}`` (bool, one per zone), ``n_cells,
        area_mm2``; one row per population and region of non-zero area (counts zero-filled). Empty (with
        these columns) when no zone is named.
    """
    tissue = _check_masks(masks, tissue)
    names = list(zones)
    missing = [z for z in names if z not in masks]
    if missing:
        raise ConfigError(f"spatial.overlap_zones: zone(s) {missing} have no mask; use names from {sorted(masks)}")
    if len(names) > MAX_OVERLAP_ZONES:
        raise ConfigError(f"spatial.overlap_zones: {len(names)} zones give 2**{len(names)} regions; "
                          f"name at most {MAX_OVERLAP_ZONES}")
    cols = ["sample_id", "population_type", "population", "region"] + [f"in_{z}" for z in names] + ["n_cells", "area_mm2"]
    if not names:
        return pd.DataFrame(columns=cols)
    keep = _tissue_depth_and_keep(tissue, None, grid_um=grid_um, edge_exclusion_um=edge_exclusion_um)[1]
    # each pixel's combination as bits; the smallest integer that holds them, pixels counted a band of rows at a
    # time (a whole section's grid has 10⁸ pixels: int64 codes and bincount's int64 copy were 1.5 GB)
    code = np.zeros(tissue.shape, np.min_scalar_type((1 << len(names)) - 1))
    for i, z in enumerate(names):
        code[np.asarray(masks[z], bool)] |= code.dtype.type(1 << i)
    n_codes = 1 << len(names)
    px_mm2 = (float(grid_um) * 1e-3) ** 2
    counts = np.zeros(n_codes, np.int64)
    for r0 in range(0, code.shape[0], 512):
        counts += np.bincount(code[r0:r0 + 512][keep[r0:r0 + 512]], minlength=n_codes)
    area = counts * px_mm2
    r, c = cell_grid_index(cells, grid_um=grid_um, shape=tissue.shape)
    cell_code = code[r, c]
    cell_keep = keep[r, c]
    present = np.nonzero(area > 0)[0]
    flags = {f"in_{z}": ((present >> i) & 1).astype(bool) for i, z in enumerate(names)}
    region = [overlap_region_name([(k >> i) & 1 for i in range(len(names))], names) for k in present]
    parts = []
    for ptype, pname, psel in _populations(cells, populations):
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


CALLS = ("hard", "soft")
"""How receptor status enters :func:`cognate_specificity`: ``hard`` counts ``{receptor}_pos`` cells, ``soft``
sums ``{receptor}_prob`` (expected counts)."""


def call_weights(cells: pd.DataFrame, receptor: str, *, calls: str = "hard") -> np.ndarray:
    """Each cell's weight as receptor+: its hard call (0/1) or its probability (``calls="soft"``).

    Receptor+ expected count = Σ weight, receptor− = Σ (1 − weight); with probabilities in {0, 1} the soft
    counts equal the hard ones exactly.

    Parameters
    ----------
    cells : DataFrame with ``{receptor}_pos`` (hard) or ``{receptor}_prob`` (soft, floats in [0, 1])
    receptor : str
    calls : {"hard", "soft"}

    Returns
    -------
    ndarray of float, shape (n_cells,)

    Examples
    --------
    >>> cells = pd.DataFrame({"CXCR2_pos": [True, False], "CXCR2_prob": [0.9, 0.2]})
    >>> call_weights(cells, "CXCR2").tolist(), call_weights(cells, "CXCR2", calls="soft").tolist()
    ([1.0, 0.0], [0.9, 0.2])
    """
    if calls not in CALLS:
        raise ConfigError(f"spatial.calls: must be one of {list(CALLS)}, got {calls!r}")
    col = f"{receptor}_pos" if calls == "hard" else f"{receptor}_prob"
    if col not in cells.columns:
        what = ("run phenotyping (receptor gate)" if calls == "hard"
                else "train a classifier that writes it, or set spatial.calls: hard")
        raise MissingStepError(f"cells table has no '{col}' column (spatial.calls: {calls}); {what}")
    w = cells[col].to_numpy(np.float64)
    if calls == "soft" and not (np.all(np.isfinite(w)) and np.all((w >= 0) & (w <= 1))):
        raise ValueError(f"cells column '{col}' must hold probabilities in [0, 1] (no NaN)")
    return w


def _cognate_counts_from_cells(
    cells: pd.DataFrame, sid: Any, pair: CognatePair, *, edge_exclusion_um: float, calls: str = "hard"
) -> list[tuple[str, dict[str, float]]]:
    """``(lineage, counts)`` of one sample and pair from annotated cells: exact counts (hard) or expected (soft)."""
    need = ["cell_type", f"in_{pair.zone}", "dist_tissue_edge_um"]
    miss = [n for n in need if n not in cells.columns]
    if miss:
        raise MissingStepError(
            f"cognate_specificity: cells table lacks {miss}; run phenotyping (receptor gate) and annotate_cells first"
        )
    used = {*need, "sample_id", f"{pair.receptor}_pos", f"{pair.receptor}_prob"}
    cs = cells[[c for c in cells.columns if c in used]]  # the row selections below copy only these columns
    cs = cs[cs["sample_id"].astype(str) == str(sid)] if "sample_id" in cs.columns else cs
    depth = cs["dist_tissue_edge_um"].to_numpy(np.float64)
    cs = cs[(depth > 0) & (depth >= edge_exclusion_um)]  # the cells infiltration_metrics counts
    w_all = call_weights(cs, pair.receptor, calls=calls)
    lineages = pair.cell_types or sorted(cs.loc[w_all > (0.5 if calls == "soft" else 0), "cell_type"]
                                         .astype(str).unique())
    ct = cs["cell_type"].astype(str).to_numpy()
    inside_all = cs[f"in_{pair.zone}"].astype(bool).to_numpy()
    cast = int if calls == "hard" else float
    out = []
    for lin in lineages:
        sel = ct == lin
        w, inside = w_all[sel], inside_all[sel]
        out.append((lin, dict(n_pos_inside=cast(w[inside].sum()), n_pos_outside=cast(w[~inside].sum()),
                              n_neg_inside=cast((1 - w[inside]).sum()), n_neg_outside=cast((1 - w[~inside]).sum()))))
    return out


def _cognate_counts_from_phenotypes(
    infiltration: pd.DataFrame, sid: Any, pair: CognatePair
) -> list[tuple[str, dict[str, int]]]:
    """``(lineage, counts)`` of one sample and pair, parsed from the phenotype rows of the infiltration table."""
    inf = infiltration
    ph = inf[(inf["sample_id"] == sid) & (inf["zone"] == pair.zone) & (inf["population_type"] == "phenotype")]
    flag = f"{pair.receptor}+"
    names = ph["population"].astype(str).unique()
    lineages = pair.cell_types or sorted({p[: -len(flag)].strip().split(" ")[0] for p in names if p.endswith(flag)} |
                                         {p.split(f" {flag}")[0] for p in names if f" {flag}" in p})
    out = []
    for lin in lineages:
        mine = [p for p in names if p == lin or p.startswith(lin + " ")]
        is_pos = {p: flag in p[len(lin):].split() for p in mine}
        sub = ph[ph["population"].isin(mine)]

        def _cnt(region: str, positive: bool) -> int:
            s = sub[(sub["region"] == region) & sub["population"].map(lambda p: is_pos[p] == positive)]
            return int(s["n_cells"].sum())

        out.append((lin, dict(n_pos_inside=_cnt("inside", True), n_pos_outside=_cnt("outside", True),
                              n_neg_inside=_cnt("inside", False), n_neg_outside=_cnt("outside", False))))
    return out


def cognate_specificity(
    infiltration: pd.DataFrame,
    *,
    cognate_pairs: Sequence[CognatePair],
    edge_exclusion_um: float = 0.0,
    cells: pd.DataFrame | None = None,
    calls: str = "hard",
) -> pd.DataFrame:
    """Receptor+ vs receptor− cells of the same lineage in each zone ↔ receptor pair.

    Parameters
    ----------
    infiltration : DataFrame
        From :func:`infiltration_metrics` (one or many samples); gives the inside/outside areas, and the
        counts when ``cells`` is None (then phenotype labels are parsed: a phenotype of lineage ``L`` is
        ``L`` followed by flags; it is receptor+ when one flag is ``{receptor}+``).
    cognate_pairs : sequence of CognatePair
        The pair definitions (``zone``, ``receptor``, ``cell_types``; empty ``cell_types`` = every lineage
        with receptor+ cells), as in the config's ``spatial.cognate_pairs`` list.
    edge_exclusion_um : float
        The rim depth left out by :func:`infiltration_metrics` (µm); used with ``cells`` so that the same
        cells are counted.
    cells : DataFrame, optional
        Annotated cells (:func:`annotate_cells`) with ``sample_id``, ``cell_type``, ``{receptor}_pos``,
        ``in_{zone}``, ``dist_tissue_edge_um``: counts are then taken from it exactly.
    calls : {"hard", "soft"}
        With ``cells``: ``hard`` counts the ``{receptor}_pos`` calls; ``soft`` uses expected counts from a
        classifier's ``{receptor}_prob`` (receptor+ = Σ p, receptor− = Σ (1 − p); float counts; lineages
        default to those with a cell of p > 0.5). ``soft`` needs ``cells``.

    Returns
    -------
    DataFrame
        ``sample_id, zone, receptor, cell_type, n_pos_inside, n_pos_outside, n_neg_inside, n_neg_outside,
        log2_enrichment_pos, log2_enrichment_neg, log2_specificity`` (= pos − neg, the log2 ratio of the two
        enrichments; > 0 when receptor+ cells favour the zone more than receptor− cells).

    Examples
    --------
    >>> inf = pd.DataFrame({"sample_id": "s", "population_type": "all", "zone": "Z",
    ...                     "region": ["inside", "outside"], "area_mm2": [1.0, 1.0]})
    >>> cells = pd.DataFrame({"cell_type": "NK", "in_Z": [True, True, False, False], "dist_tissue_edge_um": 10.0,
    ...                       "CXCR2_prob": [0.9, 0.6, 0.2, 0.1], "CXCR2_pos": [True, True, False, False]})
    >>> pair = CognatePair(zone="Z", receptor="CXCR2", cell_types=["NK"])
    >>> r = cognate_specificity(inf, cognate_pairs=[pair], cells=cells, calls="soft").iloc[0]
    >>> [round(float(r[k]), 2) for k in ("n_pos_inside", "n_pos_outside", "n_neg_inside", "n_neg_outside")]
    [1.5, 0.3, 0.5, 1.7]
    """
    if calls not in CALLS:
        raise ConfigError(f"spatial.calls: must be one of {list(CALLS)}, got {calls!r}")
    if calls == "soft" and cells is None:
        raise MissingStepError("cognate_specificity(calls='soft') needs the annotated cells table (cells=...)")
    cols = ["sample_id", "zone", "receptor", "cell_type", "n_pos_inside", "n_pos_outside", "n_neg_inside",
            "n_neg_outside", "log2_enrichment_pos", "log2_enrichment_neg", "log2_specificity"]
    rows: list[dict[str, Any]] = []
    inf = infiltration
    for pair in cognate_pairs:
        zi = inf[(inf["zone"] == pair.zone) & (inf["population_type"] == "all")]
        if zi.empty:
            raise MissingStepError(
                f"spatial.cognate_pairs: zone '{pair.zone}' is not in the infiltration table; "
                "run infiltration_metrics with its mask"
            )
        for sid, zs in zi.groupby("sample_id", sort=True):
            a_in = float(zs.loc[zs["region"] == "inside", "area_mm2"].iloc[0])
            a_out = float(zs.loc[zs["region"] == "outside", "area_mm2"].iloc[0])
            if cells is not None:
                counts = _cognate_counts_from_cells(cells, sid, pair, edge_exclusion_um=edge_exclusion_um,
                                                    calls=calls)
            else:
                counts = _cognate_counts_from_phenotypes(inf, sid, pair)
            rows += [_cognate_row(sid, pair, lin, n, a_in, a_out) for lin, n in counts]
    return pd.DataFrame(rows, columns=cols)


def _cognate_row(sid: Any, pair: Any, lin: str, n: dict[str, float], a_in: float, a_out: float) -> dict[str, Any]:
    ep = _enrichment(n["n_pos_inside"], n["n_pos_outside"], a_in, a_out)
    en = _enrichment(n["n_neg_inside"], n["n_neg_outside"], a_in, a_out)
    return dict(sample_id=sid, zone=pair.zone, receptor=pair.receptor, cell_type=lin, **n,
                log2_enrichment_pos=ep, log2_enrichment_neg=en, log2_specificity=ep - en)
