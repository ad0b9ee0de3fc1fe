"""The ``zones`` config entries (:class:`ZoneConfig`, :class:`ThresholdConfig`) and the zone mask names; part of
:mod:`chemozone.config` (re-exported there; kept beside the zone definitions so that stages can name masks without
importing the zones module)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, model_validator

from ._config_base import _Section

__all__ = ["ThresholdConfig", "ZoneConfig", "TUMOR_COMPARTMENTS", "zone_mask_names", "halfmax_producer_markers"]


class ThresholdConfig(_Section):
    """How a pixel zone's threshold is chosen (on the normalised module signal)."""

    mode: Literal["absolute", "reference", "background", "halfmax", "pooled", "per_sample"] = "reference"
    """absolute: ``value``; reference: ``quantile`` of reference samples' tissue pixels; background: robust
    background model of the reference samples at ``error_rate`` (pooled fallback without them); pooled:
    ``method`` over the cohort's tissue pixels; per_sample: ``method`` per image (not recommended); halfmax:
    reference median + ``fraction`` × the signal of one producer cell (the zone's ``producer_marker`` gate)."""
    value: float | None = None
    method: Literal["otsu", "triangle", "li"] = "otsu"
    reference: dict[str, Any] = Field(default_factory=lambda: {"dose_gy": 0})
    group_by: str | None = "patient"
    quantile: float = Field(0.99, gt=0, lt=1)
    error_rate: float = Field(0.001, gt=0, lt=0.5)
    """background: expected fraction of background tissue pixels above the threshold."""
    fraction: float = Field(0.5, gt=0, lt=1)
    """halfmax: the zone edge as a fraction of one producer's smoothed signal (0.5 = its half-maximum footprint)."""
    compartments: bool = True
    """halfmax: a background per tissue compartment (tumor, stroma) when the config has a ``source: tumor`` zone
    whose channel is a gated marker (:mod:`chemozone._zone_compartments`); false: one background for the tissue."""
    tumor_offset: float | None = None
    """absolute: the background's offset in tumor nests, in the signal's units (with ``stroma_offset``; the zone
    review saves both from a ``halfmax`` run with compartment backgrounds). The zone is where the signal minus
    ``t × tumor_offset + (1 - t) × stroma_offset`` reaches ``value``, ``t`` being the tumor fraction around the
    position (:mod:`chemozone._zone_compartments`; needs a ``source: tumor`` zone whose channel is gated)."""
    stroma_offset: float | None = None
    """absolute: the background's offset in stroma (see ``tumor_offset``)."""

    @model_validator(mode="after")
    def _absolute_needs_value(self) -> ThresholdConfig:
        if self.mode == "absolute" and self.value is None:
            raise ValueError("mode 'absolute' needs a 'value'")
        if (self.tumor_offset is None) != (self.stroma_offset is None):
            raise ValueError("give both 'tumor_offset' and 'stroma_offset' (the background in tumor and in stroma), "
                             "or neither")
        if self.tumor_offset is not None and self.mode != "absolute":
            raise ValueError(f"'tumor_offset' and 'stroma_offset' are for mode 'absolute' (mode '{self.mode}' "
                             "computes its own: halfmax's compartments); remove them or set mode: absolute")
        return self

    @property
    def offsets(self) -> tuple[float, float] | None:
        """``(tumor_offset, stroma_offset)`` of an absolute threshold that has them, else None."""
        return None if self.tumor_offset is None else (float(self.tumor_offset), float(self.stroma_offset))


class ZoneConfig(_Section):
    """One zone: chemokine pixels, producer cells, a tumor compartment, or annotated regions."""

    name: str
    source: Literal["pixels", "producers", "tumor", "regions", "tumor_cells"] = "pixels"
    channels: list[str] = Field(default_factory=list)
    """pixels: chemokine channel(s) combined into one module signal; tumor: the epithelial channel."""
    smooth_um: PositiveFloat = 10.0
    """pixels/tumor: Gaussian sigma of the smoothing on the analysis grid, µm."""
    background_quantile: float = Field(0.05, ge=0, lt=1)
    """pixels/tumor: this quantile of the sample's smoothed tissue pixels is subtracted per channel as
    background (0 = off)."""
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    """Default for source 'pixels': ``halfmax`` when the zone's producer marker(s) are in ``phenotypes.markers``,
    else the reference quantile of the sham samples (chosen by the whole config: :class:`chemozone.config.Config`);
    pooled Otsu for source 'tumor'."""
    min_area_um2: float = Field(200.0, ge=0)
    fill_holes: bool = True
    producer_marker: str | None = None
    """producers: the marker whose ``_pos`` cells define the zone; pixels with threshold mode halfmax: the marker
    whose positive cells are the producers (default: the channel's own name)."""
    producer_cell_types: list[str] | None = None
    """producers: restrict to these cell types (e.g. [Tumor])."""
    radius_um: float = Field(20.0, ge=0)
    """producers: zone = tissue within this distance of a producer cell, µm."""
    min_producers: int = Field(1, ge=1)
    """producers: at least this many producer cells within ``radius_um`` of a pixel (a producer milieu as in
    Hoch et al. 2022: a lone producer makes no zone); 1 = within ``radius_um`` of any producer. With ``milieu:
    hull``: the smallest patch of linked producers that makes a milieu."""
    milieu: Literal["discs", "hull"] = "discs"
    """producers: ``discs`` = tissue with at least ``min_producers`` producers within ``radius_um``; ``hull`` = the
    milieus of Hoch et al. 2022 (imcRtools ``patchDetection``): producers closer than ``link_um`` form one patch,
    patches of at least ``min_producers`` cells keep their hull, widened by ``radius_um`` (the margin)."""
    link_um: float = Field(20.0, gt=0)
    """producers with ``milieu: hull``: two producers whose centres are closer than this are in one patch, µm
    (20 µm: touching cells or one cell apart)."""
    hull_ratio: float = Field(1.0, gt=0, le=1)
    """producers with ``milieu: hull``: 1 = each patch's convex hull; below 1 a concave hull (shapely's
    ``concave_hull`` ratio: smaller follows the producers more tightly)."""
    bands_um: list[float] = Field(default_factory=lambda: [25.0, 100.0])
    """tumor / tumor_cells: margin/peritumoral band edges outside the epithelium, µm."""
    tumor_column: str = "cell_type"
    """tumor_cells: the cells column that names tumor cells (``cell_type``, or an imported table's
    ``tissue_category`` / ``vendor_phenotype``)."""
    tumor_values: list[str] = Field(default_factory=list)
    """tumor_cells: values of ``tumor_column`` that are tumor cells (e.g. [Tumor]); the epithelium is estimated
    from their positions as the tissue is from all cells' (discs of ``cell_tables.region_radius_um``), closed by
    ``tumor_close_um``."""
    tumor_close_um: float | None = Field(None, ge=0)
    """tumor_cells: closing radius of the epithelium, µm (None = the disc radius: gaps of about one cell between
    tumor cells are epithelium, a stroma strip wider than two cells is not)."""
    region_class: str | None = None
    """regions: the annotation class (e.g. Tumor) whose outlines, in the sample's regions GeoJSON, are the zone."""

    @model_validator(mode="after")
    def _source_fields(self) -> ZoneConfig:
        if self.source == "tumor" and "threshold" not in self.model_fields_set:
            # epithelium is present in every sample (sham included): a reference quantile of the sham would
            # only keep its brightest 1 %, so tumor compartments default to a pooled Otsu threshold
            object.__setattr__(self, "threshold", ThresholdConfig(mode="pooled", method="otsu"))
        if self.source in ("pixels", "tumor") and not self.channels:
            raise ValueError(f"zone '{self.name}' with source '{self.source}' needs 'channels'")
        if self.source == "tumor_cells" and not self.tumor_values:
            raise ValueError(f"zone '{self.name}' with source 'tumor_cells' needs 'tumor_values' (e.g. [Tumor])")
        if self.threshold.mode == "halfmax" and self.source != "pixels":
            raise ValueError(f"zone '{self.name}': threshold mode 'halfmax' needs producer cells (source 'pixels')")
        if self.min_producers > 1 and self.source != "producers":
            raise ValueError(f"zone '{self.name}': min_producers goes with source 'producers'")
        # like min_producers: judged by value (not by the keys given), so a run's config record reads back
        fields = type(self).model_fields
        hull_keys = [k for k in ("milieu", "link_um", "hull_ratio") if getattr(self, k) != fields[k].default]
        if hull_keys and self.source != "producers":
            raise ValueError(f"zone '{self.name}': {', '.join(hull_keys)} go(es) with source 'producers'")
        if self.milieu != "hull" and {"link_um", "hull_ratio"} & set(hull_keys):
            raise ValueError(f"zone '{self.name}': link_um and hull_ratio go with milieu: hull")
        if self.source == "producers" and not self.producer_marker:
            raise ValueError(f"zone '{self.name}' with source 'producers' needs 'producer_marker'")
        if (self.source == "regions") != (self.region_class is not None):
            raise ValueError(f"zone '{self.name}': 'region_class' goes with (and only with) source 'regions'")
        if self.bands_um != sorted(self.bands_um) or any(b <= 0 for b in self.bands_um):
            raise ValueError(f"zone '{self.name}': bands_um must be increasing and > 0")
        return self


TUMOR_COMPARTMENTS = ("intraepithelial", "margin", "peritumoral", "distal")
"""Suffixes of the four masks a ``source: tumor`` zone produces (``{zone}_intraepithelial``, ...)."""


def zone_mask_names(zones: list[ZoneConfig]) -> list[str]:
    """Names of the masks :func:`chemozone.zones.build_zones` returns for these zones (tumor zones give four).

    Examples
    --------
    >>> zone_mask_names([ZoneConfig(name="CXCL8", channels=["CXCL8"]), ZoneConfig(name="T", source="tumor", channels=["panCK"])])
    ['CXCL8', 'T_intraepithelial', 'T_margin', 'T_peritumoral', 'T_distal']
    """
    out: list[str] = []
    for z in zones:
        if z.source in ("tumor", "tumor_cells"):
            out += [f"{z.name}_{p}" for p in TUMOR_COMPARTMENTS]
        else:
            out.append(z.name)
    return out


def halfmax_producer_markers(zone: ZoneConfig) -> dict[str, str]:
    """``{channel: producer marker}`` of a zone whose threshold mode is ``halfmax`` (empty for other modes): the
    zone's ``producer_marker`` for a one-channel zone, else each channel's own name.

    Examples
    --------
    >>> z = ZoneConfig(name="IFN", channels=["CXCL10", "CCL5"], threshold=ThresholdConfig(mode="halfmax"))
    >>> halfmax_producer_markers(z)
    {'CXCL10': 'CXCL10', 'CCL5': 'CCL5'}
    """
    if zone.threshold.mode != "halfmax":
        return {}
    if zone.producer_marker and len(zone.channels) == 1:
        return {zone.channels[0]: zone.producer_marker}
    return {ch: ch for ch in zone.channels}
