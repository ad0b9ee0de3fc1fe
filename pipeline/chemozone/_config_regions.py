"""The ``regions`` config section (region annotations, :mod:`chemozone.regions`); part of :mod:`chemozone.config`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ._config_base import _Section

__all__ = ["RegionsConfig", "check_region_zones", "DEFAULT_EXCLUDE_CLASSES", "DEFAULT_ANALYSIS_CLASSES"]

DEFAULT_EXCLUDE_CLASSES = ("Necrosis", "Fold", "Tissue fold", "Damaged rim", "Damaged", "Artefact", "Artifact",
                           "Ignore*")
"""Annotation classes removed from cells and areas by default (``Ignore*`` and ``Necrosis`` are QuPath's own)."""
DEFAULT_ANALYSIS_CLASSES = ("Region*", "Analysis", "Analysis region", "ROI")
"""Annotation classes that bound the analysed area by default (``Region*`` is QuPath's own)."""


class RegionsConfig(_Section):
    """Region annotations per sample (QuPath GeoJSON in the sample sheet's ``regions`` column)."""

    exclude_classes: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE_CLASSES))
    """Annotations of these classes are removed from the cells and from every area (tissue, zones)."""
    analysis_classes: list[str] = Field(default_factory=lambda: list(DEFAULT_ANALYSIS_CLASSES))
    """Annotations of these classes bound the analysis: cells and areas outside their union are removed (no such
    annotation = the whole image)."""
    unclassified: Literal["analysis", "ignore"] = "analysis"
    """An annotation without a class: part of the analysis region (QuPath's usual way to outline what to analyse),
    or ignored."""

    @model_validator(mode="after")
    def _disjoint(self) -> RegionsConfig:
        for key in ("exclude_classes", "analysis_classes"):
            if any(not str(c).strip() for c in getattr(self, key)):
                raise ValueError(f"{key}: class names must not be empty")
        both = sorted({c.lower() for c in self.exclude_classes} & {c.lower() for c in self.analysis_classes})
        if both:
            raise ValueError(f"classes {both} are both excluded and analysis classes; keep each in one list")
        return self


def check_region_zones(zones: list, regions: RegionsConfig) -> None:
    """A ``source: regions`` zone whose class is excluded would always be empty: refuse it (config validation)."""
    excluded = {c.lower() for c in regions.exclude_classes}
    for i, z in enumerate(zones):
        if z.region_class is not None and z.region_class.lower() in excluded:
            raise ValueError(f"zones[{i}].region_class '{z.region_class}' is in regions.exclude_classes (its area "
                             "is removed); pick another class or remove it from regions.exclude_classes")
