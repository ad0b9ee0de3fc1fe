"""Config sections → the stages' keyword options: the one place where this translation happens.

Stage functions take arrays and tables plus plain keyword options (``tissue_mask(image, pixel_size_um=...,
smooth_um=...)``); they never see a pydantic section. The batch runner (:mod:`chemozone.run`), the input
check (:mod:`chemozone.validate`), the napari plugin and the benchmarks build those keywords here, so a
config key reaches its stage by exactly one path.

Examples
--------
>>> from chemozone.config import config_from_dict
>>> cfg = config_from_dict({"analysis_grid": {"pixel_size_um": 4}, "tissue": {"smooth_um": 8}})
>>> opts = tissue_options(cfg)
>>> opts["grid_um"], opts["smooth_um"]
(4.0, 8.0)
>>> segmentation_options(cfg)["nucleus_diameter_um"]
8.0
>>> qc_options(cfg)["leukocyte_markers"]
[]
"""

from __future__ import annotations

from typing import Any

from .config import Config, ZoneConfig

__all__ = [
    "tissue_options",
    "segmentation_options",
    "precomputed_mask_options",
    "region_options",
    "gate_options",
    "phenotype_options",
    "classifier_options",
    "zone_signal_options",
    "infiltration_options",
    "cognate_options",
    "overlap_options",
    "qc_options",
    "table_read_options",
    "region_options",
]


def tissue_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.tissue.tissue_mask` (the analysis grid and the ``tissue`` section)."""
    t = cfg.tissue
    return {"grid_um": cfg.analysis_grid.pixel_size_um, "smooth_um": t.smooth_um, "threshold": t.threshold,
            "glass_contrast": t.glass_contrast, "glass_fraction": t.glass_fraction, "min_area_um2": t.min_area_um2,
            "fill_holes_um2": t.fill_holes_um2, "counts": t.counts}


def segmentation_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.segment.segment_image` and :func:`chemozone.segment.segmentation_provenance`
    (the ``segmentation`` section; cellpose's fields with a ``cellpose_`` prefix)."""
    seg = cfg.segmentation
    cp = seg.cellpose
    # nucleus_diameter_um may be "auto": the runner estimates it per sample
    # (chemozone.segment.estimate_nucleus_diameter_um) and passes the number to segment_image
    return {
        "method": seg.method,
        "nucleus_diameter_um": seg.nucleus_diameter_um,
        "small_nucleus_diameter_um": seg.small_nucleus_diameter_um,
        "min_nucleus_area_um2": seg.min_nucleus_area_um2,
        "max_nucleus_area_um2": seg.max_nucleus_area_um2,
        "threshold": seg.threshold,
        "cell_method": seg.cell_method,
        "expand_um": seg.expand_um,
        "membrane_channels": list(seg.membrane_channels),
        "tile_size_px": seg.tile_size_px,
        "tile_overlap_um": seg.tile_overlap_um,
        "cellpose_model": cp.model,
        "cellpose_gpu": cp.gpu,
        "cellpose_diameter_um": cp.diameter_um,
        "cellpose_flow_threshold": cp.flow_threshold,
        "cellpose_cellprob_threshold": cp.cellprob_threshold,
        "cellpose_batch_size": cp.batch_size,
        "cellpose_channels": list(cp.channels) if cp.channels else None,
    }


def precomputed_mask_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.segment.load_precomputed_masks` (how cells grow from a nuclei-only mask:
    the ``segmentation`` section's cell options, and the panel's aliases for the membrane channels)."""
    seg = cfg.segmentation
    return {"expand_um": seg.expand_um, "cell_method": seg.cell_method,
            "membrane_channels": list(seg.membrane_channels), "aliases": cfg.panel.aliases}


def region_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.regions.load_regions` (the ``regions`` section: which annotation classes
    exclude, which bound the analysis, what an unclassified annotation is)."""
    r = cfg.regions
    return {"exclude_classes": list(r.exclude_classes), "analysis_classes": list(r.analysis_classes),
            "unclassified": r.unclassified}


def gate_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.phenotype.compute_gates` (markers, reviewed gates file, seed)."""
    return {"markers": cfg.phenotypes.markers, "gates_file": cfg.phenotypes.gates_file, "seed": cfg.run.seed}


def phenotype_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.phenotype.phenotype_cells` and :func:`chemozone.phenotype.validate_phenotypes`."""
    p = cfg.phenotypes
    return {"markers": p.markers, "rules": p.rules, "receptors": p.receptors,
            "receptor_cell_types": p.receptor_cell_types, "default_cell_type": p.default_cell_type}


def classifier_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.classify.check_classifier_file` (the classifier file and the markers gated
    by it); ``classifier_file`` is None when no classifier is configured."""
    p = cfg.phenotypes
    return {"classifier_file": p.classifier_file,
            "classifier_markers": [m for m, mc in p.markers.items() if mc.gate.method == "classifier"]}


def zone_signal_options(zone: ZoneConfig) -> dict[str, Any]:
    """Keywords of :func:`chemozone.zones.zone_signal` for one configured zone."""
    return {"smooth_um": zone.smooth_um, "background_quantile": zone.background_quantile}


def infiltration_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.spatial.infiltration_metrics` (the ``spatial`` section)."""
    sp = cfg.spatial
    return {"distance_bands_um": sp.distance_bands_um, "edge_exclusion_um": sp.edge_exclusion_um,
            "populations": sp.populations}


def cognate_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.spatial.cognate_specificity`."""
    return {"cognate_pairs": cfg.spatial.cognate_pairs, "edge_exclusion_um": cfg.spatial.edge_exclusion_um,
            "calls": cfg.spatial.calls}


def overlap_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.spatial.zone_overlap_metrics`: the overlap zones (``spatial.overlap_zones``,
    default the cognate pairs' zones), rim exclusion and populations."""
    from .spatial import overlap_zone_names

    sp = cfg.spatial
    return {"zones": overlap_zone_names(overlap_zones=sp.overlap_zones, cognate_pairs=sp.cognate_pairs),
            "edge_exclusion_um": sp.edge_exclusion_um, "populations": sp.populations}


def table_read_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.io.read_cell_table` (the ``cell_tables`` section, ``panel.pixel_size_um`` for
    tables in pixels, ``panel.aliases`` for marker names)."""
    ct = cfg.cell_tables
    return {"format": ct.format, "unit": ct.unit, "sample_column": ct.sample_column,
            "pixel_size_um": cfg.panel.pixel_size_um, "aliases": cfg.panel.aliases or None}


def cell_region_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.cell_regions.cell_region` and :func:`chemozone.cell_regions.tumor_cell_zones`
    (tissue and epithelium from cell positions: ``cell_tables.region_*``, ``tissue.fill_holes_um2``)."""
    ct = cfg.cell_tables
    return {"radius_um": ct.region_radius_um, "close_um": ct.region_close_um, "fill_holes_um2": cfg.tissue.fill_holes_um2}


_TUMOUR_TYPES = ("tumor", "tumour", "epithel", "carcinoma", "cancer")
_IMMUNE_TYPES = ("immune", "leukocyte")
_LYMPHO_MYELOID = ("lymph", "macroph", "monocyt", "myeloid", "dendrit", "neutroph", "plasma", "treg")
_IMMUNE_TOKENS = {"t", "b", "nk", "tc", "th"}


def _is_immune_type(cell_type: str) -> bool:
    """T/B/NK cells, lymphocytes, myeloid cells (by name: ``CD8 T``, ``B cell``, ``Macrophage``, ...)."""
    low = cell_type.lower()
    return any(k in low for k in _LYMPHO_MYELOID) or bool(_IMMUNE_TOKENS & set(low.replace("_", " ").split()))


def qc_options(cfg: Config) -> dict[str, Any]:
    """Keywords of :func:`chemozone.qc.choose_qc_channels` and :func:`chemozone.qc.write_qc`: the nuclear
    channel, candidate lineage channels from the config, and ``run.qc_channels``.

    Tumour candidates: the channels of ``source: tumor`` zones, then the ``pos`` markers of rules whose
    cell type starts with Tumor/Tumour/Epithel/Carcinoma/Cancer. Leukocyte candidates (after CD45/PTPRC,
    which :func:`chemozone.qc.choose_qc_channels` tries first): the ``pos`` markers of rules whose cell type
    mentions immune or leukocyte, then those of T/B/NK/myeloid cell types (``CD8 T``, ``B cell``,
    ``Macrophage``). Chemokine candidates: the channels of ``source: pixels`` zones, in config order.
    """
    rules = cfg.phenotypes.rules
    tumour = [c for z in cfg.zones if z.source == "tumor" for c in z.channels]
    tumour += [m for r in rules if r.cell_type.lower().startswith(_TUMOUR_TYPES) for m in r.pos]
    leuko = [m for r in rules if any(k in r.cell_type.lower() for k in _IMMUNE_TYPES) for m in r.pos]
    leuko += [m for r in rules if _is_immune_type(r.cell_type) for m in r.pos]
    chemokine = [c for z in cfg.zones if z.source == "pixels" for c in z.channels]
    return {"nuclear_channel": cfg.panel.nuclear_channel, "tumour_markers": _unique(tumour),
            "leukocyte_markers": _unique(leuko), "chemokine_markers": _unique(chemokine),
            "override": list(cfg.run.qc_channels) if cfg.run.qc_channels else None,
            "aliases": cfg.panel.aliases or None}


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
