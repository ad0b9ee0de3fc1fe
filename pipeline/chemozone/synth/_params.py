"""Parameters of the synthetic explant model: panel, cell types, presets and the true dose-response law.

Everything a scene draws from lives here as plain data: the channel catalogue (compartment, amplitude,
autofluorescence, background), nuclear geometry by cell type, the cohort designs (:data:`PRESETS`), the
cohort's true parameters (:func:`truth_parameters`, written to ``truth/cohort.json``), the producer law
(:func:`producer_probability`) and the patients' random effects (:func:`patient_effects`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

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
TYPE_INDEX = {name: i for i, name in enumerate(CELL_TYPES)}

# compartment, amplitude (intensity at expression level 1), autofluorescence, background
CHANNEL_SPEC = {
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
GENERIC_SPEC = ("membrane", 2000, 80, 100)

# geometry by type: nucleus major diameter (µm) range, aspect (minor/major) range, cytoplasm (µm), irregularity
GEOMETRY = {
    "Tumor": ((10.0, 16.0), (0.70, 0.95), (3.0, 5.0), 0.07),
    "Stroma": ((10.0, 15.0), (0.25, 0.40), (1.5, 2.5), 0.04),
    "Macrophage": ((9.0, 13.0), (0.65, 0.90), (5.0, 7.0), 0.12),
    "CD8 T": ((6.0, 8.0), (0.85, 1.0), (1.2, 2.0), 0.04),
    "CD4 T": ((6.0, 8.0), (0.85, 1.0), (1.2, 2.0), 0.04),
    "NK": ((6.5, 8.0), (0.85, 1.0), (1.5, 2.5), 0.04),
    "Other immune": ((6.5, 9.0), (0.80, 1.0), (1.5, 2.5), 0.08),
}
DAPI_LEVEL = {"Tumor": 0.8, "Stroma": 1.0, "Macrophage": 0.85, "CD8 T": 1.25, "CD4 T": 1.25, "NK": 1.2,
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
    "dim_receptors": {"patients": 3, "size_px": 1024,
                      "design": [("sham", 0.0), ("photon", 5.0), ("photon", 20.0)],
                      "channels": DEFAULT_CHANNELS, "features": False,
                      "imaging": {"dim_receptors": {"amplitude": 800.0, "neighbour_amplitude": 1500.0,
                                                    "neighbour_sigma_um": 1.0, "neighbour_source": "Tumor"}}},
}
"""Cohort designs: patients, image side (px), (radiation, dose_gy) per patient, default channels,
and whether tears / out-of-focus patches may occur. A preset's ``imaging`` entries are merged into
``truth_parameters()["imaging"]`` (:func:`preset_parameters`) and recorded in ``truth/cohort.json``.

``dim_receptors`` (issue 17): the receptor stains (CXCR2, CXCR3, CCR5) are dim, single-peaked and
contaminated by neighbours, as real chemokine-receptor stains are. ``amplitude`` replaces the receptors'
intensity at expression level 1 (2000 in :data:`CHANNEL_SPEC`), so a positive immune cell's mean measures
about 1.5-2.5x a negative one's (``benchmarks/eval_dim_receptors.py`` prints the measured ratio).
``neighbour_amplitude``: every ``neighbour_source`` cell (tumour cells, scaled by their panCK level) carries
this much nonspecific signal on its membrane in each receptor channel, blurred by a Gaussian of
``neighbour_sigma_um``: a receptor-negative lymphocyte pressed against a tumour cell picks it up on the
touching side (spillover from a bright neighbour), while its truth stays negative. Receptor truth is drawn
exactly as in the other presets (``{receptor}_pos`` in ``truth/{sample}/cells.parquet``)."""


def preset_parameters(preset: str) -> dict[str, Any]:
    """:func:`truth_parameters` with a preset's ``imaging`` overrides merged in (unchanged for the others).

    >>> preset_parameters("demo") == truth_parameters()
    True
    >>> preset_parameters("dim_receptors")["imaging"]["dim_receptors"]["amplitude"]
    800.0
    """
    params = truth_parameters()
    extra = PRESETS[preset].get("imaging")
    if extra:
        params["imaging"] = {**params["imaging"], **{k: dict(v) for k, v in extra.items()}}
    return params

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
        "territory_correlation": 0.5,
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
                                     for k, v in CHANNEL_SPEC.items()}},
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


def check_channels(channels: Sequence[str] | None) -> list[str]:
    """The panel as a clean list (default :data:`DEFAULT_CHANNELS`); ``DAPI`` required, no duplicates."""
    ch = list(channels) if channels is not None else list(DEFAULT_CHANNELS)
    ch = [c.strip() for c in ch if c.strip()]
    if "DAPI" not in ch:
        raise ConfigError(f"synth channels {ch}: 'DAPI' is required (nuclear segmentation); add it to --channels")
    dup = sorted({c for c in ch if ch.count(c) > 1})
    if dup:
        raise ConfigError(f"synth channels: {dup} given more than once; list each channel once")
    return ch
