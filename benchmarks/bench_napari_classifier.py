"""napari cell classifier widget at scale: recolouring 100k cells by their probability, and the widget's other steps.

A run folder of cell tables is fabricated (sample ``big`` with ``N`` cells, two samples of 2,000 cells; CXCR3
positive in 30 % of the cells, membrane signal ~2x the negatives', plus spillover into the cytoplasm of a
tumour cell's neighbours), opened through the plugin's reader in a shown napari viewer, and the
:class:`~chemozone_napari._classifier_widget.CellClassifierWidget` is driven as a user would: 200 cells labelled
(by their truth; 99 random, 33 per sample, then 100 from the widget's suggestions), trained, previewed.

Timed (median of 5, each including ``QApplication.processEvents()``, i.e. the redraw under xvfb's software GL):
the widget's probability preview (one colormap lookup + one RGBA assignment), side by side with napari's own
feature-driven colouring (``face_color = "<column>"`` with a continuous colormap); a click that labels a cell;
training; suggestions; predicting every cell.

Run under an X server::

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_napari_classifier.py          # 100k cells
    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_napari_classifier.py \\
        --screenshot notes/i17_classifier_napari.png    # the widget in use on a small run with images
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PX_UM = 0.5


def fabricate_cells(sid: str, n: int, seed: int) -> pd.DataFrame:
    """``n`` cells on a jittered lattice 12 µm apart; truth column ``truth_CXCR3`` (30 % positive)."""
    from chemozone.classify import neighbour_indices

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    i, j = np.divmod(np.arange(n), side)
    x = 8.0 + 12.0 * j + rng.normal(0, 1.5, n)
    y = 8.0 + 12.0 * i + rng.normal(0, 1.5, n)
    pos = rng.random(n) < 0.30
    tumour = (~pos) & (rng.random(n) < 0.35)
    ck = np.where(tumour, 900.0, 60.0) * rng.lognormal(0, 0.2, n)
    nbr = neighbour_indices(x, y, k=4)
    spill = 0.12 * ck[nbr].mean(axis=1)  # a bright tumour neighbour leaks into the cytoplasm
    memb = np.where(pos, 200.0, 100.0) * rng.lognormal(0, 0.25, n)
    return pd.DataFrame({
        "sample_id": sid, "cell_id": np.arange(1, n + 1, dtype=np.uint32), "x_um": x, "y_um": y,
        "area_um2": rng.normal(60, 8, n), "nucleus_area_um2": rng.normal(25, 4, n),
        "DAPI_nucleus": rng.normal(900, 80, n), "DAPI_cell": rng.normal(400, 40, n),
        "CXCR3_membrane": memb, "CXCR3_cytoplasm": 0.6 * memb + spill, "CXCR3_nucleus": rng.normal(60, 10, n) + spill / 3,
        "CXCR3_cell": 0.8 * memb + spill / 2, "panCK_cell": ck, "panCK_membrane": 1.1 * ck,
        "cell_type": np.where(tumour, "Tumor", np.where(pos, "T cell", "Other")),
        "phenotype": np.where(tumour, "Tumor", np.where(pos, "T cell", "Other")), "truth_CXCR3": pos,
    })


def _image(cells: pd.DataFrame, shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A DAPI / CXCR3 / panCK image and a cells label image of the fabricated cells."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 8, size=(3, *shape)).clip(0)
    lbl = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for row in cells.itertuples():
        cy, cx = row.y_um / PX_UM, row.x_um / PX_UM
        sl = (slice(max(0, int(cy) - 12), int(cy) + 13), slice(max(0, int(cx) - 12), int(cx) + 13))
        d2 = (yy[sl] - cy) ** 2 + (xx[sl] - cx) ** 2
        cell, nuc, ring = d2 <= 81, d2 <= 30, (d2 <= 81) & (d2 > 49)
        lbl[sl][cell] = row.cell_id
        img[0][sl][nuc] += row.DAPI_nucleus
        img[1][sl][ring] += row.CXCR3_membrane
        img[1][sl][cell & ~ring] += row.CXCR3_cytoplasm
        img[2][sl][cell] += row.panCK_cell
    return img.clip(0, 65535).astype(np.uint16), lbl


def fabricate_run(out: Path, sizes: dict[str, int], *, images: bool = False) -> Path:
    """A run folder (``samples/<id>/cells.parquet``; with ``images``, an OME-TIFF and a cells label image too)."""
    from chemozone.config import Config
    from chemozone.io import write_labels_zarr, write_ome_tiff
    from chemozone.layout import RunLayout, atomic_write_json, new_provenance, write_parquet

    lay = RunLayout(out)
    rows = []
    for k, (sid, n) in enumerate(sizes.items()):
        lay.sample_dir(sid).mkdir(parents=True)
        cells = fabricate_cells(sid, n, seed=k)
        write_parquet(cells, lay.cells(sid))
        if images:
            shape = (int(cells["y_um"].max() / PX_UM) + 20, int(cells["x_um"].max() / PX_UM) + 20)
            img, lbl = _image(cells, shape, seed=k)
            path = out / "inputs" / f"{sid}.ome.tif"
            path.parent.mkdir(exist_ok=True)
            write_ome_tiff(path, img, channels=["DAPI", "CXCR3", "panCK"], pixel_size_um=PX_UM, tile_px=256)
            write_labels_zarr(lay.masks(sid), "cells", lbl, pixel_size_um=PX_UM)
            rows.append({"sample_id": sid, "image": str(path)})
    if rows:
        write_parquet(pd.DataFrame(rows), lay.cohort_samples)
    atomic_write_json(lay.run_json, new_provenance(Config()))
    return lay.root


def _label_by_truth(w, sample_id: str, cell_ids) -> None:
    truth = w.session.cells.iloc[w.session.rows(sample_id, cell_ids)]["truth_CXCR3"].to_numpy()
    ids = np.asarray(cell_ids)
    w.label_cells(ids[truth], True, sample_id=sample_id)
    w.label_cells(ids[~truth], False, sample_id=sample_id)


def drive_widget(viewer, run: Path, *, n_random: int, n_suggested: int, seed: int = 0):
    """Open the run, label cells by their truth (random, then suggested), train; returns the widget and timings."""
    from chemozone_napari._classifier_widget import CellClassifierWidget

    viewer.open(str(run), plugin="chemozone")
    w = CellClassifierWidget(viewer)
    w.set_target("CXCR3")
    rng = np.random.default_rng(seed)
    t = {}
    for sid in w.session.sample_ids:
        ids = w.session.cells["cell_id"].to_numpy()[w.session.rows(sid)]
        _label_by_truth(w, sid, rng.choice(ids, n_random // len(w.session.sample_ids), replace=False))
    t0 = time.perf_counter()
    w.train()
    t["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sug = w.suggest(n_suggested)
    t["suggest_s"] = time.perf_counter() - t0
    for sid, grp in sug.groupby("sample_id"):
        _label_by_truth(w, str(sid), grp["cell_id"].to_numpy())
    w.show_sample(w.session.sample_ids[0])
    t0 = time.perf_counter()
    w.train()
    t["train_s"] = time.perf_counter() - t0
    return w, t


def bench(n: int, repeats: int = 5) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from chemozone_napari._colors import PROBABILITY_CMAP

    with tempfile.TemporaryDirectory() as tmp:
        run = fabricate_run(Path(tmp) / "run", {"big": n, "s2": 2000, "s3": 2000})
        viewer = napari.Viewer(show=True)
        w, t = drive_widget(viewer, run, n_random=100, n_suggested=100)
        layer = w.cells_layer("big")
        QApplication.processEvents()

        def timed(fn) -> float:
            out = []
            for k in range(repeats):
                t0 = time.perf_counter()
                fn(k)
                QApplication.processEvents()  # include the redraw
                out.append(time.perf_counter() - t0)
            return float(np.median(out))

        w._colour_by_phenotype()
        t["preview_widget_s"] = timed(lambda k: w.preview())
        prob = layer.features["CXCR3_prob"].to_numpy()

        def napari_way(k):
            layer.features = layer.features.assign(p=np.roll(prob, k))
            layer.face_color = "p"
            layer.face_colormap = PROBABILITY_CMAP
            layer.face_contrast_limits = (0.0, 1.0)

        t["preview_napari_features_s"] = timed(napari_way)
        xy = w.session.coords_um("big")
        t["click_label_s"] = timed(lambda k: w.label_at(xy[1000 + k] + 0.3))
        s = w.session
        s._proba.clear()
        t0 = time.perf_counter()
        s.probabilities("CXCR3")
        t["predict_all_s"] = time.perf_counter() - t0
        truth = s.cells["truth_CXCR3"].to_numpy()
        labelled = s.rows("big", s.labels("CXCR3", "big")["cell_id"].to_numpy())
        rest = np.setdiff1d(s.rows("big"), labelled)
        p = s.probabilities("CXCR3")[rest, 1]
        from sklearn.metrics import balanced_accuracy_score, f1_score

        t["f1_unlabelled"] = f1_score(truth[rest], p >= 0.5)
        t["bacc_unlabelled"] = balanced_accuracy_score(truth[rest], p >= 0.5)
        t["n_labels"] = len(s.labels("CXCR3"))
        t["cv"] = w.metrics.text()
        viewer.close()
    return t


def screenshot(path: Path) -> Path:
    import napari
    from qtpy.QtWidgets import QApplication

    with tempfile.TemporaryDirectory() as tmp:
        run = fabricate_run(Path(tmp) / "run", {"s1": 900, "s2": 900}, images=True)
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 950)
        w, _ = drive_widget(viewer, run, n_random=40, n_suggested=30)
        viewer.window.add_dock_widget(w, name="Cell classifier", area="right")
        w.suggest(8)
        viewer.layers["panCK"].visible = False
        viewer.layers["cells"].visible = False  # the label image: the probabilities are on the points
        viewer.layers["CXCR3"].colormap = "gray"
        viewer.layers[w.cells_layer().name].opacity = 0.85
        for _ in range(20):
            QApplication.processEvents()
        shot = viewer.screenshot(canvas_only=False, flash=False)
        from skimage.io import imsave

        path.parent.mkdir(parents=True, exist_ok=True)
        imsave(path, shot, check_contrast=False)
        viewer.close()
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000, help="cells of the large sample")
    ap.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the widget in use instead")
    args = ap.parse_args(argv)
    if args.screenshot is not None:
        print(f"saved {screenshot(args.screenshot)}")
        return
    r = bench(args.cells)
    print(f"\n## napari cell classifier, sample of {args.cells} cells (+2 x 2,000), {r['n_labels']} labels")
    print(f"{'step':<58}{'seconds':>9}")
    for key, what in (("preview_widget_s", "preview: widget (colormap lookup + RGBA assignment)"),
                      ("preview_napari_features_s", "preview: napari feature column + continuous colormap"),
                      ("click_label_s", "click labels a cell (pick + store + rings)"),
                      ("train_s", f"train ({r['n_labels']} labels, 5-fold CV + calibration)"),
                      ("suggest_s", "suggest 100 cells (all samples)"),
                      ("predict_all_s", "probabilities of every cell")):
        print(f"{what:<58}{r[key]:>9.3f}")
    print(f"(recolour and click timings: median of 5, each including the redraw)\n{r['cv']}")
    print(f"unlabelled cells of the large sample: balanced accuracy {r['bacc_unlabelled']:.3f}, F1 {r['f1_unlabelled']:.3f}")


if __name__ == "__main__":
    main()
