"""A stress sample's scene: tissue, tumor nests, cells, lineages, receptors, chemokine producers, truth zones
and recruited receptor+ cells. Everything is drawn from one ``numpy.random.Generator`` in a fixed order.

Lengths in µm unless the name says ``_px``; coarse fields live on a grid of ``grid_px`` image pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ._panel import CELL_TYPES, GEOMETRY, IMMUNE_TYPES, LINEAGE_MARKERS, MARKERS, MODULES, NK_CD8_DIM


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """A standardised (mean 0, SD 1) Gaussian random field of correlation length ``sigma_px``.

    >>> f = smooth_field(np.random.default_rng(0), (64, 64), 4.0)
    >>> round(float(f.std()), 6), f.shape
    (1.0, (64, 64))
    """
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return (f - f.mean()) / (f.std() or 1.0)


def upsample(field: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a coarse field by an integer ``factor``, cropped to ``shape`` (pixel centres aligned)."""
    h, w = shape
    yy = (np.arange(h) + 0.5) / factor - 0.5
    xx = (np.arange(w) + 0.5) / factor - 0.5
    return ndimage.map_coordinates(field, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")


def tissue_fields(rng: np.random.Generator, shape: tuple[int, int], px: float, grid_px: int,
                  p: dict[str, Any]) -> dict[str, np.ndarray]:
    """Explant outline (``tissue_level``: tissue where < 1), nests (coarse bool) and the fibre texture (full res)."""
    H, W = shape
    gh, gw = -(-H // grid_px), -(-W // grid_px)
    g_um = grid_px * px
    t = p["tissue"]
    yy, xx = np.mgrid[0:gh, 0:gw] * g_um + g_um / 2
    cy, cx = H * px / 2 * (1 + 0.05 * rng.standard_normal()), W * px / 2 * (1 + 0.05 * rng.standard_normal())
    ry, rx = (t["radius_fraction"] * s * px * (1 + 0.08 * rng.standard_normal()) for s in (H, W))
    level = np.hypot((yy - cy) / ry, (xx - cx) / rx) + t["outline_noise"] * smooth_field(rng, (gh, gw), 80 / g_um)
    tissue_c = level < 1
    nest_f = smooth_field(rng, (gh, gw), t["nest_correlation_um"] / g_um)
    cut = np.quantile(nest_f[tissue_c], 1 - t["nest_fraction"]) if tissue_c.any() else np.inf
    nests = tissue_c & (nest_f >= cut)
    s_short, s_long = (s / px for s in t["fibre_sigma_um"])
    fib = (np.abs(ndimage.gaussian_filter(rng.standard_normal(shape), (s_short, s_long)))
           + np.abs(ndimage.gaussian_filter(rng.standard_normal(shape), (s_long, s_short))))
    fib /= fib.mean() or 1.0
    return {"tissue_level": level, "tissue_c": tissue_c, "nests_c": nests, "fibre": fib.astype(np.float32)}


def hard_core(points: np.ndarray, min_dist: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Greedy hard-core thinning: visit ``points`` in ``order``; keep one and drop the others within its distance.

    >>> hard_core(np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]]), np.full(3, 2.0), np.arange(3)).tolist()
    [0, 2]
    """
    tree = cKDTree(points)
    alive = np.ones(len(points), bool)
    keep = []
    for i in order:
        if alive[i]:
            keep.append(i)
            alive[tree.query_ball_point(points[i], min_dist[i])] = False
    return np.array(sorted(keep), dtype=int)


def _coarse_points(rng, mask: np.ndarray, n: int, g_um: float) -> np.ndarray:
    """``n`` uniform points (µm, x/y) inside the True cells of a coarse mask."""
    iy, ix = np.nonzero(mask)
    if iy.size == 0 or n <= 0:
        return np.zeros((0, 2))
    k = rng.integers(0, iy.size, n)
    return np.column_stack([(ix[k] + rng.random(n)) * g_um, (iy[k] + rng.random(n)) * g_um])


def place_resident(rng, fields: dict[str, np.ndarray], g_um: float, p: dict[str, Any],
                   immune_scale: float) -> dict[str, np.ndarray]:
    """Resident cells: hard-core points in nests and stroma, then lineages by region."""
    nests, stroma = fields["nests_c"], fields["tissue_c"] & ~fields["nests_c"]
    pts, dmin, region = [], [], []
    for name, mask in (("nest", nests), ("stroma", stroma)):
        area_mm2 = mask.sum() * g_um**2 / 1e6
        n = rng.poisson(1.5 * p["density_per_mm2"][name] * area_mm2)
        pts.append(_coarse_points(rng, mask, n, g_um))
        dmin.append(np.full(len(pts[-1]), p["min_distance_um"][name]))
        region.append(np.full(len(pts[-1]), name == "nest"))
    xy, dmin, in_nest = np.concatenate(pts), np.concatenate(dmin), np.concatenate(region)
    keep = hard_core(xy, dmin, rng.permutation(len(xy))) if len(xy) else np.zeros(0, int)
    xy, in_nest = xy[keep], in_nest[keep]
    frac = np.where(in_nest, p["immune_fraction"]["nest"], min(0.9, p["immune_fraction"]["stroma"] * immune_scale))
    immune = rng.random(len(xy)) < frac
    names = list(p["immune_types"])
    probs = np.array([p["immune_types"][k] for k in names])
    itype = rng.choice(names, size=len(xy), p=probs / probs.sum())
    ctype = np.where(immune, itype, np.where(in_nest, "Tumor", "Stroma")).astype(object)
    return {"xy": xy, "type": ctype, "in_nest": in_nest, "recruited": np.zeros(len(xy), object)}


def territories(rng, shape_c: tuple[int, int], g_um: float, p: dict[str, Any]) -> dict[str, np.ndarray]:
    """Module territory fields ``H_m``: a shared damage field plus a module field (positively correlated)."""
    t = p["territory"]
    shared = smooth_field(rng, shape_c, t["correlation_um"] / g_um)
    a = np.sqrt(t["shared_fraction"])
    return {m: a * shared + np.sqrt(1 - a**2) * smooth_field(rng, shape_c, t["correlation_um"] / g_um)
            for m in MODULES}


def producer_fraction(dose_gy: float, module: dict[str, float], emax_scale: float = 1.0,
                      baseline_scale: float = 1.0) -> float:
    """Fraction of tumor cells producing a chemokine: ``baseline + Emax * D^n / (ED50^n + D^n)``.

    ``dose_gy`` is the photon-equivalent (effective) dose; ``emax_scale`` carries the patient's Emax factor
    times the radiation's conservation of the module, ``baseline_scale`` the patient's baseline factor.

    >>> round(producer_fraction(4.0, {"baseline": 0.01, "emax": 0.3, "ed50_gy": 4.0, "hill_n": 2.0}), 3)
    0.16
    """
    d = max(float(dose_gy), 0.0)
    n = module["hill_n"]
    return float(module["baseline"] * baseline_scale
                 + emax_scale * module["emax"] * d**n / (module["ed50_gy"] ** n + d**n))


def chemokine_fields(rng, cells: dict[str, Any], terr: dict[str, np.ndarray], tissue_c: np.ndarray, g_um: float,
                     dose_gy: float, p: dict[str, Any], emax_scale: dict[str, float],
                     baseline_scale: float = 1.0) -> dict[str, Any]:
    """Producers per module (tumor cells, weighted by territory) and the truth fields ``F_m`` on the coarse grid.

    ``dose_gy`` is the effective (photon-equivalent) dose; ``emax_scale`` {module: factor on Emax}.
    """
    tumor = np.flatnonzero(cells["type"] == "Tumor")
    gi = np.clip((cells["xy"][:, ::-1] / g_um).astype(int), 0, np.array(tissue_c.shape) - 1)
    sig = p["zone"]["sigma_um"] / g_um
    out: dict[str, Any] = {"producer": {}, "amount": {}, "F": {}}
    for m, spec in p["modules"].items():
        q = min(1.0, producer_fraction(dose_gy, spec, emax_scale[m], baseline_scale))
        n = rng.binomial(tumor.size, q) if tumor.size else 0
        w = np.exp(p["territory"]["patchiness"] * terr[m][gi[tumor, 0], gi[tumor, 1]])
        chosen = rng.choice(tumor, size=n, replace=False, p=w / w.sum()) if n else np.zeros(0, int)
        prod = np.zeros(len(cells["xy"]), bool)
        prod[chosen] = True
        amount = np.where(prod, rng.lognormal(-0.045, 0.3, len(prod)), 0.0)
        dep = np.zeros(tissue_c.shape)
        np.add.at(dep, (gi[chosen, 0], gi[chosen, 1]), amount[chosen])
        out["producer"][m], out["amount"][m] = prod, amount
        out["F"][m] = ndimage.gaussian_filter(dep, sig, mode="constant") * 2 * np.pi * sig**2 * tissue_c
    return out


def recruit(rng, cells: dict[str, Any], F: dict[str, np.ndarray], g_um: float, p: dict[str, Any]) -> dict[str, Any]:
    """Receptor+ cells drawn into each module's zone, ``Poisson(density * zone area)``, away from other cells."""
    r = p["recruitment"]
    level = p["zone"]["level"]
    xy = [cells["xy"]]
    new_type, new_mod = [], []
    tree = cKDTree(cells["xy"]) if len(cells["xy"]) else None
    for m, f in F.items():
        zone = f >= level
        n = rng.poisson(r["density_per_mm2_zone"] * zone.sum() * g_um**2 / 1e6)
        placed = np.zeros((0, 2))
        for _ in range(20 * n):
            if len(placed) >= n:
                break
            q = _coarse_points(rng, zone, 1, g_um)[0]
            near = tree is not None and tree.query(q)[0] < r["min_distance_um"]
            prior = np.concatenate(xy[1:] + [placed]) if len(xy) > 1 or len(placed) else np.zeros((0, 2))
            if near or (len(prior) and np.min(np.hypot(*(prior - q).T)) < r["min_distance_um"]):
                continue
            placed = np.vstack([placed, q])
        names = list(r["lineages"])
        pr = np.array([r["lineages"][k] for k in names])
        new_type += list(rng.choice(names, size=len(placed), p=pr / pr.sum()))
        new_mod += [m] * len(placed)
        xy.append(placed)
    k = len(new_type)
    return {"xy": np.concatenate(xy), "type": np.concatenate([cells["type"], np.array(new_type, object)]),
            "in_nest": np.concatenate([cells["in_nest"], np.zeros(k, bool)]),
            "recruited": np.concatenate([cells["recruited"], np.array(new_mod, object)])}


def marker_truth(rng, cells: dict[str, Any], producers: dict[str, np.ndarray], p: dict[str, Any]) -> dict[str, Any]:
    """Per-cell truth ``pos[marker]`` and expression ``level[marker]`` (0 for negatives; lognormal around 1)."""
    n = len(cells["xy"])
    ctype = cells["type"]
    sd = p["expression_sd_log"]
    pos = {mk: np.zeros(n, bool) for mk in MARKERS}
    level = {mk: np.zeros(n) for mk in MARKERS}
    for t, mks in LINEAGE_MARKERS.items():
        for mk in mks:
            pos[mk] |= ctype == t
    nk = ctype == "NK"
    cd8_nk = nk & (rng.random(n) < NK_CD8_DIM[0])
    pos["CD8"] |= cd8_nk
    for t in IMMUNE_TYPES:
        sel = ctype == t
        for rec, prob in p["receptor_probability"][t].items():
            pos[rec] |= sel & (rng.random(n) < prob)
    for m, rec in MODULES.items():
        pos[rec] |= cells["recruited"] == m
        pos[m] = producers[m].copy()
    for mk in MARKERS:
        if mk == "DAPI":
            continue
        level[mk] = np.where(pos[mk], rng.lognormal(-sd**2 / 2, sd, n), 0.0)
    level["CD8"] = np.where(cd8_nk, level["CD8"] * NK_CD8_DIM[1], level["CD8"])
    level["DAPI"] = np.array([GEOMETRY[t][3] for t in ctype]) * rng.lognormal(0, 0.12, n)
    return {"pos": pos, "level": level}


def nucleus_shapes(rng, ctype: np.ndarray) -> dict[str, np.ndarray]:
    """Elliptical nuclei by lineage: major/minor axis (µm), angle (rad), cytoplasm width (µm)."""
    n = len(ctype)
    g = [GEOMETRY[t] for t in ctype]
    u = rng.random((n, 3))
    major = np.array([a[0][0] + (a[0][1] - a[0][0]) * v for a, v in zip(g, u[:, 0])])
    aspect = np.array([a[1][0] + (a[1][1] - a[1][0]) * v for a, v in zip(g, u[:, 1])])
    cyto = np.array([a[2][0] + (a[2][1] - a[2][0]) * v for a, v in zip(g, u[:, 2])])
    return {"major_um": major, "minor_um": major * aspect, "angle": rng.uniform(0, np.pi, n), "cyto_um": cyto}


def type_index(ctype: np.ndarray) -> np.ndarray:
    """Index of each cell's type in :data:`CELL_TYPES`."""
    return np.array([CELL_TYPES.index(t) for t in ctype], dtype=np.int8)
