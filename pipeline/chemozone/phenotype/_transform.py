"""The gating scale: arcsinh / log1p / none transforms of measured intensities and the scale-free cofactor."""

from __future__ import annotations

from typing import Any

import numpy as np

TRANSFORMS = ("none", "arcsinh", "log1p")
"""Transforms a marker can be gated on (``phenotypes.markers.<marker>.transform``)."""


def default_cofactor(values: Any) -> float:
    """Scale-free default cofactor: the 5th percentile of the finite values > 0, at least the noise around 0.

    Scales with the data (``default_cofactor(k * v) == k * default_cofactor(v)``), so the transformed
    values do not depend on the bit depth or units of the image. When 1 % or more of the values are
    negative (unmixed components, background-subtracted images), the negatives are noise around zero and
    the cofactor is at least the 95th percentile of their magnitude: that noise then stays on the linear
    part of arcsinh instead of being spread into two log-scale humps (one per sign). Returns 1.0 when no
    value is > 0 and none is negative.

    >>> default_cofactor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    1.45
    >>> default_cofactor([-2, -1, 0.1, 0.2, 5, 6, 7, 8, 9, 10])  # 20 % negative: the noise scale (1.95)
    1.95
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    pos, neg = v[v > 0], -v[v < 0]
    c = float(np.percentile(pos, 5)) if pos.size else 0.0
    if neg.size and neg.size >= 0.01 * v.size:
        c = max(c, float(np.percentile(neg, 95)))
    return c if c > 0 else 1.0


def transform_values(values: Any, *, transform: str, cofactor: float | None = None) -> np.ndarray:
    """Transform measured intensities for gating.

    Parameters
    ----------
    values : array-like, shape (n,)
        Measured intensities (any dtype; never modified).
    transform : {"none", "arcsinh", "log1p"}
        ``none`` (x), ``arcsinh`` (arcsinh(x / c)) or ``log1p`` (log1p(max(x, 0) / c)).
    cofactor : float, optional
        ``c`` in intensity units; None = :func:`default_cofactor` of ``values``. Unused for ``none``.

    Returns
    -------
    ndarray of float64, shape (n,)
        NaN where the input is NaN.

    Raises
    ------
    ValueError
        An unknown ``transform``.

    >>> transform_values([0.0, 5.0], transform="arcsinh", cofactor=5.0).round(4)
    array([0.    , 0.8814])
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r} (one of {list(TRANSFORMS)})")
    v = np.asarray(values, dtype=float)
    if transform == "none":
        return v.copy()
    c = cofactor if cofactor is not None else default_cofactor(v)
    if transform == "arcsinh":
        return np.arcsinh(v / c)
    return np.log1p(np.maximum(v, 0.0) / c)


def inverse_transform(values: Any, *, transform: str, cofactor: float) -> np.ndarray:
    """Measured intensity of transformed values (inverse of :func:`transform_values`).

    >>> inverse_transform([0.0, 1.0], transform="arcsinh", cofactor=5.0).round(4)
    array([0.   , 5.876])
    """
    t = np.asarray(values, dtype=float)
    if transform == "none":
        return t.copy()
    if transform == "arcsinh":
        return np.sinh(t) * cofactor
    if transform == "log1p":
        return np.expm1(t) * cofactor
    raise ValueError(f"unknown transform {transform!r}")
