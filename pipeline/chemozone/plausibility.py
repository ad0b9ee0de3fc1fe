"""Plausibility checks: results a run must not finish on without saying so.

Each check is a small pure function of numbers or tables that returns a list of warning records, plain dicts
(JSON-ready, see :func:`warning_record`)::

    {"code": "low_cell_density", "sample": "P01_sham_0Gy", "message": "...", "value": 12.5}

``sample`` is ``None`` for a cohort-wide warning. The runner (:mod:`chemozone.run`) calls the checks and
records the warnings in ``run.json`` (``warnings``: every record; ``samples.<id>.warnings``: that sample's);
``chemozone run`` prints them after its summary line and the report shows them in its first section. A sample
with warnings still finishes ``done``: the warnings say what to look at.

Thresholds (module constants, deliberately not configurable; each is far from what real tissue does, so a
warning means "look at this", never "tissue of an unusual kind")

=================================  =========================================================================
:data:`PIXEL_SIZE_RANGE_UM`        0.05–5 µm per pixel: from super-resolution to a 2× slide-scanner overview.
                                   A file's pixel size outside it is not a pixel size (a 72 dpi resolution
                                   tag reads as 352.8 µm/px); nuclei of 5–10 µm are not resolved above 5.
:data:`MIN_TISSUE_FRACTION`        3 % of the field: an explant or biopsy fills far more of a field that was
                                   chosen to image it; less is an empty field or a failed tissue mask.
:data:`MAX_SPACING_DIAMETERS`      lowest plausible density: one cell per square of side 12 nucleus
                                   diameters (96 µm for 8 µm nuclei, 109 cells/mm²; adipose tissue, the
                                   sparsest common tissue, has cells ~100 µm apart).
:data:`PACKING_EXCESS`             highest plausible density: 2× the hexagonal close packing of discs of the
                                   smallest configured nucleus diameter (36 000 cells/mm² for 8 µm, 55 000 for
                                   6.5 µm). Nuclei do not overlap in a section, so more means over-split nuclei
                                   or a wrong pixel size.
:data:`RARE_POSITIVE_FRACTION`     0.1 %: a gated marker positive in fewer cells of the whole cohort is gated
                                   above its positives (rare populations of interest are 0.3–5 %). Not
                                   checked per sample: a chemokine absent from a sham sample is biology.
:data:`ABUNDANT_POSITIVE_FRACTION`  95 %: a marker positive in more cells (of the cohort, or of a sample with
                                   at least :data:`MIN_CELLS_FOR_FRACTION` cells) is gated below a negative
                                   population (offset, spillover, autofluorescence), not expressed by
                                   nearly every cell.
:data:`MAX_ZONE_FRACTION`           95 % of a sample's tissue: a chemokine zone (source ``pixels`` or
                                   ``producers``) that covers more is no zone: its threshold is at or below
                                   the tissue's background, every cell is "inside" and nothing is left to
                                   compare with (irradiated explants: zones of ~1-40 %).
:data:`MIN_ZONE_FRACTION`           0.1 % of the tissue: a chemokine zone smaller than this in *every* sample
                                   of the run (about one producer's footprint in 1 mm² of tissue) is a
                                   threshold above the signal, an unstained channel or a producer gate above
                                   the producers. Not checked per sample: a zone absent from a sham is biology.
                                   A configured tumor zone's epithelium that small in every sample is a failed
                                   epithelium threshold (its bands collapse with it).
=================================  =========================================================================

Warning codes: ``pixel_size_from_config``, ``pixel_size_conflict``, ``no_cells``, ``low_cell_density``,
``high_cell_density``, ``low_tissue``, ``marker_rarely_positive``, ``marker_mostly_positive``,
``missing_reference``, ``gate_warning``, ``zone_threshold_warning``, ``zone_covers_tissue``,
``zone_near_empty``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

__all__ = [
    "PIXEL_SIZE_RANGE_UM",
    "MIN_TISSUE_FRACTION",
    "MAX_SPACING_DIAMETERS",
    "PACKING_EXCESS",
    "RARE_POSITIVE_FRACTION",
    "ABUNDANT_POSITIVE_FRACTION",
    "MIN_CELLS_FOR_FRACTION",
    "warning_record",
    "plausible_pixel_size",
    "density_bounds_per_mm2",
    "sample_checks",
    "marker_checks",
    "gate_checks",
    "zone_threshold_checks",
    "zone_area_checks",
    "MAX_ZONE_FRACTION",
    "MIN_ZONE_FRACTION",
    "CHEMOKINE_ZONE_SOURCES",
    "TUMOR_ZONE_SOURCES",
    "format_warning",
    "pixel_size_checks",
    "positive_counts",
]

PIXEL_SIZE_RANGE_UM = (0.05, 5.0)
"""A pixel size outside this range (µm per pixel) is not a microscope pixel size."""
MIN_TISSUE_FRACTION = 0.03
"""Tissue covering less than this fraction of the field is flagged (``low_tissue``)."""
MAX_SPACING_DIAMETERS = 12.0
"""Lowest plausible density: one cell per square of this many nucleus diameters on a side."""
PACKING_EXCESS = 2.0
"""Highest plausible density: this many times the hexagonal packing of discs of the nucleus diameter."""
RARE_POSITIVE_FRACTION = 0.001
"""A marker positive in fewer cells of the cohort than this fraction is flagged."""
ABUNDANT_POSITIVE_FRACTION = 0.95
"""A marker positive in more cells (cohort, or a sample) than this fraction is flagged."""
MIN_CELLS_FOR_FRACTION = 50
"""A sample's positive fraction is judged only when it has at least this many cells."""
MAX_ZONE_FRACTION = 0.95
"""A chemokine zone covering more of a sample's tissue than this fraction is flagged (``zone_covers_tissue``)."""
MIN_ZONE_FRACTION = 0.001
"""A chemokine zone covering less than this fraction of the tissue in every sample is flagged (``zone_near_empty``)."""
CHEMOKINE_ZONE_SOURCES = ("pixels", "producers")
"""Zone sources the zone-area checks judge (tumor compartments and annotated regions may cover any share)."""
TUMOR_ZONE_SOURCES = ("tumor", "tumor_cells")
"""Their ``{zone}_intraepithelial`` mask is checked for ``zone_near_empty`` only: a configured tumor zone without
any epithelium in every sample is a failed epithelium threshold (its margin, peritumoral and distal bands and
``halfmax``'s compartment backgrounds collapse with it); all tumor is a biopsy."""

_REFERENCE_TEXT = "no reference sample"  # what the gates and zone thresholds write when a group has no reference


def warning_record(code: str, sample: str | None, message: str, value: float | None = None) -> dict[str, Any]:
    """One warning: ``{"code", "sample", "message", "value"}`` (``sample`` None for the cohort).

    >>> warning_record("no_cells", "s1", "0 cells", 0)
    {'code': 'no_cells', 'sample': 's1', 'message': '0 cells', 'value': 0.0}
    """
    v = None if value is None or not math.isfinite(float(value)) else float(value)
    return {"code": code, "sample": None if sample is None else str(sample), "message": message, "value": v}


def format_warning(rec: Mapping[str, Any]) -> str:
    """The one-line text of a warning record (what ``chemozone run`` prints).

    >>> format_warning(warning_record("no_cells", "s1", "0 cells"))
    "[no_cells] sample 's1': 0 cells"
    >>> format_warning(warning_record("gate_warning", None, "CD3: unimodal"))
    '[gate_warning] cohort: CD3: unimodal'
    """
    where = "cohort" if rec.get("sample") is None else f"sample '{rec['sample']}'"
    return f"[{rec.get('code')}] {where}: {rec.get('message')}"


def plausible_pixel_size(pixel_size_um: float | None) -> bool:
    """Whether a stored pixel size is one (finite, within :data:`PIXEL_SIZE_RANGE_UM`).

    >>> plausible_pixel_size(0.325), plausible_pixel_size(352.8), plausible_pixel_size(None)
    (True, False, False)
    """
    if pixel_size_um is None:
        return False
    v = float(pixel_size_um)
    return math.isfinite(v) and PIXEL_SIZE_RANGE_UM[0] <= v <= PIXEL_SIZE_RANGE_UM[1]


def pixel_size_checks(sample: str, *, pixel_size_um: float, source: str, note: str) -> list[dict[str, Any]]:
    """A warning when the pixel size came from the config, or when the config disagrees with the file.

    Parameters
    ----------
    sample : str
    pixel_size_um : float
        The pixel size used.
    source : {"file", "config"}
        Where it came from (``ImageData.pixel_size_source``).
    note : str
        Why (``ImageData.pixel_size_note``); empty when the file's value was used and the config agrees.

    >>> pixel_size_checks("s", pixel_size_um=0.5, source="config", note="the file stores none")[0]["code"]
    'pixel_size_from_config'
    >>> pixel_size_checks("s", pixel_size_um=0.5, source="file", note="")
    []
    """
    if source == "config":
        return [warning_record("pixel_size_from_config", sample, f"{pixel_size_um:.4g} µm/px from "
                               f"panel.pixel_size_um: {note}", pixel_size_um)]
    if note:
        return [warning_record("pixel_size_conflict", sample, note, pixel_size_um)]
    return []


def density_bounds_per_mm2(nucleus_diameter_um: float, smallest_diameter_um: float | None = None
                           ) -> tuple[float, float]:
    """The plausible range of cells per mm² of tissue for a nucleus size.

    Parameters
    ----------
    nucleus_diameter_um : float
        Typical nucleus diameter (``segmentation.nucleus_diameter_um``); sets the lowest density,
        one cell per square of :data:`MAX_SPACING_DIAMETERS` diameters.
    smallest_diameter_um : float, optional
        Smallest nuclei (``segmentation.small_nucleus_diameter_um``); sets the highest density,
        :data:`PACKING_EXCESS` × the hexagonal close packing ``1 / (√3/2 · d²)``. Default: the typical one.

    Returns
    -------
    (low, high) : tuple of float
        Cells per mm².

    >>> [round(b) for b in density_bounds_per_mm2(8.0)]
    [109, 36084]
    """
    d_lo = float(nucleus_diameter_um)
    d_hi = float(smallest_diameter_um or nucleus_diameter_um)
    low = 1e6 / (MAX_SPACING_DIAMETERS * d_lo) ** 2
    high = PACKING_EXCESS * 1e6 / (math.sqrt(3) / 2 * min(d_lo, d_hi) ** 2)
    return low, high


def sample_checks(sample: str, *, n_cells: int, tissue_fraction: float, field_area_mm2: float,
                  nucleus_diameter_um: float | None, smallest_diameter_um: float | None = None
                  ) -> list[dict[str, Any]]:
    """Warnings about one sample's step A: no cells, tissue below a few % of the field, implausible density.

    Parameters
    ----------
    sample : str
    n_cells : int
        Cells segmented in the sample.
    tissue_fraction : float
        Fraction of the field inside the tissue mask (0–1).
    field_area_mm2 : float
        Area of the whole field (image height × width × pixel size²), mm².
    nucleus_diameter_um, smallest_diameter_um : float
        See :func:`density_bounds_per_mm2`; the density is not judged when ``nucleus_diameter_um`` is None.

    Returns
    -------
    list of dict
        Warning records (:func:`warning_record`); empty when nothing is implausible.

    >>> [w["code"] for w in sample_checks("s", n_cells=0, tissue_fraction=0.0, field_area_mm2=1.0,
    ...                                   nucleus_diameter_um=8.0)]
    ['no_cells', 'low_tissue']
    >>> sample_checks("s", n_cells=2000, tissue_fraction=0.5, field_area_mm2=1.0, nucleus_diameter_um=8.0)
    []
    """
    out = []
    tissue_mm2 = float(tissue_fraction) * float(field_area_mm2)
    if n_cells == 0:
        out.append(warning_record("no_cells", sample, "0 cells segmented: the sample's tables are empty; check "
                                  "its tissue mask and nuclei in qc.png or napari", 0))
    if tissue_fraction < MIN_TISSUE_FRACTION:
        out.append(warning_record(
            "low_tissue", sample, f"tissue covers {100 * tissue_fraction:.1f} % of the field (< "
            f"{100 * MIN_TISSUE_FRACTION:g} %); check the tissue mask (tissue.threshold, tissue.channels)",
            tissue_fraction))
    if n_cells == 0 or tissue_mm2 <= 0 or nucleus_diameter_um is None:
        return out
    density = n_cells / tissue_mm2
    low, high = density_bounds_per_mm2(nucleus_diameter_um, smallest_diameter_um)
    if density < low:
        out.append(warning_record(
            "low_cell_density", sample, f"{density:.0f} cells per mm² of tissue ({n_cells} cells in "
            f"{tissue_mm2:.3g} mm²), below the {low:.0f}/mm² of even the sparsest tissue; check the pixel size, "
            "the tissue mask and the nuclear segmentation", density))
    elif density > high:
        out.append(warning_record(
            "high_cell_density", sample, f"{density:.0f} cells per mm² of tissue ({n_cells} cells in "
            f"{tissue_mm2:.3g} mm²), above the {high:.0f}/mm² that packed nuclei can reach; check the pixel size "
            "and segmentation.nucleus_diameter_um (over-split nuclei)", density))
    return out


def marker_checks(counts: pd.DataFrame) -> list[dict[str, Any]]:
    """Warnings about markers almost never or almost always positive, in the cohort and per sample.

    Parameters
    ----------
    counts : DataFrame
        One row per (sample, marker): ``sample_id``, ``marker``, ``n_cells``, ``n_positive``.

    Returns
    -------
    list of dict
        Cohort records (``sample`` None) for a marker positive in < :data:`RARE_POSITIVE_FRACTION` or
        > :data:`ABUNDANT_POSITIVE_FRACTION` of all cells; sample records for > :data:`ABUNDANT_POSITIVE_FRACTION`
        in a sample of at least :data:`MIN_CELLS_FOR_FRACTION` cells. A rare marker in one sample is not flagged.

    >>> c = pd.DataFrame({"sample_id": ["a", "b"], "marker": "CD3", "n_cells": [1000, 1000],
    ...                   "n_positive": [990, 400]})
    >>> [(w["code"], w["sample"]) for w in marker_checks(c)]
    [('marker_mostly_positive', 'a')]
    """
    out: list[dict[str, Any]] = []
    if counts is None or not len(counts):
        return out
    for marker, sub in counts.groupby("marker", sort=False):
        n, k = int(sub["n_cells"].sum()), int(sub["n_positive"].sum())
        if n == 0:
            continue
        frac = k / n
        if frac < RARE_POSITIVE_FRACTION:
            out.append(warning_record(
                "marker_rarely_positive", None, f"{marker} is positive in {k} of {n} cells of the cohort "
                f"({100 * frac:.2g} % < {100 * RARE_POSITIVE_FRACTION:g} %): its gate is probably above the "
                "positive cells; review it (napari Gate review, gates.parquet)", frac))
        elif frac > ABUNDANT_POSITIVE_FRACTION:
            out.append(warning_record(
                "marker_mostly_positive", None, f"{marker} is positive in {k} of {n} cells of the cohort "
                f"({100 * frac:.3g} % > {100 * ABUNDANT_POSITIVE_FRACTION:g} %): its gate is probably below a "
                "negative population (offset, spillover, autofluorescence); review it", frac))
        for r in sub.itertuples(index=False):
            if r.n_cells < MIN_CELLS_FOR_FRACTION:
                continue
            f = r.n_positive / r.n_cells
            if f > ABUNDANT_POSITIVE_FRACTION:
                out.append(warning_record(
                    "marker_mostly_positive", r.sample_id, f"{marker} is positive in {r.n_positive} of "
                    f"{r.n_cells} cells ({100 * f:.3g} % > {100 * ABUNDANT_POSITIVE_FRACTION:g} %); review its gate",
                    f))
    return out


def _threshold_warnings(table: pd.DataFrame, key: str, what: str, code: str) -> list[dict[str, Any]]:
    """Records of the ``warning`` column of a gates / zone-thresholds table: one cohort record when every sample
    of an item shares the warning, else one per sample; a missing reference gets its own code."""
    out: list[dict[str, Any]] = []
    if table is None or not len(table) or "warning" not in table.columns:
        return out
    t = table.assign(warning=table["warning"].fillna("").astype(str))
    n_samples = t["sample_id"].nunique()
    for item, sub in t.groupby(key, sort=False):
        warned = sub[sub["warning"] != ""]
        if not len(warned):
            continue
        texts = set(warned["warning"])
        value_col = "threshold_raw" if "threshold_raw" in sub.columns else "threshold"
        if len(texts) == 1 and warned["sample_id"].nunique() == n_samples and n_samples > 1:
            text = texts.pop()
            c = "missing_reference" if _REFERENCE_TEXT in text else code
            out.append(warning_record(c, None, f"{what} {item} (all {n_samples} samples): {text}",
                                      warned[value_col].iloc[0]))
            continue
        for r in warned.itertuples(index=False):
            c = "missing_reference" if _REFERENCE_TEXT in r.warning else code
            out.append(warning_record(c, r.sample_id, f"{what} {item}: {r.warning}", getattr(r, value_col)))
    return out


def gate_checks(gates: pd.DataFrame) -> list[dict[str, Any]]:
    """The non-empty ``warning`` column of a gates table (``gates.parquet``) as warning records.

    A warning that mentions a missing reference sample gets code ``missing_reference``, others
    ``gate_warning`` (a fallback, e.g. a unimodal marker gated at mode + 3 SD). ``value`` is ``threshold_raw``.

    >>> g = pd.DataFrame({"sample_id": ["a", "b"], "marker": "CD68", "threshold_raw": 5.0,
    ...                   "warning": ["unimodal: valley fallback", ""]})
    >>> [(w["code"], w["sample"]) for w in gate_checks(g)]
    [('gate_warning', 'a')]
    """
    return _threshold_warnings(gates, "marker", "gate of", "gate_warning")


def zone_threshold_checks(thresholds: pd.DataFrame) -> list[dict[str, Any]]:
    """The non-empty ``warning`` column of a zone-thresholds table (``zone_thresholds.parquet``) as records
    (codes ``missing_reference`` and ``zone_threshold_warning``; ``value`` is the threshold)."""
    if thresholds is None or not len(thresholds):
        return []
    t = thresholds.assign(item=thresholds["zone"].astype(str) + "/" + thresholds["channel"].astype(str))
    return _threshold_warnings(t, "item", "zone threshold of", "zone_threshold_warning")


def zone_area_checks(zones: pd.DataFrame) -> list[dict[str, Any]]:
    """Warnings about chemokine zones that cover (almost) all of a sample's tissue, or almost none of any sample's.

    Parameters
    ----------
    zones : DataFrame
        One row per (sample, zone mask), as in the zones tables (``zones.parquet``): ``sample_id``, ``zone``,
        ``source``, ``area_fraction`` (of the sample's tissue). Chemokine zones (:data:`CHEMOKINE_ZONE_SOURCES`)
        are judged both ways, the ``*_intraepithelial`` masks of tumor zones (:data:`TUMOR_ZONE_SOURCES`) for
        ``zone_near_empty`` only; other rows and rows without a finite fraction (no tissue) are not judged.

    Returns
    -------
    list of dict
        ``zone_covers_tissue``: a zone covering more than :data:`MAX_ZONE_FRACTION` of a sample's tissue (one
        cohort record when it does so in every sample of two or more). ``zone_near_empty``: a zone covering less
        than :data:`MIN_ZONE_FRACTION` of the tissue in every sample (a cohort record). ``value``: the fraction
        (the largest over samples for ``zone_near_empty``, the smallest for a cohort ``zone_covers_tissue``).

    >>> z = pd.DataFrame({"sample_id": ["a", "b", "a", "b"], "zone": ["CXCL8", "CXCL8", "CCL5", "CCL5"],
    ...                   "source": "pixels", "area_fraction": [0.99, 0.2, 0.0, 0.0004]})
    >>> [(w["code"], w["sample"]) for w in zone_area_checks(z)]
    [('zone_covers_tissue', 'a'), ('zone_near_empty', None)]
    """
    out: list[dict[str, Any]] = []
    if zones is None or not len(zones):
        return out
    epi = zones["source"].isin(TUMOR_ZONE_SOURCES) & zones["zone"].astype(str).str.endswith("_intraepithelial")
    z = zones[zones["source"].isin(CHEMOKINE_ZONE_SOURCES) | epi]
    z = z[pd.to_numeric(z["area_fraction"], errors="coerce").notna()]
    for zone, sub in z.groupby("zone", sort=False):
        f = sub["area_fraction"].astype(float)
        if sub["source"].isin(TUMOR_ZONE_SOURCES).all():
            if f.max() < MIN_ZONE_FRACTION:
                out.append(warning_record(
                    "zone_near_empty", None, f"tumor zone {zone} (the epithelium) covers less than "
                    f"{100 * MIN_ZONE_FRACTION:g} % of the tissue in {_every(len(sub))} (largest {100 * f.max():.2g} %): "
                    "its epithelium threshold is above the epithelium or the channel is unstained, so its bands and "
                    "the compartment backgrounds are empty too; review zone_thresholds.parquet and the QC overlays",
                    f.max()))
            continue
        full = sub[f > MAX_ZONE_FRACTION]
        if len(full) == len(sub) and len(sub) > 1:
            out.append(warning_record(
                "zone_covers_tissue", None, f"zone {zone} covers more than {100 * MAX_ZONE_FRACTION:g} % of the "
                f"tissue in all {len(sub)} samples: its threshold is at or below the tissue's background, so no "
                "cell is outside it; review it (napari Zone review, zone_thresholds.parquet)", f.min()))
        else:
            for r in full.itertuples(index=False):
                out.append(warning_record(
                    "zone_covers_tissue", r.sample_id, f"zone {zone} covers {100 * r.area_fraction:.3g} % of the "
                    f"tissue (> {100 * MAX_ZONE_FRACTION:g} %): its threshold is at or below this sample's "
                    "background; review it (napari Zone review, zone_thresholds.parquet)", r.area_fraction))
        if f.max() < MIN_ZONE_FRACTION:
            n = len(sub)
            out.append(warning_record(
                "zone_near_empty", None, f"zone {zone} covers less than {100 * MIN_ZONE_FRACTION:g} % of the tissue "
                f"in {_every(n)} (largest "
                f"{100 * f.max():.2g} %): unless the chemokine is absent from every sample, its threshold is above "
                "the signal or its producer gate above the producers; review them (napari Zone and Gate review, "
                "zone_thresholds.parquet, gates.parquet)",
                f.max()))
    return out


def _every(n: int) -> str:
    return f"all {n} samples" if n > 1 else "the only sample"


def positive_counts(cells: pd.DataFrame, sample: str) -> list[dict[str, Any]]:
    """``{sample_id, marker, n_cells, n_positive}`` of every ``{marker}_pos`` column of one sample's cells.

    >>> positive_counts(pd.DataFrame({"CD3_pos": [True, False, True]}), "s")
    [{'sample_id': 's', 'marker': 'CD3', 'n_cells': 3, 'n_positive': 2}]
    """
    return [{"sample_id": str(sample), "marker": c[: -len("_pos")], "n_cells": int(len(cells)),
             "n_positive": int(pd.to_numeric(cells[c], errors="coerce").fillna(0).astype(bool).sum())}
            for c in cells.columns if str(c).endswith("_pos")]

