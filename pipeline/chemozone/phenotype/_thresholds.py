"""1-D thresholds between a negative and a positive population: Gaussian mixture, Otsu, multi-Otsu, valley.

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
_DIP = 0.9
"""A mixture density whose minimum between two component means is below this fraction of the lower end
density dips there: the upper component is a mode of its own (``split='modes'``)."""
_MAX_FIT = 100_000
"""Mixtures are fitted to a random subsample of at most this many values."""


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


def threshold_multiotsu(x: Any, *, classes: int = 3) -> tuple[float, str]:
    """Upper threshold of a multi-level Otsu split of ``x`` into ``classes`` classes (top class = positive).

    Meant for a negative population made of several levels (e.g. stroma at the camera offset, tumor lifted
    by autofluorescence) below one positive population: with 3 classes the two negative levels take the
    lower classes. With a single negative level it cuts into the positives (abundant markers).

    Parameters
    ----------
    x : array-like, shape (n,)
        Transformed values (non-finite values ignored).
    classes : int
        2 or more (2 = Otsu).

    Returns
    -------
    threshold : float
    warning : str
        Empty, or says that fewer distinct values than classes fell back to Otsu.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0, 0.1, 3000), rng.normal(1, 0.1, 3000), rng.normal(4, 0.2, 600)]
    >>> t, w = threshold_multiotsu(x)
    >>> 1.2 < t < 3.5, w
    (True, '')
    """
    from skimage.filters import threshold_multiotsu as _multi

    if int(classes) < 2:
        raise ValueError(f"threshold_multiotsu: classes must be >= 2, got {classes}")
    v = _finite(x)
    if np.unique(v).size <= classes:
        return threshold_otsu(v)[0], f"only {np.unique(v).size} distinct values: otsu fallback"
    return float(_multi(v, classes=int(classes), nbins=256)[-1]), ""


def _fit_mixture(z: np.ndarray, max_components: int, seed: int) -> tuple[Any, bool]:
    """Best-BIC Gaussian mixture of 2..max_components components (1-D, standardised); did any fit not converge."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    if z.size > _MAX_FIT:
        z = np.random.default_rng(seed).choice(z, _MAX_FIT, replace=False)
    z = z.reshape(-1, 1)
    best = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for k in range(2, max(2, int(max_components)) + 1):
            if np.unique(z).size <= k:
                break
            gm = GaussianMixture(
                k, covariance_type="full", random_state=seed, reg_covar=1e-4, max_iter=200, init_params="k-means++"
            ).fit(z)
            bic = gm.bic(z)
            if best is None or bic < best[0]:
                best = (bic, gm)
    return best[1], any(issubclass(c.category, ConvergenceWarning) for c in caught)


def _group_d(m: np.ndarray, s: np.ndarray, w: np.ndarray, j: int) -> float:
    """Ashman's D between the mixtures of components ``:j`` and ``j:`` (each summarised by its mean and SD)."""

    def moments(sl: slice) -> tuple[float, float]:
        ww = w[sl] / w[sl].sum()
        mean = float(np.sum(ww * m[sl]))
        return mean, float(np.sum(ww * (s[sl] ** 2 + m[sl] ** 2)) - mean**2)

    (m0, v0), (m1, v1) = moments(slice(None, j)), moments(slice(j, None))
    return float(np.sqrt(2.0) * (m1 - m0) / np.sqrt(max(v0 + v1, 1e-12)))


def _mixture_density(m: np.ndarray, s: np.ndarray, w: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.sum(w[:, None] / s[:, None] * np.exp(-0.5 * ((grid[None, :] - m[:, None]) / s[:, None]) ** 2), axis=0)


def _choose_split(m: np.ndarray, s: np.ndarray, w: np.ndarray, split: str) -> tuple[int, str]:
    """Index j of the first positive component (components sorted by mean), or (0, why not bimodal).

    ``separation``: the adjacent pair with the largest Ashman's D. ``modes``: among the splits whose groups
    are separated (group D >= 2, upper weight >= 0.2 %), those whose mixture density dips between the two
    adjacent means (the upper group is a mode of its own, not a shoulder of the lower one); of these the
    one with the widest gap between the adjacent means (without a dip anywhere: the widest gap of all).
    """
    if split == "separation":
        dpair = np.sqrt(2.0) * np.diff(m) / np.sqrt(s[:-1] ** 2 + s[1:] ** 2)
        j = int(np.argmax(dpair)) + 1
        if dpair[j - 1] < _MIN_SEPARATION:
            return 0, f"not bimodal (Ashman's D = {dpair[j - 1]:.2f} < {_MIN_SEPARATION:g})"
        if w[j:].sum() < _MIN_WEIGHT:
            return 0, f"not bimodal (upper mixture weight {w[j:].sum():.4f})"
        return j, ""
    if split != "modes":
        raise ValueError(f"unknown mixture split {split!r} (modes or separation)")
    separated, dips = [], []
    for j in range(1, m.size):
        if _group_d(m, s, w, j) < _MIN_SEPARATION or w[j:].sum() < _MIN_WEIGHT:
            continue
        separated.append((m[j] - m[j - 1], j))
        dens = _mixture_density(m, s, w, np.linspace(m[j - 1], m[j], 257))
        if dens.min() < _DIP * min(dens[0], dens[-1]):
            dips.append((m[j] - m[j - 1], j))
    if not separated:
        best = max(_group_d(m, s, w, j) for j in range(1, m.size))
        return 0, f"not bimodal (largest Ashman's D between component groups = {best:.2f} < {_MIN_SEPARATION:g})"
    return max(dips or separated)[1], ""


def _posterior_crossing(m: np.ndarray, s: np.ndarray, w: np.ndarray, j: int) -> float | None:
    """Where the posterior of components ``j:`` crosses 0.5 between ``m[j-1]`` and ``m[j]`` (None: no crossing)."""
    from scipy.special import logsumexp

    grid = np.linspace(m[j - 1], m[j], 1025)
    logp = np.log(w)[:, None] - np.log(s)[:, None] - 0.5 * ((grid[None, :] - m[:, None]) / s[:, None]) ** 2
    diff = logsumexp(logp[j:], axis=0) - logsumexp(logp[:j], axis=0)  # > 0 where the upper group wins
    cross = np.nonzero((diff[:-1] <= 0) & (diff[1:] > 0))[0]
    if cross.size == 0:
        return None
    k = int(cross[0])
    return float(grid[k] + (grid[k + 1] - grid[k]) * (-diff[k]) / (diff[k + 1] - diff[k]))


def _valley_between(z: np.ndarray, lo: float, hi: float) -> tuple[float, float] | None:
    """Ends ``(a, b)`` of the longest stretch of near-minimal smoothed density of ``z`` between ``lo`` and ``hi``.

    "Near-minimal": within 10 % of the way from the minimum up to the lower of the two end densities (the
    empty gap between a negative tail and a few rare positives). None when the density does not dip between
    the two ends (minimum >= 90 % of the lower end: a slope, no valley).
    """
    centers, dens = _smoothed_density(z, 512)
    sel = (centers >= lo) & (centers <= hi)
    if sel.sum() < 3:
        return None
    c, d = centers[sel], dens[sel]
    if d.min() >= _DIP * min(d[0], d[-1]):
        return None
    low = np.nonzero(d <= d.min() + 0.1 * (min(d[0], d[-1]) - d.min()))[0]
    runs = np.split(low, np.nonzero(np.diff(low) > 1)[0] + 1)
    run = max(runs, key=len)
    return float(c[run[0]]), float(c[run[-1]])


def threshold_gmm(
    x: Any,
    *,
    fallback: str = "valley",
    seed: int = 0,
    max_components: int = 5,
    split: str = "modes",
    place: str = "valley",
) -> tuple[float, str]:
    """Gaussian-mixture threshold between the negative and the positive populations.

    Mixtures of 2 to ``max_components`` Gaussians are fitted to the standardised values and the one with
    the lowest BIC is kept: the extra components absorb a negative population made of several levels
    (camera offset, autofluorescence, spillover from a bright neighbour channel, tumor vs stroma) and
    skewed tails. Components sorted by mean are split into a lower (negative) and an upper (positive)
    group (``split``):

    - ``modes`` (default): of the splits whose two groups are separated (Ashman's D between the groups
      >= 2, upper weight >= 0.2 %) and whose mixture density dips between the two adjacent component
      means (the positives form a mode, not a shoulder), the one with the widest gap between the adjacent
      means on the transformed scale. Two tight negative levels (stroma at the offset, tumor lifted by
      spillover) are well separated in units of their own spread but close on the log-like scale, so the
      gate goes above both.
    - ``separation``: the adjacent pair of components with the largest Ashman's D (before issue 14; a tight
      second negative level can capture the gate).

    The threshold (``place``) is where the posterior of the upper group crosses 0.5 (``crossing``); with
    ``valley`` (default) the same, except when the longest stretch of lowest smoothed-histogram density
    between the two adjacent component means holds no cell at all: the gate is then kept inside that empty
    gap (the crossing clipped into it), so a few rare positives beyond an empty gap do not drag the gate
    into the negatives' tail. A dip that still holds cells is no evidence against the crossing. When no
    split is separated, the
    ``fallback`` (``valley`` or ``otsu``) is used and the warning says why.

    Parameters
    ----------
    x : array-like, shape (n,)
        Transformed values (non-finite values ignored).
    fallback : {"valley", "otsu"}
    seed : int
        Seed of the mixtures' initialisation (and of the subsample of 100 000 values the mixtures are fitted
        to when ``x`` is larger).
    max_components : int
        2 or more.
    split : {"modes", "separation"}
    place : {"valley", "crossing"}

    Returns
    -------
    threshold : float
    warning : str
        Empty when the mixture gave the threshold.

    Raises
    ------
    ValueError
        An unknown ``split`` or ``place``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stroma, tumor = rng.normal(0.88, 0.01, 4000), rng.normal(1.05, 0.04, 4000)  # two negative levels
    >>> pos = rng.normal(2.3, 0.2, 1200)
    >>> t, w = threshold_gmm(np.r_[stroma, tumor, pos])
    >>> bool(tumor.max() < t < pos.min()), w  # above both negative levels, below every positive
    (True, '')
    """
    if place not in ("valley", "crossing"):
        raise ValueError(f"unknown mixture threshold placement {place!r} (valley or crossing)")
    x = _finite(x)
    fall = threshold_valley if fallback == "valley" else threshold_otsu
    if np.unique(x).size < 3:
        t, w = fall(x)
        return t, _join(f"fewer than 3 distinct values: {fallback} fallback", w)
    mu, sd = float(np.mean(x)), float(np.std(x))
    z = (x - mu) / sd
    gm, unconverged = _fit_mixture(z, max_components, seed)
    note = "mixture fit did not converge" if unconverged else ""
    order = np.argsort(gm.means_.ravel())
    m, s, w = gm.means_.ravel()[order], np.sqrt(gm.covariances_.ravel()[order]), gm.weights_[order]
    j, reason = _choose_split(m, s, w, split)
    if j:
        t = _posterior_crossing(m, s, w, j)
        if place == "valley":
            run = _valley_between(z, m[j - 1], m[j])
            # an empty stretch (no cell) between the groups: the gate stays in it, where the mixture's Bayes
            # boundary says (a crossing in the negatives' tail is pulled up to the gap); a dip that still holds
            # cells is no evidence against the crossing
            if run is not None and (t is None or not np.any((z > run[0]) & (z < run[1]))):
                t = 0.5 * (run[0] + run[1]) if t is None else float(np.clip(t, run[0], run[1]))
        if t is not None:
            return float(t * sd + mu), note
        reason = "not bimodal (posteriors do not cross between the means)"
    t, wmsg = fall(x)
    return t, _join(note, f"{reason}: {fallback} fallback", wmsg)


def _finite(x: Any) -> np.ndarray:
    v = np.asarray(x, dtype=float).ravel()
    return v[np.isfinite(v)]


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _robust_threshold(
    x: np.ndarray,
    method: str,
    *,
    fallback: str,
    seed: int,
    max_components: int = 5,
    split: str = "modes",
    place: str = "valley",
) -> tuple[float, str]:
    """Any automatic method, guarded against empty, tiny and constant inputs."""
    x = _finite(x)
    if x.size == 0:
        return float("nan"), "no finite values: no cell is positive"
    if x.size < 10 or float(np.ptp(x)) == 0.0:
        why = "constant values" if float(np.ptp(x)) == 0.0 else f"only {x.size} values"
        return float(np.max(x)), f"{why}: threshold = maximum, no cell is positive"
    if method == "gmm":
        return threshold_gmm(x, fallback=fallback, seed=seed, max_components=max_components, split=split, place=place)
    if method == "otsu":
        return threshold_otsu(x)
    if method == "valley":
        return threshold_valley(x)
    if method == "multiotsu":
        return threshold_multiotsu(x)
    raise ValueError(f"unknown automatic method {method!r}")
