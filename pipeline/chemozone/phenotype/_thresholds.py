"""1-D thresholds between a negative and a positive population: Gaussian mixture, Otsu, density valley.

Each takes the (transformed) values of one marker and returns ``(threshold, warning)``; the warning is empty
when the method worked as intended and says what fell back otherwise.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

_MIN_SEPARATION = 2.0
"""Ashman's D between the two mixture components below which values count as not bimodal."""
_MIN_WEIGHT = 0.002
"""Smallest mixture weight of a component that counts as a population."""


def _smoothed_density(x: np.ndarray, n_bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter1d

    lo, hi = np.percentile(x, [0.1, 99.9])
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max())
    hist, edges = np.histogram(x, bins=n_bins, range=(lo, hi))
    centers = 0.5 * (edges[1:] + edges[:-1])
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    sd = min(float(np.std(x)), iqr / 1.349) if iqr > 0 else float(np.std(x))
    bw = 0.9 * sd * x.size ** (-0.2)  # Silverman's rule
    sigma_bins = max(bw / (centers[1] - centers[0]), 1.0)
    return centers, gaussian_filter1d(hist.astype(float), sigma_bins, mode="constant")


def _tail_threshold(x: np.ndarray) -> float:
    """Mode + 3 SD of the half of the distribution below the mode (background-only data)."""
    centers, dens = _smoothed_density(x)
    mode = centers[int(np.argmax(dens))]
    below = x[x <= mode] - mode
    sd = float(np.sqrt(np.mean(below**2))) if below.size > 1 else float(np.std(x))
    return float(mode + 3.0 * sd)


def threshold_valley(x: Any) -> tuple[float, str]:
    """Deepest density valley between the two most prominent modes of ``x``.

    Returns ``(threshold, warning)``; when the density has a single mode the threshold is mode + 3 SD of
    the values below the mode, and the warning says so.
    """
    from scipy.signal import find_peaks

    x = _finite(x)
    centers, dens = _smoothed_density(x)
    peaks, props = find_peaks(np.r_[0.0, dens, 0.0], prominence=0.05 * dens.max())
    peaks = peaks - 1
    if peaks.size < 2:
        return _tail_threshold(x), "unimodal: threshold = mode + 3 SD of the lower half"
    top = np.sort(peaks[np.argsort(props["prominences"])[-2:]])
    seg = dens[top[0] : top[1] + 1]
    return float(centers[top[0] + int(np.argmin(seg))]), ""


def threshold_otsu(x: Any) -> tuple[float, str]:
    """Otsu's threshold of ``x`` (256-bin histogram). Returns ``(threshold, warning)``."""
    from skimage.filters import threshold_otsu as _otsu

    return float(_otsu(_finite(x), nbins=256)), ""


def threshold_gmm(x: Any, *, fallback: str = "valley", seed: int = 0, max_components: int = 3) -> tuple[float, str]:
    """Gaussian-mixture threshold between the negative and the positive populations.

    Mixtures of 2 to ``max_components`` Gaussians are fitted to the standardised values and the one with
    the lowest BIC is kept (a third component absorbs a skewed or two-level background, e.g. tumor vs
    stroma autofluorescence, or the spillover tail next to positive cells). Components sorted by mean are
    split into a lower (negative) and an upper (positive) group at the adjacent pair with the largest
    separation (Ashman's D); the threshold is where the posterior of the upper group crosses 0.5 between
    the two groups' neighbouring means. With ``max_components=2`` this is the classic two-component rule:
    where the two posteriors cross between the means. When the split is not bimodal (D < 2, an upper
    weight < 0.2 %, or no crossing), the ``fallback`` (``valley`` or ``otsu``) is used and the warning says
    why.

    Parameters
    ----------
    x : array-like, shape (n,)
        Transformed values (non-finite values ignored).
    fallback : {"valley", "otsu"}
    seed : int
        Seed of the mixtures' initialisation.
    max_components : int
        2 or more.

    Returns
    -------
    threshold : float
    warning : str
        Empty when the mixture gave the threshold.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = _finite(x)
    fall = threshold_valley if fallback == "valley" else threshold_otsu
    if np.unique(x).size < 3:
        t, w = fall(x)
        return t, _join(f"fewer than 3 distinct values: {fallback} fallback", w)
    mu, sd = float(np.mean(x)), float(np.std(x))
    z = ((x - mu) / sd).reshape(-1, 1)
    best = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for k in range(2, max(2, int(max_components)) + 1):
            if np.unique(x).size <= k:
                break
            gm = GaussianMixture(
                k, covariance_type="full", random_state=seed, reg_covar=1e-4, max_iter=200, init_params="k-means++"
            ).fit(z)
            bic = gm.bic(z)
            if best is None or bic < best[0]:
                best = (bic, gm)
    note = "mixture fit did not converge" if any(issubclass(c.category, ConvergenceWarning) for c in caught) else ""
    gm = best[1]
    order = np.argsort(gm.means_.ravel())
    m = gm.means_.ravel()[order]
    s = np.sqrt(gm.covariances_.ravel()[order])
    w = gm.weights_[order]
    dpair = np.sqrt(2.0) * np.diff(m) / np.sqrt(s[:-1] ** 2 + s[1:] ** 2)
    j = int(np.argmax(dpair)) + 1  # components j.. are the positive group
    d = float(dpair[j - 1])
    reason = ""
    if d < _MIN_SEPARATION:
        reason = f"not bimodal (Ashman's D = {d:.2f} < {_MIN_SEPARATION:g})"
    elif w[j:].sum() < _MIN_WEIGHT:
        reason = f"not bimodal (upper mixture weight {w[j:].sum():.4f})"
    else:
        grid = np.linspace(m[j - 1], m[j], 1025)
        logp = np.log(w)[:, None] - np.log(s)[:, None] - 0.5 * ((grid[None, :] - m[:, None]) / s[:, None]) ** 2
        from scipy.special import logsumexp

        diff = logsumexp(logp[j:], axis=0) - logsumexp(logp[:j], axis=0)  # > 0 where the upper group wins
        cross = np.nonzero((diff[:-1] <= 0) & (diff[1:] > 0))[0]
        if cross.size == 0:
            reason = "not bimodal (posteriors do not cross between the means)"
        else:
            k = int(cross[0])
            # linear interpolation of the crossing on the fine grid
            t = grid[k] + (grid[k + 1] - grid[k]) * (-diff[k]) / (diff[k + 1] - diff[k])
            return float(t * sd + mu), note
    t, wmsg = fall(x)
    return t, _join(note, f"{reason}: {fallback} fallback", wmsg)


def _finite(x: Any) -> np.ndarray:
    v = np.asarray(x, dtype=float).ravel()
    return v[np.isfinite(v)]


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _robust_threshold(
    x: np.ndarray, method: str, *, fallback: str, seed: int, max_components: int = 3
) -> tuple[float, str]:
    """Any automatic method, guarded against empty, tiny and constant inputs."""
    x = _finite(x)
    if x.size == 0:
        return float("nan"), "no finite values: no cell is positive"
    if x.size < 10 or float(np.ptp(x)) == 0.0:
        why = "constant values" if float(np.ptp(x)) == 0.0 else f"only {x.size} values"
        return float(np.max(x)), f"{why}: threshold = maximum, no cell is positive"
    if method == "gmm":
        return threshold_gmm(x, fallback=fallback, seed=seed, max_components=max_components)
    if method == "otsu":
        return threshold_otsu(x)
    if method == "valley":
        return threshold_valley(x)
    raise ValueError(f"unknown automatic method {method!r}")
