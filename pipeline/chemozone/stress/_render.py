"""Rendering a stress scene: label images, per-compartment marker signal, chemokine dots and halo, and the
camera (stromal autofluorescence, nonspecific background, spillover into the next channel, blur, shot and
read noise, offset, 12-bit clipping)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from ._panel import BIT_DEPTH, IMMUNE_TYPES, PANEL, READ_NOISE, SPILLOVER


def paint_nuclei(shape: tuple[int, int], xy_um: np.ndarray, shapes: dict[str, np.ndarray], px: float,
                 order: np.ndarray) -> np.ndarray:
    """Rasterise elliptical nuclei (label ``i + 1`` for cell ``i``); a pixel keeps the first nucleus painted on it.

    >>> lab = paint_nuclei((20, 20), np.array([[5.0, 5.0]]), {"major_um": np.array([6.0]),
    ...                    "minor_um": np.array([4.0]), "angle": np.array([0.0])}, 0.5, np.array([0]))
    >>> int(lab.max()), int((lab == 1).sum())  # semi-axes 6 and 4 px: pi * 6 * 4 = 75
    (1, 80)
    """
    H, W = shape
    lab = np.zeros(shape, np.uint32)
    for i in order:
        a, b = shapes["major_um"][i] / 2 / px, shapes["minor_um"][i] / 2 / px
        cx, cy = xy_um[i] / px - 0.5
        r = int(np.ceil(a)) + 1
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, H)
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, W)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        c, s = np.cos(shapes["angle"][i]), np.sin(shapes["angle"][i])
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        sub = lab[y0:y1, x0:x1]
        sub[((u / a) ** 2 + (v / b) ** 2 <= 1) & (sub == 0)] = i + 1
    return lab


def grow_cells(nuclei: np.ndarray, cyto_px: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Cell bodies: each tissue pixel joins its nearest nucleus if within that cell's cytoplasm width (px)."""
    dist, (iy, ix) = ndimage.distance_transform_edt(nuclei == 0, return_indices=True)
    near = nuclei[iy, ix]
    lut = np.concatenate([[0.0], cyto_px])
    cells = np.where((dist <= lut[near]) & tissue, near, 0).astype(np.uint32)
    cells[nuclei > 0] = nuclei[nuclei > 0]
    return cells


def compartment_weights(nuclei: np.ndarray, cells: np.ndarray, px: float) -> dict[str, np.ndarray]:
    """Pixel weights: ``nucleus``, ``cytoplasm`` (cell minus nucleus) and ``membrane`` (peaks at the cell border)."""
    inside = cells > 0
    border = find_boundaries(cells, mode="inner")
    d = ndimage.distance_transform_edt(~border)
    memb = np.where(inside, 0.2 + 0.8 * np.exp(-((d * px / 0.8) ** 2)), 0.0)
    cyto = inside & (nuclei == 0)
    return {"nucleus": (nuclei > 0).astype(np.float32), "cytoplasm": cyto.astype(np.float32),
            "membrane": memb.astype(np.float32)}


def marker_signal(rng, marker: str, compartment: str, labels: dict[str, np.ndarray], w: dict[str, np.ndarray],
                  level: np.ndarray, chem: dict[str, Any] | None, p: dict[str, Any]) -> np.ndarray:
    """One marker's noise-free signal in expression units (level 1 ≈ the channel's gain after scaling)."""
    lut = np.concatenate([[0.0], level]).astype(np.float32)
    cells, nuclei = labels["cells"], labels["nuclei"]
    if compartment == "nucleus":
        tex = 1 + 0.15 * ndimage.gaussian_filter(rng.standard_normal(nuclei.shape), 1.0) / 0.28
        return lut[nuclei] * tex.astype(np.float32)
    if compartment == "cytoplasm":
        return lut[cells] * w["cytoplasm"] * (0.7 + 0.3 * w["membrane"])
    if compartment == "membrane":
        return lut[cells] * w["membrane"]
    spec = p["modules"][marker]  # chemokine: perinuclear dots in producers + secreted halo ~ F
    dots = (rng.random(cells.shape) < 0.08) & (w["cytoplasm"] > 0)
    dot_img = np.where(dots, 6.0 * spec["dot_gain"] * lut[cells], 0.0).astype(np.float32)
    return dot_img + spec["halo_fraction"] * chem["F_full"][marker]


def camera(clean: np.ndarray, rng, tissue: np.ndarray, fibre: np.ndarray, stroma: np.ndarray, px: float,
           p: dict[str, Any]) -> np.ndarray:
    """Counts from per-channel signal (C, Y, X) already in counts: background, spillover, blur, noise, offset.

    Returns uint16 (C, Y, X) clipped to the camera's 12-bit range.
    """
    af = (fibre * stroma + 0.25 * tissue).astype(np.float32)
    tis = ndimage.gaussian_filter(tissue.astype(np.float32), 2.0)
    light = np.empty_like(clean)
    for c, (_, _, _, _, af_amp, nonspec, _) in enumerate(PANEL):
        light[c] = clean[c] + af_amp * af + nonspec * tis
    light[1:] += SPILLOVER * light[:-1].copy()
    out = np.empty(clean.shape, np.uint16)
    top = 2**BIT_DEPTH - 1
    for c, spec in enumerate(PANEL):
        blurred = ndimage.gaussian_filter(light[c], p["psf_sigma_um"] / px)
        counts = rng.poisson(np.maximum(blurred, 0)).astype(np.float32)
        counts += spec[6] + READ_NOISE * rng.standard_normal(counts.shape).astype(np.float32)
        out[c] = np.clip(np.rint(counts), 0, top).astype(np.uint16)
    return out


def paint_labels(scene: dict[str, Any]) -> dict[str, np.ndarray]:
    """The truth label images of a scene (no random draws): ``nuclei`` and ``cells``, uint32 (Y, X)."""
    px = scene["pixel_size_um"]
    cells_ = scene["cells"]
    immune_first = np.argsort(~np.isin(cells_["type"], IMMUNE_TYPES), kind="stable")
    nuclei = paint_nuclei(scene["shape"], cells_["xy"], scene["shapes"], px, immune_first)
    cells = grow_cells(nuclei, scene["shapes"]["cyto_um"] / px, scene["tissue"])
    return {"nuclei": nuclei, "cells": cells}


def render(rng, scene: dict[str, Any], p: dict[str, Any],
           labels: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Labels (:func:`paint_labels` unless given) and the uint16 image of a scene."""
    H, W = scene["shape"]
    px = scene["pixel_size_um"]
    labels = labels if labels is not None else paint_labels(scene)
    nuclei, cells = labels["nuclei"], labels["cells"]
    w = compartment_weights(nuclei, cells, px)
    clean = np.zeros((len(PANEL), H, W), np.float32)
    for c, (_, marker, comp, gain, *_rest) in enumerate(PANEL):
        level = scene["truth"]["level"][marker] * scene["stain"][c]
        clean[c] = gain * marker_signal(rng, marker, comp, labels, w, level, scene["chem"], p)
    image = camera(clean, rng, scene["tissue"], scene["fibre"], scene["stroma"], px, p)
    return {"image": image, **labels}
