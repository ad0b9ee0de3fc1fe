"""A reference background per tissue compartment (tumor, stroma) for ``halfmax`` zones.

Why: stroma and tumor nests are two different negative populations in most channels (collagen and elastin
autofluoresce, epithelium does not; the stress generator's CCL5 channel: smoothed signal ~1 in tumor nests and
~80 in stroma of the same sham sample). One background for the whole tissue (the reference median) is then too
high in nests, where lone producers are missed, and too low in stroma, where bright fibres become zone.

How, from the run's own cells and gates (nothing from a generator):

1. tumor cells are the cells positive for the epithelial marker of the config's ``source: tumor`` zone (its
   ``channels`` that are gated ``phenotypes.markers``, e.g. panCK); no such zone or marker: nothing changes;
2. each position's *tumor fraction* ``t`` is the Gaussian-weighted share of tumor cells among the cells around it
   (sigma :data:`SIGMA_UM` = 20 µm, about two cell diameters), on a lattice of ``SIGMA_UM / 4`` spacing
   (:func:`tumor_fraction_lattice`); cells and grid pixels read the lattice cell they fall in;
3. in the reference samples (the same ones as the zone's threshold: the patient's sham), the smoothed signal at
   cells with ``t >= PURE`` (0.8, mostly tumor) and ``t <= 1 - PURE`` (mostly stroma) gives two medians; their
   excess over the median of all reference cells are the two *offsets* (:func:`compartment_offsets`);
4. the background at a position is the median of the reference cells plus ``t × tumor offset + (1 - t) × stroma
   offset`` (= the tumor median where ``t = 1``, the stroma median where ``t = 0``): producers' levels are taken
   above it, and the zone is where the signal minus this offset map reaches the threshold (:func:`offset_rows`).

With fewer than :data:`MIN_CELLS` reference cells in either compartment there are no offsets and the background is
the reference samples' median tissue pixel, as without a tumor marker; the thresholds table says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SIGMA_UM", "PURE", "MIN_CELLS", "tumor_fraction_lattice", "tumor_fraction_at", "compartment_offsets",
           "offset_rows", "tumor_cells", "sample_tumor_lattice"]

SIGMA_UM = 20.0
"""Gaussian sigma of the tumor fraction, µm (about two cell diameters: a cell's own neighbourhood)."""

PURE = 0.8
"""Reference cells with a tumor fraction of at least this (at most ``1 - PURE``) set the tumor (stroma) background."""

MIN_CELLS = 50
"""Fewer reference cells than this in either compartment: no compartment offsets (the tissue-wide background)."""


def tumor_cells(cells: Any, zones: Sequence[Any]) -> np.ndarray | None:
    """Which cells are tumor cells: positive for a channel of a ``source: tumor`` zone that has a gate
    (a ``{marker}_pos`` column whose marker is that channel, matched as channel names are:
    :func:`chemozone.io.normalize_channel_name`, so ``Pan-CK`` finds ``panCK_pos``); None when none is gated.

    Examples
    --------
    >>> import pandas as pd
    >>> from chemozone.config import ZoneConfig
    >>> cells = pd.DataFrame({"panCK_pos": [True, False], "CD3_pos": [False, True]})
    >>> tumor_cells(cells, [ZoneConfig(name="T", source="tumor", channels=["Pan-CK (Opal 690)"])]).tolist()
    [True, False]
    """
    from .io._channels import normalize_channel_name  # noqa: PLC0415

    wanted = {normalize_channel_name(ch) for z in zones if z.source == "tumor" for ch in z.channels}
    cols = sorted(c for c in cells.columns if str(c).endswith("_pos") and normalize_channel_name(str(c)[:-4]) in wanted)
    if not cols:
        return None
    return np.logical_or.reduce([cells[c].to_numpy(object) == True for c in cols])  # noqa: E712 - None/NaN: not tumor


def sample_tumor_lattice(cells: Any, zones: Sequence[Any]) -> tuple[np.ndarray, float] | None:
    """One sample's tumor-fraction lattice from its phenotyped cells (``x_um, y_um`` and the tumor zone's gate,
    :func:`tumor_cells`), as the cohort step and step B build it; None when no tumor marker is gated.

    Examples
    --------
    >>> import pandas as pd
    >>> from chemozone.config import ZoneConfig
    >>> cells = pd.DataFrame({"x_um": [10.0, 200.0], "y_um": [10.0, 10.0], "panCK_pos": [True, False]})
    >>> lat, s = sample_tumor_lattice(cells, [ZoneConfig(name="T", source="tumor", channels=["panCK"])])
    >>> float(lat[0, 1]), float(lat[0, 40])
    (1.0, 0.0)
    """
    is_tumor = tumor_cells(cells, zones)
    if is_tumor is None:
        return None
    return tumor_fraction_lattice(cells["x_um"].to_numpy(float), cells["y_um"].to_numpy(float), is_tumor)


def _lattice_index(pos_um: Any, spacing_um: float, n: int) -> np.ndarray:
    """The lattice cell (along one axis) that each position (µm) falls in, clipped to the lattice's ``n`` cells."""
    return np.clip((np.asarray(pos_um, float) / spacing_um).astype(np.int64), 0, n - 1)


def tumor_fraction_lattice(x_um: Any, y_um: Any, is_tumor: Any, *, sigma_um: float = SIGMA_UM
                           ) -> tuple[np.ndarray, float]:
    """Gaussian-weighted share of tumor cells around each node of a lattice covering the image.

    Parameters
    ----------
    x_um, y_um : array-like (n_cells,)
        Cell centres, µm from the image origin.
    is_tumor : array-like of bool (n_cells,)
    sigma_um : float
        Gaussian sigma, µm.

    Returns
    -------
    lattice : float32 ndarray (max(y) // s + 1, max(x) // s + 1)
        Tumor fraction in [0, 1] of each lattice cell (``s = sigma_um / 4``), up to the last cell; where no cell
        lies within ~4 sigma, the sample's overall tumor fraction. Positions beyond it read its edge
        (:func:`tumor_fraction_at`).
    spacing_um : float
        ``s``.

    Examples
    --------
    >>> lat, s = tumor_fraction_lattice([10, 200], [10, 10], [True, False])
    >>> s, float(lat[0, 1]), float(lat[0, 40])
    (5.0, 1.0, 0.0)
    """
    from .gaussian import gaussian_filter

    s = float(sigma_um) / 4.0
    x, y = np.clip(np.asarray(x_um, float), 0, None), np.clip(np.asarray(y_um, float), 0, None)
    t = np.asarray(is_tumor, bool)
    shape = (int(y.max() // s) + 1 if y.size else 1, int(x.max() // s) + 1 if x.size else 1)
    flat = _lattice_index(y, s, shape[0]) * shape[1] + _lattice_index(x, s, shape[1])
    n = shape[0] * shape[1]
    allc = np.bincount(flat, minlength=n).astype(np.float64).reshape(shape)
    tum = np.bincount(flat, weights=t.astype(np.float64), minlength=n).reshape(shape)
    den = gaussian_filter(allc, 4.0, mode="constant")
    num = gaussian_filter(tum, 4.0, mode="constant")
    overall = float(t.mean()) if t.size else 0.0
    floor = 1e-3 / (2 * np.pi * 16.0)  # a thousandth of one cell's peak weight: no cell within ~4 sigma
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(den > floor, num / np.maximum(den, 1e-300), overall)
    return np.clip(frac, 0.0, 1.0).astype(np.float32), s


def tumor_fraction_at(lattice: np.ndarray, spacing_um: float, x_um: Any, y_um: Any) -> np.ndarray:
    """The lattice's tumor fraction at positions (µm): the lattice cell each falls in (clipped to the lattice).

    Examples
    --------
    >>> tumor_fraction_at(np.array([[0.0, 1.0]], np.float32), 5.0, [2.0, 7.0, 99.0], [1.0, 1.0, 1.0]).tolist()
    [0.0, 1.0, 1.0]
    """
    iy, ix = _lattice_index(y_um, spacing_um, lattice.shape[0]), _lattice_index(x_um, spacing_um, lattice.shape[1])
    return lattice[iy, ix].astype(np.float64)


def compartment_offsets(signal: Any, tumor_fraction: Any) -> tuple[float, float, float, str]:
    """The background of the reference samples' cells: their median, and its tumor and stroma offsets.

    Parameters
    ----------
    signal, tumor_fraction : array-like (n_cells,)
        The smoothed zone signal and the tumor fraction at every cell of the reference samples (NaN: left out).

    Returns
    -------
    (median, tumor_offset, stroma_offset, warning)
        The median signal of all the cells, and the median of the cells with ``t >= PURE`` (resp.
        ``t <= 1 - PURE``) minus it: the background at tumor fraction ``t`` is ``median + t × tumor_offset +
        (1 - t) × stroma_offset``. ``(median, 0, 0, why)`` with fewer than :data:`MIN_CELLS` cells in either
        compartment (NaN median without any cell).

    Examples
    --------
    >>> sig = [1.0] * 60 + [80.0] * 60 + [40.0] * 10
    >>> t = [1.0] * 60 + [0.0] * 60 + [0.5] * 10
    >>> compartment_offsets(sig, t)
    (40.0, -39.0, 40.0, '')
    """
    s, t = np.asarray(signal, float), np.asarray(tumor_fraction, float)
    ok = np.isfinite(s) & np.isfinite(t)
    s, t = s[ok], t[ok]
    m = float(np.median(s)) if s.size else float("nan")
    tum, stro = t >= PURE, t <= 1.0 - PURE
    if tum.sum() < MIN_CELLS or stro.sum() < MIN_CELLS:
        return m, 0.0, 0.0, (f"compartment background: {int(tum.sum())} tumor and {int(stro.sum())} stroma reference "
                             f"cells (< {MIN_CELLS}); one background for the whole tissue")
    return m, float(np.median(s[tum])) - m, float(np.median(s[stro])) - m, ""


def offset_rows(lattice: np.ndarray, spacing_um: float, tumor_offset: float, stroma_offset: float, *,
                grid_um: float, rows: tuple[int, int], n_cols: int) -> np.ndarray:
    """The background offset ``t × tumor_offset + (1 - t) × stroma_offset`` at grid pixel centres of ``rows``.

    Returns
    -------
    float32 ndarray (rows[1] - rows[0], n_cols)

    Examples
    --------
    >>> offset_rows(np.array([[1.0, 0.0]], np.float32), 5.0, -39.0, 40.0, grid_um=2.0, rows=(0, 1), n_cols=5).tolist()
    [[-39.0, -39.0, 40.0, 40.0, 40.0]]
    """
    iy = _lattice_index((np.arange(rows[0], rows[1]) + 0.5) * grid_um, spacing_um, lattice.shape[0])
    ix = _lattice_index((np.arange(n_cols) + 0.5) * grid_um, spacing_um, lattice.shape[1])
    t = lattice[iy][:, ix].astype(np.float64)
    return (t * tumor_offset + (1.0 - t) * stroma_offset).astype(np.float32)
