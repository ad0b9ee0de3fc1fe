"""Random building blocks of a scene: smooth Gaussian random fields, the territory factor that makes the
modules' patch fields anti-correlated, and weighted sampling without replacement.

Each function draws from the generator it is given and nothing else, so a scene's draws happen in the
order its pieces are called.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma_px`` (grid px).

    Returns
    -------
    ndarray
        float32 ``shape``; one ``standard_normal(shape)`` draw.
    """
    n = rng.standard_normal(shape).astype(np.float32)
    f = ndi.gaussian_filter(n, max(sigma_px, 0.5), mode="wrap")
    return (f - f.mean()) / (f.std() or 1.0)


def territory_factor(n_modules: int) -> np.ndarray:
    """Lower-triangular ``L`` (n, n) with ``L @ L.T`` = unit variances, pairwise correlation ``-1/(n-1)``.

    The matrix is singular (the fields sum to zero), so the last row puts no weight on its own draw.

    >>> territory_factor(2).round(3).tolist()
    [[1.0, 0.0], [-1.0, 0.0]]
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


def gumbel_topk(rng: np.random.Generator, logw: np.ndarray, k: int) -> np.ndarray:
    """Indices of a weighted sample of size ``k`` without replacement (weights ``exp(logw)``).

    Returns
    -------
    ndarray
        int64 (min(k, len(logw)),), sorted; one ``gumbel(len(logw))`` draw unless ``k <= 0`` or empty.
    """
    if k <= 0 or len(logw) == 0:
        return np.zeros(0, np.int64)
    keys = logw + rng.gumbel(size=len(logw))
    return np.sort(np.argsort(-keys, kind="stable")[: min(k, len(logw))])
