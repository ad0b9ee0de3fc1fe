"""Receptors and exogenous (co-cultured) immune cells of a scene.

Resident cells carry receptors drawn by type. The exogenous pool (``Poisson(density * tissue area)`` NK and
CD8 T cells, independent of dose) carries receptors drawn by type, and each cell is placed with intensity
``tissue * (1 + attraction * sum_m R_m F_m(x))`` (``R_m``: it carries module m's receptor) in the gaps
between resident cells, corrected for the scarcity of gaps in dense nests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ._params import CELL_TYPES, MODULES, PIXEL_SIZE_UM, RECEPTORS, TYPE_INDEX
from ._render import sample_grid
from ._tissue import Tissue


def draw_resident_receptors(rng: np.random.Generator, ctype: np.ndarray,
                            receptor_probabilities: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    """{receptor: bool (n,)} for resident cells, drawn by type (types without probabilities carry none)."""
    n = len(ctype)
    rp = receptor_probabilities
    receptors = {r: np.zeros(n, bool) for r in RECEPTORS}
    for t, probs in rp.items():
        idx = np.nonzero(ctype == TYPE_INDEX[t])[0]
        for r in RECEPTORS:
            receptors[r][idx] = rng.random(len(idx)) < probs[r]
    return receptors


def draw_exogenous_pool(rng: np.random.Generator, tissue: Tissue, exogenous: dict[str, Any],
                        receptor_probabilities: dict[str, dict[str, float]], *,
                        infiltration_mult: float = 1.0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The co-cultured pool: its size (independent of dose), types and receptors.

    Parameters
    ----------
    exogenous : dict
        ``truth_parameters()["exogenous"]`` (``density_per_mm2``, ``types``, ``receptor_probabilities``).
    receptor_probabilities : dict
        Resident receptor probabilities, the fallback for types the pool's table lacks.

    Returns
    -------
    ctype : ndarray
        int64 (n_exo,) cell types.
    receptors : dict
        {receptor: bool (n_exo,)}.
    code : ndarray
        int64 (n_exo,) receptor combination, bit i = carries ``RECEPTORS[i]``.
    """
    exo = exogenous
    rp = receptor_probabilities
    grid_um = tissue.grid_um
    # exogenous (co-cultured) cells: a pool seeded onto the slice whose size does not depend on dose; each
    # cell carries receptors drawn by type and is placed with intensity tissue * (1 + beta * sum of the
    # fields of the modules whose receptor it carries). Receptor-negative cells of a module are therefore
    # never drawn to its zone by its own chemokine, and their number does not grow with dose.
    tissue_area_mm2 = float(tissue.mask.sum()) * grid_um * grid_um / 1e6
    n_exo = int(rng.poisson(exo["density_per_mm2"] * tissue_area_mm2 * infiltration_mult))
    etypes = list(exo["types"])
    tp = np.array([exo["types"][t] for t in etypes])
    e_t = np.array([TYPE_INDEX[t] for t in etypes], dtype=np.int64)[rng.choice(len(etypes), n_exo, p=tp / tp.sum())]
    erp = exo["receptor_probabilities"]
    e_rec = {r: rng.random(n_exo) < np.array([erp.get(CELL_TYPES[t], rp.get(CELL_TYPES[t], {})).get(r, 0.0)
                                                for t in e_t]) for r in RECEPTORS}
    code = np.zeros(n_exo, np.int64)
    for i, r in enumerate(RECEPTORS):
        code |= e_rec[r].astype(np.int64) << i
    return e_t, e_rec, code


def _field_centres(field_shape: tuple[int, int], field_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) of every field-grid cell centre, raveled in C order."""
    fh, fw = field_shape
    fyy = (np.arange(fh) + 0.5) * field_px - 0.5
    fxx = (np.arange(fw) + 0.5) * field_px - 0.5
    return np.repeat(fyy, fw), np.tile(fxx, fh)


def _inverse_free_fraction(rng: np.random.Generator, placer: GapPlacer, tissue: Tissue,
                           centres: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """1 / local fraction of free (gap) positions in the tissue at each field-grid cell (float32 (fh*fw,))."""
    g = tissue.grid_px
    gh, gw = tissue.mask.shape
    grid_um = tissue.grid_um
    # gaps are scarce inside the dense nests: weight candidates by 1 / (local fraction of free positions),
    # so that accepted cells follow the intended intensity rather than the gap density
    free = np.zeros((gh, gw), np.float32)
    if placer.tree is not None:
        qy = (np.arange(gh)[:, None] + rng.random((gh, gw))) * g - 0.5
        qx = (np.arange(gw)[None, :] + rng.random((gh, gw))) * g - 0.5
        dist, _ = placer.tree.query(np.column_stack([qy.ravel(), qx.ravel()]), k=1)
        free = (dist >= placer.d).reshape(gh, gw).astype(np.float32)
    else:
        free[:] = 1.0
    tis_g = tissue.mask.astype(np.float32)
    s_g = 10.0 / grid_um
    phi = ndi.gaussian_filter(free * tis_g, s_g) / np.maximum(ndi.gaussian_filter(tis_g, s_g), 1e-3)
    return 1.0 / np.maximum(sample_grid(phi.astype(np.float32), g, *centres), 0.05)


def _candidates(rng: np.random.Generator, groups: list[int], code: np.ndarray, tis_f: np.ndarray,
                inv_free: np.ndarray, fields: dict[str, np.ndarray], tissue: Tissue, *, shape: tuple[int, int],
                field_shape: tuple[int, int], field_px: int, attraction: float
                ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """Candidate positions per receptor group (30 per cell needed), drawn from the group's intensity."""
    H, W = shape
    fpx = field_px
    fw = field_shape[1]
    mod_of = {rec: m for m, rec in MODULES.items()}
    cands, need = [], []
    for cval in groups:
        w = tis_f.astype(np.float64)
        for i, r in enumerate(RECEPTORS):
            if cval >> i & 1:
                w = w + attraction * tis_f * fields[mod_of[r]].ravel()
        w = w * inv_free
        k_g = int((code == cval).sum())
        if w.sum() <= 0:
            cands.append((np.zeros(0), np.zeros(0)))
        else:
            kk = rng.choice(w.size, 30 * k_g, p=w / w.sum())
            cy_ = (kk // fw + rng.random(len(kk))) * fpx - 0.5
            cx_ = (kk % fw + rng.random(len(kk))) * fpx - 0.5
            ok_ = (cy_ >= 0) & (cy_ <= H - 1) & (cx_ >= 0) & (cx_ <= W - 1)
            ok_ &= sample_grid(tissue.score, tissue.grid_px, cy_, cx_) > 0
            cands.append((cy_[ok_], cx_[ok_]))
        need.append(k_g)
    return cands, need


def place_exogenous_cells(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, tissue: Tissue,
                          fields: dict[str, np.ndarray], *, ctype: np.ndarray, receptors: dict[str, np.ndarray],
                          code: np.ndarray, shape: tuple[int, int], field_shape: tuple[int, int], field_px: int,
                          attraction: float) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray],
                                                      list[dict[str, np.ndarray]]]:
    """Place the pool in the gaps between resident cells (``y``, ``x``), receptor group by receptor group.

    Parameters
    ----------
    ctype, receptors, code
        The pool, from :func:`draw_exogenous_pool`.
    fields : dict
        {module: float32 (fh, fw)} truth fields (the attraction).

    Returns
    -------
    ys, xs, types, receptors : list
        One entry per receptor group (sorted codes): the placed cells' y, x (float64), types (int64) and
        {receptor: bool}; a group may place fewer cells than it holds when gaps run out.
    """
    # exogenous cells are added in the gaps between resident cells (>= 7 µm from any nucleus centre)
    placer = GapPlacer(y, x, min_dist_px=7.0 / PIXEL_SIZE_UM)
    centres = _field_centres(field_shape, field_px)
    tis_f = sample_grid(tissue.score, tissue.grid_px, *centres) > 0
    inv_free = _inverse_free_fraction(rng, placer, tissue, centres)
    groups = sorted(set(code.tolist()))
    cands, need = _candidates(rng, groups, code, tis_f, inv_free, fields, tissue, shape=shape,
                              field_shape=field_shape, field_px=field_px, attraction=attraction)
    placed = placer.place_groups(cands, need, rng)
    new_y, new_x, new_t, new_rec = [], [], [], []
    for cval, got in zip(groups, placed):
        sel = np.nonzero(code == cval)[0][: len(got)]
        new_y.append(got[:, 0])
        new_x.append(got[:, 1])
        new_t.append(ctype[sel])
        new_rec.append({r: receptors[r][sel] for r in RECEPTORS})
    return new_y, new_x, new_t, new_rec


class GapPlacer:
    """Greedy placement of new cells at least ``min_dist_px`` from every existing and new cell centre."""

    def __init__(self, y: np.ndarray, x: np.ndarray, *, min_dist_px: float) -> None:
        from scipy.spatial import cKDTree

        self.tree = cKDTree(np.column_stack([y, x])) if len(y) else None
        self.d = float(min_dist_px)
        self.hash: dict[tuple[int, int], list[tuple[float, float]]] = {}

    def place_groups(self, cands: list[tuple[np.ndarray, np.ndarray]], need: list[int],
                     rng: np.random.Generator) -> list[np.ndarray]:
        """Place ``need[g]`` cells from each group's candidates, groups interleaved at random (fair crowding)."""
        pts = []
        for cy, cx in cands:
            if self.tree is not None and len(cy):
                dist, _ = self.tree.query(np.column_stack([cy, cx]), k=1)
                cy, cx = cy[dist >= self.d], cx[dist >= self.d]
            pts.append((cy.tolist(), cx.tolist()))
        out: list[list[tuple[float, float]]] = [[] for _ in need]
        ptr = [0] * len(need)
        left = np.array(need, dtype=np.float64)
        for gi in range(len(need)):
            if not pts[gi][0]:
                left[gi] = 0
        d2 = self.d * self.d
        while left.sum() > 0:
            gi = int(rng.choice(len(left), p=left / left.sum()))
            cy, cx = pts[gi]
            while ptr[gi] < len(cy):
                py, px_ = cy[ptr[gi]], cx[ptr[gi]]
                ptr[gi] += 1
                if not self._clash(py, px_, d2):
                    self.hash.setdefault((int(py // self.d), int(px_ // self.d)), []).append((py, px_))
                    out[gi].append((py, px_))
                    break
            left[gi] = 0 if (ptr[gi] >= len(cy) or len(out[gi]) >= need[gi]) else need[gi] - len(out[gi])
        return [np.array(o, dtype=np.float64).reshape(-1, 2) for o in out]

    def _clash(self, py: float, px_: float, d2: float) -> bool:
        gy, gx = int(py // self.d), int(px_ // self.d)
        for oy in (-1, 0, 1):
            for ox in (-1, 0, 1):
                for qy, qx in self.hash.get((gy + oy, gx + ox), ()):
                    if (qy - py) ** 2 + (qx - px_) ** 2 < d2:
                        return True
        return False

    def place(self, cy: np.ndarray, cx: np.ndarray, k: int) -> np.ndarray:
        out: list[tuple[float, float]] = []
        if k <= 0 or len(cy) == 0:
            return np.zeros((0, 2))
        if self.tree is not None:
            dist, _ = self.tree.query(np.column_stack([cy, cx]), k=1)
            ok = dist >= self.d
            cy, cx = cy[ok], cx[ok]
        d2 = self.d * self.d
        for py, px_ in zip(cy.tolist(), cx.tolist()):
            gy, gx = int(py // self.d), int(px_ // self.d)
            clash = False
            for oy in (-1, 0, 1):
                for ox in (-1, 0, 1):
                    for qy, qx in self.hash.get((gy + oy, gx + ox), ()):
                        if (qy - py) ** 2 + (qx - px_) ** 2 < d2:
                            clash = True
                            break
                    if clash:
                        break
                if clash:
                    break
            if clash:
                continue
            self.hash.setdefault((gy, gx), []).append((py, px_))
            out.append((py, px_))
            if len(out) >= k:
                break
        return np.array(out, dtype=np.float64).reshape(-1, 2)
