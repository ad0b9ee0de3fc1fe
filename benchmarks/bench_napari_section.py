"""Opening a whole section's run in napari through the plugin: how long until the masks are on screen.

Opens ``RUN/samples/SAMPLE`` in a fresh napari viewer the way a user does (``viewer.open(path,
plugin="chemozone")``, i.e. the plugin's reader: image channels as lazy pyramids, the label images and
masks of ``masks.zarr`` as multiscale labels, the cells as points), and times separately:

- ``masks``: ``viewer.open(SAMPLE/masks.ome.zarr, plugin="chemozone")``, the sample's masks store as a user
  drops it in: its label layers only (``nuclei``, ``cells``, ``tissue``, zones), lazy pyramids, drawn once (the
  issue's "masks open in napari" time; the image, cells table and config are not read);
- ``everything``: the whole sample (adds the image channels and one point per cell);

each until the first frame is rendered (``viewer.screenshot``), in a fresh process per case so nothing is
cached. Writes the screenshots next to ``--out``.

Usage (under an X server)::

    xvfb-run -a .venv/bin/python benchmarks/bench_napari_section.py RUN/samples/SAMPLE --out /tmp/section.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import napari
import chemozone_napari._reader
t_import = time.perf_counter() - t0
sample, case, png = sys.argv[1], sys.argv[2], sys.argv[3]
viewer = napari.Viewer(show=True)
t = time.perf_counter()
if case == "masks":  # what a user drops into napari: the sample's masks store
    from chemozone.layout import SampleLayout
    viewer.open(str(SampleLayout(sample).masks), plugin="chemozone")
else:
    viewer.open(sample, plugin="chemozone")
t_add = time.perf_counter() - t
viewer.reset_view()
viewer.screenshot(png, canvas_only=True)
t_total = time.perf_counter() - t
shapes = {l.name: [list(map(int, s)) for s in (l.data.shapes if hasattr(l.data, "shapes") else [l.data.shape])]
          for l in viewer.layers if l.__class__.__name__ == "Labels"}
print(json.dumps({"case": case, "import_s": t_import, "add_s": t_add, "first_frame_s": t_total,
                  "layers": [l.name for l in viewer.layers], "label_shapes": shapes}))
viewer.close()
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample", type=Path, help="RUN/samples/SAMPLE of a finished run")
    ap.add_argument("--out", type=Path, default=Path("/tmp/section.png"), help="screenshot path (one per case)")
    ap.add_argument("--cases", nargs="+", default=["masks", "everything"], choices=["masks", "everything"])
    args = ap.parse_args(argv)
    for case in args.cases:
        png = args.out.with_name(f"{args.out.stem}_{case}{args.out.suffix}")
        res = subprocess.run([sys.executable, "-c", CHILD, str(args.sample), case, str(png)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:])
            return res.returncode
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{case:<11} reader + add layers {rec['add_s']:6.2f} s   until first frame {rec['first_frame_s']:6.2f} s "
              f"(napari import {rec['import_s']:.1f} s not counted); screenshot {png}")
        print(f"{'':<11} labels: " + "; ".join(f"{k} {v[0]} ({len(v)} levels)" for k, v in rec["label_shapes"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
