"""Interval and equivalence helpers shared by the curve fits and the tests.

* :func:`bootstrap_interval` – percentile, BCa (bias-corrected and accelerated, jackknife acceleration),
  BCa *expanded* for few resampling units (Hesterberg 2015: the normal quantile replaced by
  ``sqrt(n/(n-1)) · t_{n-1}``, which undoes the bootstrap's ``(n-1)/n`` variance shrinkage and the
  normal tails with six patients) or ``student-t``: ``estimate ± t_{n-1} · sqrt(n/(n-1)) · SD(draws)``
  (on the log scale for positive parameters). With six patients the bootstrap distribution is too narrow;
  BCa corrects its centre and skew but not its width, and the expanded BCa asks for quantiles beyond a
  few hundred draws (``benchmarks/coverage_stats.py`` measures all of them).
* :func:`equivalence_test` – two one-sided tests (TOST) of ``|effect| < margin`` with the power it had
  at a true effect of 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CI_METHODS = ("student-t", "bca", "bca-expanded", "percentile")


def _expanded_z(q: float, n_units: int | None) -> float:
    """Normal quantile ``q``, or its small-sample expansion ``sqrt(n/(n-1)) · t_{n-1}(q)`` for ``n_units``."""
    from scipy import stats as sst

    if n_units is None or n_units < 3:
        return float(sst.norm.ppf(q))
    return float(np.sqrt(n_units / (n_units - 1)) * sst.t.ppf(q, n_units - 1))


def bootstrap_interval(estimate: float, boot: np.ndarray, *, jackknife: np.ndarray | None = None,
                       alpha: float = 0.05, method: str = "bca", n_units: int | None = None, log: bool = False
                       ) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` interval from bootstrap draws.

    Parameters
    ----------
    estimate : float
        The statistic on the full data.
    boot : ndarray, shape (B,)
        The statistic on each bootstrap resample (non-finite draws are ignored).
    jackknife : ndarray, shape (n,), optional
        The statistic leaving out each resampling unit (patient) in turn, for the BCa acceleration
        (``a = 0`` when absent or fewer than 3 finite values).
    alpha : float
        1 − confidence level.
    method : {"student-t", "bca", "bca-expanded", "percentile"}
        ``bca-expanded`` uses the small-sample quantile ``sqrt(n/(n-1)) · t_{n-1}`` (``n = n_units``) in
        place of the normal one; ``student-t`` is ``estimate ± t_{n-1, 1-alpha/2} · sqrt(n/(n-1)) · SD``
        with the SD of the draws (needs ``n_units``).
    n_units : int, optional
        Number of resampling units (patients), for ``bca-expanded`` and ``student-t``.
    log : bool
        ``student-t`` only: build the interval for ``log(estimate)`` (positive parameters such as ED50
        or a ratio; non-positive draws are then ignored) and transform it back.

    Returns
    -------
    (lo, hi) : tuple of float
        NaN when fewer than 2 finite draws, or (BCa) when every draw lies on one side of ``estimate``.

    Examples
    --------
    >>> b = np.linspace(-2, 2, 401)
    >>> [round(v, 2) for v in bootstrap_interval(0.0, b, method="percentile")]
    [-1.9, 1.9]
    >>> [round(v, 2) for v in bootstrap_interval(0.0, b, method="bca")]
    [-1.9, 1.9]
    """
    from scipy import stats as sst

    if method not in CI_METHODS:
        raise ValueError(f"ci_method must be one of {CI_METHODS}, got {method!r}")
    b = np.asarray(boot, float)
    b = b[np.isfinite(b)]
    if len(b) < 2 or not np.isfinite(estimate):
        return np.nan, np.nan
    if method == "percentile":
        lo, hi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
        return float(lo), float(hi)
    if method == "student-t":
        return _student_t(estimate, b, alpha=alpha, n_units=n_units, log=log)
    frac = (np.sum(b < estimate) + np.sum(b <= estimate)) / (2 * len(b))
    if frac <= 0 or frac >= 1:
        return np.nan, np.nan
    z0 = float(sst.norm.ppf(frac))
    a = 0.0
    if jackknife is not None:
        j = np.asarray(jackknife, float)
        j = j[np.isfinite(j)]
        if len(j) >= 3:
            dev = j.mean() - j
            den = 6.0 * np.sum(dev ** 2) ** 1.5
            a = float(np.sum(dev ** 3) / den) if den > 0 else 0.0
    units = n_units if method == "bca-expanded" else None
    out = []
    for q in (alpha / 2, 1 - alpha / 2):
        z = _expanded_z(q, units)
        adj = sst.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
        out.append(float(np.quantile(b, float(np.clip(adj, 0.0, 1.0)))))
    return out[0], out[1]


def _student_t(estimate: float, b: np.ndarray, *, alpha: float, n_units: int | None, log: bool
               ) -> tuple[float, float]:
    """``estimate ± t_{n-1} · sqrt(n/(n-1)) · SD(b)``, on the log scale when ``log``."""
    from scipy import stats as sst

    if n_units is None or n_units < 2:
        raise ValueError("ci_method 'student-t' needs n_units (the number of patients), at least 2")
    if log:
        if estimate <= 0:
            return np.nan, np.nan
        b = np.log(b[b > 0])
        estimate = float(np.log(estimate))
    if len(b) < 2:
        return np.nan, np.nan
    half = float(sst.t.ppf(1 - alpha / 2, n_units - 1) * np.sqrt(n_units / (n_units - 1)) * np.std(b, ddof=1))
    lo, hi = estimate - half, estimate + half
    return (float(np.exp(lo)), float(np.exp(hi))) if log else (lo, hi)


def equivalence_test(estimate: float, se: float, *, df: float, margin: float, alpha: float = 0.05
                     ) -> dict[str, Any]:
    """Two one-sided t tests (TOST) of ``-margin < effect < margin``.

    Equivalence is shown at level ``alpha`` when both one-sided tests reject, i.e. when the ``1 - 2·alpha``
    interval ``estimate ± t_{1-alpha, df} · se`` lies inside ``(-margin, margin)``. The margin must be
    fixed before the data are seen.

    Parameters
    ----------
    estimate, se : float
        The effect and its standard error.
    df : float
        Degrees of freedom of the t reference distribution (``np.inf`` = normal).
    margin : float
        Equivalence margin (> 0), in the units of ``estimate``.
    alpha : float
        Level of each one-sided test.

    Returns
    -------
    dict
        ``p`` (the larger one-sided p), ``equivalent`` (p < alpha), ``ci_lo, ci_hi`` (the ``1 - 2·alpha``
        interval), ``power`` (probability of showing equivalence when the true effect is 0 and the
        standard error is ``se``: ``2·T_df(margin/se − t_{1-alpha}) − 1``, floored at 0).

    Examples
    --------
    >>> r = equivalence_test(0.01, 0.02, df=5, margin=0.1)
    >>> bool(r["equivalent"]), round(r["p"], 4), round(r["power"], 3)
    (True, 0.0032, 0.969)
    """
    from scipy import stats as sst

    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"equivalence margin must be a positive number, got {margin!r}")
    out = {"p": np.nan, "equivalent": False, "ci_lo": np.nan, "ci_hi": np.nan, "power": np.nan}
    if not (np.isfinite(estimate) and np.isfinite(se)) or se < 0:
        return out
    q = float(sst.t.ppf(1 - alpha, df))
    if se == 0:
        inside = abs(estimate) < margin
        return {"p": 0.0 if inside else 1.0, "equivalent": inside, "ci_lo": estimate, "ci_hi": estimate,
                "power": 1.0}
    p_low = float(sst.t.sf((estimate + margin) / se, df))   # H0: effect <= -margin
    p_up = float(sst.t.cdf((estimate - margin) / se, df))   # H0: effect >= +margin
    p = max(p_low, p_up)
    power = max(0.0, 2 * float(sst.t.cdf(margin / se - q, df)) - 1)
    return {"p": p, "equivalent": bool(p < alpha), "ci_lo": estimate - q * se, "ci_hi": estimate + q * se,
            "power": power}


def t_interval(estimate: float, se: float, df: float, alpha: float = 0.05) -> tuple[float, float, float]:
    """``(lo, hi, p)``: ``estimate ± t_{1-alpha/2, df} · se`` and the two-sided t p-value."""
    from scipy import stats as sst

    if not (np.isfinite(se) and se > 0):
        return np.nan, np.nan, np.nan
    q = float(sst.t.ppf(1 - alpha / 2, df))
    return estimate - q * se, estimate + q * se, float(2 * sst.t.sf(abs(estimate / se), df))
