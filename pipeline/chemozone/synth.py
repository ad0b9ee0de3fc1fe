"""Synthetic explant cohort with ground truth (``chemozone synth``).

Mimics patient-derived tumor explants irradiated ex vivo (sham, photon, proton, carbon at several
doses), stained with a multiplex immunofluorescence panel and imaged at 0.5 µm/px. Every image comes
with its ground truth: nuclei and cell labels, the tissue mask, one zone mask per chemokine module and a
per-cell table, plus the cohort's true parameters and a chemozone config that analyses the cohort.

Model (all parameters in ``truth/cohort.json``)
-----------------------------------------------
* **Tissue**: an irregular explant outline (smooth random field around an ellipse) whose outer
  40 µm is a damaged rim (fewer cells, shrunken bright nuclei, weaker markers); panCK+ tumor nests
  (30-40 % of the tissue, a thresholded smooth field) in stroma; optionally a tear (excluded from the
  truth tissue, no cells) and an out-of-focus patch (blurred pixels, truth unchanged).
* **Cells** on a jittered hexagonal lattice (about 4000/mm² in nests, 1500/mm² in stroma; nests have
  touching nuclei). Nuclei are irregular ellipses by type (tumor 10-16 µm, lymphocytes/NK 6-8 µm,
  elongated stromal nuclei aligned with a smooth fibre field, macrophages 9-13 µm with a wide
  cytoplasm); cell bodies grow around them (each pixel goes to the body with the smallest normalised
  radius). Types: ``Tumor, Stroma, Macrophage, CD8 T, CD4 T, NK, Other immune``.
* **Dose**: per chemokine module m (CXCL8, CXCL10, CCL5) a tumor cell is a producer with probability
  ``p_m = baseline_m + Emax_m * c_m(r) * D_eff**n / (ED50**n + D_eff**n)``, ``D_eff = e(r) * dose``
  (effectiveness ``e``: photon 1.0, proton 1.1, carbon 2.5; conservation ``c``: CXCL10 0.5 after carbon).
  The senescent (p21+) fraction follows the same law. Producers are drawn without replacement with
  weights ``exp(k * H_m(x)) * odds**senescent``: ``H_m`` are smooth random fields with pairwise
  correlation -0.5 (``patch_territories``: independent draws combined by the factor of that correlation), so
  each module holds its own territories of the tumor and module zones overlap about as often as chance
  predicts; the senescence link is mild next to the patches. Patients carry random effects (ED50, Emax,
  immune density, infiltration).
* **Truth zones**: ``F_m(x) = sum_i w_i exp(-|x - x_i|² / (2 sigma²))`` over the producers i of module m
  (amount ``w_i``, mean 1), ``sigma = 12 µm``, computed on a 2 µm grid and interpolated bilinearly to
  full resolution; the zone is ``tissue & (F_m >= 0.5)`` (a lone average producer gives a disc of about
  14 µm radius). The chemokine channel carries perinuclear dots whose total intensity per producer is
  ``w_i * A * 2*pi*sigma²`` (A = the channel's amplitude), so smoothing the channel with a Gaussian of
  ~10 µm (which, with the ~8 µm ring of dots, gives an effective sigma of ~12 µm) yields
  ``background + A * F_m``: a threshold near ``background + A/2`` recovers the zone.
* **Infiltration**: resident immune cells are placed independently of the zones (uniform density over
  the tissue), with receptor flags drawn by type (NK mostly CXCR2+, CD8 T often CXCR3+/CCR5+...).
  An *exogenous* (co-cultured) pool (``exogenous`` column) of ``Poisson(density * tissue area)`` NK and
  CD8 T cells, whose size does not depend on dose, carries receptors drawn by type; each cell is placed
  with intensity ``tissue * (1 + beta * sum_m R_m F_m(x))`` where ``R_m`` = it carries module m's
  receptor (CXCR2↔CXCL8, CXCR3↔CXCL10, CCR5↔CCL5), corrected for the scarcity of gaps in dense nests.
  Receptor-negative cells are thus never drawn to a zone by its own chemokine, and their number and
  spread do not change with dose.
* **Imaging**: marker signal in its compartment (nuclear p21; membrane CD45/CD3/CD8/CD4/CD56/receptors;
  cytoplasmic panCK/CD68; chemokine dots), per-sample staining scale per channel, background and
  stromal autofluorescence (stronger in early channels), 3 % spillover between neighbouring channels,
  optical blur, Poisson–Gaussian noise, uint16.

Outputs of :func:`generate_cohort` (``OUT``)::

    images/{sample_id}.ome.tif     tiled OME-TIFF, uint16, channel names, 0.5 µm pixels
    samples.csv                    sample_id, image, patient, radiation, dose_gy, replicate
    truth/{sample_id}/nuclei.tif, cells.tif (uint32), tissue.tif, tumor.tif, zone_{m}.tif (uint8),
                      cells.parquet
    truth/cohort.json              all truth parameters, patient effects and per-sample realisations
    config.yaml                    a chemozone config that analyses the cohort (:func:`cohort_config`)

Same seed, same bytes: OME UUIDs and every random step derive from the seed.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ._synth_render import render_region, sample_grid
from .errors import ConfigError
from .grid import grid_factor

__all__ = [
    "DEFAULT_CHANNELS",
    "CELL_TYPES",
    "MODULES",
    "PRESETS",
    "PIXEL_SIZE_UM",
    "truth_parameters",
    "producer_probability",
    "patient_effects",
    "generate_sample",
    "generate_cohort",
    "cohort_config",
    "cli_synth",
]

PIXEL_SIZE_UM = 0.5
DEFAULT_CHANNELS = [
    "DAPI", "panCK", "CD45", "CD3", "CD8", "CD4", "CD56", "CD68",
    "CXCR2", "CXCR3", "CCR5", "p21", "CXCL8", "CXCL10", "CCL5",
]
LARGE_CHANNELS = ["DAPI", "panCK", "CD45", "CD3", "CD8", "CD56", "CXCR2", "CXCL8"]
CELL_TYPES = ["Tumor", "Stroma", "Macrophage", "CD8 T", "CD4 T", "NK", "Other immune"]
IMMUNE_TYPES = ["Macrophage", "CD8 T", "CD4 T", "NK", "Other immune"]
MODULES = {"CXCL8": "CXCR2", "CXCL10": "CXCR3", "CCL5": "CCR5"}
RECEPTORS = list(MODULES.values())
_T = {name: i for i, name in enumerate(CELL_TYPES)}

# compartment, amplitude (intensity at expression level 1), autofluorescence, background
_CHANNEL_SPEC = {
    "DAPI": ("dapi", 5000, 260, 180), "panCK": ("cytoplasm", 3500, 300, 150),
    "CD45": ("membrane", 3000, 220, 140), "CD3": ("membrane", 3000, 180, 130),
    "CD8": ("membrane", 2800, 150, 120), "CD4": ("membrane", 2200, 150, 120),
    "CD56": ("membrane", 2600, 120, 120), "CD68": ("cytoplasm", 3000, 120, 110),
    "CXCR2": ("membrane", 2000, 90, 110), "CXCR3": ("membrane", 2000, 90, 110),
    "CCR5": ("membrane", 2000, 90, 110), "p21": ("nucleus", 3500, 80, 100),
    "CXCL8": ("dots", 700, 60, 100), "CXCL10": ("dots", 700, 60, 100), "CCL5": ("dots", 700, 60, 100),
    "aSMA": ("cytoplasm", 3000, 150, 120), "NKp46": ("membrane", 2200, 90, 110),
    "CD16": ("membrane", 2200, 90, 110), "Ki67": ("nucleus", 3000, 80, 100),
    "FOXP3": ("nucleus", 2500, 80, 100),
}
_GENERIC_SPEC = ("membrane", 2000, 80, 100)

# geometry by type: nucleus major diameter (µm) range, aspect (minor/major) range, cytoplasm (µm), irregularity
_GEOMETRY = {
    "Tumor": ((10.0, 16.0), (0.70, 0.95), (3.0, 5.0), 0.07),
    "Stroma": ((10.0, 15.0), (0.25, 0.40), (1.5, 2.5), 0.04),
    "Macrophage": ((9.0, 13.0), (0.65, 0.90), (5.0, 7.0), 0.12),
    "CD8 T": ((6.0, 8.0), (0.85, 1.0), (1.2, 2.0), 0.04),
    "CD4 T": ((6.0, 8.0), (0.85, 1.0), (1.2, 2.0), 0.04),
    "NK": ((6.5, 8.0), (0.85, 1.0), (1.5, 2.5), 0.04),
    "Other immune": ((6.5, 9.0), (0.80, 1.0), (1.5, 2.5), 0.08),
}
_DAPI_LEVEL = {"Tumor": 0.8, "Stroma": 1.0, "Macrophage": 0.85, "CD8 T": 1.25, "CD4 T": 1.25, "NK": 1.2,
               "Other immune": 1.15}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"patients": 2, "size_px": 256, "design": [("sham", 0.0), ("photon", 10.0)],
             "channels": DEFAULT_CHANNELS, "features": False},
    "demo": {"patients": 2, "size_px": 1024,
             "design": [("sham", 0.0), ("photon", 2.0), ("photon", 5.0), ("photon", 10.0), ("photon", 20.0),
                        ("carbon", 2.0), ("carbon", 5.0)],
             "channels": DEFAULT_CHANNELS, "features": True},
    "stats": {"patients": 6, "size_px": 1024,
              "design": [("sham", 0.0), ("photon", 2.0), ("photon", 5.0), ("photon", 10.0), ("photon", 20.0),
                         ("proton", 2.0), ("proton", 5.0), ("proton", 10.0),
                         ("carbon", 2.0), ("carbon", 5.0), ("carbon", 10.0)],
              "channels": DEFAULT_CHANNELS, "features": True},
    "large": {"patients": 1, "size_px": 16384, "design": [("photon", 10.0)],
              "channels": LARGE_CHANNELS, "features": True},
}
"""Cohort designs: patients, image side (px), (radiation, dose_gy) per patient, default channels,
and whether tears / out-of-focus patches may occur."""

_RENDER_TILE_PX = 1024
_IN_MEMORY_MAX_PX = 4096 * 4096
_STREAM_ABOVE_PX = 2048 * 2048  # larger images are rendered tile by tile through a temporary zarr


# ------------------------------------------------------------------------------------ truth model
def truth_parameters() -> dict[str, Any]:
    """The cohort's true parameters (written to ``truth/cohort.json``).

    Returns
    -------
    dict
        ``effectiveness`` per radiation, ``modules`` {module: receptor, baseline, emax, ed50_gy,
        hill_n, conservation {radiation: factor}}, ``senescence``, zone definition, receptor
        probabilities, composition and exogenous-infiltration parameters.
    """
    return {
        "pixel_size_um": PIXEL_SIZE_UM,
        "effectiveness": {"sham": 1.0, "photon": 1.0, "proton": 1.1, "carbon": 2.5},
        "modules": {
            "CXCL8": {"receptor": "CXCR2", "baseline": 0.03, "emax": 0.35, "ed50_gy": 3.0, "hill_n": 2.0,
                      "conservation": {"photon": 1.0, "proton": 1.0, "carbon": 0.9}},
            "CXCL10": {"receptor": "CXCR3", "baseline": 0.02, "emax": 0.25, "ed50_gy": 4.0, "hill_n": 2.0,
                       "conservation": {"photon": 1.0, "proton": 0.9, "carbon": 0.5}},
            "CCL5": {"receptor": "CCR5", "baseline": 0.02, "emax": 0.20, "ed50_gy": 4.0, "hill_n": 2.0,
                     "conservation": {"photon": 1.0, "proton": 1.0, "carbon": 1.0}},
        },
        "senescence": {"baseline": 0.05, "emax": 0.40, "ed50_gy": 4.0, "hill_n": 2.0,
                       "conservation": {"photon": 1.0, "proton": 1.0, "carbon": 1.0}},
        "senescent_producer_odds": 3.0,
        "producer_patchiness": 4.0,
        "patch_correlation_um": 50.0,
        "patch_territories": True,
        "producer_amount_sd_log": 0.3,
        "zone": {"sigma_um": 12.0, "level": 0.5, "grid_um": 2.0,
                 "definition": "tissue & sum_i w_i exp(-d_i^2 / (2 sigma^2)) >= level, producers i of the module"},
        "chemokine_amplitude": 700.0,
        "receptor_probabilities": {
            "NK": {"CXCR2": 0.70, "CXCR3": 0.20, "CCR5": 0.30},
            "CD8 T": {"CXCR2": 0.05, "CXCR3": 0.60, "CCR5": 0.50},
            "CD4 T": {"CXCR2": 0.03, "CXCR3": 0.30, "CCR5": 0.30},
            "Macrophage": {"CXCR2": 0.05, "CXCR3": 0.05, "CCR5": 0.30},
            "Other immune": {"CXCR2": 0.30, "CXCR3": 0.05, "CCR5": 0.05},
        },
        "composition": {
            "nest_spacing_um": 15.0, "stroma_keep": 0.32, "rim_um": 40.0, "rim_keep": 0.65, "rim_damaged": 0.45,
            "immune_in_stroma": 0.28, "immune_in_nest": 0.28 * 0.32,
            "immune_types": {"Macrophage": 0.38, "CD8 T": 0.15, "CD4 T": 0.22, "NK": 0.10, "Other immune": 0.15},
            "nest_fraction": [0.30, 0.40],
        },
        "exogenous": {
            "density_per_mm2": 700.0,
            "types": {"NK": 0.5, "CD8 T": 0.5},
            "receptor_probabilities": {"NK": {"CXCR2": 0.70, "CXCR3": 0.50, "CCR5": 0.50},
                                       "CD8 T": {"CXCR2": 0.40, "CXCR3": 0.70, "CCR5": 0.60}},
            "attraction": 20.0,
            "placement": "intensity ∝ tissue * (1 + attraction * sum_m R_m F_m(x)), R_m = carries module m's receptor",
        },
        "imaging": {"spillover": 0.03, "stain_sd_log": 0.12, "gain": 1.5, "read_noise": 6.0,
                    "channel_spec": {k: dict(zip(("compartment", "amplitude", "autofluorescence", "background"), v))
                                     for k, v in _CHANNEL_SPEC.items()}},
        "patient_sd_log": {"ed50": 0.2, "emax": 0.12, "immune": 0.35, "infiltration": 0.3},
    }


def _hill(d: float, ed50: float, n: float) -> float:
    if d <= 0:
        return 0.0
    return d**n / (ed50**n + d**n)


def producer_probability(dose_gy: float, radiation: str, module: str, *, params: dict | None = None,
                         patient: dict | None = None) -> float:
    """True producer probability of a tumor cell for a module (``senescence`` for the p21+ fraction).

    ``p = baseline + Emax * conservation[radiation] * H(effectiveness[radiation] * dose_gy)`` with
    ``H(D) = D**n / (ED50**n + D**n)``; ``patient`` (from :func:`patient_effects`) scales ED50 and Emax.

    >>> round(producer_probability(0.0, "sham", "CXCL8"), 3)
    0.03
    >>> producer_probability(20, "photon", "CXCL8") > producer_probability(2, "photon", "CXCL8")
    True
    """
    params = params or truth_parameters()
    mp = params["senescence"] if module == "senescence" else params["modules"][module]
    eff = params["effectiveness"].get(radiation, 1.0)
    cons = mp["conservation"].get(radiation, 1.0)
    pe = patient or {}
    ed50 = mp["ed50_gy"] * pe.get("ed50_mult", 1.0)
    emax = mp["emax"] * pe.get("emax_mult", 1.0)
    p = mp["baseline"] + emax * cons * _hill(eff * float(dose_gy), ed50, mp["hill_n"])
    return float(min(max(p, 0.0), 0.95))


def patient_effects(index: int, *, seed: int = 0, params: dict | None = None) -> dict[str, float]:
    """Random effects of patient ``index`` (log-normal multipliers), deterministic in ``seed``."""
    params = params or truth_parameters()
    sd = params["patient_sd_log"]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1000 + int(index)]))
    z = rng.standard_normal(4)
    return {"ed50_mult": float(np.exp(sd["ed50"] * z[0])), "emax_mult": float(np.exp(sd["emax"] * z[1])),
            "immune_mult": float(np.exp(sd["immune"] * z[2])), "infiltration_mult": float(np.exp(sd["infiltration"] * z[3]))}


def _check_channels(channels: Sequence[str] | None) -> list[str]:
    ch = list(channels) if channels is not None else list(DEFAULT_CHANNELS)
    ch = [c.strip() for c in ch if c.strip()]
    if "DAPI" not in ch:
        raise ConfigError(f"synth channels {ch}: 'DAPI' is required (nuclear segmentation); add it to --channels")
    dup = sorted({c for c in ch if ch.count(c) > 1})
    if dup:
        raise ConfigError(f"synth channels: {dup} given more than once; list each channel once")
    return ch


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma_px`` (grid px)."""
    n = rng.standard_normal(shape).astype(np.float32)
    f = ndi.gaussian_filter(n, max(sigma_px, 0.5), mode="wrap")
    return (f - f.mean()) / (f.std() or 1.0)


def _territory_factor(n_modules: int) -> np.ndarray:
    """Lower-triangular ``L`` (n, n) with ``L @ L.T`` = unit variances, pairwise correlation ``-1/(n-1)``.

    The matrix is singular (the fields sum to zero), so the last row puts no weight on its own draw.
    """
    c = np.full((n_modules, n_modules), -1.0 / max(n_modules - 1, 1)) + np.eye(n_modules) * (1.0 + 1.0 / max(n_modules - 1, 1))
    if n_modules == 1:
        return np.ones((1, 1))
    low = np.zeros_like(c)
    for i in range(n_modules):
        for j in range(i + 1):
            v = c[i, j] - low[i, :j] @ low[j, :j]
            if i == j:
                low[i, i] = math.sqrt(max(v, 0.0))
            else:
                low[i, j] = v / low[j, j] if low[j, j] > 1e-12 else 0.0
    return low


def _gumbel_topk(rng: np.random.Generator, logw: np.ndarray, k: int) -> np.ndarray:
    """Indices of a weighted sample of size ``k`` without replacement (weights ``exp(logw)``)."""
    if k <= 0 or len(logw) == 0:
        return np.zeros(0, np.int64)
    keys = logw + rng.gumbel(size=len(logw))
    return np.sort(np.argsort(-keys, kind="stable")[: min(k, len(logw))])


# ---------------------------------------------------------------------------------------- the scene
def _build_scene(shape: tuple[int, int], *, dose_gy: float, radiation: str, patient: dict[str, float],
                 seed: int | Sequence[int], channels: list[str], params: dict[str, Any],
                 tear: bool, out_of_focus: bool) -> dict[str, Any]:
    """Global, cheap part of a sample: coarse fields and the cell list with all truth attributes."""
    H, W = shape
    px = PIXEL_SIZE_UM
    ss = np.random.SeedSequence(seed if isinstance(seed, int) else list(seed))
    rng = np.random.default_rng(ss)
    comp = params["composition"]

    # ------------------------------------------------------------------ tissue outline, tear, nests
    g = 8  # tissue grid: 4 µm
    gh, gw = -(-H // g), -(-W // g)
    gyy, gxx = np.meshgrid((np.arange(gh) + 0.5) * g, (np.arange(gw) + 0.5) * g, indexing="ij")
    cy, cx = H * (0.5 + rng.normal(0, 0.04)), W * (0.5 + rng.normal(0, 0.04))
    ry, rx = 0.47 * H * rng.uniform(0.92, 1.1), 0.47 * W * rng.uniform(0.92, 1.1)
    d = np.sqrt(((gyy - cy) / ry) ** 2 + ((gxx - cx) / rx) ** 2)
    side_um = min(H, W) * px
    corr_outline = max(30.0, 0.1 * side_um) / (g * px)
    score = (1.0 - d) + 0.12 * _smooth_field(rng, (gh, gw), corr_outline)
    grid_um = g * px
    tear_info = None
    if tear:
        # a random-walk crack, 8-14 µm wide, across part of the tissue
        n_steps = 60
        length = rng.uniform(0.4, 0.7) * min(H, W)
        ang = rng.uniform(0, 2 * np.pi)
        turn = np.cumsum(rng.normal(0, 0.08, n_steps)) + ang
        start = np.array([cy, cx]) + rng.normal(0, 0.15, 2) * np.array([H, W])
        steps = np.stack([np.sin(turn), np.cos(turn)], 1) * (length / n_steps)
        pts = start + np.cumsum(steps, 0) - steps.sum(0) / 2
        line = np.zeros((gh, gw), bool)
        fine = np.concatenate([np.linspace(pts[i], pts[i + 1], 6) for i in range(n_steps - 1)])
        iy = np.clip((fine[:, 0] / g).astype(int), 0, gh - 1)
        ix = np.clip((fine[:, 1] / g).astype(int), 0, gw - 1)
        line[iy, ix] = True
        dist_um = ndi.distance_transform_edt(~line) * grid_um
        half = rng.uniform(4.0, 7.0)
        score = np.minimum(score, (dist_um - half - grid_um / 2) / 60.0)
        tear_info = {"half_width_um": float(half), "length_um": float(length * px)}
    tissue_score = score.astype(np.float32)
    tissue_grid = tissue_score > 0
    edge_dist_um = ndi.distance_transform_edt(tissue_grid) * grid_um
    nest_field = _smooth_field(rng, (gh, gw), 22.0 / grid_um)
    nest_frac = rng.uniform(*comp["nest_fraction"])
    q = float(np.quantile(nest_field[tissue_grid], 1 - nest_frac)) if tissue_grid.any() else 0.0
    nest_score = (nest_field - q).astype(np.float32)
    oof = None
    oof_info = None
    if out_of_focus:
        iy, ix = np.nonzero(tissue_grid)
        if len(iy):
            k = rng.integers(len(iy))
            r = rng.uniform(0.1, 0.18) * min(gh, gw)
            dd = np.sqrt((np.arange(gh)[:, None] - iy[k]) ** 2 + (np.arange(gw)[None, :] - ix[k]) ** 2)
            oof = np.clip(1.6 * np.exp(-(dd**2) / (2 * r**2)) - 0.3, 0, 1).astype(np.float32)
            oof_info = {"center_um": [float((ix[k] + 0.5) * grid_um), float((iy[k] + 0.5) * grid_um)],
                        "radius_um": float(r * grid_um)}

    # ------------------------------------------------------------------ cell lattice
    sp = comp["nest_spacing_um"] / px
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
        ok &= sample_grid(tissue_score, g, y + dy_, x + dx_) > 0
    y, x = y[ok], x[ok]
    in_nest = sample_grid(nest_score, g, y, x) > 0
    rim = sample_grid(edge_dist_um.astype(np.float32), g, y, x) < comp["rim_um"]
    keep = np.where(in_nest, 1.0, comp["stroma_keep"]) * np.where(rim, comp["rim_keep"], 1.0)
    sel = rng.random(len(y)) < keep
    y, x, in_nest, rim = y[sel], x[sel], in_nest[sel], rim[sel]
    n = len(y)

    # ------------------------------------------------------------------ types
    imm_mult = patient.get("immune_mult", 1.0)
    p_imm = np.where(in_nest, comp["immune_in_nest"], comp["immune_in_stroma"]) * imm_mult
    u = rng.random(n)
    ctype = np.where(in_nest, _T["Tumor"], _T["Stroma"]).astype(np.int64)
    imm = u < np.minimum(p_imm, 0.9)
    itypes = list(comp["immune_types"])
    ip = np.array([comp["immune_types"][t] for t in itypes])
    ctype[imm] = np.array([_T[t] for t in itypes])[rng.choice(len(itypes), imm.sum(), p=ip / ip.sum())]
    damaged = rim & (rng.random(n) < comp["rim_damaged"])

    # ------------------------------------------------------------------ dose biology
    eff = params["effectiveness"].get(radiation, 1.0)
    d_eff = eff * float(dose_gy)
    fpx = grid_factor(px, params["zone"]["grid_um"])  # field grid: 2 µm
    fh, fw = -(-H // fpx), -(-W // fpx)
    corr_patch = params["patch_correlation_um"] / params["zone"]["grid_um"]
    tumor_idx = np.nonzero(ctype == _T["Tumor"])[0]
    senescent = np.zeros(n, bool)
    p_sen = producer_probability(dose_gy, radiation, "senescence", params=params, patient=patient)
    g_sen = _smooth_field(rng, (fh, fw), corr_patch)
    k = rng.binomial(len(tumor_idx), p_sen)
    logw = 0.8 * sample_grid(g_sen, fpx, y[tumor_idx], x[tumor_idx])
    senescent[tumor_idx[_gumbel_topk(rng, logw, k)]] = True
    amount: dict[str, np.ndarray] = {}
    realized: dict[str, Any] = {"senescent_probability": p_sen}
    # one independent patch field per module, drawn in module order; with ``patch_territories`` module m's
    # field is the combination sum_j L[m, j] G_j of the draws so far (L: lower-triangular factor of the
    # territory correlation, pairwise -1/(M-1)), so the modules hold separate territories of the tumor and
    # their zones overlap about as often as chance predicts over the tissue (producers can only be tumor
    # cells, which by itself co-localises the zones)
    terr = _territory_factor(len(MODULES)) if params.get("patch_territories", False) else None
    raw: list[np.ndarray] = []
    for mi, m in enumerate(MODULES):
        pm = producer_probability(dose_gy, radiation, m, params=params, patient=patient)
        raw.append(_smooth_field(rng, (fh, fw), corr_patch))
        gm = raw[-1] if terr is None else sum(float(terr[mi, j]) * raw[j] for j in range(mi + 1)).astype(np.float32)
        k = rng.binomial(len(tumor_idx), pm)
        logw = params["producer_patchiness"] * sample_grid(gm, fpx, y[tumor_idx], x[tumor_idx]) \
            + math.log(params["senescent_producer_odds"]) * senescent[tumor_idx]
        chosen = tumor_idx[_gumbel_topk(rng, logw, k)]
        a = np.zeros(n)
        a[chosen] = np.exp(params["producer_amount_sd_log"] * rng.standard_normal(len(chosen))
                           - 0.5 * params["producer_amount_sd_log"] ** 2)
        amount[m] = a
        realized[f"{m}_probability"] = pm

    # ------------------------------------------------------------------ truth fields (2 µm grid)
    sig_g = params["zone"]["sigma_um"] / params["zone"]["grid_um"]
    fields = {}
    for m in MODULES:
        idx = np.nonzero(amount[m] > 0)[0]
        splat = np.zeros((fh, fw), np.float64)
        if len(idx):
            gy = (y[idx] + 0.5) / fpx - 0.5
            gx = (x[idx] + 0.5) / fpx - 0.5
            y0 = np.floor(gy).astype(int)
            x0 = np.floor(gx).astype(int)
            fy, fx = gy - y0, gx - x0
            for oy, ox, wgt in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 1, fy * fx)):
                yy_, xx_ = np.clip(y0 + oy, 0, fh - 1), np.clip(x0 + ox, 0, fw - 1)
                np.add.at(splat, (yy_, xx_), wgt * amount[m][idx])
        f = ndi.gaussian_filter(splat, sig_g, mode="constant", truncate=4.0) * (2 * np.pi * sig_g**2)
        fields[m] = f.astype(np.float32)
    level_zone = params["zone"]["level"]

    # ------------------------------------------------------------------ receptors and exogenous cells
    rp = params["receptor_probabilities"]
    receptors = {r: np.zeros(n, bool) for r in RECEPTORS}
    for t, probs in rp.items():
        idx = np.nonzero(ctype == _T[t])[0]
        for r in RECEPTORS:
            receptors[r][idx] = rng.random(len(idx)) < probs[r]
    exo = params["exogenous"]
    infil = patient.get("infiltration_mult", 1.0)
    # exogenous (co-cultured) cells: a pool seeded onto the slice whose size does not depend on dose; each
    # cell carries receptors drawn by type and is placed with intensity tissue * (1 + beta * sum of the
    # fields of the modules whose receptor it carries). Receptor-negative cells of a module are therefore
    # never drawn to its zone by its own chemokine, and their number does not grow with dose.
    tissue_area_mm2 = float(tissue_grid.sum()) * grid_um * grid_um / 1e6
    n_exo = int(rng.poisson(exo["density_per_mm2"] * tissue_area_mm2 * infil))
    etypes = list(exo["types"])
    tp = np.array([exo["types"][t] for t in etypes])
    e_t = np.array([_T[t] for t in etypes], dtype=np.int64)[rng.choice(len(etypes), n_exo, p=tp / tp.sum())]
    erp = exo["receptor_probabilities"]
    e_rec = {r: rng.random(n_exo) < np.array([erp.get(CELL_TYPES[t], rp.get(CELL_TYPES[t], {})).get(r, 0.0)
                                                for t in e_t]) for r in RECEPTORS}
    mod_of = {rec: m for m, rec in MODULES.items()}
    code = np.zeros(n_exo, np.int64)
    for i, r in enumerate(RECEPTORS):
        code |= e_rec[r].astype(np.int64) << i
    # exogenous cells are added in the gaps between resident cells (>= 7 µm from any nucleus centre)
    placer = _GapPlacer(y, x, min_dist_px=7.0 / px)
    fyy = (np.arange(fh) + 0.5) * fpx - 0.5
    fxx = (np.arange(fw) + 0.5) * fpx - 0.5
    tis_f = sample_grid(tissue_score, g, np.repeat(fyy, fw), np.tile(fxx, fh)) > 0
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
    tis_g = tissue_grid.astype(np.float32)
    s_g = 10.0 / grid_um
    phi = ndi.gaussian_filter(free * tis_g, s_g) / np.maximum(ndi.gaussian_filter(tis_g, s_g), 1e-3)
    inv_free = 1.0 / np.maximum(sample_grid(phi.astype(np.float32), g, np.repeat(fyy, fw), np.tile(fxx, fh)), 0.05)
    groups = sorted(set(code.tolist()))
    cands, need = [], []
    for cval in groups:
        w = tis_f.astype(np.float64)
        for i, r in enumerate(RECEPTORS):
            if cval >> i & 1:
                w = w + exo["attraction"] * tis_f * fields[mod_of[r]].ravel()
        w = w * inv_free
        k_g = int((code == cval).sum())
        if w.sum() <= 0:
            cands.append((np.zeros(0), np.zeros(0)))
        else:
            kk = rng.choice(w.size, 30 * k_g, p=w / w.sum())
            cy_ = (kk // fw + rng.random(len(kk))) * fpx - 0.5
            cx_ = (kk % fw + rng.random(len(kk))) * fpx - 0.5
            ok_ = (cy_ >= 0) & (cy_ <= H - 1) & (cx_ >= 0) & (cx_ <= W - 1)
            ok_ &= sample_grid(tissue_score, g, cy_, cx_) > 0
            cands.append((cy_[ok_], cx_[ok_]))
        need.append(k_g)
    placed = placer.place_groups(cands, need, rng)
    new_y, new_x, new_t, new_rec = [], [], [], []
    for cval, got in zip(groups, placed):
        sel = np.nonzero(code == cval)[0][: len(got)]
        new_y.append(got[:, 0]); new_x.append(got[:, 1]); new_t.append(e_t[sel])
        new_rec.append({r: e_rec[r][sel] for r in RECEPTORS})
    realized["exogenous"] = int(sum(len(v) for v in new_y))
    n_new = sum(len(v) for v in new_y)
    y = np.concatenate([y] + new_y)
    x = np.concatenate([x] + new_x)
    ctype = np.concatenate([ctype] + new_t).astype(np.int64)
    for r in RECEPTORS:
        receptors[r] = np.concatenate([receptors[r]] + [d[r] for d in new_rec])
    exogenous = np.concatenate([np.zeros(n, bool), np.ones(n_new, bool)])
    senescent = np.concatenate([senescent, np.zeros(n_new, bool)])
    damaged = np.concatenate([damaged, np.zeros(n_new, bool)])
    in_nest = np.concatenate([in_nest, sample_grid(nest_score, g, y[n:], x[n:]) > 0])
    amount = {m: np.concatenate([a, np.zeros(n_new)]) for m, a in amount.items()}
    in_zone = {m: (sample_grid(fields[m], fpx, y, x) >= level_zone) for m in MODULES}
    n = len(y)
    senescent &= ctype == _T["Tumor"]

    # ------------------------------------------------------------------ geometry
    a_ = np.empty(n)
    b_ = np.empty(n)
    cyt = np.empty(n)
    irr = np.empty(n)
    for t, (dr, ar, cr, ir) in _GEOMETRY.items():
        idx = np.nonzero(ctype == _T[t])[0]
        dmaj = rng.uniform(*dr, len(idx))
        a_[idx] = dmaj / 2
        b_[idx] = dmaj / 2 * rng.uniform(*ar, len(idx))
        cyt[idx] = rng.uniform(*cr, len(idx))
        irr[idx] = ir
    theta = rng.uniform(0, np.pi, n)
    fib = _smooth_field(rng, (gh, gw), 40.0 / grid_um)
    st = ctype == _T["Stroma"]
    theta[st] = np.pi * sample_grid(fib, g, y[st], x[st]) + rng.normal(0, 0.25, st.sum())
    shrink = np.where(damaged, 0.7, 1.0)
    a_ *= shrink
    b_ *= shrink
    a_px, b_px = a_ / px, b_ / px
    ac_px, bc_px = a_px + cyt / px, b_px + cyt / px
    ac_px[st] = a_px[st] + 1.0 / px
    bc_px[st] = b_px[st] + cyt[st] / px
    h2 = irr * rng.uniform(0.3, 1.0, n)
    h3 = irr * rng.uniform(0.0, 0.6, n)

    # ------------------------------------------------------------------ marker truth and levels
    pos = _marker_truth(ctype, senescent, receptors, amount, d_eff, channels, rng)
    level: dict[str, np.ndarray] = {}
    dmg = np.where(damaged, 0.5, 1.0)
    for name in channels:
        if name == "DAPI":
            lv = np.array([_DAPI_LEVEL[CELL_TYPES[t]] for t in ctype]) * np.exp(0.12 * rng.standard_normal(n))
            level[name] = lv * np.where(damaged, 1.6, 1.0)
            continue
        if name in MODULES:
            level[name] = np.zeros(n)
            continue
        p = pos[name]
        lv = np.where(p, np.exp(0.3 * rng.standard_normal(n) - 0.045), 0.04 * np.exp(0.3 * rng.standard_normal(n)))
        if name == "CD4":
            lv = np.where(ctype == _T["Macrophage"], 0.15 * np.exp(0.2 * rng.standard_normal(n)), lv)
        level[name] = lv * dmg
    spec = {}
    stain_sd = params["imaging"]["stain_sd_log"]
    stain = {}
    for name in channels:
        comp_, peak, af, bg = _CHANNEL_SPEC.get(name, _GENERIC_SPEC)
        spec[name] = {"compartment": comp_, "peak": float(peak), "af": float(af), "background": float(bg)}
        stain[name] = float(np.exp(stain_sd * rng.standard_normal()))
    for m in MODULES:
        spec.setdefault(m, {"compartment": "dots", "peak": params["chemokine_amplitude"], "af": 60.0, "background": 100.0})
    nd = 24
    dots = {}
    for m in MODULES:
        idx = np.nonzero(amount[m] > 0)[0]
        ang = rng.uniform(0, 2 * np.pi, (len(idx), nd))
        rn = ((a_px[idx] + b_px[idx]) / 2)[:, None]
        rc = ((ac_px[idx] + bc_px[idx]) / 2)[:, None]
        rad = rn + rng.uniform(0.1, 0.9, (len(idx), nd)) * (rc - rn)
        dm = rng.uniform(0.5, 1.5, (len(idx), nd))
        dots[m] = (idx, rad * np.cos(ang), rad * np.sin(ang), dm / dm.sum(1, keepdims=True))
    sig_px = params["zone"]["sigma_um"] / px
    cells = {
        "x": x, "y": y, "type": ctype, "a": a_px, "b": b_px, "ac": ac_px, "bc": bc_px,
        "cos": np.cos(theta), "sin": np.sin(theta), "h2": h2, "p2": rng.uniform(0, 2 * np.pi, n),
        "h3": h3, "p3": rng.uniform(0, 2 * np.pi, n), "bbox_r": np.maximum(ac_px, bc_px) * 1.2 + 2,
        "level": level, "amount": amount, "dots": dots, "pos": pos, "senescent": senescent,
        "exogenous": exogenous, "damaged": damaged, "in_nest": in_nest, "in_zone": in_zone,
        "receptors": receptors,
    }
    return {
        "shape": (H, W), "channels": channels, "channel_spec": spec, "stain": stain,
        "spec_peak": {m: spec[m]["peak"] for m in spec}, "field_mass_px": 2 * np.pi * sig_px**2,
        "grid_px": g, "field_px": fpx, "tissue_score": tissue_score, "nest_score": nest_score, "oof": oof,
        "texture": _smooth_field(rng, (fh, fw), 1.5), "fields": fields, "zone_level": float(params["zone"]["level"]),
        "spillover": params["imaging"]["spillover"], "gain": params["imaging"]["gain"],
        "read_noise": params["imaging"]["read_noise"], "cells": cells, "dots_per_cell": nd,
        "seed_entropy": ss.entropy, "d_eff_gy": d_eff,
        "info": {"tear": tear_info, "out_of_focus": oof_info, "nest_fraction_target": float(nest_frac),
                 "stain_scale": stain, "d_eff_gy": d_eff, **realized},
    }


class _GapPlacer:
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


def _marker_truth(ctype, senescent, receptors, amount, d_eff, channels, rng) -> dict[str, np.ndarray]:
    """``{marker: bool per cell}`` for every default marker and every extra panel channel."""
    t = {name: ctype == i for name, i in _T.items()}
    lymph = t["CD8 T"] | t["CD4 T"]
    immune = lymph | t["NK"] | t["Macrophage"] | t["Other immune"]
    n = len(ctype)
    pos = {
        "panCK": t["Tumor"].copy(), "CD45": immune, "CD3": lymph, "CD8": t["CD8 T"].copy(), "CD4": t["CD4 T"].copy(),
        "CD56": t["NK"].copy(), "CD68": t["Macrophage"].copy(), "p21": senescent.copy(),
        **{r: receptors[r].copy() for r in RECEPTORS}, **{m: amount[m] > 0 for m in MODULES},
    }
    extra = [c for c in channels if c != "DAPI" and c not in pos]
    for name in extra:
        u = rng.random(n)
        if name == "aSMA":
            pos[name] = t["Stroma"] & (u < 0.8)
        elif name == "NKp46":
            pos[name] = t["NK"] & (u < 0.9)
        elif name == "CD16":
            pos[name] = (t["NK"] & (u < 0.6)) | (t["Macrophage"] & (u < 0.5))
        elif name == "Ki67":
            pos[name] = t["Tumor"] & ~senescent & (u < 0.25 * math.exp(-0.12 * d_eff))
        elif name == "FOXP3":
            pos[name] = t["CD4 T"] & (u < 0.2)
        else:  # an unknown marker: a random 15 % of immune cells
            pos[name] = immune & (u < 0.15)
    return pos


# ------------------------------------------------------------------------------------- rendering
def _render_all(sc: dict[str, Any], sink) -> dict[str, np.ndarray]:
    """Render a scene tile by tile, handing each tile to ``sink(y0, x0, tile)``; returns per-cell sums."""
    H, W = sc["shape"]
    n = len(sc["cells"]["x"])
    cnt = np.zeros(n + 1)
    ncnt = np.zeros(n + 1)
    sx = np.zeros(n + 1)
    sy = np.zeros(n + 1)
    T = _RENDER_TILE_PX
    for ty in range(-(-H // T)):
        for tx in range(-(-W // T)):
            y0, x0 = ty * T, tx * T
            y1, x1 = min(y0 + T, H), min(x0 + T, W)
            tile = render_region(sc, y0, y1, x0, x1, seed=np.random.SeedSequence(list(sc["seed_entropy_list"]) + [7, ty, tx]))
            cel = tile["cells"].ravel()
            yy, xx = np.divmod(np.arange(cel.size), x1 - x0)
            cnt += np.bincount(cel, minlength=n + 1)
            ncnt += np.bincount(tile["nuclei"].ravel(), minlength=n + 1)
            sx += np.bincount(cel, weights=xx + x0, minlength=n + 1)
            sy += np.bincount(cel, weights=yy + y0, minlength=n + 1)
            sink(y0, x0, tile)
    return {"count": cnt, "ncount": ncnt, "sx": sx, "sy": sy}


def _truth_table(sc: dict[str, Any], sums: dict[str, np.ndarray], sample_id: str):
    import pandas as pd

    c = sc["cells"]
    n = len(c["x"])
    ids = np.arange(1, n + 1)
    keep = sums["ncount"][1:] > 0
    area = sums["count"][1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = sums["sx"][1:] / area
        cy = sums["sy"][1:] / area
    px = PIXEL_SIZE_UM
    df = pd.DataFrame({
        "sample_id": sample_id,
        "cell_id": ids.astype(np.uint32),
        "x_um": cx * px,
        "y_um": cy * px,
        "cell_type": np.array(CELL_TYPES, dtype=object)[c["type"]],
        "nucleus_area_um2": sums["ncount"][1:] * px * px,
        "area_um2": area * px * px,
        "senescent": c["senescent"],
        "exogenous": c["exogenous"],
        "damaged": c["damaged"],
        "in_tumor": c["in_nest"],
    })
    for name in sorted(c["pos"], key=lambda s: (s not in DEFAULT_CHANNELS, DEFAULT_CHANNELS.index(s) if s in DEFAULT_CHANNELS else 0, s)):
        df[f"{name}_pos"] = c["pos"][name]
    for m in MODULES:
        df[f"{m}_amount"] = c["amount"][m]
    for m in MODULES:
        df[f"in_{m}"] = c["in_zone"][m]
    return df[keep].reset_index(drop=True)


def generate_sample(*, size_px: int | tuple[int, int] = 512, dose_gy: float = 0.0, radiation: str = "photon",
                    patient_effects: dict[str, float] | None = None, seed: int = 0,
                    channels: Sequence[str] | None = None, tear: bool = False, out_of_focus: bool = False,
                    sample_id: str = "sample", params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One synthetic explant image with its ground truth, in memory.

    Parameters
    ----------
    size_px : int or (int, int)
        Image side (or (Y, X)) in pixels at 0.5 µm/px; at most 4096² px in memory.
    dose_gy : float
        Physical dose.
    radiation : str
        ``sham``, ``photon``, ``proton`` or ``carbon`` (sets the effectiveness and module conservation).
    patient_effects : dict, optional
        Random effects from :func:`patient_effects` (default: none, all multipliers 1).
    seed : int
        Same seed, same everything.
    channels : sequence of str, optional
        Panel (default :data:`DEFAULT_CHANNELS`); must contain ``DAPI``.
    tear, out_of_focus : bool
        Add a tear (excluded from the tissue) / a blurred patch.
    sample_id : str
        Written into the truth table.
    params : dict, optional
        Truth parameters (default :func:`truth_parameters`).

    Returns
    -------
    dict
        ``image`` uint16 (C, Y, X); ``channels`` list; ``nuclei``, ``cells`` uint32 (Y, X);
        ``tissue``, ``tumor`` uint8 (Y, X); ``zones`` {module: uint8 (Y, X)}; ``truth`` DataFrame (one row
        per cell, see the module docstring); ``info`` dict (realised parameters); ``pixel_size_um``.

    Examples
    --------
    >>> s = generate_sample(size_px=128, dose_gy=10, seed=1)
    >>> s["image"].shape[0] == len(s["channels"]) and s["cells"].dtype.name
    'uint32'
    """
    shape = (int(size_px), int(size_px)) if np.isscalar(size_px) else tuple(int(v) for v in size_px)
    if shape[0] * shape[1] > _IN_MEMORY_MAX_PX:
        raise ConfigError(f"generate_sample: size {shape} is larger than 4096² px; use generate_cohort (tiled)")
    ch = _check_channels(channels)
    params = params or truth_parameters()
    sc = _build_scene(shape, dose_gy=dose_gy, radiation=radiation, patient=patient_effects or {}, seed=seed,
                      channels=ch, params=params, tear=tear, out_of_focus=out_of_focus)
    sc["seed_entropy_list"] = [int(seed)] if isinstance(seed, (int, np.integer)) else list(seed)
    out = {"image": np.zeros((len(ch),) + shape, np.uint16), "nuclei": np.zeros(shape, np.uint32),
           "cells": np.zeros(shape, np.uint32), "tissue": np.zeros(shape, np.uint8),
           "tumor": np.zeros(shape, np.uint8), "zones": {m: np.zeros(shape, np.uint8) for m in MODULES}}

    def sink(y0, x0, t):
        h, w = t["nuclei"].shape
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        out["image"][(slice(None),) + sl] = t["image"]
        for k in ("nuclei", "cells", "tissue", "tumor"):
            out[k][sl] = t[k]
        for m in MODULES:
            out["zones"][m][sl] = t["zones"][m]

    sums = _render_all(sc, sink)
    out["truth"] = _truth_table(sc, sums, sample_id)
    out["channels"] = ch
    out["info"] = sc["info"]
    out["pixel_size_um"] = PIXEL_SIZE_UM
    return out


# ----------------------------------------------------------------------------------------- writing
def _write_tiff(path: Path, arr, *, tile_px: int = 512) -> None:
    """A tiled, zlib-compressed single-plane TIFF from a numpy or zarr 2-D array (tile by tile)."""
    import tifffile

    from .layout import atomic_path

    h, w = arr.shape

    def tiles():
        for ty in range(-(-h // tile_px)):
            for tx in range(-(-w // tile_px)):
                block = np.asarray(arr[ty * tile_px:(ty + 1) * tile_px, tx * tile_px:(tx + 1) * tile_px])
                if block.shape != (tile_px, tile_px):
                    pad = np.zeros((tile_px, tile_px), arr.dtype)
                    pad[: block.shape[0], : block.shape[1]] = block
                    block = pad
                yield block

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=h * w * np.dtype(arr.dtype).itemsize > 2**31) as tw:
            tw.write(tiles(), shape=(h, w), dtype=arr.dtype, tile=(tile_px, tile_px), compression="zlib",
                     metadata=None, resolution=(1e4 / PIXEL_SIZE_UM, 1e4 / PIXEL_SIZE_UM), resolutionunit="CENTIMETER")


def _uuid_for(seed: int, sample_id: str) -> str:
    import hashlib
    import uuid

    return str(uuid.UUID(bytes=hashlib.md5(f"chemozone-synth:{seed}:{sample_id}".encode()).digest()))


def _write_sample(out: Path, sample_id: str, sc: dict[str, Any], seed: int) -> None:
    from .io import write_ome_tiff
    from .layout import write_parquet

    H, W = sc["shape"]
    ch = sc["channels"]
    img_path = out / "images" / f"{sample_id}.ome.tif"
    tdir = out / "truth" / sample_id
    tdir.mkdir(parents=True, exist_ok=True)
    names = ["nuclei", "cells", "tissue", "tumor"] + [f"zone_{m}" for m in MODULES]
    dtypes = {"nuclei": np.uint32, "cells": np.uint32}
    if H * W <= _STREAM_ABOVE_PX:
        store: dict[str, Any] = {"image": np.zeros((len(ch), H, W), np.uint16)}
        for k in names:
            store[k] = np.zeros((H, W), dtypes.get(k, np.uint8))
        tmp_dir = None
    else:  # out of core: a temporary chunked zarr, one chunk per rendered tile
        import zarr

        tmp_dir = tdir / ".render.zarr"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        T = _RENDER_TILE_PX
        grp = zarr.open_group(str(tmp_dir), mode="w")
        store = {"image": grp.create_array("image", shape=(len(ch), H, W), chunks=(1, T, T), dtype=np.uint16)}
        for k in names:
            store[k] = grp.create_array(k, shape=(H, W), chunks=(T, T), dtype=dtypes.get(k, np.uint8))

    def sink(y0, x0, t):
        h, w = t["nuclei"].shape
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        store["image"][(slice(None),) + sl] = t["image"]
        for k in ("nuclei", "cells", "tissue", "tumor"):
            store[k][sl] = t[k]
        for m in MODULES:
            store[f"zone_{m}"][sl] = t["zones"][m]

    sums = _render_all(sc, sink)
    image = store["image"]
    if tmp_dir is not None:
        import dask.array as da

        image = da.from_zarr(store["image"])
    write_ome_tiff(img_path, image, channels=ch, pixel_size_um=PIXEL_SIZE_UM, tile_px=512,
                   uuid=_uuid_for(seed, sample_id))
    for k in names:
        _write_tiff(tdir / f"{k}.tif", store[k])
    write_parquet(_truth_table(sc, sums, sample_id), tdir / "cells.parquet")
    if tmp_dir is not None:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _sample_id(patient: str, radiation: str, dose: float, replicate: int) -> str:
    return f"{patient}_{radiation}_{dose:g}Gy_r{replicate}"


def generate_cohort(out: str | Path, *, preset: str = "demo", patients: int | None = None,
                    size_px: int | None = None, seed: int = 0, channels: Sequence[str] | None = None,
                    progress: bool = False) -> Path:
    """Write a synthetic cohort with ground truth to ``out`` (see the module docstring for the layout).

    Parameters
    ----------
    out : path
        Output folder (created; existing files of the same names are replaced).
    preset : {"tiny", "demo", "stats", "large"}
        Design and default size/channels (:data:`PRESETS`).
    patients, size_px : int, optional
        Override the preset's number of patients / image side (px).
    seed : int
        Master seed: same seed, same bytes.
    channels : sequence of str, optional
        Panel (default: the preset's); must contain ``DAPI``; unknown names become generic membrane
        markers on 15 % of immune cells.
    progress : bool
        Print one line per sample.

    Returns
    -------
    Path
        ``out``.
    """
    import pandas as pd
    import yaml

    from .config import config_from_dict
    from .layout import atomic_write_json, atomic_write_text

    if preset not in PRESETS:
        raise ConfigError(f"synth preset '{preset}' is unknown; use one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    n_pat = int(patients if patients is not None else p["patients"])
    size = int(size_px if size_px is not None else p["size_px"])
    if n_pat < 1:
        raise ConfigError(f"synth --patients must be >= 1, got {n_pat}")
    if size < 64:
        raise ConfigError(f"synth --size must be >= 64 px, got {size}")
    ch = _check_channels(channels if channels is not None else p["channels"])
    cfg = cohort_config(ch)
    config_from_dict(cfg, source="synth cohort_config")  # fail before any work
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    params = truth_parameters()
    rows = []
    truth_samples = {}
    pats = {}
    for pi in range(n_pat):
        pid = f"P{pi + 1:02d}"
        pe = patient_effects(pi, seed=seed, params=params)
        pats[pid] = pe
        for radiation, dose in p["design"]:
            sid = _sample_id(pid, radiation, dose, 1)
            sseed = [int(seed), pi, zlib.crc32(sid.encode())]
            frng = np.random.default_rng(np.random.SeedSequence(sseed + [99]))
            tear = bool(p["features"] and frng.random() < 0.3)
            oof = bool(p["features"] and frng.random() < 0.3)
            t0 = time.perf_counter()
            sc = _build_scene((size, size), dose_gy=dose, radiation=radiation, patient=pe, seed=sseed,
                              channels=ch, params=params, tear=tear, out_of_focus=oof)
            sc["seed_entropy_list"] = sseed
            _write_sample(out, sid, sc, seed)
            rows.append({"sample_id": sid, "image": f"images/{sid}.ome.tif", "patient": pid,
                         "radiation": radiation, "dose_gy": dose, "replicate": 1})
            truth_samples[sid] = {"seed": sseed, "patient": pid, "radiation": radiation, "dose_gy": dose,
                                  "n_cells": int(len(sc["cells"]["x"])), **sc["info"]}
            if progress:
                print(f"{sid}: {len(sc['cells']['x'])} cells, {time.perf_counter() - t0:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    atomic_write_text(out / "samples.csv", df.to_csv(index=False, lineterminator="\n"))
    atomic_write_json(out / "truth" / "cohort.json", {
        "generator": "chemozone.synth", "version": 1, "preset": preset, "seed": int(seed), "size_px": size,
        "channels": ch, "parameters": params, "patients": pats, "samples": truth_samples,
    })
    atomic_write_text(out / "config.yaml", "# chemozone config for this synthetic cohort (chemozone synth)\n"
                      + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return out


# ------------------------------------------------------------------------------------------ config
def cohort_config(channels: Sequence[str] | None = None) -> dict[str, Any]:
    """A chemozone config (as a dict) that analyses a synthetic cohort with these channels.

    Rules name the truth's cell types (``Tumor, CD8 T, CD4 T, NK, Macrophage, Other immune, Stroma``);
    rules whose markers are missing from the panel are left out. Pixel zones for the chemokines present
    (threshold from the same patient's 0 Gy samples), a ``tumor`` zone from panCK, and the cognate pairs.

    >>> from chemozone.config import config_from_dict
    >>> config_from_dict(cohort_config()).zones[0].name
    'CXCL8'
    """
    ch = list(channels) if channels is not None else list(DEFAULT_CHANNELS)
    has = set(ch)
    comp = {"p21": "nucleus", "Ki67": "nucleus", "FOXP3": "nucleus", "panCK": "cytoplasm", "CD68": "cytoplasm",
            "aSMA": "cytoplasm", "CXCL8": "cytoplasm", "CXCL10": "cytoplasm", "CCL5": "cytoplasm"}
    markers = {m: {"compartment": comp.get(m, "cell"), "transform": "arcsinh",
                   "gate": {"method": "pooled", "pooled_method": "gmm"}}
               for m in ch if m != "DAPI"}
    # lineage-specific immune markers first: immune cells inside tumor nests pick up panCK from the
    # surrounding tumor cytoplasm (blur, spillover), so "panCK+" alone must not outrank CD3/CD56/CD68
    candidates = [
        {"cell_type": "CD8 T", "pos": ["CD3", "CD8"]},
        {"cell_type": "CD4 T", "pos": ["CD3", "CD4"]},
        {"cell_type": "NK", "pos": ["CD56"], "neg": ["CD3"]},
        {"cell_type": "Macrophage", "pos": ["CD68"], "neg": ["CD3"]},
        {"cell_type": "Tumor", "pos": ["panCK"]},
        {"cell_type": "Other immune", "pos": ["CD45"]},
        {"cell_type": "Stroma", "neg": ["panCK", "CD45"]},
    ]
    rules = []
    for r in candidates:
        need = r.get("pos", []) + r.get("neg", [])
        if all(m in has for m in need):
            rules.append(r)
    receptors = [r for r in RECEPTORS if r in has]
    # The truth zone is F_m >= level, i.e. background-corrected smoothed intensity >= amplitude * level. A
    # reference quantile of the shams cannot find that level (shams hold almost no producers, so their high
    # quantiles measure noise, and the zones come out 2-4x too large); an absolute threshold plays the role
    # of a threshold reviewed on screen (napari), as a user would set it.
    zparams = truth_parameters()
    zone_thr = float(zparams["chemokine_amplitude"]) * float(zparams["zone"]["level"])
    zones: list[dict[str, Any]] = [
        {"name": m, "source": "pixels", "channels": [m], "smooth_um": 10.0,
         "threshold": {"mode": "absolute", "value": zone_thr}}
        for m in MODULES if m in has
    ]
    if "panCK" in has:
        zones.append({"name": "tumor", "source": "tumor", "channels": ["panCK"], "smooth_um": 4.0})
    pairs = []
    lineages = {"CXCL8": ["NK", "CD8 T"], "CXCL10": ["CD8 T", "NK"], "CCL5": ["CD8 T", "NK"]}
    typed = {r["cell_type"] for r in rules}
    for m, rec in MODULES.items():
        if m in has and rec in has:
            pairs.append({"zone": m, "receptor": rec, "cell_types": [t for t in lineages[m] if t in typed]})
    params = truth_parameters()
    return {
        "panel": {"pixel_size_um": PIXEL_SIZE_UM, "nuclear_channel": "DAPI"},
        # lymphocyte nuclei (~6.5 µm) crowd among tumor nuclei (~11 µm) in the attracting zones
        "segmentation": {"method": "watershed", "nucleus_diameter_um": 9.0, "small_nucleus_diameter_um": 6.5,
                         "expand_um": 3.0},
        "phenotypes": {"markers": markers, "rules": rules, "receptors": receptors,
                       "receptor_cell_types": [t for t in ["CD8 T", "CD4 T", "NK", "Macrophage", "Other immune"]
                                               if t in typed],
                       "default_cell_type": "Other"},
        "zones": zones,
        "spatial": {"cognate_pairs": pairs},
        "stats": {"effectiveness": dict(params["effectiveness"]), "reference_radiation": "photon"},
    }


# --------------------------------------------------------------------------------------------- CLI
def cli_synth(args: argparse.Namespace) -> int:
    """``chemozone synth OUT [--preset P --patients N --size PX --seed S --channels A,B,...]``."""
    channels = None
    if getattr(args, "channels", None):
        channels = [c.strip() for c in str(args.channels).split(",") if c.strip()]
    t0 = time.perf_counter()
    out = generate_cohort(args.out, preset=args.preset, patients=args.patients, size_px=args.size,
                          seed=args.seed, channels=channels, progress=True)
    n = sum(1 for _ in (Path(out) / "images").glob("*.ome.tif"))
    print(f"wrote {n} images with ground truth to {out} in {time.perf_counter() - t0:.1f} s "
          f"(config: {Path(out) / 'config.yaml'})")
    return 0
