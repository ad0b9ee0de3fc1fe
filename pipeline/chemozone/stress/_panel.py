"""The stress cohort's panel, cell types, design and biology, as plain data.

Written independently of :mod:`chemozone.synth` (no shared code or constants): another panel with vendor
spellings, per-channel intensity scales, a camera offset, spillover into the next channel and stromal
autofluorescence in every channel.
"""

from __future__ import annotations

import copy
from typing import Any

PIXEL_SIZE_UM = 0.4977
"""µm per pixel (a 20× whole-slide scanner), stored in the OME-TIFF."""

SPILLOVER = 0.03
"""Fraction of each channel's light that reaches the next channel in file order."""

BIT_DEPTH = 12
"""Camera range: values are clipped to ``2**BIT_DEPTH - 1`` (stored as uint16)."""

READ_NOISE = 2.5
"""Gaussian read noise, counts (SD)."""

# file name, canonical marker (truth column stem), compartment, gain (counts at expression level 1),
# autofluorescence amplitude (counts at unit stroma fibre density; strongest at short wavelengths),
# nonspecific tissue background (counts), camera offset (counts)
PANEL: list[tuple[str, str, str, float, float, float, float]] = [
    ("DAPI", "DAPI", "nucleus", 2200.0, 60.0, 15.0, 80.0),
    ("Pan-CK (Opal 690)", "panCK", "cytoplasm", 1500.0, 10.0, 20.0, 82.0),
    ("CD3e (Opal 570)", "CD3", "membrane", 900.0, 12.0, 12.0, 79.0),
    ("CD8a (Opal 480)", "CD8", "membrane", 1100.0, 70.0, 12.0, 81.0),
    ("CD56 (Opal 620)", "CD56", "membrane", 500.0, 10.0, 10.0, 80.0),
    ("CD45 (Opal 520)", "CD45", "membrane", 1300.0, 55.0, 15.0, 83.0),
    ("CXCR3 (Opal 540)", "CXCR3", "membrane", 650.0, 45.0, 10.0, 80.0),
    ("CCR5 (Opal 650)", "CCR5", "membrane", 480.0, 8.0, 10.0, 78.0),
    ("CXCL10 (Opal 780)", "CXCL10", "chemokine", 900.0, 5.0, 8.0, 80.0),
    ("CCL5 (Opal 440)", "CCL5", "chemokine", 800.0, 80.0, 8.0, 81.0),
]
CHANNELS = [p[0] for p in PANEL]
"""Channel names as the image file stores them."""
MARKERS = [p[1] for p in PANEL]
"""Canonical marker names (the truth table's ``{marker}_pos`` columns)."""

CELL_TYPES = ["Tumor", "Stroma", "CD8 T", "CD4 T", "NK", "Other immune"]
"""Truth cell types. ``CD4 T`` is CD3+ CD8− (the panel has no CD4); ``Other immune`` is CD45+ only."""
IMMUNE_TYPES = ["CD8 T", "CD4 T", "NK", "Other immune"]

LINEAGE_MARKERS = {
    "Tumor": ["panCK"],
    "Stroma": [],
    "CD8 T": ["CD45", "CD3", "CD8"],
    "CD4 T": ["CD45", "CD3"],
    "NK": ["CD45", "CD56"],
    "Other immune": ["CD45"],
}
"""Markers each lineage carries (truth ``{marker}_pos``); NK cells may also be CD8-dim (``NK_CD8_DIM``)."""
NK_CD8_DIM = (0.3, 0.4)
"""(fraction of NK cells that are CD8+, their CD8 level relative to T cells)."""

MODULES = {"CXCL10": "CXCR3", "CCL5": "CCR5"}
"""Chemokine → cognate receptor."""

RECEPTOR_PROBABILITY = {
    "CD8 T": {"CXCR3": 0.55, "CCR5": 0.40},
    "CD4 T": {"CXCR3": 0.35, "CCR5": 0.30},
    "NK": {"CXCR3": 0.30, "CCR5": 0.40},
    "Other immune": {"CXCR3": 0.10, "CCR5": 0.30},
}
"""Probability that a resident immune cell of a lineage carries each receptor."""

GEOMETRY = {  # nucleus major axis (µm), minor/major aspect, cytoplasm width (µm), DAPI level
    "Tumor": ((9.0, 14.0), (0.65, 0.95), (3.0, 5.0), 0.75),
    "Stroma": ((10.0, 16.0), (0.25, 0.45), (1.5, 2.5), 1.0),
    "CD8 T": ((5.5, 7.5), (0.8, 1.0), (1.0, 2.0), 1.3),
    "CD4 T": ((5.5, 7.5), (0.8, 1.0), (1.0, 2.0), 1.3),
    "NK": ((6.5, 8.5), (0.75, 1.0), (1.5, 2.5), 1.2),
    "Other immune": ((7.0, 11.0), (0.6, 0.9), (2.5, 4.0), 1.0),
}

DESIGN = [("sham", 0.0), ("photon", 2.0), ("photon", 5.0), ("photon", 10.0)]
"""Default (radiation, dose_gy) per patient (preset ``default``)."""

PRESETS = {
    "default": "the original stress cohort: 3 patients x (sham, photon 2, 5, 10 Gy); sham zones 0-4 %, "
               "irradiated about 4-35 %",
    "zones": "zone calling: baseline producers in (almost) every sham (zones about 0-5 %), a larger Emax and "
             "patients' spread, so irradiated zones cover about 5-40 %; 3 patients x (sham, photon 2, 5, 10, 20 Gy)",
    "stats": "dose-response statistics: the zones preset's biology on 6 patients x (sham, photon 1, 2, 5, 10, "
             "20 Gy, carbon 1, 2, 5 Gy); carbon is 2.5x as effective per Gy but conserves only half of the "
             "CXCL10 module (CCL5 fully)",
}
"""Preset name -> what it is for (:func:`parameters` gives each one's full parameters)."""

_PHOTON = {"effectiveness": 1.0, "conservation": {"CXCL10": 1.0, "CCL5": 1.0}}
_ZONES = {  # what the zones preset changes (deep-merged over the default)
    "patient_emax_sd_log": 0.25, "patient_baseline_sd_log": 0.35,
    "modules": {"CXCL10": {"baseline": 0.014, "emax": 0.38}, "CCL5": {"baseline": 0.012, "emax": 0.32}},
    "design": [["sham", 0.0], ["photon", 2.0], ["photon", 5.0], ["photon", 10.0], ["photon", 20.0]],
}
_OVERRIDES: dict[str, dict[str, Any]] = {
    "default": {},
    "zones": _ZONES,
    "stats": {**_ZONES, "n_patients": 6,
              "design": [["sham", 0.0]] + [["photon", d] for d in (1.0, 2.0, 5.0, 10.0, 20.0)]
              + [["carbon", d] for d in (1.0, 2.0, 5.0)],
              "radiation": {"photon": _PHOTON,
                            "carbon": {"effectiveness": 2.5, "conservation": {"CXCL10": 0.5, "CCL5": 1.0}}}},
}


def check_preset(preset: str) -> str:
    """``preset`` if it is one of :data:`PRESETS`, else a one-line ConfigError naming the choices.

    >>> check_preset("zones")
    'zones'
    """
    if preset not in PRESETS:
        from ..errors import ConfigError

        raise ConfigError(f"stress preset '{preset}' is unknown (preset= / --preset): choose one of "
                          f"{', '.join(PRESETS)}")
    return preset


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, recursively for nested dicts (neither is modified)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def parameters(preset: str = "default") -> dict[str, Any]:
    """A preset's biology and imaging parameters (written to ``truth/cohort.json``).

    Parameters
    ----------
    preset : str
        One of :data:`PRESETS` (``default``, ``zones``, ``stats``).

    Returns
    -------
    dict
        Everything the generator draws from, including the preset's ``design`` [(radiation, dose_gy)],
        ``n_patients`` and ``radiation`` table (``effectiveness`` per Gy and per-module ``conservation`` of Emax).

    Examples
    --------
    >>> parameters()["zone"]["level"], parameters("stats")["radiation"]["carbon"]["conservation"]["CXCL10"]
    (0.5, 0.5)
    """
    check_preset(preset)
    return copy.deepcopy(_merge(_default_parameters(), {**_OVERRIDES[preset], "preset": preset}))


def _default_parameters() -> dict[str, Any]:
    """The ``default`` preset (the stress cohort as first written)."""
    return {
        "preset": "default", "n_patients": 3, "design": [list(d) for d in DESIGN], "radiation": {"photon": _PHOTON},
        "patient_immune_sd_log": 0.2, "patient_emax_sd_log": 0.15, "patient_baseline_sd_log": 0.0,
        "pixel_size_um": PIXEL_SIZE_UM,
        "panel": [dict(zip(("channel", "marker", "compartment", "gain", "autofluorescence", "nonspecific",
                                "offset"), p)) for p in PANEL],
        "spillover_next_channel": SPILLOVER, "bit_depth": BIT_DEPTH, "read_noise": READ_NOISE,
        "psf_sigma_um": 0.4, "expression_sd_log": 0.3, "patient_stain_sd_log": 0.15,
        "sample_stain_sd_log": 0.08,
        "tissue": {"radius_fraction": 0.45, "outline_noise": 0.15, "nest_fraction": 0.42,
                   "nest_correlation_um": 35.0, "fibre_sigma_um": (0.5, 4.0)},
        "density_per_mm2": {"nest": 5200.0, "stroma": 2200.0},
        "min_distance_um": {"nest": 9.5, "stroma": 7.5},
        "immune_fraction": {"nest": 0.06, "stroma": 0.42},
        "immune_types": {"CD8 T": 0.25, "CD4 T": 0.30, "NK": 0.15, "Other immune": 0.30},
        "receptor_probability": RECEPTOR_PROBABILITY,
        "modules": {
            "CXCL10": {"baseline": 0.010, "emax": 0.30, "ed50_gy": 4.0, "hill_n": 2.0, "dot_gain": 1.0,
                       "halo_fraction": 0.18},
            "CCL5": {"baseline": 0.008, "emax": 0.22, "ed50_gy": 4.0, "hill_n": 2.0, "dot_gain": 1.0,
                     "halo_fraction": 0.18},
        },
        "territory": {"correlation_um": 60.0, "shared_fraction": 0.6, "patchiness": 3.0},
        "zone": {"sigma_um": 15.0, "level": 0.5, "grid_um": 2.0,
                 "definition": "tissue & sum_i w_i exp(-d_i^2 / (2 sigma^2)) >= level over producers i"},
        "recruitment": {"density_per_mm2_zone": 900.0, "min_distance_um": 7.0,
                        "lineages": {"CD8 T": 0.5, "NK": 0.3, "CD4 T": 0.2}},
    }
