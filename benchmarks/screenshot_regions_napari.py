"""Region annotations imported into napari on a real image: a screenshot, and what the annotations cover.

Image: the MIBI-TOF field ``../shared/data/mibi_fov8`` (22 count channels, 1024² px, 0.39 µm/px, which the files do
not store). Annotations: a GeoJSON written the way QuPath v0.4+ writes *File > Export objects as GeoJSON*
(``FeatureCollection``; ``objectType: annotation``; ``classification: {name, color}``; UUID ids; pixel coordinates
of the full-resolution image), drawn from the image itself so that they sit on real structures:

- ``Tumor``: the PanKeratin-rich nests (Gaussian σ 6 px, Otsu, pieces ≥ 2,000 px, holes < 1,500 px filled): a
  MultiPolygon with holes (stroma inside the nests);
- ``Ignore*`` (QuPath's class for areas to leave out; excluded by default): the largest nucleus-poor area (HH3,
  σ 15 px, lowest 12 %);
- an unclassified outline 20 px inside the field's edge: the analysis region (``regions.unclassified: analysis``).

The image comes in through the plugin's reader functions (HH3, PanKeratin, CD45 shown), the GeoJSON through the
*Regions (QuPath GeoJSON)* widget (:class:`chemozone_napari._regions_widget.RegionsWidget`), and the screenshot is
the canvas. The table printed is what ``chemozone run`` would do with these annotations (:mod:`chemozone.regions`)
to the DeepCell/Mesmer whole-cell mask's 272 cells.

Run under an X server::

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/screenshot_regions_napari.py \\
        --out /work/notes/i16_regions_napari.png
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "mibi_fov8"
PX_UM = 0.39


def _polygons(mask: np.ndarray):
    """The mask's outline as a shapely (Multi)Polygon with holes, in pixel-edge coordinates (x right, y down)."""
    import shapely
    from shapely.geometry import Polygon
    from skimage import measure

    padded = np.pad(mask.astype(float), 1)
    geom = None
    for c in measure.find_contours(padded, 0.5):
        ring = Polygon(np.c_[c[:, 1] - 1 + 0.5, c[:, 0] - 1 + 0.5])  # padded pixel centre -> image pixel edge
        if ring.is_valid and ring.area > 0:
            geom = ring if geom is None else shapely.symmetric_difference(geom, ring)  # even-odd: nested = hole
    return shapely.simplify(geom, 0.75)


def build_regions(channels: dict[str, np.ndarray]) -> dict:
    """The annotations of the module docstring as a QuPath GeoJSON document."""
    from scipy import ndimage as ndi
    from shapely.geometry import Polygon, mapping
    from skimage import filters, morphology

    ck = ndi.gaussian_filter(channels["PanKeratin"].astype(float), 6)
    tumor = morphology.remove_small_objects(ck > filters.threshold_otsu(ck), max_size=1999)
    tumor = morphology.remove_small_holes(tumor, max_size=1499)
    hh3 = ndi.gaussian_filter(channels["HH3"].astype(float), 15)
    poor, n = ndi.label(hh3 < np.quantile(hh3, 0.12))
    largest = poor == (np.argmax(np.bincount(poor.ravel())[1:]) + 1) if n else np.zeros_like(poor, bool)
    h, w = tumor.shape
    analysis = Polygon([(20, 40), (40, 20), (w - 40, 20), (w - 20, 40), (w - 20, h - 40), (w - 40, h - 20),
                        (40, h - 20), (20, h - 40)])

    def feature(geom, cls, color):
        props = {"objectType": "annotation"}
        if cls is not None:
            props["classification"] = {"name": cls, "color": color}
        return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": mapping(geom), "properties": props}
    return {"type": "FeatureCollection", "features": [
        feature(analysis, None, None),
        feature(_polygons(tumor), "Tumor", [200, 0, 0]),
        feature(_polygons(largest), "Ignore*", [180, 180, 180]),
    ]}


def summary(path: Path, shape_yx) -> list[tuple]:
    """Per annotation class: pieces, holes, area µm², DeepCell cells inside; and what the run would keep."""
    import tifffile
    from scipy import ndimage as ndi

    from chemozone.config import Config
    from chemozone.options import region_options
    from chemozone.regions import load_regions, points_in_geometry

    regs = load_regions(path, shape_yx=shape_yx, **region_options(Config()))
    labels = tifffile.imread(DATA / "deepcell_whole_cell_labels.tiff")
    ids = np.unique(labels[labels > 0])
    cy, cx = (np.asarray(v) + 0.5 for v in zip(*ndi.center_of_mass(np.ones(labels.shape), labels, ids)))
    rows = []
    for name, geom in regs.classes.items():
        parts = list(getattr(geom, "geoms", [geom]))
        rows.append((name or "(unclassified: analysis)", len(parts), sum(len(p.interiors) for p in parts),
                     geom.area * PX_UM**2, int(points_in_geometry(geom, cx, cy).sum())))
    keep = points_in_geometry(regs.analysis, cx, cy) & ~points_in_geometry(regs.exclusion, cx, cy)
    rows.append(("kept by a run (analysis, not excluded)", "", "", float("nan"), int(keep.sum())))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("regions_napari.png"), help="screenshot (PNG)")
    args = ap.parse_args(argv)
    import napari

    from chemozone.io import read_image
    from chemozone_napari._reader import image_layers
    from chemozone_napari._regions_widget import RegionsWidget

    folder = DATA / "channels"
    img = read_image(folder, pixel_size_um=PX_UM)
    chans = {c: np.asarray(img.channel(c)) for c in ("PanKeratin", "HH3")}
    geojson = args.out.with_suffix(".geojson")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    geojson.write_text(json.dumps(build_regions(chans), indent=2))

    viewer = napari.Viewer(show=True)  # a hidden canvas renders black under xvfb
    viewer.window.resize(1300, 1000)
    shown = {"HH3": "blue", "PanKeratin": "green", "CD45": "magenta"}  # nuclei, tumor, leukocytes
    for data, kw, _ in image_layers(folder, pixel_size_um=PX_UM, img=img):
        kw.update(visible=kw["name"] in shown, colormap=shown.get(kw["name"], kw["colormap"]))
        viewer.add_image(data, **kw)
    widget = RegionsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Regions (QuPath GeoJSON)")
    layer = widget.import_regions(geojson)
    viewer.reset_view()
    viewer.screenshot(str(args.out), canvas_only=True, flash=False)
    print(f"image: {folder} (22 channels, {img.data.shape[2]} x {img.data.shape[1]} px, {PX_UM} µm/px)")
    print(f"regions: {geojson} -> napari layer '{layer.name}' with {len(layer.data)} shapes "
          f"({int(layer.features['hole'].sum())} holes); widget says: {widget.info.text()}")
    print(f"screenshot: {args.out}\n")
    print(f"{'class':40s} {'pieces':>6s} {'holes':>5s} {'area µm²':>10s} {'DeepCell cells inside':>22s}")
    for name, parts, holes, area, n in summary(geojson, img.data.shape[1:]):
        print(f"{name:40s} {parts!s:>6s} {holes!s:>5s} {area:10.0f} {n:22d}")
    viewer.close()


if __name__ == "__main__":
    main()
