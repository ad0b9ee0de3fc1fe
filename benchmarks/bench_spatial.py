"""Spatial metrics: chemozone vs squidpy (neighbourhood enrichment) and nearest distances at scale.

Run: ``.venv/bin/python benchmarks/bench_spatial.py`` (small defaults) or ``--full`` (1 million cells,
10 populations; squidpy on 50k cells). Prints a table with times and ratios. Single core (workers=1).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import time
import types
import warnings

import numpy as np
import pandas as pd

from chemozone.spatial import nearest_distances, neighbourhood_enrichment


def _cells(n: int, k: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    side = np.sqrt(n / 2000.0) * 1000.0  # ~2000 cells/mm²
    return pd.DataFrame({"x_um": rng.uniform(0, side, n), "y_um": rng.uniform(0, side, n),
                         "cell_type": pd.Categorical(rng.integers(0, k, n).astype(str))})


def _squidpy():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pkg_resources  # noqa: F401
    except ImportError:  # xarray_schema (via spatialdata) still imports it; setuptools>=81 lacks it
        shim = types.ModuleType("pkg_resources")
        shim.DistributionNotFound = type("DistributionNotFound", (Exception,), {})
        shim.get_distribution = lambda name: types.SimpleNamespace(version=md.version(name))
        sys.modules["pkg_resources"] = shim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import anndata as ad
        import squidpy as sq
    return sq, ad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="1M cells for nearest distances, 50k for enrichment")
    ap.add_argument("--perms", type=int, default=200)
    a = ap.parse_args()
    n_nd = 1_000_000 if a.full else 100_000
    n_ne = 50_000 if a.full else 10_000
    rows = []

    cells = _cells(n_nd, 10)
    t = time.perf_counter()
    nearest_distances(cells, population="cell_type", workers=1)
    rows.append(("nearest_distances, 10 populations", n_nd, time.perf_counter() - t, float("nan")))

    cells = _cells(n_ne, 8, seed=1)
    t = time.perf_counter()
    z, _ = neighbourhood_enrichment(cells, population="cell_type", radius_um=30.0, n_permutations=a.perms, seed=0)
    t_ours = time.perf_counter() - t
    sq, ad = _squidpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs = pd.DataFrame({"cell_type": pd.Categorical(cells["cell_type"].to_numpy())}, index=cells.index.astype(str))
        adata = ad.AnnData(obs=obs)
        adata.obsm["spatial"] = cells[["x_um", "y_um"]].to_numpy()
        t = time.perf_counter()
        sq.gr.spatial_neighbors(adata, coord_type="generic", radius=30.0)
        # warm up numba compilation outside the timing (squidpy's cost on a first call is larger)
        sq.gr.nhood_enrichment(adata, cluster_key="cell_type", n_perms=2, seed=0, copy=True, show_progress_bar=False, n_jobs=1)
        _t_warmup = time.perf_counter() - t  # not reported: includes numba compilation
        t = time.perf_counter()
        sq.gr.spatial_neighbors(adata, coord_type="generic", radius=30.0)
        res = sq.gr.nhood_enrichment(adata, cluster_key="cell_type", n_perms=a.perms, seed=0, copy=True,
                                     show_progress_bar=False, n_jobs=1)
        t_sq = time.perf_counter() - t
    zs = np.asarray(res.zscore if hasattr(res, "zscore") else res[0])
    rows.append((f"nhood enrichment chemozone ({a.perms} perms, graph incl.)", n_ne, t_ours, float("nan")))
    rows.append(("nhood enrichment squidpy (graph incl., numba warm)", n_ne, t_sq, t_sq / t_ours))
    print(f"{'benchmark':58s} {'cells':>9s} {'seconds':>9s} {'squidpy/ours':>12s}")
    for name, n, s, r in rows:
        print(f"{name:58s} {n:9d} {s:9.2f} {r:12.2f}")
    print(f"max |z_ours - z_squidpy| = {np.nanmax(np.abs(z.to_numpy() - zs)):.3f} (permutation noise)")


if __name__ == "__main__":
    main()
