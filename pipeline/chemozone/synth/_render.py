"""Rendering of a synthetic scene (:func:`build_scene`) into pixels, region by region.

Everything here is a pure function of the scene (global cell list and coarse fields) and a region:
labels, tissue and zone masks are identical whichever tiling is used; only the pixel noise is drawn per
region (from a seed derived from the sample seed and the region origin).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ._params import PIXEL_SIZE_UM, TYPE_INDEX
from ._params import RECEPTORS as _RECEPTORS

HALO_PX = 16
"""Extra pixels rendered around each region (optical blur, out-of-focus blur, membrane rings)."""


def sample_grid(grid: np.ndarray, factor: float, ys: np.ndarray, xs: np.ndarray, *, cval: float = 0.0) -> np.ndarray:
    """Bilinear value of a coarse ``grid`` (one value per ``factor`` px) at full-resolution pixel coordinates.

    Grid cell ``(i, j)`` is centred at pixel ``((i + 0.5) * factor - 0.5, (j + 0.5) * factor - 0.5)``.

    >>> sample_grid(np.array([[0.0, 4.0]], np.float32), 4, [1.5, 1.5], [1.5, 3.5]).tolist()
    [0.0, 2.0]
    """
    gy = (np.asarray(ys, dtype=np.float64) + 0.5) / factor - 0.5
    gx = (np.asarray(xs, dtype=np.float64) + 0.5) / factor - 0.5
    return ndi.map_coordinates(grid, [gy, gx], order=1, mode="nearest", cval=cval)


def grid_region(grid: np.ndarray, factor: float, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """A coarse grid interpolated bilinearly onto the full-resolution pixels ``[y0:y1, x0:x1]``."""
    ys = np.arange(y0, y1, dtype=np.float64)
    xs = np.arange(x0, x1, dtype=np.float64)
    gy = (ys + 0.5) / factor - 0.5
    gx = (xs + 0.5) / factor - 0.5
    # separable bilinear interpolation: interpolate rows, then columns (exactly map_coordinates order=1)
    gy = np.clip(gy, 0, grid.shape[0] - 1)
    gx = np.clip(gx, 0, grid.shape[1] - 1)
    iy = np.minimum(np.floor(gy).astype(np.int64), grid.shape[0] - 2) if grid.shape[0] > 1 else np.zeros(len(gy), np.int64)
    ix = np.minimum(np.floor(gx).astype(np.int64), grid.shape[1] - 2) if grid.shape[1] > 1 else np.zeros(len(gx), np.int64)
    fy = (gy - iy).astype(np.float32)[:, None]
    fx = (gx - ix).astype(np.float32)[None, :]
    g = grid.astype(np.float32, copy=False)
    iy1 = np.minimum(iy + 1, grid.shape[0] - 1)
    ix1 = np.minimum(ix + 1, grid.shape[1] - 1)
    rows0 = g[iy]
    rows1 = g[iy1]
    top = rows0[:, ix] * (1 - fx) + rows0[:, ix1] * fx
    bot = rows1[:, ix] * (1 - fx) + rows1[:, ix1] * fx
    return top * (1 - fy) + bot * fy


def render_labels(sc: dict[str, Any], Y0: int, Y1: int, X0: int, X1: int):
    """Nuclei and cell labels (uint32, value = cell_id) and the normalised nuclear radius over a region.

    Each pixel belongs to the nucleus with the smallest normalised radius ``r < 1`` (an irregular
    ellipse per cell) and to the cell body with the smallest normalised body radius; nuclear pixels
    always belong to their own cell. Labels are clipped to the tissue (``tissue`` region mask is applied
    by the caller).
    """
    H, W = Y1 - Y0, X1 - X0
    best_n = np.full((H, W), np.inf, np.float32)
    best_c = np.full((H, W), np.inf, np.float32)
    nuc = np.zeros((H, W), np.uint32)
    cel = np.zeros((H, W), np.uint32)
    c = sc["cells"]
    R = c["bbox_r"]
    sel = np.nonzero((c["x"] + R >= X0) & (c["x"] - R < X1) & (c["y"] + R >= Y0) & (c["y"] - R < Y1))[0]
    x, y, ct, st = c["x"], c["y"], c["cos"], c["sin"]
    a, b, ac, bc = c["a"], c["b"], c["ac"], c["bc"]
    h2, p2, h3, p3 = c["h2"], c["p2"], c["h3"], c["p3"]
    for i in sel:
        r = R[i]
        ya, yb = max(int(y[i] - r), Y0), min(int(y[i] + r) + 2, Y1)
        xa, xb = max(int(x[i] - r), X0), min(int(x[i] + r) + 2, X1)
        if ya >= yb or xa >= xb:
            continue
        dy = (np.arange(ya, yb, dtype=np.float32) - y[i])[:, None]
        dx = (np.arange(xa, xb, dtype=np.float32) - x[i])[None, :]
        u = dx * ct[i] + dy * st[i]
        v = dy * ct[i] - dx * st[i]
        phi = np.arctan2(v, u)
        irr = 1.0 + h2[i] * np.cos(2 * phi + p2[i]) + h3[i] * np.cos(3 * phi + p3[i])
        rn = np.sqrt((u / a[i]) ** 2 + (v / b[i]) ** 2) / irr
        rc = np.sqrt((u / ac[i]) ** 2 + (v / bc[i]) ** 2) / (1.0 + 0.5 * (irr - 1.0))
        sy, sx = slice(ya - Y0, yb - Y0), slice(xa - X0, xb - X0)
        bn = best_n[sy, sx]
        m = (rn < 1.0) & (rn < bn)
        bn[m] = rn[m]
        nuc[sy, sx][m] = i + 1
        bcv = best_c[sy, sx]
        m = (rc < 1.0) & (rc < bcv)
        bcv[m] = rc[m]
        cel[sy, sx][m] = i + 1
    has_n = nuc > 0
    cel[has_n] = nuc[has_n]
    best_n[~has_n] = 1.0
    return nuc, cel, best_n


def _ring(cel: np.ndarray) -> np.ndarray:
    """Pixels of a cell that touch another label (the membrane), 4-connectivity."""
    ring = np.zeros(cel.shape, bool)
    d = cel[1:, :] != cel[:-1, :]
    ring[1:, :] |= d
    ring[:-1, :] |= d
    d = cel[:, 1:] != cel[:, :-1]
    ring[:, 1:] |= d
    ring[:, :-1] |= d
    return ring & (cel > 0)


def _binomial_blur(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1/4, 1/2, 1/4] blur (sigma ~0.7 px per pass), edges replicated; fast for small PSFs."""
    out = a
    for _ in range(passes):
        b = out.copy()
        b[1:-1] = 0.5 * out[1:-1] + 0.25 * (out[:-2] + out[2:])
        c = b.copy()
        c[:, 1:-1] = 0.5 * b[:, 1:-1] + 0.25 * (b[:, :-2] + b[:, 2:])
        out = c
    return out


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    n = ndi.gaussian_filter(n, sigma)
    s = float(n.std()) or 1.0
    return n / s


def render_region(sc: dict[str, Any], y0: int, y1: int, x0: int, x1: int, *, seed) -> dict[str, np.ndarray]:
    """Render pixels ``[y0:y1, x0:x1]`` of a scene.

    Parameters
    ----------
    sc : dict
        Scene (:func:`build_scene`).
    y0, y1, x0, x1 : int
        Region, px.
    seed : numpy.random.SeedSequence or int
        Seed of the region's pixel noise.

    Returns
    -------
    dict
        ``image`` uint16 (C, h, w); ``nuclei``, ``cells`` uint32 (h, w); ``tissue`` uint8 (h, w);
        ``tumor`` uint8 (h, w); ``zones`` {module: uint8 (h, w)}.
    """
    hpx = HALO_PX
    Y0, Y1, X0, X1 = y0 - hpx, y1 + hpx, x0 - hpx, x1 + hpx
    rng = np.random.default_rng(seed)
    g = sc["grid_px"]
    tissue = grid_region(sc["tissue_score"], g, Y0, Y1, X0, X1) > 0
    nest = (grid_region(sc["nest_score"], g, Y0, Y1, X0, X1) > 0) & tissue
    nuc, cel, rn = render_labels(sc, Y0, Y1, X0, X1)
    nuc[~tissue] = 0
    cel[~tissue] = 0
    sig = _specific_signals(sc, rng, nuc, cel, rn, (Y0, Y1, X0, X1))
    crop = (slice(hpx, hpx + (y1 - y0)), slice(hpx, hpx + (x1 - x0)))
    img = _acquire(sc, rng, sig, tissue, nest, (Y0, Y1, X0, X1), crop)
    zones = {}
    for m, fgrid in sc["fields"].items():
        f = grid_region(fgrid, sc["field_px"], y0, y1, x0, x1)
        zones[m] = ((f >= sc["zone_level"]) & tissue[crop]).astype(np.uint8)
    return {
        "image": img,
        "nuclei": nuc[crop],
        "cells": cel[crop],
        "tissue": tissue[crop].astype(np.uint8),
        "tumor": nest[crop].astype(np.uint8),
        "zones": zones,
    }


def _specific_signals(sc: dict[str, Any], rng: np.random.Generator, nuc: np.ndarray, cel: np.ndarray,
                      rn: np.ndarray, box: tuple[int, int, int, int]) -> list:
    """Specific signal per channel (float32 (H, W) each, haloed region ``box``) in its compartment."""
    Y0, Y1, X0, X1 = box
    H, W = Y1 - Y0, X1 - X0
    c = sc["cells"]
    channels = sc["channels"]
    spec = sc["channel_spec"]
    ring = _ring(cel)
    cyto = (cel > 0) & (nuc == 0)
    cell_any = cel > 0
    tex = 1.0 + 0.25 * _smooth_noise(rng, (H, W), 1.0)
    gran = np.clip(1.0 + 0.6 * _smooth_noise(rng, (H, W), 0.7), 0.0, None)
    sig: list = [None] * len(channels)
    for ci, name in enumerate(channels):
        kind, peak = spec[name]["compartment"], spec[name]["peak"]
        lvl = np.concatenate([[0.0], c["level"][name]]).astype(np.float32) * (peak * sc["stain"][name])
        if kind == "dapi":
            prof = (1.0 - 0.35 * rn**2) * tex
            s = lvl[nuc] * prof
        elif kind == "nucleus":
            s = lvl[nuc] * (0.85 + 0.15 * tex) + 0.08 * lvl[cel] * cyto
        elif kind == "membrane":
            lc = lvl[cel]
            s = lc * (ring + np.float32(0.18) * cell_any)
            s = _binomial_blur(s)
            if sc.get("dim_receptors") and name in _RECEPTORS:
                s = s + _neighbour_spill(sc, cel, ring) * np.float32(sc["stain"][name])
        elif kind == "cytoplasm":
            lc = lvl[cel]
            s = lc * cyto * gran + 0.45 * lc * ring + 0.1 * lc * (nuc > 0)
        elif kind == "dots":
            s = _dots(sc, name, Y0, Y1, X0, X1, cel, rng) * sc["stain"][name]
        else:  # pragma: no cover - guarded by the spec
            raise ValueError(kind)
        sig[ci] = s.astype(np.float32, copy=False)
    return sig


def _neighbour_spill(sc: dict[str, Any], cel: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Nonspecific membrane signal of the bright ``neighbour_source`` cells, blurred into their neighbours.

    Each source cell's membrane ring carries ``neighbour_amplitude`` (times its panCK level when the panel
    has panCK), blurred by a Gaussian of ``neighbour_sigma_um``: float32 (H, W).
    """
    dim = sc["dim_receptors"]
    c = sc["cells"]
    src = (c["type"] == TYPE_INDEX[dim["neighbour_source"]]).astype(np.float32)
    if "panCK" in c["level"]:
        src = src * c["level"]["panCK"].astype(np.float32)
    lv = np.concatenate([[0.0], src]).astype(np.float32) * np.float32(dim["neighbour_amplitude"])
    return ndi.gaussian_filter(lv[cel] * ring, float(dim["neighbour_sigma_um"]) / PIXEL_SIZE_UM)


def _autofluorescence(sc: dict[str, Any], tissue: np.ndarray, nest: np.ndarray,
                      box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Autofluorescence map (tissue, stronger in fibrous stroma) and the background ramp across the slide."""
    Y0, Y1, X0, X1 = box
    fib = grid_region(sc["texture"], sc["field_px"], Y0, Y1, X0, X1)
    stroma = (tissue & ~nest).astype(np.float32)
    af_map = tissue.astype(np.float32) * np.float32(0.35) + stroma * np.clip(0.65 + 0.5 * fib, 0.0, None)
    af_map = ndi.gaussian_filter(af_map, 2.0)
    ramp = 1.0 + 0.08 * ((np.arange(X0, X1, dtype=np.float32) / max(sc["shape"][1], 1)) - 0.5)[None, :]
    return af_map, ramp


def _acquire(sc: dict[str, Any], rng: np.random.Generator, sig: list, tissue: np.ndarray, nest: np.ndarray,
             box: tuple[int, int, int, int], crop: tuple[slice, slice]) -> np.ndarray:
    """Spillover, autofluorescence, optical blur, focus and Poisson-Gaussian noise: uint16 (C, h, w).

    ``sig`` (from :func:`_specific_signals`) is emptied as channels are done, to bound memory.
    """
    Y0, Y1, X0, X1 = box
    channels = sc["channels"]
    spec = sc["channel_spec"]
    spill = np.float32(sc["spillover"])
    af_map, ramp = _autofluorescence(sc, tissue, nest, box)
    w_oof = None
    if sc["oof"] is not None:
        w_oof = grid_region(sc["oof"], sc["grid_px"], Y0, Y1, X0, X1)
        if float(w_oof.max()) <= 0.01:
            w_oof = None
    gain, read = np.float32(sc["gain"]), np.float32(sc["read_noise"])
    nc = len(channels)
    img = np.empty((nc, crop[0].stop - crop[0].start, crop[1].stop - crop[1].start), np.uint16)
    for ci, name in enumerate(channels):
        s = sig[ci].copy()
        if ci > 0:
            s += spill * sig[ci - 1]
        if ci < nc - 1:
            s += spill * sig[ci + 1]
        s += np.float32(spec[name]["af"]) * af_map + np.float32(spec[name]["background"]) * ramp
        s = _binomial_blur(s)  # optical blur
        if w_oof is not None:
            s = (1 - w_oof) * s + w_oof * ndi.gaussian_filter(s, 3.0)
        s = s[crop]
        sd = np.sqrt(gain * np.maximum(s, 0.0) + read * read)
        s = s + sd * rng.standard_normal(s.shape, dtype=np.float32)
        np.clip(np.rint(s), 0, 65535, out=s)
        img[ci] = s
        if ci > 0:
            sig[ci - 1] = None  # no longer needed
    return img


def _dots(sc, name, Y0, Y1, X0, X1, cel, rng) -> np.ndarray:
    """Perinuclear dots of the producer cells of chemokine ``name``.

    The total mass per producer is ``w * amplitude * 2*pi*sigma_px**2``, so that smoothing the channel
    with a Gaussian of about the zone sigma gives ``amplitude * field`` above background. Dot positions
    are fixed per cell in the scene, so tiles agree at their seams.
    """
    H, W = Y1 - Y0, X1 - X0
    out = np.zeros((H, W), np.float32)
    c = sc["cells"]
    dots = c["dots"].get(name)
    if dots is None:
        return out
    idx, dx, dy, dm = dots
    if len(idx) == 0:
        return out
    iy = np.rint(c["y"][idx][:, None] + dy - Y0).astype(np.int64).ravel()
    ix = np.rint(c["x"][idx][:, None] + dx - X0).astype(np.int64).ravel()
    ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    if not ok.any():
        return out
    mass = sc["spec_peak"][name] * sc["field_mass_px"]
    m = (c["amount"][name][idx][:, None] * mass * dm).ravel()
    np.add.at(out, (iy[ok], ix[ok]), m[ok].astype(np.float32))
    return ndi.gaussian_filter(out, 1.4)
