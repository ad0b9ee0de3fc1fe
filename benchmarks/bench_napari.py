"""napari plugin at scale: opening a large image lazily, and recolouring many cells.

1. A ``SIZE × SIZE × 8`` uint16 tiled, pyramidal OME-TIFF (written tile by tile from a dask array with
   :func:`chemozone.io.write_ome_tiff`) is opened through the plugin's reader and shown in a napari viewer;
   peak RSS of a fresh process is compared with the image's uncompressed size (a naive ``tifffile.imread``
   would need all of it).
2. ``N`` cells as a Points layer with their table as features: recolouring by a gate, the plugin's way
   (one vectorised RGBA assignment) side by side with napari's feature-driven colouring
   (``layer.face_color = "<column>"`` with a colour cycle), and the gate widget's whole update.

Run under an X server::

    xvfb-run -a .venv/bin/python benchmarks/bench_napari.py            # small: 4000² px, 20k cells
    xvfb-run -a .venv/bin/python benchmarks/bench_napari.py --full     # 20000² px × 8, 100k cells
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_image(path: Path, size: int, channels: int = 8) -> float:
    import dask.array as da

    from chemozone.io import write_ome_tiff

    def pattern(block, block_info=None):
        (c0, _), (y0, _), (x0, _) = block_info[None]["array-location"]
        yy, xx = np.ogrid[y0:y0 + block.shape[1], x0:x0 + block.shape[2]]
        out = ((yy // 97 + xx // 89) % 3 * 600 + (yy * 7 + xx * 3) % 200 + 100 * c0).astype(np.uint16)
        return np.broadcast_to(out, block.shape).copy()

    base = da.zeros((channels, size, size), dtype=np.uint16, chunks=(1, 512, 512))  # = the TIFF tiles
    arr = base.map_blocks(pattern, dtype=np.uint16)
    levels = max(0, int(np.ceil(np.log2(size / 1024))))
    t0 = time.perf_counter()
    write_ome_tiff(path, arr, channels=["DAPI"] + [f"M{i}" for i in range(1, channels)], pixel_size_um=0.5,
                   tile_px=512, pyramid_levels=levels)
    return time.perf_counter() - t0


OPEN_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from chemozone_napari._reader import napari_get_reader
path = sys.argv[1]
layers = napari_get_reader(path)(path)
t_reader = time.perf_counter() - t0
rss_reader = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import napari
from qtpy.QtWidgets import QApplication
v = napari.Viewer(show=True)
t1 = time.perf_counter()
for data, kw, kind in layers:
    getattr(v, f"add_{kind}")(data, **kw)
for _ in range(20):
    QApplication.processEvents()
shot = v.screenshot(canvas_only=True, flash=False)
t_view = time.perf_counter() - t1
print(json.dumps({"reader_s": t_reader, "view_s": t_view, "rss_after_reader_mb": rss_reader,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "n_layers": len(layers), "multiscale": bool(layers[0][1]["multiscale"]),
                  "levels": len(layers[0][0]) if layers[0][1]["multiscale"] else 1,
                  "screenshot_std": float(shot[..., :3].std())}))
v.close()
"""

BASELINE_CHILD = r"""
import json, resource, sys
import numpy as np
import napari  # the same viewer showing a tiny image: the difference to the big run is the data
import chemozone.io, chemozone_napari._reader
from qtpy.QtWidgets import QApplication
v = napari.Viewer(show=True)
for c in range(8):
    v.add_image(np.zeros((256, 256), np.uint16), name=f"c{c}", blending="additive")
for _ in range(20):
    QApplication.processEvents()
v.screenshot(canvas_only=True, flash=False)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
v.close()
"""


def bench_open(size: int, tmp: Path) -> dict:
    path = tmp / f"big_{size}.ome.tif"
    t_write = write_image(path, size)
    res = json.loads(subprocess.run([sys.executable, "-c", OPEN_CHILD, str(path)], check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    base = json.loads(subprocess.run([sys.executable, "-c", BASELINE_CHILD], check=True, capture_output=True,
                                     text=True).stdout.strip().splitlines()[-1])
    res.update(write_s=t_write, file_mb=path.stat().st_size / 2**20, image_mb=8 * size * size * 2 / 2**20,
               baseline_rss_mb=base["peak_rss_mb"])
    return res


def bench_recolour(n: int, repeats: int = 5) -> dict:
    import napari
    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from chemozone_napari._colors import binary_colors
    from chemozone_napari._reader import cells_layer

    rng = np.random.default_rng(0)
    side = np.sqrt(n) * 10.0
    cells = pd.DataFrame({"sample_id": "s1", "cell_id": np.arange(1, n + 1, dtype=np.uint32),
                          "x_um": rng.uniform(0, side, n), "y_um": rng.uniform(0, side, n),
                          "area_um2": rng.uniform(40, 120, n), "CD3_cell": rng.lognormal(5, 1, n)})
    cells["CD3_pos"] = cells["CD3_cell"] > 300
    cells["cell_type"] = np.where(cells["CD3_pos"], "T cell", "Other")
    cells["phenotype"] = cells["cell_type"]
    viewer = napari.Viewer(show=True)
    t0 = time.perf_counter()
    data, kw, _ = cells_layer(cells)
    kw["metadata"]["chemozone"].update(sample_id="s1")
    layer = viewer.add_points(data, **kw)
    QApplication.processEvents()
    t_add = time.perf_counter() - t0

    def timed(fn) -> float:
        out = []
        for k in range(repeats):
            t = time.perf_counter()
            fn(k)
            QApplication.processEvents()  # include the redraw
            out.append(time.perf_counter() - t)
        return float(np.median(out))

    vals = cells["CD3_cell"].to_numpy()
    gates = np.quantile(vals, np.linspace(0.2, 0.8, repeats))

    def plugin_way(k):
        layer.face_color = binary_colors(vals > gates[k])

    def napari_way(k):
        layer.features = layer.features.assign(gate_pos=vals > gates[k])
        layer.face_color_cycle = ["#333333", "#ff3333"]
        layer.face_color = "gate_pos"

    t_plugin = timed(plugin_way)
    t_napari = timed(napari_way)
    # the gate widget's full update (spin box, slider, histogram line, features, colours, label)
    from chemozone_napari._gate_widget import GateReviewWidget

    viewer.layers.selection.active = layer
    w = GateReviewWidget(viewer)
    w.gates_path.setText(str(Path(tempfile.gettempdir()) / "bench_gates.yaml"))
    tv = w._setup["values"]
    wgates = np.quantile(tv, np.linspace(0.2, 0.8, repeats))
    t_widget = timed(lambda k: w.set_gate(float(wgates[k])))
    viewer.close()
    return {"n_cells": n, "add_s": t_add, "recolour_plugin_s": t_plugin, "recolour_napari_features_s": t_napari,
            "gate_widget_update_s": t_widget}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="20000² px × 8 channels and 100k cells")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--cells", type=int, default=None)
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the large image (default: a temp dir)")
    args = ap.parse_args(argv)
    size = args.size or (20000 if args.full else 4000)
    n = args.cells or (100_000 if args.full else 20_000)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        o = bench_open(size, Path(tmp))
    print(f"\n## open a {size}² × 8 uint16 pyramidal OME-TIFF through the reader and show it")
    print(f"{'quantity':<40}{'value':>12}")
    for k, unit in (("image_mb", "MiB uncompressed"), ("file_mb", "MiB on disk"), ("write_s", "s write"),
                    ("reader_s", "s reader"), ("view_s", "s add + draw"), ("baseline_rss_mb", "MiB RSS (viewer, tiny image)"),
                    ("rss_after_reader_mb", "MiB RSS after reader"), ("peak_rss_mb", "MiB peak RSS (shown)")):
        print(f"{unit:<40}{o[k]:>12.1f}")
    print(f"{'levels':<40}{o['levels']:>12d}")
    print(f"peak RSS / uncompressed image = {o['peak_rss_mb'] / o['image_mb']:.3f}; "
          f"data-driven RSS (peak - tiny-image viewer) = {o['peak_rss_mb'] - o['baseline_rss_mb']:.0f} MiB; "
          f"screenshot std = {o['screenshot_std']:.1f}")
    r = bench_recolour(n)
    print(f"\n## recolour {n} cells (median of 5, including the redraw)")
    print(f"{'method':<45}{'seconds':>10}")
    print(f"{'add the points layer':<45}{r['add_s']:>10.3f}")
    print(f"{'plugin: RGBA array assignment':<45}{r['recolour_plugin_s']:>10.3f}")
    print(f"{'napari: feature column + colour cycle':<45}{r['recolour_napari_features_s']:>10.3f}")
    print(f"{'gate widget: full set_gate update':<45}{r['gate_widget_update_s']:>10.3f}")
    print(f"napari-features / plugin = {r['recolour_napari_features_s'] / r['recolour_plugin_s']:.1f}x")


if __name__ == "__main__":
    main()
