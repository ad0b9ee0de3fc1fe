"""Dose-response curve models and their fit (one arm, patient offsets), Gaussian or quasi-binomial.

Models (``E0`` baseline, ``Emax`` the amplitude, so the plateau is ``E0 + Emax``)::

    linear     y = E0 + slope * D
    loglinear  y = E0 + log_slope * log(1 + D)      (concave, no plateau; D in Gy)
    emax       y = E0 + Emax * D / (ED50 + D)
    hill       y = E0 + Emax * D**h / (ED50**h + D**h)

Gaussian: least squares. Quasi-binomial (``trials`` given: ``y`` is a proportion of ``trials`` cells): the
binomial deviance is minimised (identity link, so the parameters keep their meaning on the proportion
scale) and the dispersion is estimated from the Pearson statistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_PARAMS = {"linear": ["E0", "slope"], "loglinear": ["E0", "log_slope"], "emax": ["E0", "Emax", "ED50"],
           "hill": ["E0", "Emax", "ED50", "hill"]}
_P_EPS = 1e-6  # fitted proportions are kept inside (eps, 1 - eps)


def _curve(model: str, d: np.ndarray, p: Sequence[float]) -> np.ndarray:
    d = np.asarray(d, float)
    if model == "linear":
        return p[0] + p[1] * d
    if model == "loglinear":
        return p[0] + p[1] * np.log1p(np.maximum(d, 0.0))
    if model == "emax":
        return p[0] + p[1] * d / (p[2] + d)
    if model == "hill":
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            dh = np.power(d, p[3])
            return p[0] + p[1] * dh / (np.power(p[2], p[3]) + dh)
    raise ValueError(f"unknown model {model!r}; choose from {sorted(_PARAMS)}")


def _unpack(model: str, theta: np.ndarray) -> list[float]:
    if model in ("linear", "loglinear"):
        return [theta[0], theta[1]]
    if model == "emax":
        return [theta[0], theta[1], float(np.exp(theta[2]))]
    return [theta[0], theta[1], float(np.exp(theta[2])), float(np.exp(theta[3]))]


def _binomial_deviance_resid(y: np.ndarray, mu: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Signed deviance residuals of proportions ``y`` of ``n`` trials at fitted proportions ``mu``."""
    mu = np.clip(mu, _P_EPS, 1 - _P_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(y > 0, y * np.log(y / mu), 0.0)
        t2 = np.where(y < 1, (1 - y) * np.log((1 - y) / (1 - mu)), 0.0)
    dev = np.maximum(2 * n * (t1 + t2), 0.0)
    return np.sign(y - mu) * np.sqrt(dev)


def _starts(model: str, d: np.ndarray, y: np.ndarray, lo_d: float, dmax: float) -> list[np.ndarray]:
    """Default starting values of the curve parameters (several ED50 candidates for emax/hill)."""
    e0 = float(np.mean(y[d == d.min()]))
    top = float(np.mean(y[d == d.max()]))
    if model == "linear":
        return [np.array([e0, (top - e0) / dmax])]
    if model == "loglinear":
        return [np.array([e0, (top - e0) / np.log1p(dmax)])]
    pos = np.unique(d[d > 0])
    cands = np.unique(np.clip(np.quantile(pos, [0.1, 0.5, 0.9]) if len(pos) else [dmax / 2],
                              np.exp(lo_d) * 1.01, dmax * 5e2))
    starts = []
    for c in cands:
        base = [e0, (top - e0) * (1 + c / dmax), np.log(c)]
        starts.append(np.array(base if model == "emax" else base + [np.log(1.0)]))
        if model == "hill":
            starts.append(np.array(base[:2] + [np.log(c), np.log(2.5)]))
    return starts


def _fit_one(model: str, d: np.ndarray, y: np.ndarray, pidx: np.ndarray, n_pat: int,
             starts: Sequence[np.ndarray] | None = None, trials: np.ndarray | None = None
             ) -> dict[str, Any] | None:
    """Fit one model with patient offsets; None when there are too few samples.

    Returns ``theta`` (curve part, internal scale), ``params``, ``rss`` (Gaussian: residual sum of squares;
    quasi-binomial: deviance), ``pearson`` (Pearson χ², quasi-binomial only), ``k`` (curve + offsets + 1),
    ``n``, ``aic`` (Gaussian AIC; quasi-binomial: deviance + 2k, i.e. dispersion 1), ``offsets``,
    ``converged`` (the optimiser reported success from at least one start and the fit is finite).
    """
    from scipy.optimize import least_squares

    n = len(y)
    k_curve = len(_PARAMS[model])
    n_off = max(n_pat - 1, 0)
    if n < k_curve + n_off + 1:
        return None
    dmax = float(np.max(d)) if np.max(d) > 0 else 1.0
    onehot = np.zeros((n, n_off))
    for j in range(n_off):
        onehot[:, j] = pidx == j + 1
    binom = trials is not None
    w = np.asarray(trials, float) if binom else None

    def resid(theta):
        mu = _curve(model, d, _unpack(model, theta[:k_curve])) + onehot @ theta[k_curve:]
        return _binomial_deviance_resid(y, mu, w) if binom else mu - y

    pos_d = d[d > 0]
    # ED50 between a tenth of the lowest tested dose and 1000x the highest (no step functions below the data)
    lo_d, hi_d = np.log((float(pos_d.min()) if len(pos_d) else dmax) * 0.1), np.log(dmax * 1e3)
    if starts is None:
        starts = _starts(model, d, y, lo_d, dmax)
        if binom:  # the Gaussian fit is a good start for the deviance
            g = _fit_one(model, d, y, pidx, n_pat, starts=starts)
            if g is not None:
                starts = [np.concatenate([g["theta"], g["offsets"][1:]])] + list(starts)
    shaped = model in ("emax", "hill")
    lb = [-np.inf, -np.inf] + ([lo_d] if shaped else []) + ([np.log(0.3)] if model == "hill" else [])
    ub = [np.inf, np.inf] + ([hi_d] if shaped else []) + ([np.log(10.0)] if model == "hill" else [])
    lb += [-np.inf] * n_off
    ub += [np.inf] * n_off
    best, ok = None, False
    for s in starts:
        s = np.asarray(s, float)
        x0 = np.concatenate([s[:k_curve], s[k_curve:] if len(s) == k_curve + n_off else np.zeros(n_off)])
        x0 = np.clip(x0, np.array(lb) + 1e-9, np.array(ub) - 1e-9)
        with np.errstate(all="ignore"):
            r = least_squares(resid, x0, bounds=(lb, ub), method="trf", x_scale="jac", max_nfev=2000)
        rss = float(np.sum(r.fun ** 2))
        if np.isfinite(rss) and (best is None or rss < best[1]):
            best = (r.x, rss)
            ok = bool(r.success)
    if best is None:
        return None
    theta, rss = best
    k = k_curve + n_off + 1
    out = {"theta": theta[:k_curve], "params": _unpack(model, theta[:k_curve]), "rss": rss, "k": k, "n": n,
           "offsets": np.concatenate([[0.0], theta[k_curve:]]), "converged": ok and bool(np.all(np.isfinite(theta)))}
    if binom:
        mu = np.clip(_curve(model, d, out["params"]) + onehot @ theta[k_curve:], _P_EPS, 1 - _P_EPS)
        out["pearson"] = float(np.sum(w * (y - mu) ** 2 / (mu * (1 - mu))))
        out["aic"] = float(rss + 2 * k)
    else:
        out["aic"] = float(n * np.log(max(rss, 1e-300) / n) + 2 * k)
    return out
