"""Dose biology of a scene: which tumor cells turn senescent (p21+), which produce each chemokine, and the
truth fields ``F_m`` those producers spread (the truth zones are ``tissue & (F_m >= level)``).

Fractions follow the true law (:func:`producer_probability`); positions follow smooth patch fields, one per
module, combined into co-localised territories (``territory_correlation``), with a mild preference for senescent
cells. All fields live on the 2 µm field grid (``field_px`` image pixels per cell).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ._draws import gumbel_topk, smooth_field, territory_factor
from ._params import MODULES, TYPE_INDEX, producer_probability
from ._render import sample_grid


def draw_senescent(rng: np.random.Generator, ctype: np.ndarray, y: np.ndarray, x: np.ndarray, *, dose_gy: float,
                   radiation: str, params: dict[str, Any], patient: dict[str, float],
                   field_shape: tuple[int, int], field_px: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Senescent tumor cells: ``Binomial(n_tumor, p)`` of them, drawn with weights ``exp(0.8 * smooth field)``.

    Returns
    -------
    senescent : ndarray
        bool (n,).
    probability : float
        The true senescent fraction ``p`` (:func:`producer_probability` of ``"senescence"``).
    damage : ndarray
        float32 ``field_shape``: the smooth field (zero mean, unit variance) that placed them, the damage the
        chemokine territories share (:func:`draw_producers`).
    """
    corr_patch = params["patch_correlation_um"] / params["zone"]["grid_um"]
    tumor_idx = np.nonzero(ctype == TYPE_INDEX["Tumor"])[0]
    senescent = np.zeros(len(ctype), bool)
    p_sen = producer_probability(dose_gy, radiation, "senescence", params=params, patient=patient)
    g_sen = smooth_field(rng, field_shape, corr_patch)
    k = rng.binomial(len(tumor_idx), p_sen)
    logw = 0.8 * sample_grid(g_sen, field_px, y[tumor_idx], x[tumor_idx])
    senescent[tumor_idx[gumbel_topk(rng, logw, k)]] = True
    return senescent, p_sen, g_sen


def draw_producers(rng: np.random.Generator, ctype: np.ndarray, y: np.ndarray, x: np.ndarray,
                   senescent: np.ndarray, *, dose_gy: float, radiation: str, params: dict[str, Any],
                   patient: dict[str, float], field_shape: tuple[int, int],
                   field_px: int, damage: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Producer tumor cells of each chemokine module and the amount each produces.

    Returns
    -------
    amount : dict
        {module: float64 (n,)}, log-normal with mean 1 for producers, 0 otherwise.
    probability : dict
        {module: true producer probability}.
    """
    n = len(ctype)
    corr_patch = params["patch_correlation_um"] / params["zone"]["grid_um"]
    tumor_idx = np.nonzero(ctype == TYPE_INDEX["Tumor"])[0]
    amount: dict[str, np.ndarray] = {}
    probability: dict[str, float] = {}
    # one independent patch field G_m per module, drawn in module order, combined into the territory H_m by the
    # pairwise ``territory_correlation`` rho: rho > 0 (default, biology: radiation damage and the IFN/STING and
    # SASP programmes it triggers drive every module in the same regions) H_m = sqrt(rho) D + sqrt(1 - rho) G_m
    # with D the damage field that also places senescent cells; rho < 0 (an option: modules in separate
    # territories, the design before issue 15) H = L G with L the factor of pairwise correlation -1/(M-1);
    # rho = 0 independent. The RNG stream does not depend on rho.
    rho = float(params.get("territory_correlation", 0.0))
    terr = territory_factor(len(MODULES)) if rho < 0 else None
    raw: list[np.ndarray] = []
    for mi, m in enumerate(MODULES):
        pm = producer_probability(dose_gy, radiation, m, params=params, patient=patient)
        raw.append(smooth_field(rng, field_shape, corr_patch))
        if terr is not None:
            gm = sum(float(terr[mi, j]) * raw[j] for j in range(mi + 1)).astype(np.float32)
        elif rho > 0 and damage is not None:
            gm = (math.sqrt(rho) * damage + math.sqrt(1.0 - rho) * raw[-1]).astype(np.float32)
        else:
            gm = raw[-1]
        k = rng.binomial(len(tumor_idx), pm)
        logw = params["producer_patchiness"] * sample_grid(gm, field_px, y[tumor_idx], x[tumor_idx]) \
            + math.log(params["senescent_producer_odds"]) * senescent[tumor_idx]
        chosen = tumor_idx[gumbel_topk(rng, logw, k)]
        a = np.zeros(n)
        a[chosen] = np.exp(params["producer_amount_sd_log"] * rng.standard_normal(len(chosen))
                           - 0.5 * params["producer_amount_sd_log"] ** 2)
        amount[m] = a
        probability[m] = pm
    return amount, probability


def chemokine_fields(y: np.ndarray, x: np.ndarray, amount: dict[str, np.ndarray], *, field_shape: tuple[int, int],
                     field_px: int, sigma_um: float, grid_um: float) -> dict[str, np.ndarray]:
    """Truth fields ``F_m = sum_i w_i exp(-d_i² / (2 sigma²))`` over each module's producers, on the field grid.

    Producers are splatted bilinearly onto the grid and smoothed by a Gaussian of ``sigma_um``, scaled so
    that a lone producer of amount 1 peaks at 1.

    Returns
    -------
    dict
        {module: float32 ``field_shape``}; the truth zone is ``tissue & (F_m >= level)``.
    """
    fh, fw = field_shape
    fpx = field_px
    sig_g = sigma_um / grid_um
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
    return fields
