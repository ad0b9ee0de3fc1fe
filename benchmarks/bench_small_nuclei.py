"""Lymphocytes crowding against tumor nuclei: ``segmentation.small_nucleus_diameter_um`` off vs on, side by side.

Synthetic explants (``chemozone.synth.generate_sample``, 0.5 µm/px) at 10 and 20 Gy, where co-cultured NK and
CD8 T cells (nuclei ~6.5 µm) crowd into the chemokine zones between tumor nuclei (~11 µm). Nuclei from
``segment_image`` (nucleus diameter 9 µm) are matched to the true nucleus centres (mutual nearest within
4 µm). Prints recall of the co-cultured lymphocytes inside any zone, recall of all cells and precision.

    .venv/bin/python benchmarks/bench_small_nuclei.py            # 6 images of 1024² (~30 s)
    .venv/bin/python benchmarks/bench_small_nuclei.py --n 2 --size 512

The real-image effect of the same setting: ``bench_nuclei_dsb2018.py --diameter auto --small-ratio 0.72``
(F1@0.5 0.772 -> 0.762 with ``nucleus_diameter_um: auto``; see README: it is off by default for that reason).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from chemozone.segment import segment_image
from chemozone.synth import generate_sample


def _hits(truth, lab, px: float) -> tuple[np.ndarray, int]:
    n = int(lab.max())
    c = np.array(ndi.center_of_mass(np.ones_like(lab), lab, np.arange(1, n + 1))).reshape(-1, 2) * px
    pred, true = c[:, ::-1], truth[["x_um", "y_um"]].to_numpy()
    d1, i1 = cKDTree(pred).query(true)
    _, i2 = cKDTree(true).query(pred)
    return (i2[i1] == np.arange(len(true))) & (d1 <= 4.0), n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="images (doses 10 and 20 Gy alternating)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--small", type=float, default=6.5, help="small_nucleus_diameter_um to compare")
    a = ap.parse_args(argv)
    settings = {"off": None, f"{a.small:g} µm": a.small}
    tot = {k: {"lz": 0, "lz_hit": 0, "all": 0, "hit": 0, "pred": 0, "s": 0.0} for k in settings}
    for i in range(a.n):
        s = generate_sample(size_px=a.size, dose_gy=(10.0, 20.0)[i % 2], seed=100 + i)
        dapi = np.asarray(s["image"][s["channels"].index("DAPI")])
        t = s["truth"]
        zone = np.zeros(len(t), bool)
        for c in t.columns:
            if c.startswith("in_") and c != "in_tumor":
                zone |= t[c].to_numpy(bool)
        lz = t["cell_type"].isin(["CD8 T", "NK"]).to_numpy() & t["exogenous"].to_numpy(bool) & zone
        for key, small in settings.items():
            t0 = time.perf_counter()
            nuc, _ = segment_image(dapi[None], channels=["DAPI"], pixel_size_um=s["pixel_size_um"],
                                   nucleus_diameter_um=9.0, small_nucleus_diameter_um=small)
            tot[key]["s"] += time.perf_counter() - t0
            hit, n_pred = _hits(t, nuc, s["pixel_size_um"])
            r = tot[key]
            r["lz"] += int(lz.sum())
            r["lz_hit"] += int(hit[lz].sum())
            r["all"] += len(t)
            r["hit"] += int(hit.sum())
            r["pred"] += n_pred
    print(f"{a.n} synthetic explants of {a.size}² px at 10/20 Gy; nucleus_diameter_um 9")
    print(f"{'small_nucleus_diameter_um':<26}{'lymphocytes in zones':>22}{'recall all':>12}{'precision':>11}"
          f"{'F1':>7}{'time s':>8}")
    for key, r in tot.items():
        rec, prec = r["hit"] / r["all"], r["hit"] / max(r["pred"], 1)
        print(f"{key:<26}{r['lz_hit'] / max(r['lz'], 1):>14.3f} (n={r['lz']:>4}){rec:>12.3f}{prec:>11.3f}"
              f"{2 * rec * prec / (rec + prec):>7.3f}{r['s']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
