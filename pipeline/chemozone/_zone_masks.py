"""Zone masks on the analysis grid: thresholded signals, producer-cell zones and tumor compartments.

Re-exported by :mod:`chemozone.zones` (which describes the zone sources); plain arrays and keywords in,
boolean grid masks out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .errors import MissingStepError
from .grid import cell_grid_index, distance_um

__all__ = ["module_score", "threshold_zone_signal", "producer_zone", "tumor_compartments"]


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


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    if min_px <= 1 or not mask.any():
        return mask
    lab, n = ndi.label(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def module_score(signal: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Module score of a zone: ``mean_k(signal_k / threshold_k)``; the zone is ``score >= 1``.

    Each channel is divided by its own (cohort-level) threshold so the channels of a module are combinable.

    Parameters
    ----------
    signal : ndarray (n_channels, Ygrid, Xgrid) or (Ygrid, Xgrid)
        From :func:`chemozone.zones.zone_signal`.
    thresholds : sequence of float, one per channel
        With all thresholds 1 the score is the plain mean of the channels (one threshold ``t`` for every
        channel then gives the zone ``score >= t``).

    Returns
    -------
    float64 ndarray (Ygrid, Xgrid)

    Examples
    --------
    >>> module_score(np.array([[[2.0, 8.0]], [[3.0, 3.0]]]), [4.0, 3.0]).tolist()
    [[0.75, 1.5]]
    """
    sig = np.asarray(signal, dtype=np.float64)
    if sig.ndim == 2:
        sig = sig[None]
    thr = np.asarray(thresholds, dtype=np.float64)
    return (sig / thr[:, None, None]).mean(axis=0)


_OFFSET_BAND_ROWS = 1024
"""Grid rows of the signal compared at a time when a background offset map is subtracted."""


def threshold_zone_signal(
    signal: np.ndarray,
    thresholds: Sequence[float],
    tissue: np.ndarray | None,
    *,
    grid_um: float,
    min_area_um2: float = 0.0,
    fill_holes: bool = True,
    offset: Callable[[tuple[int, int]], np.ndarray] | None = None,
) -> np.ndarray:
    """Zone mask from per-channel signals and thresholds.

    The module score is ``mean_k(signal_k / threshold_k)`` (:func:`module_score`) and the zone is ``score >= 1`` inside tissue
    (for one channel: ``signal >= threshold``); then holes are filled (within tissue) and components
    smaller than ``min_area_um2`` removed.

    Parameters
    ----------
    signal : ndarray (n_channels, Ygrid, Xgrid) or (Ygrid, Xgrid)
    thresholds : sequence of float, one per channel (> 0 for modules of several channels)
    tissue : bool ndarray (Ygrid, Xgrid) or None
    grid_um : float
        Grid pixel size (µm), to convert ``min_area_um2`` to pixels.
    offset : callable, optional
        ``offset((r0, r1))`` gives a float32 (n_channels, r1 - r0, Xgrid) background offset of grid rows r0..r1
        that is subtracted from the signal before the comparison (the compartment backgrounds of ``halfmax``,
        :func:`chemozone._zone_compartments.offset_rows`); applied a band of rows at a time.

    Returns
    -------
    bool ndarray (Ygrid, Xgrid)
    """
    sig = np.asarray(signal)  # no float64 copy of the grid: comparisons with float64 thresholds promote exactly
    if sig.ndim == 2:
        sig = sig[None]
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.size != sig.shape[0]:
        raise ValueError(f"{thr.size} thresholds for {sig.shape[0]} channels")
    if sig.shape[0] > 1 and np.isfinite(thr).all() and (thr <= 0).any():
        raise ValueError(f"module thresholds must be > 0 to normalise the channels, got {thr.tolist()}")
    if not np.isfinite(thr).all():
        mask = np.zeros(sig.shape[1:], bool)
    elif offset is None:
        mask = sig[0] >= thr[0] if sig.shape[0] == 1 else module_score(sig, thr) >= 1.0
    else:
        mask = np.empty(sig.shape[1:], bool)
        for r0 in range(0, mask.shape[0], _OFFSET_BAND_ROWS):
            r1 = min(mask.shape[0], r0 + _OFFSET_BAND_ROWS)
            band = sig[:, r0:r1] - offset((r0, r1))
            mask[r0:r1] = band[0] >= thr[0] if sig.shape[0] == 1 else module_score(band, thr) >= 1.0
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
    producer_marker: str,
    radius_um: float,
    producer_cell_types: Sequence[str] | None = None,
    min_producers: int = 1,
    milieu: str = "discs",
    link_um: float = 20.0,
    hull_ratio: float = 1.0,
) -> np.ndarray:
    """Tissue within ``radius_um`` of producer cells (``{producer_marker}_pos``) on the grid, or, with
    ``min_producers`` > 1, tissue with at least that many producer cells within ``radius_um`` (a producer milieu
    in the sense of Hoch et al. 2022: a lone producer makes no zone, a cluster does); with ``milieu="hull"``, the
    patches of :func:`producer_patches` (hulls of linked producers, widened by ``radius_um``).

    Parameters
    ----------
    cells : DataFrame with ``x_um, y_um, {producer_marker}_pos`` (and ``cell_type`` when
        ``producer_cell_types`` is set).
    tissue : bool ndarray (Ygrid, Xgrid)
    grid_um : float
        Grid pixel size (µm).
    producer_marker : str
        The marker whose positive cells produce the chemokine.
    radius_um : float
        Zone radius around each producer (µm).
    producer_cell_types : sequence of str, optional
        Only producers of these ``cell_type`` values (None or empty = all).
    min_producers : int
        A pixel is in the zone when at least this many producers (each cell counted, several may share a grid
        pixel) lie within ``radius_um`` of it; 1 = within ``radius_um`` of any producer. ``milieu="hull"``: the
        smallest patch that makes a milieu.
    milieu : {"discs", "hull"}
        ``discs``: as above, on the grid pixels holding the producers; ``hull``: Hoch et al.'s milieus from the
        producers' exact positions (:func:`producer_patches` with ``margin_um=radius_um``).
    link_um, hull_ratio : float
        ``milieu="hull"`` only: see :func:`producer_patches`.

    Returns
    -------
    bool ndarray (Ygrid, Xgrid)
        ``discs``: tissue pixels whose centre is within ``radius_um`` of the centres of the grid pixels holding at
        least ``min_producers`` producers; ``hull``: tissue pixels whose centre lies in a patch's milieu.

    Examples
    --------
    >>> cells = pd.DataFrame({"x_um": [5.0], "y_um": [5.0], "CXCL8_pos": [True]})
    >>> producer_zone(cells, np.ones((1, 5), bool), grid_um=2.0, producer_marker="CXCL8", radius_um=2.0).tolist()
    [[False, True, True, True, False]]

    Two producers 8 µm apart: with ``min_producers=2`` only the pixels within 6 µm of both are zone:

    >>> two = pd.DataFrame({"x_um": [5.0, 13.0], "y_um": [1.0, 1.0], "CXCL8_pos": [True, True]})
    >>> producer_zone(two, np.ones((1, 10), bool), grid_um=2.0, producer_marker="CXCL8", radius_um=6.0,
    ...               min_producers=2).astype(int).tolist()
    [[0, 0, 0, 1, 1, 1, 0, 0, 0, 0]]

    The same two as a patch (``link_um`` 10): the segment between them widened by 3 µm:

    >>> producer_zone(two, np.ones((1, 10), bool), grid_um=2.0, producer_marker="CXCL8", radius_um=3.0,
    ...               min_producers=2, milieu="hull", link_um=10.0).astype(int).tolist()
    [[0, 1, 1, 1, 1, 1, 1, 1, 0, 0]]
    """
    if int(min_producers) < 1:
        raise ValueError(f"min_producers must be >= 1, got {min_producers}")
    if milieu not in ("discs", "hull"):
        raise ValueError(f"milieu must be 'discs' or 'hull', got {milieu!r}")
    col = f"{producer_marker}_pos"
    if col not in cells.columns:
        raise MissingStepError(
            f"producer zone of '{producer_marker}': cells table has no column '{col}'; run phenotyping (gate marker "
            f"'{producer_marker}' in phenotypes.markers) before building producer zones"
        )
    sel = cells[col].fillna(False).astype(bool).to_numpy()
    if producer_cell_types:
        if "cell_type" not in cells.columns:
            raise MissingStepError(f"producer zone of '{producer_marker}': cells table has no 'cell_type'; run phenotyping first")
        sel &= cells["cell_type"].isin(producer_cell_types).to_numpy()
    tissue = np.asarray(tissue, bool)
    if not sel.any():
        return np.zeros_like(tissue)
    if milieu == "hull":
        xy = cells.loc[sel, ["x_um", "y_um"]].to_numpy(float)
        patches = producer_patches(xy[:, 0], xy[:, 1], link_um=link_um, min_producers=min_producers,
                                   margin_um=radius_um, hull_ratio=hull_ratio)
        return rasterize_patches(patches, tissue.shape, grid_um=grid_um) & tissue
    r, c = cell_grid_index(cells.loc[sel], grid_um=grid_um, shape=tissue.shape)
    if int(min_producers) > 1:
        return (_producers_within(r, c, tissue.shape, radius_um / grid_um) >= int(min_producers)) & tissue
    seeds = np.zeros(tissue.shape, bool)
    seeds[r, c] = True
    d = distance_um(~seeds, grid_um=grid_um)  # scipy's EDT, bit for bit, in less memory
    return (d <= radius_um) & tissue


def producer_patches(
    x_um: Any, y_um: Any, *, link_um: float, min_producers: int = 1, margin_um: float = 0.0, hull_ratio: float = 1.0,
) -> list:
    """Chemokine milieus as Hoch et al. 2022 define them (imcRtools ``patchDetection`` / ``findMilieu``):
    producer cells closer than ``link_um`` are linked, each connected set of at least ``min_producers`` cells is a
    patch, and its milieu is the patch's hull widened by ``margin_um``.

    Parameters
    ----------
    x_um, y_um : array-like (n_producers,)
        Producer centres, µm.
    link_um : float
        Two producers whose centres are closer than this belong to one patch (single linkage).
    min_producers : int
        Patches with fewer cells make no milieu.
    margin_um : float
        The hull is widened by this distance (shapely ``buffer``); a patch of one or two cells is its point or
        segment widened by it.
    hull_ratio : float in (0, 1]
        1 = convex hull; below 1 shapely's ``concave_hull`` with this ratio.

    Returns
    -------
    list of shapely geometries, µm (one per patch, in the order of their first producer)

    Examples
    --------
    A right triangle of producers 10 µm apart, widened by 5 µm (area 50 + perimeter × 5 + π 5², to shapely's
    polygonal circle), and a lone producer that makes no milieu with ``min_producers=2``:

    >>> p = producer_patches([0, 10, 0, 100], [0, 0, 10, 100], link_um=15, min_producers=2, margin_um=5)
    >>> len(p), round(p[0].area / (50 + (20 + 200 ** 0.5) * 5 + np.pi * 25), 3)
    (1, 0.998)
    """
    import shapely
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if not 0 < hull_ratio <= 1:
        raise ValueError(f"hull_ratio must be in (0, 1], got {hull_ratio}")
    xy = np.column_stack([np.asarray(x_um, float), np.asarray(y_um, float)])
    if not len(xy):
        return []
    pairs = cKDTree(xy).query_pairs(float(link_um), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(xy), len(xy)))
    _, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")  # each patch's producers together, in their input order
    starts = np.flatnonzero(np.r_[True, np.diff(label[order]) != 0])
    groups = np.split(order, starts[1:])
    out = []
    for idx in sorted(groups, key=lambda g: g[0]):  # patches in the order of their first producer
        if len(idx) < int(min_producers):
            continue
        pts = xy[idx]
        mp = shapely.multipoints(pts)
        hull = shapely.convex_hull(mp) if hull_ratio >= 1 else shapely.concave_hull(mp, ratio=float(hull_ratio))
        out.append(shapely.buffer(hull, float(margin_um)) if margin_um > 0 else hull)
    return out


def rasterize_patches(patches: Sequence[Any], shape: tuple[int, int], *, grid_um: float) -> np.ndarray:
    """Grid pixels whose centre ``((i + 0.5) grid_um)`` lies inside any of the geometries (µm): each polygon
    filled from its outline by scikit-image's scanline ``polygon`` within its own bounding box (memory of the box
    only), its holes left out; points and segments (no area) add nothing.

    >>> import shapely
    >>> rasterize_patches([shapely.box(0, 0, 4, 2)], (2, 3), grid_um=2.0).astype(int).tolist()
    [[1, 1, 0], [0, 0, 0]]
    """
    import shapely
    from skimage.draw import polygon as fill

    out = np.zeros(shape, bool)
    for geom in patches:
        for part in shapely.get_parts(geom):
            if not isinstance(part, shapely.Polygon) or part.is_empty:
                continue
            x0, y0, x1, y1 = part.bounds
            r0, c0 = max(0, int(np.floor(y0 / grid_um - 0.5))), max(0, int(np.floor(x0 / grid_um - 0.5)))
            r1, c1 = min(shape[0], int(np.ceil(y1 / grid_um)) + 1), min(shape[1], int(np.ceil(x1 / grid_um)) + 1)
            if r1 <= r0 or c1 <= c0:
                continue
            box = np.zeros((r1 - r0, c1 - c0), bool)
            for k, ring in enumerate([part.exterior, *part.interiors]):
                xy = np.asarray(ring.coords)
                rr, cc = fill(xy[:, 1] / grid_um - 0.5 - r0, xy[:, 0] / grid_um - 0.5 - c0, shape=box.shape)
                box[rr, cc] = k == 0  # the outline fills, a hole clears
            out[r0:r1, c0:c1] |= box
    return out


def _producers_within(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], radius_px: float,
                      chunk: int = 20_000) -> np.ndarray:
    """Per grid pixel, the number of producers (grid positions ``rows, cols``, one per cell) whose pixel centre
    lies within ``radius_px`` of it: the disc of every producer added into a uint16 grid (2 bytes per pixel),
    ``chunk`` producers at a time (index memory ~ chunk × disc area, whatever the grid)."""
    k = int(np.floor(radius_px))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    disc = dy**2 + dx**2 <= radius_px**2
    dy, dx = dy[disc], dx[disc]
    h, w = shape
    count = np.zeros(h * w, np.uint16)
    for i in range(0, len(rows), chunk):
        yy = rows[i:i + chunk, None] + dy[None]
        xx = cols[i:i + chunk, None] + dx[None]
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        np.add.at(count, (yy[ok] * w + xx[ok]).astype(np.int64), np.uint16(1))
    return count.reshape(shape)


def tumor_compartments(
    epithelium: np.ndarray, tissue: np.ndarray, *, grid_um: float, bands_um: Sequence[float], zone: str
) -> dict[str, np.ndarray]:
    """Tumor compartments by distance from the epithelium (pixel centres, µm).

    ``{zone}_intraepithelial`` = epithelium ∩ tissue; ``{zone}_margin`` = 0 < d ≤ bands_um[0];
    ``{zone}_peritumoral`` = bands_um[0] < d ≤ bands_um[-1]; ``{zone}_distal`` = d > bands_um[-1] (all
    within tissue), where d is the Euclidean distance from a pixel centre to the nearest epithelium pixel
    centre.

    Parameters
    ----------
    epithelium, tissue : bool ndarray (Ygrid, Xgrid)
    grid_um : float
        Grid pixel size (µm).
    bands_um : sequence of float
        Increasing band edges (µm); the first and last are used.
    zone : str
        The zone's name (prefix of the four mask names).

    Returns
    -------
    dict name -> bool ndarray (Ygrid, Xgrid)

    Examples
    --------
    >>> epi = np.array([[True, False, False, False]])
    >>> comp = tumor_compartments(epi, np.ones((1, 4), bool), grid_um=1.0, bands_um=[1.0, 2.0], zone="T")
    >>> {k: v.astype(int).tolist()[0] for k, v in comp.items()}
    {'T_intraepithelial': [1, 0, 0, 0], 'T_margin': [0, 1, 0, 0], 'T_peritumoral': [0, 0, 1, 0], 'T_distal': [0, 0, 0, 1]}
    """
    if not isinstance(zone, str):
        raise TypeError(f"tumor_compartments: zone is the zone's name (str), got {type(zone).__name__}")
    tissue = np.asarray(tissue, bool)
    epi = np.asarray(epithelium, bool) & tissue
    if epi.any():
        d = distance_um(~epi, grid_um=grid_um)
    else:
        d = np.full(tissue.shape, np.inf)
    b0, b1 = float(bands_um[0]), float(bands_um[-1])
    n = zone
    return {
        f"{n}_intraepithelial": epi,
        f"{n}_margin": tissue & ~epi & (d <= b0),
        f"{n}_peritumoral": tissue & (d > b0) & (d <= b1),
        f"{n}_distal": tissue & (d > b1),
    }
