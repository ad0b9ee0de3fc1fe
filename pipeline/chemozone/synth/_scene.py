"""A synthetic scene: the global, cheap part of a sample (coarse fields and the cell list with every truth
attribute), from which :func:`render_region` draws pixels tile by tile.

:func:`build_scene` calls the pieces in a fixed order on one generator: tissue layout, resident cells and
types, dose biology (senescence, producers), truth fields, receptors and the exogenous pool, cell shapes,
marker truth and levels, channel spec and staining, chemokine dots, irregularity phases, texture. The
order is part of the output: same seed, same draws, same bytes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..grid import grid_factor
from ._cells import draw_cell_types, draw_shapes, place_resident_cells
from ._dose import chemokine_fields, draw_producers, draw_senescent
from ._draws import smooth_field
from ._exogenous import draw_exogenous_pool, draw_resident_receptors, place_exogenous_cells
from ._markers import DOTS_PER_CELL, channel_specs, chemokine_dots, marker_levels, marker_truth
from ._params import MODULES, PIXEL_SIZE_UM, RECEPTORS, TYPE_INDEX
from ._render import sample_grid
from ._tissue import Tissue, lay_out_tissue


def build_scene(shape: tuple[int, int], *, dose_gy: float, radiation: str, patient: dict[str, float],
                seed: int | Sequence[int], channels: list[str], params: dict[str, Any],
                tear: bool, out_of_focus: bool) -> dict[str, Any]:
    """Global, cheap part of a sample: coarse fields and the cell list with all truth attributes.

    Parameters
    ----------
    shape : (int, int)
        Image shape (Y, X), px at :data:`PIXEL_SIZE_UM`.
    dose_gy, radiation
        Physical dose and radiation (``sham``, ``photon``, ``proton``, ``carbon``).
    patient : dict
        Random effects (:func:`patient_effects`; ``{}`` for none).
    seed : int or sequence of int
        Entropy of the scene's generator.
    channels : list of str
        Panel (checked, contains ``DAPI``).
    params : dict
        Truth parameters (:func:`truth_parameters`).
    tear, out_of_focus : bool
        Add a tear / an out-of-focus patch.

    Returns
    -------
    dict
        ``shape``, ``channels``, ``channel_spec``, ``stain``, coarse grids (``tissue_score``, ``nest_score``,
        ``oof``, ``texture``, ``fields``) with their factors ``grid_px``, ``field_px``, imaging constants,
        ``cells`` (one entry per cell attribute, arrays (n,)) and ``info`` (realised parameters).
    """
    H, W = shape
    ss = np.random.SeedSequence(seed if isinstance(seed, int) else list(seed))
    rng = np.random.default_rng(ss)
    comp = params["composition"]
    tissue = lay_out_tissue(rng, shape, nest_fraction=comp["nest_fraction"], tear=tear, out_of_focus=out_of_focus)
    y, x, in_nest, rim = place_resident_cells(rng, shape, tissue, comp)
    ctype, damaged = draw_cell_types(rng, in_nest, rim, comp, immune_mult=patient.get("immune_mult", 1.0))

    eff = params["effectiveness"].get(radiation, 1.0)
    d_eff = eff * float(dose_gy)
    fpx = grid_factor(PIXEL_SIZE_UM, params["zone"]["grid_um"])  # field grid: 2 µm
    field_shape = (-(-H // fpx), -(-W // fpx))
    dose = {"dose_gy": dose_gy, "radiation": radiation, "params": params, "patient": patient,
            "field_shape": field_shape, "field_px": fpx}
    senescent, p_sen, damage = draw_senescent(rng, ctype, y, x, **dose)
    amount, p_modules = draw_producers(rng, ctype, y, x, senescent, damage=damage, **dose)
    realized: dict[str, Any] = {"senescent_probability": p_sen}
    realized.update({f"{m}_probability": pm for m, pm in p_modules.items()})
    fields = chemokine_fields(y, x, amount, field_shape=field_shape, field_px=fpx,
                              sigma_um=params["zone"]["sigma_um"], grid_um=params["zone"]["grid_um"])

    receptors = draw_resident_receptors(rng, ctype, params["receptor_probabilities"])
    e_t, e_rec, code = draw_exogenous_pool(rng, tissue, params["exogenous"], params["receptor_probabilities"],
                                           infiltration_mult=patient.get("infiltration_mult", 1.0))
    placed = place_exogenous_cells(rng, y, x, tissue, fields, ctype=e_t, receptors=e_rec, code=code, shape=shape,
                                   field_shape=field_shape, field_px=fpx,
                                   attraction=params["exogenous"]["attraction"])
    realized["exogenous"] = int(sum(len(v) for v in placed[0]))
    resident = {"y": y, "x": x, "type": ctype, "receptors": receptors, "senescent": senescent, "damaged": damaged,
                "in_nest": in_nest, "amount": amount}
    c = _add_exogenous(resident, placed, tissue, fields, field_px=fpx, zone_level=params["zone"]["level"])

    shapes = draw_shapes(rng, c["type"], c["damaged"], c["y"], c["x"], tissue)
    pos = marker_truth(rng, c["type"], c["senescent"], c["receptors"], c["amount"], channels, d_eff=d_eff)
    level = marker_levels(rng, c["type"], c["damaged"], pos, channels)
    spec, stain = channel_specs(rng, channels, stain_sd_log=params["imaging"]["stain_sd_log"],
                                chemokine_amplitude=params["chemokine_amplitude"])
    dim = params["imaging"].get("dim_receptors")
    for r in RECEPTORS if dim else ():  # dim receptor stains (the dim_receptors preset); no extra draws
        if r in spec:
            spec[r]["peak"] = float(dim["amplitude"])
    dots = chemokine_dots(rng, c["amount"], shapes)
    cells = _cell_table(rng, c, shapes, level=level, dots=dots, pos=pos)
    sig_px = params["zone"]["sigma_um"] / PIXEL_SIZE_UM
    return {
        "shape": (H, W), "channels": channels, "channel_spec": spec, "stain": stain,
        "spec_peak": {m: spec[m]["peak"] for m in spec}, "field_mass_px": 2 * np.pi * sig_px**2,
        "grid_px": tissue.grid_px, "field_px": fpx, "tissue_score": tissue.score, "nest_score": tissue.nest_score,
        "oof": tissue.oof, "texture": smooth_field(rng, field_shape, 1.5), "fields": fields,
        "zone_level": float(params["zone"]["level"]),
        "spillover": params["imaging"]["spillover"], "gain": params["imaging"]["gain"],
        "read_noise": params["imaging"]["read_noise"], "cells": cells, "dots_per_cell": DOTS_PER_CELL,
        "dim_receptors": dim,
        "seed_entropy": ss.entropy, "d_eff_gy": d_eff,
        "info": {"tear": tissue.tear_info, "out_of_focus": tissue.oof_info,
                 "nest_fraction_target": float(tissue.nest_fraction), "stain_scale": stain, "d_eff_gy": d_eff,
                 **realized},
    }


def _add_exogenous(resident: dict[str, Any], placed: tuple[list, list, list, list], tissue: Tissue,
                   fields: dict[str, np.ndarray], *, field_px: int, zone_level: float) -> dict[str, Any]:
    """Resident cells followed by the placed exogenous ones, with ``exogenous`` and ``in_zone`` flags.

    Exogenous cells are never senescent or damaged; ``in_nest`` comes from the nest score at their centre.
    """
    new_y, new_x, new_t, new_rec = placed
    y, x = resident["y"], resident["x"]
    n = len(y)
    g = tissue.grid_px
    n_new = sum(len(v) for v in new_y)
    y = np.concatenate([y] + new_y)
    x = np.concatenate([x] + new_x)
    ctype = np.concatenate([resident["type"]] + new_t).astype(np.int64)
    receptors = resident["receptors"]
    for r in RECEPTORS:
        receptors[r] = np.concatenate([receptors[r]] + [d[r] for d in new_rec])
    exogenous = np.concatenate([np.zeros(n, bool), np.ones(n_new, bool)])
    senescent = np.concatenate([resident["senescent"], np.zeros(n_new, bool)])
    damaged = np.concatenate([resident["damaged"], np.zeros(n_new, bool)])
    in_nest = np.concatenate([resident["in_nest"], sample_grid(tissue.nest_score, g, y[n:], x[n:]) > 0])
    amount = {m: np.concatenate([a, np.zeros(n_new)]) for m, a in resident["amount"].items()}
    in_zone = {m: (sample_grid(fields[m], field_px, y, x) >= zone_level) for m in MODULES}
    senescent &= ctype == TYPE_INDEX["Tumor"]
    return {"y": y, "x": x, "type": ctype, "receptors": receptors, "exogenous": exogenous, "senescent": senescent,
            "damaged": damaged, "in_nest": in_nest, "amount": amount, "in_zone": in_zone}


def _cell_table(rng: np.random.Generator, c: dict[str, Any], shapes: dict[str, np.ndarray], *,
                level: dict[str, np.ndarray], dots: dict[str, tuple], pos: dict[str, np.ndarray]) -> dict[str, Any]:
    """The scene's ``cells`` entry; draws the phases of the 2- and 3-fold irregularity (in that order)."""
    n = len(c["y"])
    a_px, b_px, ac_px, bc_px, theta = shapes["a"], shapes["b"], shapes["ac"], shapes["bc"], shapes["theta"]
    return {
        "x": c["x"], "y": c["y"], "type": c["type"], "a": a_px, "b": b_px, "ac": ac_px, "bc": bc_px,
        "cos": np.cos(theta), "sin": np.sin(theta), "h2": shapes["h2"], "p2": rng.uniform(0, 2 * np.pi, n),
        "h3": shapes["h3"], "p3": rng.uniform(0, 2 * np.pi, n), "bbox_r": np.maximum(ac_px, bc_px) * 1.2 + 2,
        "level": level, "amount": c["amount"], "dots": dots, "pos": pos, "senescent": c["senescent"],
        "exogenous": c["exogenous"], "damaged": c["damaged"], "in_nest": c["in_nest"], "in_zone": c["in_zone"],
        "receptors": c["receptors"],
    }
