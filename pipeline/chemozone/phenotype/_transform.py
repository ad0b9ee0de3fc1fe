"""The gating scale: arcsinh / log1p / none transforms of measured intensities and the scale-free cofactor."""

from __future__ import annotations

from typing import Any

import numpy as np

TRANSFORMS = ("none", "arcsinh", "log1p")
"""Transforms a marker can be gated on (``phenotypes.markers.<marker>.transform``)."""


def default_cofactor(values: Any) -> float:
    """Scale-free default cofactor: the 5th percentile of the finite values > 0.

    Scales with the data (``default_cofactor(k * v) == k * default_cofactor(v)``), so the transformed
    values do not depend on the bit depth or units of the image. Returns 1.0 when no value is > 0.

    >>> default_cofactor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    1.45
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 1.0
    c = float(np.percentile(v, 5))
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
