"""Chemokine zones: pixel zones, producer-cell zones and tumor compartments on the analysis grid.

All masks live on the **analysis grid** (:mod:`chemozone.grid`): each channel is block-mean downsampled
lazily (:func:`chemozone.grid.block_mean`), so a full-resolution float image is never held in memory.

Three zone sources (``ZoneConfig.source``):

``pixels``
    One chemokine channel, or a *module* of several. Per channel: block mean on the grid → Gaussian
    smoothing by ``smooth_um`` (normalised inside the tissue, so the background outside the explant does
    not bleed in) → subtraction of a low tissue percentile (``background_quantile``, autofluorescence /
    unspecific background; 0 = off). The channels of a module are made combinable by dividing each by its
    **own cohort-level threshold** (computed once for the cohort by :func:`compute_zone_thresholds`, never
    rescaled per sample), and the module score (:func:`module_score`) is the mean of the normalised
    channels; the zone is ``score >= 1``. For a single channel this is exactly ``signal >= threshold``.
``producers``
    Tissue within ``radius_um`` of cells positive for ``producer_marker`` (optionally of
    ``producer_cell_types``), from the phenotyping step; with ``min_producers`` N, tissue with at least N of them
    within ``radius_um``; with ``milieu: hull``, Hoch et al.'s milieus (:func:`producer_patches`: hulls of
    producers linked within ``link_um``, patches of at least N cells, widened by ``radius_um``).
``tumor``
    The epithelial (panCK) channel thresholded like a pixel zone, then compartments by Euclidean distance:
    ``{zone}_intraepithelial`` (inside), ``{zone}_margin`` (0–``bands_um[0]``), ``{zone}_peritumoral``
    (``bands_um[0]``–``bands_um[-1]``) and ``{zone}_distal`` (beyond).

Threshold modes (``ZoneConfig.threshold.mode``), all on the background-corrected smoothed signal:

``absolute``
    ``value`` in image intensity units (after background subtraction).
``reference`` (default)
    The ``quantile`` of the tissue pixels of the reference samples (``reference`` query of the sample
    sheet, e.g. ``{dose_gy: 0}``) of the same ``group_by`` value (e.g. the sham of the same patient).
``background``
    A robust background model of the reference samples' tissue pixels (same ``reference`` / ``group_by`` as
    ``reference``): median + z·SD, the SD measured on the lower half, z set by ``error_rate`` (the expected
    fraction of background pixels called zone; :func:`background_threshold`). Without any reference sample
    the same model is fitted to all samples pooled, with a warning. Unlike a quantile it does not depend on
    how much zone the sham holds, but the zone edge then depends on the stain's signal-to-noise ratio (see
    README, "How good are the zones").
``pooled``
    ``method`` (Otsu, triangle, Li) over the pooled tissue-pixel distribution of all samples.
``per_sample``
    ``method`` on each sample's own distribution. **Not recommended and never the default**: a relative
    threshold always splits a sample's pixels into "high" and "low", so it manufactures zones in samples
    that express nothing (a sham explant gets as many "zone" pixels as an irradiated one, and dose
    effects on zone area vanish). Use it only to look at shape within one sample.

Batch flow (the per-sample work is split around one cohort step; ``chemozone.run`` does exactly this)::

    # pass A, per sample (small outputs), for each pixel/tumor zone z
    sig = zone_signal(image, channel_indices=idx, pixel_size_um=px, grid_um=g, smooth_um=z.smooth_um,
                      background_quantile=z.background_quantile, tissue=tissue)
    summ = signal_summary(sig, tissue, sample_id=sid, zone=z.name, channels=z.channels)
    # cohort step
    thresholds = compute_zone_thresholds(pd.concat(all_summaries), samples, zones=config.zones)
    # pass B, per sample
    masks, zones_df = build_zones(image, cells, tissue, pixel_size_um=px, grid_um=g, zones=config.zones,
                                  thresholds=thresholds, sample_id=sid, channels=names)

``zones`` is a list of zone definitions (:class:`chemozone.config.ZoneConfig`, one per zone, as in the
``zones:`` list of the experiment config); the single-zone stage functions take plain keywords. The cohort
step lives in ``chemozone._zone_thresholds`` and the masks in ``chemozone._zone_masks`` (both
re-exported here).

Summaries are per-channel quantiles (``N_QUANTILES`` values per sample, zone and channel) plus the number
of tissue pixels, so pooled statistics are weighted by tissue area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._zone_masks import (
    _check_tissue,
    module_score,
    producer_patches,
    producer_zone,
    rasterize_patches,
    threshold_zone_signal,
    tumor_compartments,
)
from ._zone_thresholds import background_threshold, compute_zone_thresholds
from .config import ZoneConfig, zone_mask_names
from .errors import ConfigError, MissingStepError
from .gaussian import gaussian_filter
from .grid import block_mean, cell_grid_index, grid_factor, grid_shape

__all__ = [
    "N_QUANTILES",
    "zone_offset_map",
    "zone_channel_offsets",
    "grid_factor",
    "cell_grid_index",
    "downsample_to_grid",
    "zone_signal",
    "signal_summary",
    "compute_zone_thresholds",
    "background_threshold",
    "module_score",
    "threshold_zone_signal",
    "producer_zone",
    "producer_patches",
    "rasterize_patches",
    "tumor_compartments",
    "build_zones",
    "zone_channel_thresholds",
    "zone_mask_names",
]

N_QUANTILES = 1001
"""Number of quantile levels (0, 0.001, ..., 1) stored per sample, zone and channel by
:func:`signal_summary`."""

_LEVELS = np.linspace(0.0, 1.0, N_QUANTILES)


# ----------------------------------------------------------------------------------------- grid
def downsample_to_grid(image_yx: Any, factor: int) -> np.ndarray:
    """Float32 block mean of one (Y, X) channel: :func:`chemozone.grid.block_mean` (kept for the API).

    Examples
    --------
    >>> downsample_to_grid(np.arange(9).reshape(3, 3), 2).tolist()
    [[2.0, 3.5], [6.5, 8.0]]
    """
    if getattr(image_yx, "ndim", None) != 2:
        raise ValueError(f"downsample_to_grid expects a 2-D (Y, X) array, got shape {getattr(image_yx, 'shape', None)}")
    return block_mean(image_yx, factor, dtype=np.float32)


_SMOOTH_BAND_ROWS = 1024
"""Grid rows smoothed at a time by :func:`_smooth_in_tissue` (plus a halo of the kernel's radius)."""


def _grid_of(means: Any, shape_yx: Sequence[int], factor: int) -> np.ndarray:
    """Kept grid means of one channel as float32, checked against the grid of the image."""
    shape = grid_shape(tuple(shape_yx), factor)
    if tuple(means.shape) != shape:
        raise ValueError(f"grid_means has shape {tuple(means.shape)}, but the image's grid is {shape}")
    return np.asarray(means[...], dtype=np.float32)


def _smooth_in_tissue(grid: np.ndarray, tissue: np.ndarray | None, sigma_px: float,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian smoothing normalised to the tissue (pixels outside tissue neither give nor take signal).

    Works in bands of rows with a halo of the kernel's radius, so the float64 temporaries stay small on a whole
    section's grid; the result is bit-identical to smoothing the whole grid at once (scipy's kernel, truncated
    at 4 sigma, never reaches past the halo).
    """
    out = np.empty(grid.shape, np.float32) if out is None else out
    if sigma_px <= 0:
        out[...] = grid
        return out
    halo = int(4.0 * float(sigma_px) + 0.5) + 1  # scipy's radius is int(truncate * sigma + 0.5)
    n = grid.shape[0]
    for r0 in range(0, n, _SMOOTH_BAND_ROWS):
        r1 = min(n, r0 + _SMOOTH_BAND_ROWS)
        a0, a1 = max(0, r0 - halo), min(n, r1 + halo)
        band = _smooth_rows(grid[a0:a1], None if tissue is None else tissue[a0:a1], sigma_px)
        out[r0:r1] = band[r0 - a0:r1 - a0]
    return out


def _smooth_rows(grid: np.ndarray, tissue: np.ndarray | None, sigma_px: float) -> np.ndarray:
    if tissue is None:
        return gaussian_filter(grid.astype(np.float64), sigma_px, mode="nearest").astype(np.float32)
    w = tissue.astype(np.float64)
    num = gaussian_filter(grid * w, sigma_px, mode="constant")
    den = gaussian_filter(w, sigma_px, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-6, num / np.maximum(den, 1e-12), 0.0)
    return np.where(tissue, out, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------- signal
def zone_signal(
    image_cyx: Any,
    *,
    channel_indices: Sequence[int],
    pixel_size_um: float,
    grid_um: float,
    smooth_um: float,
    background_quantile: float,
    tissue: np.ndarray | None = None,
    background: Sequence[float] | None = None,
    grid_means: Sequence[Any] | None = None,
) -> np.ndarray:
    """Background-corrected, smoothed chemokine signal of each channel of a zone, on the analysis grid.

    Parameters
    ----------
    image_cyx : array-like (C, Y, X)
        The image (numpy, zarr or dask); only ``channel_indices`` are read, block by block.
    channel_indices : sequence of int
        Image channels of the zone (in the order of the zone's ``channels``).
    pixel_size_um, grid_um : float
        Image pixel size and analysis grid size (µm); the block factor is ``grid_factor(pixel_size_um, grid_um)``.
    smooth_um : float
        Gaussian sigma of the smoothing on the grid (µm; ``<= 0`` = no smoothing).
    background_quantile : float
        This quantile (0–1) of the smoothed tissue pixels is subtracted per channel (0 = off).
    tissue : bool ndarray (Ygrid, Xgrid), optional
        Tissue mask on the grid: smoothing is normalised inside it, pixels outside are 0, and the background
        percentile is taken over it.
    background : sequence of float, optional
        Fixed per-channel background (image units, one per channel) to subtract instead of the tissue
        percentile.
    grid_means : sequence of array-like (Ygrid, Xgrid), optional
        The channels' float32 block means on the grid, one per channel index (e.g. kept by the tissue pass,
        :mod:`chemozone.grid_means`), used instead of reading ``image_cyx``: the same values as its
        ``downsample_to_grid``.

    Returns
    -------
    ndarray float32 (n_channels, Ygrid, Xgrid)
        One background-corrected signal per channel (image intensity units, not rescaled). Modules are
        combined later with cohort-level per-channel thresholds (:func:`threshold_zone_signal`).

    Examples
    --------
    >>> img = np.zeros((1, 4, 4), np.float32); img[0, :2] = 8.0
    >>> zone_signal(img, channel_indices=[0], pixel_size_um=1.0, grid_um=2.0, smooth_um=0.0,
    ...             background_quantile=0.0)[0].tolist()
    [[8.0, 8.0], [0.0, 0.0]]
    """
    if getattr(image_cyx, "ndim", None) != 3:
        raise ValueError(f"zone_signal expects a (C, Y, X) image, got shape {getattr(image_cyx, 'shape', None)}")
    idx = [int(i) for i in channel_indices]
    if not idx:
        raise ConfigError("zone_signal: no channels to build a signal from; set zones[].channels")
    factor = grid_factor(pixel_size_um, grid_um)
    g = factor * float(pixel_size_um)
    sigma_px = float(smooth_um) / g
    if background is not None and len(background) != len(idx):
        raise ValueError(f"background has {len(background)} values for {len(idx)} channels")
    if grid_means is not None and len(grid_means) != len(idx):
        raise ValueError(f"grid_means has {len(grid_means)} arrays for {len(idx)} channels")
    out, tis = None, None
    for k, ci in enumerate(idx):
        grid = (downsample_to_grid(image_cyx[ci], factor) if grid_means is None
                else _grid_of(grid_means[k], image_cyx.shape[1:], factor))
        if k == 0:
            tis = _check_tissue(tissue, grid.shape)
            out = np.empty((len(idx),) + grid.shape, np.float32)
        sm = _smooth_in_tissue(grid, tis, sigma_px, out=out[k])
        del grid
        if background is not None:
            bg = float(background[k])
        elif background_quantile > 0:
            vals = sm[tis] if tis is not None else sm.ravel().copy()  # a copy: quantile may reorder it
            bg = float(np.quantile(vals, background_quantile, overwrite_input=True)) if vals.size else 0.0
            del vals
        else:
            bg = 0.0
        sm -= np.float32(bg)
        if tis is not None:
            sm[~tis] = 0.0
    return out


def signal_summary(
    signal: np.ndarray,
    tissue: np.ndarray | None,
    *,
    sample_id: str,
    zone: str,
    channels: Sequence[str] = (),
) -> pd.DataFrame:
    """Small per-sample summary of a zone signal for the cohort threshold step.

    Parameters
    ----------
    signal : ndarray (n_channels, Ygrid, Xgrid) or (Ygrid, Xgrid)
        From :func:`zone_signal`.
    tissue : bool ndarray (Ygrid, Xgrid) or None
        Only tissue pixels are summarised (all pixels when None).
    sample_id : str
    zone : str
        The zone's name.
    channels : sequence of str
        Name of each signal channel (the zone's ``channels``); empty = ``"0", "1", ...``.

    Returns
    -------
    DataFrame
        One row per channel: ``sample_id, zone, channel, n_pixels, quantiles`` where ``quantiles`` is a list
        of ``N_QUANTILES`` values at levels ``linspace(0, 1, N_QUANTILES)`` (NaN when no tissue pixel).

    Examples
    --------
    >>> s = signal_summary(np.arange(4.0).reshape(1, 2, 2), None, sample_id="s1", zone="CXCL8", channels=["CXCL8"])
    >>> s[["sample_id", "zone", "channel", "n_pixels"]].values.tolist(), s["quantiles"][0][-1]
    ([['s1', 'CXCL8', 'CXCL8', 4]], 3.0)
    """
    if not isinstance(zone, str):
        raise TypeError(f"signal_summary: zone is the zone's name (str), got {type(zone).__name__}")
    sig = np.asarray(signal)
    if sig.ndim == 2:
        sig = sig[None]
    if len(channels) not in (0, sig.shape[0]):
        raise ValueError(f"signal has {sig.shape[0]} channels but zone '{zone}' lists {list(channels)}")
    tis = _check_tissue(tissue, sig.shape[1:])
    rows = []
    for k in range(sig.shape[0]):
        vals = sig[k][tis] if tis is not None else sig[k].ravel().copy()  # a copy: quantile reorders it
        q = np.quantile(vals, _LEVELS, overwrite_input=True) if vals.size else np.full(N_QUANTILES, np.nan)
        rows.append(
            {
                "sample_id": str(sample_id),
                "zone": zone,
                "channel": channels[k] if k < len(channels) else str(k),
                "n_pixels": int(vals.size),
                "quantiles": q.astype(np.float64).tolist(),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- zones table
ZONES_COLUMNS = ["sample_id", "zone", "source", "channels", "threshold_used", "channel_thresholds", "area_mm2",
                 "tissue_area_mm2", "area_fraction"]
"""Columns of the zones table written by :func:`build_zones`."""


def _format_channel_thresholds(channels: Sequence[str], thresholds: Sequence[float]) -> str:
    """The ``channel_thresholds`` cell of the zones table: ``"CXCL8=12.5;IL8=3"`` (read by
    :func:`zone_channel_thresholds`)."""
    return ";".join(f"{c}={v:.6g}" for c, v in zip(channels, thresholds))


def zone_channel_thresholds(zones_df: pd.DataFrame, zone: str, *, sample_id: str | None = None) -> dict[str, float]:
    """The per-channel thresholds a zone was built with, from the zones table of :func:`build_zones`.

    Parameters
    ----------
    zones_df : DataFrame
        A zones table (``zones.parquet`` of a sample, or the cohort's with ``sample_id``).
    zone : str
        A mask name of the table's ``zone`` column (for tumor zones e.g. ``tumor_margin``).
    sample_id : str, optional
        Select this sample's row; needed when the table holds several samples.

    Returns
    -------
    dict channel -> float
        Image-unit threshold of each channel of the zone, in the zone's channel order (values rounded to 6
        significant digits, as stored). Empty when the zone is not in the table, the table has no
        ``channel_thresholds`` column, or the zone has no threshold (producer zones).

    Raises
    ------
    ValueError
        When the table holds the zone for several samples and no ``sample_id`` is given.

    Examples
    --------
    >>> df = pd.DataFrame({"sample_id": ["s1", "s1"], "zone": ["CXCL8", "P"],
    ...                    "channel_thresholds": ["CXCL8=12.5;IL8=3", ""]})
    >>> zone_channel_thresholds(df, "CXCL8")
    {'CXCL8': 12.5, 'IL8': 3.0}
    >>> zone_channel_thresholds(df, "P")
    {}
    """
    hit = zones_df[zones_df["zone"] == zone]
    if sample_id is not None:
        hit = hit[hit["sample_id"].astype(str) == str(sample_id)]
    elif "sample_id" in hit.columns and hit["sample_id"].nunique() > 1:
        raise ValueError(f"zones table holds zone '{zone}' for several samples; pass sample_id")
    if not len(hit) or "channel_thresholds" not in hit.columns or not isinstance(hit["channel_thresholds"].iloc[0], str):
        return {}
    pairs = (p.rpartition("=") for p in hit["channel_thresholds"].iloc[0].split(";") if "=" in p)
    return {c: float(v) for c, _, v in pairs}


# ----------------------------------------------------------------------------------- pass B
def _sample_channel_thresholds(thresholds: pd.DataFrame | None, zone: ZoneConfig, sample_id: str) -> list[float]:
    """The cohort thresholds of this sample and pixel/tumor zone, in the zone's channel order."""
    if thresholds is None or not len(thresholds):
        raise MissingStepError(
            f"zones '{zone.name}': no thresholds; run compute_zone_thresholds (cohort step) before build_zones"
        )
    t = thresholds[(thresholds["sample_id"].astype(str) == str(sample_id)) & (thresholds["zone"] == zone.name)]
    tmap = dict(zip(t["channel"], t["threshold"]))
    miss = [c for c in zone.channels if c not in tmap]
    if miss:
        raise MissingStepError(
            f"zones '{zone.name}': no threshold for sample '{sample_id}' channel(s) {miss}; rerun compute_zone_thresholds"
        )
    return [float(tmap[c]) for c in zone.channels]


def _tumor_lattice(cells: pd.DataFrame | None, zones: Sequence[ZoneConfig], zone: ZoneConfig):
    """The sample's tumor-fraction lattice, for a zone whose thresholds carry compartment offsets."""
    from ._zone_compartments import sample_tumor_lattice  # noqa: PLC0415

    lattice = None if cells is None else sample_tumor_lattice(cells, zones)
    if lattice is None:
        raise MissingStepError(f"zones '{zone.name}': its thresholds have tumor and stroma background offsets, which "
                               "need the phenotyped cells with the tumor zone's marker gate ({channel}_pos)")
    return lattice


def zone_channel_offsets(thresholds: pd.DataFrame, zone: ZoneConfig, sample_id: str) -> list[tuple[float, float]] | None:
    """The (tumor, stroma) background offsets of one sample's zone channels (in ``zone.channels`` order; 0 for a
    channel the table lacks), or None when all are 0 or the table has no offset columns (written before they
    existed): what :func:`zone_offset_map` and :func:`build_zones` subtract, from :func:`compute_zone_thresholds`.

    Examples
    --------
    >>> t = pd.DataFrame({"sample_id": ["s"], "zone": ["C"], "channel": ["C"], "tumor_offset": [-3.0],
    ...                   "stroma_offset": [4.0]})
    >>> zone_channel_offsets(t, ZoneConfig(name="C", channels=["C"]), "s")
    [(-3.0, 4.0)]
    """
    if not {"tumor_offset", "stroma_offset"} <= set(thresholds.columns):
        return None
    t = thresholds[(thresholds["sample_id"].astype(str) == str(sample_id)) & (thresholds["zone"] == zone.name)]
    omap = {c: (float(a), float(b)) for c, a, b in zip(t["channel"], t["tumor_offset"], t["stroma_offset"])}
    offs = [omap.get(c, (0.0, 0.0)) for c in zone.channels]
    return offs if any(a or b for a, b in offs) else None


class _OffsetMap:
    """The background offset map of one sample's zone channels, a band of grid rows at a time
    (:func:`chemozone._zone_compartments.offset_rows`)."""

    def __init__(self, lattice, offsets: list[tuple[float, float]], grid_um: float, n_cols: int) -> None:
        self.lattice, self.offsets, self.grid_um, self.n_cols = lattice, offsets, grid_um, n_cols

    def __call__(self, rows: tuple[int, int]) -> np.ndarray:
        from ._zone_compartments import offset_rows  # noqa: PLC0415

        lat, s = self.lattice
        return np.stack([offset_rows(lat, s, a, b, grid_um=self.grid_um, rows=rows, n_cols=self.n_cols)
                         for a, b in self.offsets])


def zone_offset_map(thresholds: pd.DataFrame, zone: ZoneConfig, sample_id: str, *, cells: pd.DataFrame | None,
                    zones: Sequence[ZoneConfig], grid_um: float, n_cols: int):
    """The background offset map that pass B subtracts from one sample's zone signal before thresholding, or None
    when the sample's thresholds for the zone carry no offsets (``tumor_offset`` / ``stroma_offset`` of
    :func:`compute_zone_thresholds`: ``halfmax`` with compartment backgrounds, or an ``absolute`` threshold's own).

    Parameters
    ----------
    thresholds : DataFrame
        :func:`compute_zone_thresholds` rows (``zone_thresholds.parquet``).
    zone : ZoneConfig
    sample_id : str
    cells : DataFrame or None
        The sample's phenotyped cells (``x_um, y_um`` and the tumor zone's ``{channel}_pos``).
    zones : list of ZoneConfig
        The config's zones (its ``source: tumor`` zone names the tumor marker).
    grid_um, n_cols : float, int
        The analysis grid's pixel size and width.

    Returns
    -------
    callable or None
        ``offset((r0, r1))`` -> float32 (n_channels, r1 - r0, n_cols): the ``offset=`` of
        :func:`threshold_zone_signal`, as :func:`build_zones` passes it.

    Raises
    ------
    MissingStepError
        The thresholds have offsets but ``cells`` lacks the tumor zone's marker gate.
    """
    offs = zone_channel_offsets(thresholds, zone, sample_id)
    if offs is None:
        return None
    return _OffsetMap(_tumor_lattice(cells, zones, zone), offs, grid_um, n_cols)


def _pixel_zone_masks(
    image_cyx: Any,
    tissue: np.ndarray,
    zone: ZoneConfig,
    thr: list[float],
    *,
    pixel_size_um: float,
    grid_um: float,
    channels: Sequence[str],
    aliases: Mapping[str, Sequence[str]] | None,
    signals: Mapping[str, np.ndarray] | None,
    offset=None,
) -> dict[str, np.ndarray]:
    """Masks of one pixel zone (one mask) or tumor zone (four compartments); ``offset``: see
    :func:`threshold_zone_signal`."""
    from .io import resolve_channels  # noqa: PLC0415

    g = grid_factor(pixel_size_um, grid_um) * float(pixel_size_um)
    if signals is not None and zone.name in signals:
        sig = np.asarray(signals[zone.name])
    else:
        if image_cyx is None:
            raise MissingStepError(f"zones '{zone.name}': pass the image or its pass-A signal")
        idx = resolve_channels(list(channels), list(zone.channels), aliases=dict(aliases or {}), source=f"zones '{zone.name}'")
        sig = zone_signal(image_cyx, channel_indices=idx, pixel_size_um=pixel_size_um, grid_um=grid_um,
                          smooth_um=zone.smooth_um, background_quantile=zone.background_quantile, tissue=tissue)
    mask = threshold_zone_signal(sig, thr, tissue, grid_um=g, min_area_um2=zone.min_area_um2, fill_holes=zone.fill_holes,
                                 offset=offset)
    if zone.source == "tumor":
        return tumor_compartments(mask, tissue, grid_um=g, bands_um=zone.bands_um, zone=zone.name)
    return {zone.name: mask}


def build_zones(
    image_cyx: Any,
    cells: pd.DataFrame | None,
    tissue: np.ndarray,
    *,
    pixel_size_um: float,
    grid_um: float,
    zones: Sequence[ZoneConfig],
    thresholds: pd.DataFrame | None,
    sample_id: str,
    channels: Sequence[str],
    aliases: Mapping[str, Sequence[str]] | None = None,
    signals: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Pass B: all zone masks of one sample and its zones table.

    Parameters
    ----------
    image_cyx : array-like (C, Y, X)
        Needed for pixel and tumor zones (unless ``signals`` holds their signal); may be None otherwise.
    cells : DataFrame or None
        Phenotyped cells (``x_um, y_um, {marker}_pos, cell_type``); needed for producer zones.
    tissue : bool ndarray (Ygrid, Xgrid)
    pixel_size_um, grid_um : float
    zones : list of ZoneConfig
        The zone definitions (one per zone, as in the config's ``zones:`` list).
    thresholds : DataFrame
        From :func:`compute_zone_thresholds` (rows of this ``sample_id``).
    sample_id : str
    channels : sequence of str
        The image's channel names (to resolve each zone's ``channels``, with ``aliases``).
    signals : dict zone name -> ndarray (n_channels, Ygrid, Xgrid), optional
        Signals already computed in pass A (skips re-reading the image).

    Returns
    -------
    masks : dict name -> bool ndarray (Ygrid, Xgrid)
        See :func:`zone_mask_names`.
    zones_df : DataFrame
        ``sample_id, zone, source, channels, threshold_used, channel_thresholds, area_mm2, tissue_area_mm2,
        area_fraction``. ``threshold_used`` is the threshold in image units for one channel and ``1.0`` (the
        module score) for modules; ``channel_thresholds`` lists ``channel=value`` pairs (read them with
        :func:`zone_channel_thresholds`).
    """
    tissue = np.asarray(tissue, bool)
    g = grid_factor(pixel_size_um, grid_um) * float(pixel_size_um)
    px_mm2 = (g * 1e-3) ** 2
    tissue_mm2 = float(tissue.sum()) * px_mm2
    masks: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    lattice: list = []  # the tumor-fraction lattice, computed once when a zone needs it
    for zone in zones:
        thr_used, ch_thr = float("nan"), ""
        if zone.source == "producers":
            if cells is None:
                raise MissingStepError(f"zones '{zone.name}': producer zones need the phenotyped cells table")
            zm = {zone.name: producer_zone(cells, tissue, grid_um=g, producer_marker=zone.producer_marker,
                                           radius_um=zone.radius_um, producer_cell_types=zone.producer_cell_types,
                                           min_producers=zone.min_producers, milieu=zone.milieu,
                                           link_um=zone.link_um, hull_ratio=zone.hull_ratio)}
        else:
            thr = _sample_channel_thresholds(thresholds, zone, sample_id)
            offs = zone_channel_offsets(thresholds, zone, sample_id)
            offset = None
            if offs is not None:
                if not lattice:
                    lattice.append(_tumor_lattice(cells, zones, zone))
                offset = _OffsetMap(lattice[0], offs, g, tissue.shape[1])
            zm = _pixel_zone_masks(image_cyx, tissue, zone, thr, pixel_size_um=pixel_size_um, grid_um=grid_um,
                                   channels=channels, aliases=aliases, signals=signals, offset=offset)
            thr_used = thr[0] if len(thr) == 1 else 1.0
            ch_thr = _format_channel_thresholds(zone.channels, thr)
        for name, m in zm.items():
            masks[name] = m
            area = float(m.sum()) * px_mm2
            rows.append(
                dict(
                    sample_id=str(sample_id), zone=name, source=zone.source,
                    channels=",".join(zone.channels) if zone.source != "producers" else str(zone.producer_marker),
                    threshold_used=thr_used, channel_thresholds=ch_thr, area_mm2=area, tissue_area_mm2=tissue_mm2,
                    area_fraction=area / tissue_mm2 if tissue_mm2 > 0 else float("nan"),
                )
            )
    return masks, pd.DataFrame(rows, columns=ZONES_COLUMNS)
