"""Sample data: a small synthetic irradiated explant from :func:`chemozone.synth.generate_sample`."""

from __future__ import annotations

from pathlib import Path

from ._colors import ZONE_COLORS, mask_colormap

SAMPLE_SIZE_PX = 512
SAMPLE_DOSE_GY = 10.0
SAMPLE_SEED = 0


def make_sample_data(size_px: int = SAMPLE_SIZE_PX) -> list[tuple]:
    """Layers of a synthetic 10 Gy photon explant with its ground truth.

    Returns
    -------
    list of LayerDataTuple
        One Image layer per channel (µm scale; the first four shown), the truth ``nuclei``/``cells`` labels,
        ``tissue`` and one mask per chemokine module, and the truth cells as points coloured by cell type
        (the truth table as features).
    """
    import numpy as np

    from chemozone.io import ImageData
    from chemozone.synth import generate_sample

    from ._reader import cells_layer, image_layers

    s = generate_sample(size_px=size_px, dose_gy=SAMPLE_DOSE_GY, radiation="photon", seed=SAMPLE_SEED,
                        sample_id="synthetic")
    px = float(s["pixel_size_um"])
    img = ImageData(s["image"], list(s["channels"]), px, Path("synthetic"), [s["image"]], "synthetic")
    layers = image_layers(img.path, img=img, visible_channels=4)
    common = dict(scale=(px, px), translate=(px / 2, px / 2))
    layers.append((s["nuclei"], {"name": "nuclei (truth)", "opacity": 0.5, "visible": False, **common}, "labels"))
    layers.append((s["cells"], {"name": "cells (truth)", "opacity": 0.5, **common}, "labels"))
    layers.append((s["tissue"], {"name": "tissue (truth)", "opacity": 0.2, "visible": False,
                                 "colormap": mask_colormap("white"), **common}, "labels"))
    for i, (module, mask) in enumerate(s["zones"].items()):

        layers.append((np.asarray(mask), {"name": f"zone {module} (truth)", "opacity": 0.35, "visible": i == 0,
                                          "colormap": mask_colormap(ZONE_COLORS[i % len(ZONE_COLORS)]),
                                          **common}, "labels"))
    truth = s["truth"]
    if {"x_um", "y_um"} <= set(truth.columns):
        layers.append(cells_layer(truth, name="cell points (truth)"))
    return layers
