"""Resident cells of a scene: positions on a jittered hexagonal lattice, cell types, and nuclear/cell-body
geometry (irregular ellipses by type, stromal nuclei aligned with a fibre field)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._draws import smooth_field
from ._params import GEOMETRY, PIXEL_SIZE_UM, TYPE_INDEX
from ._render import sample_grid
from ._tissue import Tissue


def place_resident_cells(rng: np.random.Generator, shape: tuple[int, int], tissue: Tissue,
                         composition: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cell centres on a jittered hexagonal lattice inside the tissue, thinned in stroma and in the rim.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scene's generator (two jitter draws, one thinning draw).
    shape : (int, int)
        Image shape (Y, X), px.
    tissue : Tissue
        Tissue layout (outline, nests, distance to the edge).
    composition : dict
        ``truth_parameters()["composition"]`` (``nest_spacing_um``, ``stroma_keep``, ``rim_um``, ``rim_keep``).

    Returns
    -------
    y, x : ndarray
        float64 (n,) centres, px.
    in_nest, rim : ndarray
        bool (n,).
    """
    H, W = shape
    px = PIXEL_SIZE_UM
    g = tissue.grid_px
    sp = composition["nest_spacing_um"] / px
    rows = np.arange(0.5, H / (sp * 0.866) + 1)
    ys = []
    xs = []
    for j in rows:
        y = j * sp * 0.866
        xr = (np.arange(0, W / sp + 1) + 0.5 * (int(j) % 2)) * sp
        ys.append(np.full(len(xr), y))
        xs.append(xr)
    y = np.concatenate(ys) + rng.uniform(-0.28, 0.28, sum(len(a) for a in ys)) * sp
    x = np.concatenate(xs) + rng.uniform(-0.28, 0.28, len(y)) * sp
    inside = (y >= 0) & (y <= H - 1) & (x >= 0) & (x <= W - 1)
    y, x = y[inside], x[inside]
    ok = np.ones(len(y), bool)
    r3 = 3.0 / px
    for dy_, dx_ in ((0, 0), (r3, 0), (-r3, 0), (0, r3), (0, -r3)):
        ok &= sample_grid(tissue.score, g, y + dy_, x + dx_) > 0
    y, x = y[ok], x[ok]
    in_nest = sample_grid(tissue.nest_score, g, y, x) > 0
    rim = sample_grid(tissue.edge_dist_um.astype(np.float32), g, y, x) < composition["rim_um"]
    keep = np.where(in_nest, 1.0, composition["stroma_keep"]) * np.where(rim, composition["rim_keep"], 1.0)
    sel = rng.random(len(y)) < keep
    return y[sel], x[sel], in_nest[sel], rim[sel]


def draw_cell_types(rng: np.random.Generator, in_nest: np.ndarray, rim: np.ndarray, composition: dict[str, Any], *,
                    immune_mult: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Tumor in nests, stroma elsewhere, a share of immune cells by type; damaged cells in the rim.

    Returns
    -------
    ctype : ndarray
        int64 (n,) index into :data:`CELL_TYPES`.
    damaged : ndarray
        bool (n,).
    """
    n = len(in_nest)
    p_imm = np.where(in_nest, composition["immune_in_nest"], composition["immune_in_stroma"]) * immune_mult
    u = rng.random(n)
    ctype = np.where(in_nest, TYPE_INDEX["Tumor"], TYPE_INDEX["Stroma"]).astype(np.int64)
    imm = u < np.minimum(p_imm, 0.9)
    itypes = list(composition["immune_types"])
    ip = np.array([composition["immune_types"][t] for t in itypes])
    ctype[imm] = np.array([TYPE_INDEX[t] for t in itypes])[rng.choice(len(itypes), imm.sum(), p=ip / ip.sum())]
    damaged = rim & (rng.random(n) < composition["rim_damaged"])
    return ctype, damaged


def draw_shapes(rng: np.random.Generator, ctype: np.ndarray, damaged: np.ndarray, y: np.ndarray, x: np.ndarray,
                tissue: Tissue) -> dict[str, np.ndarray]:
    """Nucleus and cell-body ellipses by type; stromal nuclei follow a smooth fibre field, damaged ones shrink.

    Returns
    -------
    dict
        float64 (n,) each: ``a``, ``b`` (nuclear half axes, px), ``ac``, ``bc`` (cell-body half axes, px),
        ``theta`` (orientation, rad), ``h2``, ``h3`` (amplitudes of the 2- and 3-fold irregularity).
    """
    px = PIXEL_SIZE_UM
    n = len(ctype)
    a_ = np.empty(n)
    b_ = np.empty(n)
    cyt = np.empty(n)
    irr = np.empty(n)
    for t, (dr, ar, cr, ir) in GEOMETRY.items():
        idx = np.nonzero(ctype == TYPE_INDEX[t])[0]
        dmaj = rng.uniform(*dr, len(idx))
        a_[idx] = dmaj / 2
        b_[idx] = dmaj / 2 * rng.uniform(*ar, len(idx))
        cyt[idx] = rng.uniform(*cr, len(idx))
        irr[idx] = ir
    theta = rng.uniform(0, np.pi, n)
    fib = smooth_field(rng, tissue.score.shape, 40.0 / tissue.grid_um)
    st = ctype == TYPE_INDEX["Stroma"]
    theta[st] = np.pi * sample_grid(fib, tissue.grid_px, y[st], x[st]) + rng.normal(0, 0.25, st.sum())
    shrink = np.where(damaged, 0.7, 1.0)
    a_ *= shrink
    b_ *= shrink
    a_px, b_px = a_ / px, b_ / px
    ac_px, bc_px = a_px + cyt / px, b_px + cyt / px
    ac_px[st] = a_px[st] + 1.0 / px
    bc_px[st] = b_px[st] + cyt[st] / px
    h2 = irr * rng.uniform(0.3, 1.0, n)
    h3 = irr * rng.uniform(0.0, 0.6, n)
    return {"a": a_px, "b": b_px, "ac": ac_px, "bc": bc_px, "theta": theta, "h2": h2, "h3": h3}
