"""Synthetic fixtures shared by the tests, notebooks and benchmarks: a fabricated run folder with known truth.

:func:`fabricate_run` writes ``run.json`` and the per-sample and cohort tables of a run folder (DESIGN.md's
run-folder contract) directly, without the runner, from Emax curves with patient random effects and noise,
so that :mod:`chemozone.stats`, the report, the export and the notebooks can be checked against the truth::

    from chemozone.testing import TRUTH, fabricate_run
    info = fabricate_run(tmp_path / "run", n_patients=5, seed=1)
    run = chemozone.stats.load_run(info["out"])

Truth (module constants, also returned by :func:`fabricate_run`)
---------------------------------------------------------------
* zone ``CXCL8``: area fraction 0.02 + 0.30·cons·D/(ED50+D), ED50 = 3 Gy (× patient factor), photon cons 1,
  carbon 0.8, on the effective dose; zone ``CXCL10``: 0.02 + 0.20·cons·D/(5+D), carbon cons 0.5
  (:data:`TRUTH`; effective dose = :data:`EFFECTIVENESS` [radiation] × dose).
* ``NK CXCR2+`` density inside CXCL8: 5 + 40·H_A (plateau); ``NK`` (CXCR2−) flat 10/mm² everywhere.
* ``CD8_T CXCR3+`` inside CXCL10: 5 + 30·H_B; ``CD8_T`` flat.
* tumor cells: module A = CXCL8 + CXCL1 co-expressed, module B = CXCL10 + CXCL9, CCL20 alone
  (:data:`CHEMOKINES`).
* every patient gets every arm of :data:`ARMS`; channels :data:`MARKERS`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .layout import RunLayout, atomic_write_json, write_parquet

__all__ = ["ARMS", "CHEMOKINES", "EFFECTIVENESS", "MARKERS", "TRUTH", "fabricate_run"]

#: Relative effectiveness per radiation type (the fabricated run's ``config.stats.effectiveness``).
EFFECTIVENESS = {"photon": 1.0, "proton": 1.1, "carbon": 2.5}
#: ``(radiation, dose_gy)`` of the samples of every patient (two 0 Gy shams, photon and carbon doses).
ARMS = [("sham_linac", 0.0), ("photon", 2.0), ("photon", 5.0), ("photon", 10.0), ("photon", 20.0),
        ("sham_hit", 0.0), ("carbon", 2.0), ("carbon", 5.0), ("carbon", 10.0)]
#: Per zone: ``base + amp · cons[radiation] · D / (ed50 + D)`` on the effective dose D.
TRUTH = {
    "CXCL8": {"base": 0.02, "amp": 0.30, "ed50": 3.0, "cons": {"photon": 1.0, "carbon": 0.8}},
    "CXCL10": {"base": 0.02, "amp": 0.20, "ed50": 5.0, "cons": {"photon": 1.0, "carbon": 0.5}},
}
#: Channels of the fabricated panel (``{marker}_cell`` intensities in the cells table).
MARKERS = ["DAPI", "PanCK", "CD3", "CD8", "CD56", "CXCR2", "CXCR3", "CXCL8", "CXCL1", "CXCL10", "CXCL9", "CCL20"]
#: Chemokine markers gated on tumor cells (``{marker}_pos``).
CHEMOKINES = ["CXCL8", "CXCL1", "CXCL10", "CXCL9", "CCL20"]


def _h(deff: float, ed50: float) -> float:
    return deff / (ed50 + deff)


def fabricate_run(out, *, n_patients: int = 4, seed: int = 0, n_failed: int = 1, with_images: int = 0,
                  cells_per_sample: int = 240, noise: float = 0.01) -> dict:
    """Write a fabricated run folder with known dose-response truth (see the module docstring).

    Parameters
    ----------
    out : path
        The run folder to write (created).
    n_patients : int
        Patients ``P01, P02, ...``; each gets one sample per arm of :data:`ARMS`.
    seed : int
        Seed of every random draw (same seed, same folder).
    n_failed : int
        Samples marked ``failed`` in ``run.json`` (no tables written for them): the 4th sample of the
        first ``n_failed`` patients.
    with_images : int
        Also write tiny OME-TIFF images and ``masks.ome.zarr`` (nuclei, cells, tissue, ``zone_CXCL8``) for the
        first ``with_images`` done samples.
    cells_per_sample : int
        Cells per sample in the cells table (half tumor cells).
    noise : float
        Standard deviation of the additive noise on the zone area fractions.

    Returns
    -------
    dict
        ``truth`` (:data:`TRUTH`), ``effectiveness`` (:data:`EFFECTIVENESS`), ``samples`` (the sample sheet,
        DataFrame), ``failed`` (sample ids), ``pat_ed50`` (patient ED50 factors), ``out`` (Path).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     info = fabricate_run(Path(tmp) / "run", n_patients=1, cells_per_sample=20)
    ...     written = sorted(p.name for p in (Path(tmp) / "run").glob("*.parquet"))
    >>> len(info["samples"]), info["failed"]
    (9, ['P01_photon_10Gy'])
    >>> written
    ['cells.parquet', 'gates.parquet', 'infiltration.parquet', 'samples.parquet', 'zones.parquet']
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    lay = RunLayout(out)
    samples, pat_ed50, pat_mult = _sample_sheet(n_patients, rng)
    failed = list(samples["sample_id"].iloc[[3 + 9 * i for i in range(n_failed)]]) if n_failed else []
    tissue_mm2 = 0.25
    zones_rows, inf_rows, cells_all, gates_rows = [], [], [], []
    status = {}
    for _, s in samples.iterrows():
        sid, pid, rad, dose = s["sample_id"], s["patient"], s["radiation"], float(s["dose_gy"])
        if sid in failed:
            status[sid] = {"status": "failed", "error": "SegmentationError: fabricated failure for the report",
                           "timings_s": {}, "peak_rss_mb": 100.0}
            continue
        deff = dose * EFFECTIVENESS.get(rad, 0.0)
        frac = _zone_fractions(rad, deff, pat_ed50[pid], noise, rng)
        zdf = _zones_table(sid, frac, tissue_mm2)
        hA = _h(deff, TRUTH["CXCL8"]["ed50"] * pat_ed50[pid]) * TRUTH["CXCL8"]["cons"].get(rad, 1.0)
        hB = _h(deff, TRUTH["CXCL10"]["ed50"] * pat_ed50[pid]) * TRUTH["CXCL10"]["cons"].get(rad, 1.0)
        idf = _infiltration_table(sid, frac, hA, hB, pat_mult[pid], tissue_mm2, rng)
        cells = _cells_table(sid, cells_per_sample, hA, hB, deff, frac, rng)
        write_parquet(cells, lay.cells(sid))
        write_parquet(zdf, lay.zones(sid))
        write_parquet(idf, lay.infiltration(sid))
        meta = s.drop(labels=["image"]).to_dict()
        for df_, acc in ((cells, cells_all), (zdf, zones_rows), (idf, inf_rows)):
            acc.append(df_.assign(**{k: v for k, v in meta.items() if k != "sample_id"}))
        for m in MARKERS:
            gates_rows.append({"sample_id": sid, "marker": m, "threshold": float(np.arcsinh(np.exp(5.8) / 50)),
                               "method": "pooled", "transform": "arcsinh", "cofactor": 50.0, "warning": ""})
        status[sid] = {"status": "done", "error": None, "timings_s": {"total": 1.0}, "peak_rss_mb": 300.0}
    inputs = {}
    if with_images:
        _write_images(out, samples, status, with_images, rng, inputs)
    write_parquet(pd.concat(cells_all, ignore_index=True), lay.cohort_cells)
    write_parquet(pd.concat(zones_rows, ignore_index=True), lay.cohort_zones)
    write_parquet(pd.concat(inf_rows, ignore_index=True), lay.cohort_infiltration)
    write_parquet(pd.DataFrame(gates_rows), lay.gates)
    write_parquet(samples, lay.cohort_samples)
    atomic_write_json(lay.run_json, _run_json(status, inputs, failed))
    return {"truth": TRUTH, "effectiveness": EFFECTIVENESS, "samples": samples, "failed": failed,
            "pat_ed50": pat_ed50, "out": out}


def _sample_sheet(n_patients: int, rng: np.random.Generator
                  ) -> tuple[pd.DataFrame, dict[str, float], dict[str, float]]:
    """The sample sheet (every arm of :data:`ARMS` per patient), patient ED50 factors and abundance factors."""
    samples = []
    pat_ed50 = {}
    pat_mult = {}
    for p in range(n_patients):
        pid = f"P{p + 1:02d}"
        pat_ed50[pid] = float(np.exp(rng.normal(0, 0.1)))
        pat_mult[pid] = float(np.exp(rng.normal(0, 0.3)))
        for rad, dose in ARMS:
            sid = f"{pid}_{rad}_{dose:g}Gy"
            samples.append({"sample_id": sid, "image": f"{sid}.ome.tif", "patient": pid, "radiation": rad,
                            "dose_gy": dose, "replicate": 1})
    return pd.DataFrame(samples), pat_ed50, pat_mult


def _zone_fractions(rad: str, deff: float, ed50_factor: float, noise: float, rng: np.random.Generator
                    ) -> dict[str, float]:
    """Area fraction of each :data:`TRUTH` zone at effective dose ``deff`` (with noise, clipped to 0.001–0.95)."""
    frac = {}
    for z, t in TRUTH.items():
        cons = t["cons"].get(rad, 1.0)
        frac[z] = float(np.clip(t["base"] + t["amp"] * cons * _h(deff, t["ed50"] * ed50_factor)
                                + rng.normal(0, noise), 0.001, 0.95))
    return frac


def _zones_table(sid: str, frac: dict[str, float], tissue_mm2: float) -> pd.DataFrame:
    """One sample's zones table (one row per zone)."""
    zrows = []
    for z in TRUTH:
        zrows.append({"sample_id": sid, "zone": z, "source": "pixels", "channels": z,
                      "threshold_used": 0.5, "area_mm2": frac[z] * tissue_mm2, "tissue_area_mm2": tissue_mm2,
                      "area_fraction": frac[z]})
    return pd.DataFrame(zrows)


def _infiltration_table(sid: str, frac: dict[str, float], hA: float, hB: float, mult: float, tissue_mm2: float,
                        rng: np.random.Generator) -> pd.DataFrame:
    """One sample's infiltration table: phenotype counts inside/outside each zone, then their cell-type sums."""
    dens = {  # (zone, population) -> (inside, outside) cells/mm2
        ("CXCL8", "NK CXCR2+"): (5 + 40 * hA, 5.0), ("CXCL8", "NK"): (10.0, 10.0),
        ("CXCL8", "CD8_T CXCR3+"): (8.0, 8.0), ("CXCL8", "CD8_T"): (12.0, 12.0),
        ("CXCL10", "NK CXCR2+"): (5.0, 5.0), ("CXCL10", "NK"): (10.0, 10.0),
        ("CXCL10", "CD8_T CXCR3+"): (5 + 30 * hB, 8.0), ("CXCL10", "CD8_T"): (12.0, 12.0),
    }
    irows = []
    for (z, pop), (din, dout) in dens.items():
        a_in = frac[z] * tissue_mm2
        a_out = tissue_mm2 - a_in
        for region, dd, a in (("inside", din, a_in), ("outside", dout, a_out)):
            # expected counts (scaled up 40x so the per-sample noise is small) with Poisson noise
            n = int(rng.poisson(dd * mult * a * 40))
            irows.append({"sample_id": sid, "population_type": "phenotype", "population": pop, "zone": z,
                          "region": region, "n_cells": n, "area_mm2": a * 40, "density_per_mm2": n / (a * 40)})
    for z in TRUTH:
        for ct in ("NK", "CD8_T"):
            sub = [r for r in irows if r["zone"] == z and r["population"].split()[0] == ct]
            for region in ("inside", "outside"):
                rr = [r for r in sub if r["region"] == region]
                n = sum(r["n_cells"] for r in rr)
                irows.append({"sample_id": sid, "population_type": "cell_type", "population": ct, "zone": z,
                              "region": region, "n_cells": n, "area_mm2": rr[0]["area_mm2"],
                              "density_per_mm2": n / rr[0]["area_mm2"]})
    return pd.DataFrame(irows)


def _cells_table(sid: str, n: int, hA: float, hB: float, deff: float, frac: dict[str, float],
                 rng: np.random.Generator) -> pd.DataFrame:
    """One sample's cells table: half tumor cells (chemokine modules A, B, CCL20), NK / CD8_T / macrophages."""
    n_t = n // 2
    x = rng.uniform(0, 500, n)
    y = rng.uniform(0, 500, n)
    ct = np.array(["Tumor_other"] * n_t + list(rng.choice(["NK", "CD8_T", "Macrophage"], n - n_t)), dtype=object)
    pA = 0.03 + 0.32 * hA
    pB = 0.02 + 0.18 * hB
    aA = rng.random(n) < pA
    aB = rng.random(n) < pB
    aC = rng.random(n) < 0.05 + 0.05 * _h(deff, 4.0)
    pos = {
        "CXCL8": aA & (rng.random(n) < 0.9), "CXCL1": aA & (rng.random(n) < 0.8),
        "CXCL10": aB & (rng.random(n) < 0.9), "CXCL9": aB & (rng.random(n) < 0.8),
        "CCL20": aC,
    }
    is_t = np.arange(n) < n_t
    cells = pd.DataFrame({"sample_id": sid, "cell_id": np.arange(1, n + 1, dtype=np.uint32), "x_um": x,
                          "y_um": y, "area_um2": rng.uniform(40, 150, n), "nucleus_area_um2": rng.uniform(20, 60, n)})
    for m in MARKERS:
        cells[f"{m}_cell"] = rng.lognormal(5, 0.5, n).astype(np.float32)
    for m in CHEMOKINES:
        p_ = pos[m] & is_t
        cells.loc[p_, f"{m}_cell"] *= 8
        cells[f"{m}_pos"] = p_
    cells["CXCR2_pos"] = (ct == "NK") & (rng.random(n) < 0.6)
    cells["CXCR3_pos"] = (ct == "CD8_T") & (rng.random(n) < 0.5)
    cells.loc[cells["CXCR2_pos"], "CXCR2_cell"] *= 8
    cells.loc[cells["CXCR3_pos"], "CXCR3_cell"] *= 8
    cells["cell_type"] = ct
    phen = ct.copy()
    phen[cells["CXCR2_pos"].to_numpy()] = "NK CXCR2+"
    phen[cells["CXCR3_pos"].to_numpy()] = "CD8_T CXCR3+"
    cells["phenotype"] = phen
    for z in TRUTH:
        inside = rng.random(n) < frac[z]
        cells[f"in_{z}"] = inside
        cells[f"dist_{z}_um"] = np.where(inside, -rng.uniform(0, 20, n), rng.uniform(0, 200, n))
    cells["dist_tissue_edge_um"] = rng.uniform(0, 250, n)
    return cells


def _run_json(status: dict, inputs: dict, failed: list[str]) -> dict:
    """The fabricated ``run.json`` (config: effectiveness, the two cognate pairs, the panel)."""
    return {"chemozone_run_version": 1, "started": "2025-01-01T00:00:00+00:00", "command": ["fabricated"],
            "config": {"stats": {"effectiveness": EFFECTIVENESS, "reference_radiation": "photon",
                                 "n_bootstrap": 50, "seed": 0},
                       "spatial": {"cognate_pairs": [{"zone": "CXCL8", "receptor": "CXCR2", "cell_types": ["NK"]},
                                                     {"zone": "CXCL10", "receptor": "CXCR3",
                                                      "cell_types": ["CD8_T"]}]},
                       "panel": {"channels": MARKERS}},
            "versions": {"chemozone": "0.1.0"}, "inputs": inputs, "samples": status,
            "status": "done_with_failures" if failed else "done"}


def _write_images(out: Path, samples: pd.DataFrame, status: dict, k: int, rng, inputs: dict) -> None:
    """Tiny OME-TIFF images + masks.ome.zarr for the first ``k`` done samples."""
    from .io import write_labels_zarr, write_ome_tiff

    lay = RunLayout(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    done = [sid for sid in samples["sample_id"] if status[sid]["status"] == "done"][:k]
    for sid in done:
        size = 64
        yy, xx = np.mgrid[:size, :size]
        labels = np.zeros((size, size), np.uint32)
        lab = 1
        for cy in range(8, size, 16):
            for cx in range(8, size, 16):
                labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = lab
                lab += 1
        data = rng.poisson(50, (len(MARKERS), size, size)).astype(np.uint16)
        data[0][labels > 0] += 1000
        path = img_dir / f"{sid}.ome.tif"
        write_ome_tiff(path, data, channels=MARKERS, pixel_size_um=0.5)
        inputs[sid] = {"path": str(path), "size": path.stat().st_size}
        store = lay.masks(sid)
        write_labels_zarr(store, "nuclei", labels, pixel_size_um=0.5)
        write_labels_zarr(store, "cells", labels, pixel_size_um=0.5)
        grid = np.zeros((8, 8), np.uint8)
        grid[1:7, 1:7] = 1
        write_labels_zarr(store, "tissue", grid, pixel_size_um=4.0)
        zone = np.zeros((8, 8), np.uint8)
        zone[2:4, 2:5] = 1
        write_labels_zarr(store, "zone_CXCL8", zone, pixel_size_um=4.0)
