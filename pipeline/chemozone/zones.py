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
    rescaled per sample), and the module score is the mean of the normalised channels; the zone is
    ``score >= 1``. For a single channel this is exactly ``signal >= threshold``.
``producers``
    Tissue within ``radius_um`` of cells positive for ``producer_marker`` (optionally of
    ``producer_cell_types``), from the phenotyping step.
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
``pooled``
    ``method`` (Otsu, triangle, Li) over the pooled tissue-pixel distribution of all samples.
``per_sample``
    ``method`` on each sample's own distribution. **Not recommended and never the default**: a relative
    threshold always splits a sample's pixels into "high" and "low", so it manufactures zones in samples
    that express nothing (a sham explant gets as many "zone" pixels as an irradiated one, and dose
    effects on zone area vanish). Use it only to look at shape within one sample.

Batch flow (the per-sample work is split around one cohort step)::

    # pass A, per sample (small outputs)
    sig = zone_signal(image, channel_indices=idx, pixel_size_um=px, grid_um=g, zone=z, tissue=tissue)
    summ = signal_summary(sig, tissue, sample_id=sid, zone=z)
    # cohort step
    thresholds = compute_zone_thresholds(pd.concat(all_summaries), samples, zones=config.zones)
    # pass B, per sample
    masks, zones_df = build_zones(image, cells, tissue, pixel_size_um=px, grid_um=g, zones=config.zones,
                                  thresholds=thresholds, sample_id=sid, channels=names)

Summaries are per-channel quantiles (``N_QUANTILES`` values per sample, zone and channel) plus the number
of tissue pixels, so pooled statistics are weighted by tissue area.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .config import ZoneConfig, zone_mask_names
from .errors import ConfigError, MissingStepError
from .grid import block_mean, cell_grid_index, grid_factor
from .samples import select_reference

__all__ = [
    "N_QUANTILES",
    "grid_factor",
    "downsample_to_grid",
    "zone_signal",
    "signal_summary",
    "compute_zone_thresholds",
    "threshold_zone_signal",
    "producer_zone",
    "tumor_compartments",
    "build_zones",
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


def _smooth_in_tissue(grid: np.ndarray, tissue: np.ndarray | None, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing normalised to the tissue (pixels outside tissue neither give nor take signal)."""
    if sigma_px <= 0:
        return grid.astype(np.float32)
    if tissue is None:
        return ndi.gaussian_filter(grid.astype(np.float64), sigma_px, mode="nearest").astype(np.float32)
    w = tissue.astype(np.float64)
    num = ndi.gaussian_filter(grid * w, sigma_px, mode="constant")
    den = ndi.gaussian_filter(w, sigma_px, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-6, num / np.maximum(den, 1e-12), 0.0)
    return np.where(tissue, out, 0.0).astype(np.float32)


def _check_tissue(tissue: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if tissue is None:
        return None
    tissue = np.asarray(tissue)
    if tissue.shape != tuple(shape):
        raise ValueError(
            f"tissue mask has shape {tissue.shape} but the analysis grid is {tuple(shape)}; compute the tissue "
            "mask with the same grid_um (chemozone.tissue.tissue_mask)"
        )
    return tissue.astype(bool)


# --------------------------------------------------------------------------------------- signal
def zone_signal(
    image_cyx: Any,
    *,
    channel_indices: Sequence[int],
    pixel_size_um: float,
    grid_um: float,
    zone: ZoneConfig,
    tissue: np.ndarray | None = None,
    background: Sequence[float] | Mapping[str, float] | None = None,
) -> np.ndarray:
    """Background-corrected, smoothed chemokine signal of each channel of a zone, on the analysis grid.

    Parameters
    ----------
    image_cyx : array-like (C, Y, X)
        The image (numpy, zarr or dask); only ``channel_indices`` are read, block by block.
    channel_indices : sequence of int
        Image channels of the zone (in the order of ``zone.channels``).
    pixel_size_um, grid_um : float
        Image pixel size and analysis grid size (µm); the block factor is ``grid_factor(pixel_size_um, grid_um)``.
    zone : ZoneConfig
        Uses ``smooth_um`` (Gaussian sigma, µm) and ``background_quantile``.
    tissue : bool ndarray (Ygrid, Xgrid), optional
        Tissue mask on the grid: smoothing is normalised inside it, pixels outside are 0, and the background
        percentile is taken over it.
    background : sequence of float, optional
        Fixed per-channel background (image units) to subtract instead of the tissue percentile.

    Returns
    -------
    ndarray float32 (n_channels, Ygrid, Xgrid)
        One background-corrected signal per channel (image intensity units, not rescaled). Modules are
        combined later with cohort-level per-channel thresholds (:func:`threshold_zone_signal`).
    """
    if getattr(image_cyx, "ndim", None) != 3:
        raise ValueError(f"zone_signal expects a (C, Y, X) image, got shape {getattr(image_cyx, 'shape', None)}")
    idx = [int(i) for i in channel_indices]
    if not idx:
        raise ConfigError(f"zones '{zone.name}': no channels to build a signal from; set zones[].channels")
    factor = grid_factor(pixel_size_um, grid_um)
    g = factor * float(pixel_size_um)
    sigma_px = float(zone.smooth_um) / g
    if isinstance(background, Mapping):
        background = [float(background[c]) for c in zone.channels]
    if background is not None and len(background) != len(idx):
        raise ValueError(f"background has {len(background)} values for {len(idx)} channels of zone '{zone.name}'")
    out = []
    tis = None
    for k, ci in enumerate(idx):
        grid = downsample_to_grid(image_cyx[ci], factor)
        if k == 0:
            tis = _check_tissue(tissue, grid.shape)
        sm = _smooth_in_tissue(grid, tis, sigma_px)
        if background is not None:
            bg = float(background[k])
        elif zone.background_quantile > 0:
            vals = sm[tis] if tis is not None else sm.ravel()
            bg = float(np.quantile(vals, zone.background_quantile)) if vals.size else 0.0
        else:
            bg = 0.0
        sm = sm - np.float32(bg)
        if tis is not None:
            sm[~tis] = 0.0
        out.append(sm.astype(np.float32))
    return np.stack(out)


def signal_summary(signal: np.ndarray, tissue: np.ndarray | None, *, sample_id: str, zone: ZoneConfig) -> pd.DataFrame:
    """Small per-sample summary of a zone signal for the cohort threshold step.

    Parameters
    ----------
    signal : ndarray (n_channels, Ygrid, Xgrid) or (Ygrid, Xgrid)
        From :func:`zone_signal`.
    tissue : bool ndarray (Ygrid, Xgrid) or None
        Only tissue pixels are summarised (all pixels when None).
    sample_id : str
    zone : ZoneConfig

    Returns
    -------
    DataFrame
        One row per channel: ``sample_id, zone, channel, n_pixels, quantiles`` where ``quantiles`` is a list
        of ``N_QUANTILES`` values at levels ``linspace(0, 1, N_QUANTILES)`` (NaN when no tissue pixel).
    """
    sig = np.asarray(signal)
    if sig.ndim == 2:
        sig = sig[None]
    if len(zone.channels) not in (0, sig.shape[0]) and zone.source != "producers":
        raise ValueError(f"signal has {sig.shape[0]} channels but zone '{zone.name}' lists {zone.channels}")
    tis = _check_tissue(tissue, sig.shape[1:])
    rows = []
    for k in range(sig.shape[0]):
        vals = sig[k][tis] if tis is not None else sig[k].ravel()
        q = np.quantile(vals, _LEVELS) if vals.size else np.full(N_QUANTILES, np.nan)
        rows.append(
            {
                "sample_id": str(sample_id),
                "zone": zone.name,
                "channel": zone.channels[k] if k < len(zone.channels) else str(k),
                "n_pixels": int(vals.size),
                "quantiles": q.astype(np.float64).tolist(),
            }
        )
    return pd.DataFrame(rows)


def _pooled_values(rows: pd.DataFrame, n: int = 4001) -> np.ndarray:
    """Equally weighted values representing the tissue-area-weighted mixture of several samples' quantiles."""
    vals, wts = [], []
    for q, npx in zip(rows["quantiles"], rows["n_pixels"]):
        q = np.asarray(q, dtype=np.float64)
        if npx <= 0 or not np.isfinite(q).all():
            continue
        # each stored quantile stands for an equal share of the sample's pixels
        vals.append(q)
        wts.append(np.full(q.size, npx / q.size))
    if not vals:
        return np.empty(0)
    v = np.concatenate(vals)
    w = np.concatenate(wts)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w) - 0.5 * w
    cw /= w.sum()
    return np.interp(np.linspace(0, 1, n), cw, v)


def _auto_threshold(values: np.ndarray, method: str) -> float:
    from skimage import filters  # noqa: PLC0415

    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else float("nan")
    fn = {"otsu": filters.threshold_otsu, "triangle": filters.threshold_triangle, "li": filters.threshold_li}[method]
    return float(fn(values))


def compute_zone_thresholds(
    summaries: pd.DataFrame, samples: pd.DataFrame, *, zones: Sequence[ZoneConfig]
) -> pd.DataFrame:
    """Cohort step: the threshold of every (sample, pixel/tumor zone, channel).

    Parameters
    ----------
    summaries : DataFrame
        Concatenated :func:`signal_summary` outputs of all samples.
    samples : DataFrame
        The sample sheet (``sample_id`` + the columns used by ``threshold.reference`` / ``group_by``).
    zones : list of ZoneConfig
        Producer zones are skipped (they have no threshold).

    Returns
    -------
    DataFrame
        ``sample_id, zone, channel, threshold, mode, warning`` (threshold in background-corrected image
        units of that channel; ``warning`` is ``""`` or says why a fallback was used).

    Raises
    ------
    ConfigError
        When reference samples are requested but none match (names the zone and the query).
    MissingStepError
        When a sample or zone has no summary.
    """
    rows: list[dict[str, Any]] = []
    if "sample_id" not in samples.columns:
        raise ConfigError("samples: the sample sheet has no 'sample_id' column")
    samples = samples.reset_index(drop=True)
    sids = samples["sample_id"].astype(str).tolist()
    for zi, zone in enumerate(zones):
        if zone.source == "producers":
            continue
        tc = zone.threshold
        zsum = summaries[summaries["zone"] == zone.name] if len(summaries) else summaries
        missing = sorted(set(sids) - set(zsum["sample_id"].astype(str))) if len(zsum) else sids
        if missing:
            raise MissingStepError(
                f"zones '{zone.name}': no signal summary for samples {missing[:5]}; run zone_signal + signal_summary "
                "(pass A) for every sample before compute_zone_thresholds"
            )
        where = f"zones[{zi}].threshold"
        for ch in zone.channels:
            csum = zsum[zsum["channel"] == ch]
            by_sample = {str(s): r for s, r in csum.groupby(csum["sample_id"].astype(str))}
            if tc.mode == "absolute":
                for s in sids:
                    rows.append(dict(sample_id=s, zone=zone.name, channel=ch, threshold=float(tc.value), mode="absolute", warning=""))
            elif tc.mode == "pooled":
                t = _auto_threshold(_pooled_values(csum), tc.method)
                for s in sids:
                    rows.append(dict(sample_id=s, zone=zone.name, channel=ch, threshold=t, mode=f"pooled_{tc.method}", warning=""))
            elif tc.mode == "per_sample":
                for s in sids:
                    t = _auto_threshold(_pooled_values(by_sample[s]), tc.method)
                    rows.append(
                        dict(sample_id=s, zone=zone.name, channel=ch, threshold=t, mode=f"per_sample_{tc.method}",
                             warning="per-sample relative threshold: zone areas are not comparable between samples")
                    )
            else:  # reference
                is_ref = select_reference(samples, tc.reference, tc.group_by, where=where).to_numpy()
                cache: dict[Any, tuple[float, str]] = {}
                for i, s in enumerate(sids):
                    key = samples.at[i, tc.group_by] if tc.group_by is not None else None
                    if key not in cache:
                        warn = ""
                        sel = is_ref.copy()
                        if tc.group_by is not None:
                            sel &= (samples[tc.group_by] == key).to_numpy()
                            if not sel.any():
                                sel = is_ref
                                warn = f"no reference sample with {tc.group_by}={key}; used all reference samples"
                        refs = [sids[j] for j in np.flatnonzero(sel)]
                        pooled = _pooled_values(csum[csum["sample_id"].astype(str).isin(refs)])
                        t = float(np.quantile(pooled, tc.quantile)) if pooled.size else float("nan")
                        cache[key] = (t, warn)
                    t, warn = cache[key]
                    rows.append(dict(sample_id=s, zone=zone.name, channel=ch, threshold=t, mode=f"reference_q{tc.quantile:g}", warning=warn))
    return pd.DataFrame(rows, columns=["sample_id", "zone", "channel", "threshold", "mode", "warning"])


# ---------------------------------------------------------------------------------------- masks
def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    if min_px <= 1 or not mask.any():
        return mask
    lab, n = ndi.label(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def threshold_zone_signal(
    signal: np.ndarray,
    thresholds: Sequence[float],
    tissue: np.ndarray | None,
    *,
    grid_um: float,
    min_area_um2: float = 0.0,
    fill_holes: bool = True,
) -> np.ndarray:
    """Zone mask from per-channel signals and thresholds.

    The module score is ``mean_k(signal_k / threshold_k)`` and the zone is ``score >= 1`` inside tissue
    (for one channel: ``signal >= threshold``); then holes are filled (within tissue) and components
    smaller than ``min_area_um2`` removed.

    Parameters
    ----------
    signal : ndarray (n_channels, Ygrid, Xgrid) or (Ygrid, Xgrid)
    thresholds : sequence of float, one per channel (> 0 for modules of several channels)
    tissue : bool ndarray (Ygrid, Xgrid) or None
    grid_um : float
        Grid pixel size (µm), to convert ``min_area_um2`` to pixels.

    Returns
    -------
    bool ndarray (Ygrid, Xgrid)
    """
    sig = np.asarray(signal, dtype=np.float64)
    if sig.ndim == 2:
        sig = sig[None]
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.size != sig.shape[0]:
        raise ValueError(f"{thr.size} thresholds for {sig.shape[0]} channels")
    if not np.isfinite(thr).all():
        mask = np.zeros(sig.shape[1:], bool)
    elif sig.shape[0] == 1:
        mask = sig[0] >= thr[0]
    else:
        if (thr <= 0).any():
            raise ValueError(f"module thresholds must be > 0 to normalise the channels, got {thr.tolist()}")
        mask = (sig / thr[:, None, None]).mean(axis=0) >= 1.0
    tis = _check_tissue(tissue, mask.shape)
    if tis is not None:
        mask &= tis
    if fill_holes and mask.any():
        mask = ndi.binary_fill_holes(mask)
        if tis is not None:
            mask &= tis
    return _remove_small(mask, float(min_area_um2) / (grid_um * grid_um))


def producer_zone(
    cells: pd.DataFrame,
    tissue: np.ndarray,
    *,
    grid_um: float,
    zone: ZoneConfig,
) -> np.ndarray:
    """Tissue within ``zone.radius_um`` of producer cells (``{producer_marker}_pos``) on the grid.

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um, {producer_marker}_pos`` (and ``cell_type`` when
        ``producer_cell_types`` is set).
    tissue : bool ndarray (Ygrid, Xgrid)
    grid_um : float
        Grid pixel size (µm).

    Returns
    -------
    bool ndarray (Ygrid, Xgrid)
        Pixels whose centre is within ``radius_um`` of the centre of a grid pixel that holds a producer.
    """
    col = f"{zone.producer_marker}_pos"
    if col not in cells.columns:
        raise MissingStepError(
            f"zones '{zone.name}': cells table has no column '{col}'; run phenotyping (gate marker "
            f"'{zone.producer_marker}' in phenotypes.markers) before building producer zones"
        )
    sel = cells[col].fillna(False).astype(bool).to_numpy()
    if zone.producer_cell_types:
        if "cell_type" not in cells.columns:
            raise MissingStepError(f"zones '{zone.name}': cells table has no 'cell_type'; run phenotyping first")
        sel &= cells["cell_type"].isin(zone.producer_cell_types).to_numpy()
    tissue = np.asarray(tissue, bool)
    seeds = np.zeros(tissue.shape, bool)
    if sel.any():
        r, c = cell_grid_index(cells.loc[sel], grid_um=grid_um, shape=tissue.shape)
        seeds[r, c] = True
    if not seeds.any():
        return np.zeros_like(tissue)
    d = ndi.distance_transform_edt(~seeds, sampling=grid_um)
    return (d <= zone.radius_um) & tissue


def tumor_compartments(epithelium: np.ndarray, tissue: np.ndarray, *, grid_um: float, zone: ZoneConfig) -> dict[str, np.ndarray]:
    """Tumor compartments by distance from the epithelium (pixel centres, µm).

    ``{zone}_intraepithelial`` = epithelium ∩ tissue; ``{zone}_margin`` = 0 < d ≤ bands_um[0];
    ``{zone}_peritumoral`` = bands_um[0] < d ≤ bands_um[-1]; ``{zone}_distal`` = d > bands_um[-1] (all
    within tissue), where d is the Euclidean distance from a pixel centre to the nearest epithelium pixel
    centre.
    """
    tissue = np.asarray(tissue, bool)
    epi = np.asarray(epithelium, bool) & tissue
    if epi.any():
        d = ndi.distance_transform_edt(~epi, sampling=grid_um)
    else:
        d = np.full(tissue.shape, np.inf)
    b0, b1 = float(zone.bands_um[0]), float(zone.bands_um[-1])
    n = zone.name
    return {
        f"{n}_intraepithelial": epi,
        f"{n}_margin": tissue & ~epi & (d <= b0),
        f"{n}_peritumoral": tissue & (d > b0) & (d <= b1),
        f"{n}_distal": tissue & (d > b1),
    }


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
    thresholds : DataFrame
        From :func:`compute_zone_thresholds` (rows of this ``sample_id``).
    sample_id : str
    channels : sequence of str
        The image's channel names (to resolve ``zone.channels``, with ``aliases``).
    signals : dict zone name -> ndarray (n_channels, Ygrid, Xgrid), optional
        Signals already computed in pass A (skips re-reading the image).

    Returns
    -------
    masks : dict name -> bool ndarray (Ygrid, Xgrid)
        See :func:`zone_mask_names`.
    zones_df : DataFrame
        ``sample_id, zone, source, channels, threshold_used, channel_thresholds, area_mm2, tissue_area_mm2,
        area_fraction``. ``threshold_used`` is the threshold in image units for one channel and ``1.0`` (the
        module score) for modules; ``channel_thresholds`` lists ``channel=value`` pairs.
    """
    from .io import resolve_channels  # noqa: PLC0415

    tissue = np.asarray(tissue, bool)
    g = grid_factor(pixel_size_um, grid_um) * float(pixel_size_um)
    px_mm2 = (g * 1e-3) ** 2
    tissue_mm2 = float(tissue.sum()) * px_mm2
    masks: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for zone in zones:
        thr_used, ch_thr = float("nan"), ""
        if zone.source == "producers":
            if cells is None:
                raise MissingStepError(f"zones '{zone.name}': producer zones need the phenotyped cells table")
            zm = {zone.name: producer_zone(cells, tissue, grid_um=g, zone=zone)}
        else:
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
            thr = [float(tmap[c]) for c in zone.channels]
            if signals is not None and zone.name in signals:
                sig = np.asarray(signals[zone.name])
            else:
                if image_cyx is None:
                    raise MissingStepError(f"zones '{zone.name}': pass the image or its pass-A signal")
                idx = resolve_channels(list(channels), list(zone.channels), aliases=dict(aliases or {}), source=f"zones '{zone.name}'")
                sig = zone_signal(image_cyx, channel_indices=idx, pixel_size_um=pixel_size_um, grid_um=grid_um, zone=zone, tissue=tissue)
            mask = threshold_zone_signal(sig, thr, tissue, grid_um=g, min_area_um2=zone.min_area_um2, fill_holes=zone.fill_holes)
            thr_used = thr[0] if len(thr) == 1 else 1.0
            ch_thr = ";".join(f"{c}={v:.6g}" for c, v in zip(zone.channels, thr))
            zm = tumor_compartments(mask, tissue, grid_um=g, zone=zone) if zone.source == "tumor" else {zone.name: mask}
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
    cols = ["sample_id", "zone", "source", "channels", "threshold_used", "channel_thresholds", "area_mm2", "tissue_area_mm2", "area_fraction"]
    return masks, pd.DataFrame(rows, columns=cols)
