"""Whole sections at speed: per-tile and per-stage breakdown of a large synthetic section, side by side
with the textbook scikit-image recipe on the same image.

What it prints (and writes to ``DIR/breakdown_<size>.json``):

1. **Segmentation, per tile, one core** (this process, synchronous scheduler, single-threaded BLAS/OpenMP;
   CPU seconds from ``time.process_time``, so other load on the machine inflates wall time, not these):
   ``segment_image`` with a zarr store exactly as ``chemozone run`` calls it for a large image (the config's
   ``segmentation`` section through ``chemozone.options``), split into the statistics pass, reading the
   window, nuclei, cells, keeping the core's objects + parking them, and stitching; beside it, on the same
   tile cores, the **textbook recipe** (Gaussian sigma 1 px -> Otsu -> distance transform -> peak_local_max
   with min_distance d/4 per component -> watershed -> the same size filter; ``bench_nuclei_dsb2018.textbook``)
   given the same nucleus diameter, cells not included. Totals as Mpx/s per core = image pixels / CPU s.
2. **Whole run, per stage** (``--run``): ``chemozone run`` of the cohort with ``--workers`` 1 (and 2 with
   ``--workers 1 2``), wall time, peak RSS of the largest process (``/usr/bin/time -v``), the stage timings
   ``run.json`` records for step A and step B, and whether Dask printed its "Sending large graph" warning.

The cohort is the ``large`` preset at ``--size`` (default 4096 px; the preset's own size is 16384), cached in
``DIR/cohort_large_<size>``: it is regenerated only when the size or the generator's source changes (the
stamp holds a hash of ``chemozone/synth/*.py``). The run uses the cohort's own ``config.yaml`` with the
reference gates and zone thresholds (``reference: {dose_gy: 0}``) replaced by pooled ones (a one-sample cohort
has no sham; this is what the runner's error message tells a user to do).

Usage::

    python benchmarks/bench_large.py                      # 4096² px, segmentation breakdown (~1-2 min)
    python benchmarks/bench_large.py --run                # + the whole run with one worker
    python benchmarks/bench_large.py --size 16384 --run --workers 1 2
    python benchmarks/bench_large.py --mosaic --size 40000 --run --workers 2 --skip-segmentation  # 40k², 15 ch
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipeline"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_nuclei_dsb2018 import textbook  # noqa: E402  (the same textbook recipe in every benchmark)

STAGES = ("statistics", "read", "nuclei", "cells", "keep+park", "stitch")


# ------------------------------------------------------------------------------------------ cohort
def _synth_hash() -> str:
    h = hashlib.sha256()
    for f in sorted((ROOT / "pipeline" / "chemozone" / "synth").glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cohort(size: int, base: Path) -> Path:
    """The large preset at ``size`` px, generated once per (size, generator source)."""
    from chemozone.synth import generate_cohort

    out = base / f"cohort_large_{size}"
    stamp = {"size": size, "synth": _synth_hash()}
    sfile = out / "bench_stamp.json"
    if sfile.exists() and json.loads(sfile.read_text()) == stamp and (out / "samples.csv").exists():
        print(f"cohort: cached {out}")
        return out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    generate_cohort(out, preset="large", size_px=size)
    sfile.write_text(json.dumps(stamp))
    print(f"cohort: generated {out} in {time.perf_counter() - t0:.0f} s")
    return out


def _bench_config(coh: Path) -> Path:
    """The cohort's config with reference gates and zone thresholds replaced by pooled ones (one sample, no sham)."""
    import yaml

    cfg = yaml.safe_load((coh / "config.yaml").read_text())
    for m in (cfg.get("phenotypes", {}).get("markers") or {}).values():
        if isinstance(m, dict) and (m.get("gate") or {}).get("method") == "reference":
            m["gate"] = {"method": "pooled"}
    for z in cfg.get("zones") or []:  # pixel zones default to a reference threshold
        if z.get("source", "pixels") == "pixels" and (z.get("threshold") or {}).get("mode", "reference") == "reference":
            z["threshold"] = {"mode": "pooled"}
    out = coh / "bench_config.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


# ------------------------------------------------------------------------------- per-tile profile
class _Clock:
    """CPU seconds per (tile core, stage), collected by wrapping the tile functions of chemozone.segment.

    A tile-level function (the statistics task, the segment-and-park task) is charged its *exclusive* time:
    what the wrapped inner functions (read, nuclei, cells) spent inside it is charged to them.
    """

    def __init__(self):
        self.rows: dict[tuple, dict[str, float]] = {}
        self.current = None

    def _row(self, key) -> dict[str, float]:
        return self.rows.setdefault(key, dict.fromkeys(STAGES, 0.0))

    def inner(self, fn, stage: str):
        def wrapped(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self._row(self.current)[stage] += time.process_time() - t

        return wrapped

    def tile(self, fn, stage: str, core_of):
        def wrapped(*a, **k):
            self.current = tuple(core_of(a))
            row = self._row(self.current)
            before = sum(row.values())
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent = time.process_time() - t
                row[stage] += spent - (sum(row.values()) - before)

        return wrapped


def _instrument(clock: _Clock):
    """Patch the tile functions (restored by the returned callable)."""
    from chemozone.segment import _tile_store, _tiling

    saved = []

    def patch(mod, name, new):
        saved.append((mod, name, getattr(mod, name)))
        setattr(mod, name, new)

    patch(_tiling, "_window_samples", clock.tile(_tiling._window_samples, "statistics", lambda a: a[1]["core"]))
    patch(_tiling._TileReader, "read", clock.inner(_tiling._TileReader.read, "read"))
    patch(_tiling, "segment_nuclei", clock.inner(_tiling.segment_nuclei, "nuclei"))
    patch(_tiling, "segment_cells", clock.inner(_tiling.segment_cells, "cells"))
    patch(_tile_store, "_segment_and_park", clock.tile(_tile_store._segment_and_park, "keep+park",
                                                       lambda a: a[1]["core"]))
    patch(_tile_store, "_stitch_and_write", clock.tile(_tile_store._stitch_and_write, "stitch",
                                                       lambda a: a[1][a[0]]["core"]))

    def restore():
        for mod, name, fn in reversed(saved):
            setattr(mod, name, fn)

    return restore


def segmentation_breakdown(coh: Path, cfg_path: Path, work: Path) -> dict:
    """Section 1: our segment_image per tile vs the textbook recipe on the same cores."""
    import dask

    from chemozone.config import load_config
    from chemozone.io import read_image
    from chemozone.options import segmentation_options
    from chemozone.segment import segment_image
    from chemozone.segment._tiling import _overlap_px, _tile_layout

    cfg = load_config(cfg_path)
    img = read_image(next((coh / "images").glob("*.ome.tif")), pixel_size_um=cfg.panel.pixel_size_um)
    px, (_, h, w) = img.pixel_size_um, img.data.shape
    opts = segmentation_options(cfg)
    clock = _Clock()
    restore = _instrument(clock)
    shutil.rmtree(work / "seg", ignore_errors=True)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    try:
        with dask.config.set(scheduler="synchronous"):
            nuc, _ = segment_image(img.data, channels=img.channels, pixel_size_um=px, nuclear_channel=cfg.panel.nuclear_channel,
                                   aliases=cfg.panel.aliases, store=work / "seg", **opts)
    finally:
        restore()
    ours_cpu, ours_wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    n_ours = int(nuc.max().compute())
    d_px = opts["nucleus_diameter_um"] / px
    seg = {"method": opts["method"], "nucleus_diameter_um": opts["nucleus_diameter_um"], "expand_um": opts["expand_um"],
           "nuclei_options": {"threshold": opts["threshold"]}}
    tiles = _tile_layout((h, w), tile_size_px=opts["tile_size_px"],
                         overlap_px=_overlap_px(seg, pixel_size_um=px, tile_overlap_um=opts["tile_overlap_um"]))
    nuc_i = img.channels.index(cfg.panel.nuclear_channel)
    rows, tb_cpu, n_tb = [], 0.0, 0
    for t in tiles:
        y0, y1, x0, x1 = t["core"]
        core = np.asarray(img.data[nuc_i, y0:y1, x0:x1].compute(scheduler="synchronous"))
        c0 = time.process_time()
        n_tb += int(textbook(core, d_px).max())
        dt = time.process_time() - c0
        tb_cpu += dt
        wy0, wy1, wx0, wx1 = t["window"]
        rows.append({"tile": t["index"], "core_mpx": (y1 - y0) * (x1 - x0) / 1e6,
                     "window_mpx": (wy1 - wy0) * (wx1 - wx0) / 1e6, **clock.rows.get(tuple(t["core"]), {}),
                     "textbook": dt})
    return {"size": [h, w], "pixel_size_um": px, "nucleus_diameter_px": d_px, "tiles": rows,
            "ours_cpu_s": ours_cpu, "ours_wall_s": ours_wall, "ours_nuclei": n_ours,
            "textbook_cpu_s": tb_cpu, "textbook_nuclei": n_tb, "mpx": h * w / 1e6}


def print_breakdown(b: dict) -> None:
    print(f"\n1. segmentation per tile, one core (CPU s), {b['size'][0]}x{b['size'][1]} px, "
          f"nucleus {b['nucleus_diameter_px']:.1f} px")
    head = f"{'tile':>4} {'core Mpx':>8} {'win Mpx':>8} " + " ".join(f"{s:>10}" for s in STAGES)
    print(head + f" {'ours':>7} {'textbook':>9}")
    for r in b["tiles"]:
        ours = sum(r.get(s, 0.0) for s in STAGES)
        print(f"{r['tile']:>4} {r['core_mpx']:8.2f} {r['window_mpx']:8.2f} "
              + " ".join(f"{r.get(s, 0.0):10.2f}" for s in STAGES) + f" {ours:7.2f} {r['textbook']:9.2f}")
    tot = {s: sum(r.get(s, 0.0) for r in b["tiles"]) for s in STAGES}
    print(f"{'sum':>4} {'':>8} {'':>8} " + " ".join(f"{tot[s]:10.2f}" for s in STAGES)
          + f" {sum(tot.values()):7.2f} {b['textbook_cpu_s']:9.2f}")
    print(f"\n{'method':<44} {'CPU s':>7} {'Mpx/s/core':>11} {'objects':>8}")
    print(f"{'chemozone segment_image (tiled, store, cells)':<44} {b['ours_cpu_s']:7.1f} "
          f"{b['mpx'] / b['ours_cpu_s']:11.2f} {b['ours_nuclei']:8d}")
    nc = tot["nuclei"]
    print(f"{'  of which nuclei only (windows)':<44} {nc:7.1f} {b['mpx'] / max(nc, 1e-9):11.2f} {'':>8}")
    print(f"{'textbook recipe (cores, nuclei only)':<44} {b['textbook_cpu_s']:7.1f} "
          f"{b['mpx'] / b['textbook_cpu_s']:11.2f} {b['textbook_nuclei']:8d}")
    print(f"ratio ours / textbook CPU: {b['ours_cpu_s'] / b['textbook_cpu_s']:.2f}   (wall of ours: "
          f"{b['ours_wall_s']:.1f} s, machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


# --------------------------------------------------------------------------------------- whole run
def whole_run(coh: Path, cfg_path: Path, work: Path, workers: int, memory_limit: str | None = None) -> dict:
    out = work / f"run_w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "chemozone.cli", "run", str(coh), "--config", str(cfg_path),
           "--out", str(out), "--workers", str(workers), "--quiet", "--no-report"]
    if memory_limit:
        cmd += ["--memory-limit", memory_limit]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "pipeline"), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        print(res.stderr[-3000:])
        raise SystemExit(res.returncode)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    prov = json.loads((out / "run.json").read_text())
    s = next(iter(prov["samples"].values()))
    stages = {**(s.get("step_a") or {}).get("timings_s", {}), **(s.get("step_b") or {}).get("timings_s", {})}
    return {"workers": workers, "wall_s": wall, "peak_mb": peak_kb / 1024, "stages_s": stages,
            "cohort_step_s": prov.get("cohort_step_s"), "cells": (s.get("step_a") or {}).get("n_cells"),
            "large_graph_warning": "Sending large graph" in res.stderr}


def print_runs(runs: list[dict]) -> None:
    print("\n2. whole run (chemozone run --no-report), wall s and per-stage s as run.json records them")
    names = sorted({k for r in runs for k in r["stages_s"]}, key=lambda k: -max(r["stages_s"].get(k, 0) for r in runs))
    print(f"{'workers':>7} {'wall':>7} {'peak MB':>8} {'cells':>8} {'graph warn':>10}  "
          + " ".join(f"{n[:10]:>10}" for n in names))
    for r in runs:
        print(f"{r['workers']:>7} {r['wall_s']:7.1f} {r['peak_mb']:8.0f} {r['cells'] or 0:8d} "
              f"{str(r['large_graph_warning']):>10}  " + " ".join(f"{r['stages_s'].get(n, 0):10.1f}" for n in names))
    if len(runs) == 2:
        print(f"speedup {runs[1]['workers']} vs {runs[0]['workers']} workers: {runs[0]['wall_s'] / runs[1]['wall_s']:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="image side, px (the large preset's is 16384)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cz-bench-large"))
    ap.add_argument("--run", action="store_true", help="also run the whole pipeline (section 2)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--skip-segmentation", action="store_true")
    ap.add_argument("--memory-limit", default=None, help="per-worker limit of the whole run (default: the config's)")
    ap.add_argument("--mosaic", action="store_true",
                    help="a mosaic of a generated 4096² sample with the 15-channel panel (mosaic_section.py): "
                         "minutes to build at any size instead of rendering the whole section")
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.mosaic:
        from mosaic_section import mosaic_cohort

        coh = mosaic_cohort(args.size, args.dir, synth_hash=_synth_hash())
    else:
        coh = cohort(args.size, args.dir)
    cfg_path = _bench_config(coh)
    report: dict = {"size": args.size}
    if not args.skip_segmentation:
        report["segmentation"] = segmentation_breakdown(coh, cfg_path, args.dir)
        print_breakdown(report["segmentation"])
    if args.run:
        report["runs"] = [whole_run(coh, cfg_path, args.dir, w, args.memory_limit) for w in args.workers]
        print_runs(report["runs"])
    out = args.dir / f"breakdown_{'mosaic_' if args.mosaic else ''}{args.size}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nbreakdown written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
