"""The cohort step's gate fits: serial in the driver vs one task per marker on a local Dask cluster.

A lab's cohort of tens of sections gates 10-15 markers on up to 20,000 cells per sample each (pooled GMM by default);
serially that is the driver's work while the workers wait. ``chemozone run`` now submits one task per marker
(:func:`chemozone.scheduler.task_executor`; each task gets its marker's column, scattered, never inside the graph).
This script times both on the same simulated table (the tasks twice: the first call waits for the workers to import
scikit-learn), checks that the gates are identical, and prints the ratio of the serial time to the warm one.

Measured on 2 vCPUs (defaults), two runs: serial 9.6-10.4 s, tasks 8.1-8.4 s warm / 8.7-9.4 s cold, 1.18-1.24x; the fits are numpy
reductions over 800k values per marker, which two processes on that machine barely run faster than one.

    python benchmarks/bench_cohort_gates.py [--samples 40] [--cells 20000] [--markers 12] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))

from chemozone.config import MarkerConfig  # noqa: E402
from chemozone.phenotype import compute_gates  # noqa: E402
from chemozone.scheduler import task_executor  # noqa: E402


def table(n_samples: int, n_cells: int, n_markers: int, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Per marker: a negative and a positive lognormal population (positive fraction 1-30 %)."""
    rng = np.random.default_rng(seed)
    cells = pd.DataFrame({"sample_id": np.repeat([f"s{i:03d}" for i in range(n_samples)], n_cells)})
    markers = {}
    for k in range(n_markers):
        pos = rng.random(len(cells)) < rng.uniform(0.01, 0.3)
        cells[f"M{k}_cell"] = np.where(pos, rng.lognormal(7, 0.3, len(cells)), rng.lognormal(5, 0.4, len(cells)))
        markers[f"M{k}"] = MarkerConfig(compartment="cell")
    return cells, markers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--markers", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    cells, markers = table(a.samples, a.cells, a.markers)
    t = time.perf_counter()
    serial = compute_gates(cells, markers=markers)
    t_serial = time.perf_counter() - t
    from distributed import Client, LocalCluster

    # as chemozone run makes it: worker processes, one thread each
    with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(a.workers)
        t = time.perf_counter()
        tasks = compute_gates(cells, markers=markers, executor=task_executor(client))
        t_cold = time.perf_counter() - t  # the workers import scikit-learn on their first gate
        t = time.perf_counter()
        tasks = compute_gates(cells, markers=markers, executor=task_executor(client))
        t_tasks = time.perf_counter() - t
    pd.testing.assert_frame_equal(tasks, serial)
    print(f"{a.samples} samples x {a.cells} cells, {a.markers} markers (pooled GMM gates)")
    print(f"{'serial in the driver':<34}{t_serial:>8.1f} s")
    print(f"{f'one task per marker, {a.workers} workers':<34}{t_tasks:>8.1f} s  (first call, cold workers: {t_cold:.1f} s)")
    print(f"speedup: {t_serial / t_tasks:.2f}x; gates identical")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
