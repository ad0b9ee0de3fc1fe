"""Experiment configuration: one YAML file, validated by pydantic v2 models.

Sections mirror the stages: ``panel``, ``samples``, ``analysis_grid``, ``tissue``, ``segmentation``, ``quantification``,
``phenotypes``, ``zones``, ``spatial``, ``stats``, ``regions``, ``run``. Every key is documented in
``configs/example.yaml``. Unknown keys and wrong types are :class:`~chemozone.errors.ConfigError` whose
message names the YAML path, e.g. ``zones[1].smooth_um: must be > 0, got -3``.

Paths inside the config (``samples.sheet``, ``phenotypes.gates_file``) are relative to the config file.

Examples
--------
>>> cfg = config_from_dict({"panel": {"pixel_size_um": 0.5}})
>>> cfg.segmentation.nucleus_diameter_um
8.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ._config_base import _Section
from ._config_errors import format_validation_error, move_deprecated_keys
from ._config_regions import RegionsConfig, check_region_zones
from ._config_tables import CellTablesConfig
from ._config_zones import TUMOR_COMPARTMENTS, ThresholdConfig, ZoneConfig, halfmax_producer_markers, zone_mask_names
from .errors import ConfigError

__all__ = [
    "Config",
    "PanelConfig",
    "SamplesConfig",
    "AnalysisGridConfig",
    "TissueConfig",
    "CellposeConfig",
    "SegmentationConfig",
    "QuantificationConfig",
    "GateConfig",
    "MarkerConfig",
    "RuleConfig",
    "PhenotypesConfig",
    "ThresholdConfig",
    "ZoneConfig",
    "CognatePair",
    "NeighbourhoodConfig",
    "SpatialConfig",
    "CellTablesConfig",
    "StatsConfig",
    "RunConfig",
    "RegionsConfig",
    "load_config",
    "config_from_dict",
    "dump_config",
    "config_hash",
    "load_gates_file",
    "save_gates_file",
    "zone_mask_names",
    "TUMOR_COMPARTMENTS",
]


# --------------------------------------------------------------------------------------------- panel
class PanelConfig(_Section):
    """Channels of the images and the physical pixel size."""

    channels: list[str] | None = None
    """Channel names in file order, used only when the image file does not name its channels."""
    pixel_size_um: PositiveFloat | None = None
    """Pixel size in µm, used only when the image file does not store it."""
    nuclear_channel: str = "DAPI"
    """Channel used for nuclear segmentation."""
    aliases: dict[str, list[str]] = Field(default_factory=dict)
    """Other spellings of a channel name, e.g. ``{CD8: ["CD8a", "Opal 520"]}``."""


# ------------------------------------------------------------------------------------------- samples
class SamplesConfig(_Section):
    """How images become samples."""

    sheet: Path | None = None
    """Sample sheet (CSV): ``sample_id, image, patient, radiation, dose_gy`` + any columns. Relative to
    the config file; when unset, ``INPUT/samples.csv`` is used if present."""
    filename_pattern: str | None = None
    """Without a sheet: metadata from the file stem, e.g. ``{patient}_{radiation}_{dose_gy}Gy_{replicate}``."""
    extensions: list[str] = Field(
        default_factory=lambda: [".ome.tif", ".ome.tiff", ".tif", ".tiff", ".qptiff", ".ome.zarr", ".zarr"]
    )
    """File name endings that count as images when scanning a folder."""


# ------------------------------------------------------------------------------------- analysis grid
class AnalysisGridConfig(_Section):
    """The coarse grid of the tissue mask, the zone masks and every distance (:mod:`chemozone.grid`)."""

    pixel_size_um: PositiveFloat = 2.0
    """Target pixel size of the analysis grid, µm: the tissue mask, zone masks and distance transforms are
    computed on it (a whole number of image pixels; the image's own pixel size when that is coarser)."""


# -------------------------------------------------------------------------------------------- tissue
class TissueConfig(_Section):
    """Tissue (explant) mask, computed on the analysis grid."""

    channels: list[str] | None = None
    """Channels summed for the mask (each scaled by its own robust range); None = all channels."""
    smooth_um: PositiveFloat = 12.0
    """Gaussian sigma before thresholding, µm."""
    threshold: Literal["otsu", "triangle", "li"] | float = "otsu"
    """Automatic threshold method, or an absolute value on the combined signal."""
    glass_contrast: float = Field(3.0, gt=1)
    """The darker class of an automatic threshold is background (glass) only if the brighter class's median
    is at least this many times its median; otherwise the field is all tissue (dim and bright tissue) and
    only holes much darker than the dim tissue are excluded."""
    glass_fraction: float = Field(0.5, gt=0, le=1)
    """With glass, the cut lies this fraction of the way from the glass level to the automatic threshold
    (dim tissue such as stroma next to bright tumor stays tissue; 1 = the automatic threshold itself)."""
    counts: bool | None = None
    """Treat the tissue channels as ion counts (MIBI / IMC; Anscombe transform before combining): None =
    judged per channel from the pixels (integer values, at least a quarter of them zero)."""
    min_area_um2: PositiveFloat = 20000.0
    """Tissue pieces smaller than this are dropped, µm²."""
    fill_holes_um2: PositiveFloat = 2000.0
    """Holes smaller than this are filled; larger holes (tears, lumina) stay excluded, µm²."""


# -------------------------------------------------------------------------------------- segmentation
class CellposeConfig(_Section):
    """The cellpose adapter (``pip install chemozone[cellpose]``)."""

    model: str = "cpsam"
    """Built-in model name or path to a checkpoint."""
    gpu: bool = False
    diameter_um: PositiveFloat | None = None
    """Expected object diameter in µm (None = the model's own default)."""
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    batch_size: PositiveInt = 8
    channels: list[str] | None = None
    """Channels passed to the model (default: the nuclear channel)."""


class SegmentationConfig(_Section):
    """Nuclei and cells."""

    method: Literal["watershed", "cellpose"] = "watershed"
    nucleus_diameter_um: PositiveFloat | Literal["auto"] = 8.0
    """Typical nucleus diameter, µm: scales smoothing, seed spacing and the overlap of tiles. ``auto``:
    estimated per sample from the nuclear channel (scale-space blobs on a few crops;
    :func:`chemozone.segment.estimate_nucleus_diameter_um`) and recorded in ``run.json``."""
    small_nucleus_diameter_um: PositiveFloat | None = None
    """Diameter of the smallest nuclei to keep apart from a touching larger one, µm (watershed), e.g.
    lymphocytes (6-7 µm) crowding among tumor nuclei: the seed map's distance term then saturates at
    half of it, so a small nucleus gets its own seed. None = ``nucleus_diameter_um``."""
    min_nucleus_area_um2: PositiveFloat = 8.0
    max_nucleus_area_um2: PositiveFloat = 400.0
    threshold: Literal["otsu", "li", "triangle", "local"] = "otsu"
    """Foreground threshold of the (background-corrected) nuclear channel."""
    cell_method: Literal["expand", "membrane_watershed"] = "expand"
    expand_um: float = Field(3.0, ge=0)
    """Maximum growth of a nucleus into its cell body, µm."""
    membrane_channels: list[str] = Field(default_factory=list)
    """Channels whose sum guides the membrane watershed (cell_method = membrane_watershed)."""
    tile_size_px: PositiveInt = 2048
    """Images larger than this (either side) are segmented tile by tile."""
    tile_overlap_um: PositiveFloat = 40.0
    """Overlap between neighbouring tiles, µm (a few cell diameters)."""
    cellpose: CellposeConfig = Field(default_factory=CellposeConfig)

    @model_validator(mode="after")
    def _areas_ordered(self) -> SegmentationConfig:
        if self.min_nucleus_area_um2 >= self.max_nucleus_area_um2:
            raise ValueError(
                f"min_nucleus_area_um2 ({self.min_nucleus_area_um2}) must be smaller than "
                f"max_nucleus_area_um2 ({self.max_nucleus_area_um2})"
            )
        if (self.small_nucleus_diameter_um is not None and self.nucleus_diameter_um != "auto"
                and self.small_nucleus_diameter_um > self.nucleus_diameter_um):
            raise ValueError(
                f"small_nucleus_diameter_um ({self.small_nucleus_diameter_um}) must not exceed "
                f"nucleus_diameter_um ({self.nucleus_diameter_um})"
            )
        return self


# ------------------------------------------------------------------------------------ quantification
class QuantificationConfig(_Section):
    """Per-cell measurement."""

    channels: list[str] | None = None
    """Channels to measure (None = all)."""
    compartments: list[Literal["nucleus", "cytoplasm", "cell"]] = Field(
        default_factory=lambda: ["nucleus", "cytoplasm", "cell"]
    )
    statistics: list[Literal["mean", "total", "std", "median", "p90"]] = Field(default_factory=lambda: ["mean"])
    """``mean`` gives ``{marker}_{compartment}``; others give ``{marker}_{compartment}_{stat}``."""
    morphology: bool = False
    """Add eccentricity, solidity and axis lengths of each cell."""
    background: dict[str, float] = Field(default_factory=dict)
    """Constant per-channel background subtracted from every pixel before measuring (not clipped)."""


# ---------------------------------------------------------------------------------------- phenotypes
class GateConfig(_Section):
    """How a marker's positivity threshold is chosen (a cell is positive when its value > threshold)."""

    method: Literal["manual", "gmm", "otsu", "valley", "multiotsu", "pooled", "reference", "vendor",
                    "classifier"] = "pooled"
    """manual: ``value``; gmm/otsu/valley/multiotsu: per sample; pooled: one gate for the cohort;
    reference: ``quantile`` of the reference samples (``reference`` query) of the same ``group_by``; vendor: the
    positivity of an imported cell table (``{marker}_pos`` from HALO flags or inForm/QuPath phenotypes) as is;
    classifier: the marker's classifier in ``phenotypes.classifier_file`` (``{marker}_prob`` >= 0.5)."""
    value: float | None = None
    """Threshold in measured intensity units, i.e. before the transform (method = manual)."""
    pooled_method: Literal["gmm", "otsu", "valley", "multiotsu"] = "gmm"
    """Method of the pooled gate. The default (gmm, 5 components, ``gmm_split: modes``, ``gmm_threshold: valley``)
    has the best worst case of ``benchmarks/bench_gating.py`` (README: Gating defaults)."""
    max_components: int = Field(5, ge=2, le=8)
    """gmm: mixtures of 2 to this many components are fitted and the best (BIC) kept; the extra components
    absorb a negative population of several levels (offset, autofluorescence, spillover) and skewed tails."""
    gmm_split: Literal["modes", "separation"] = "modes"
    """gmm: which components are positive. modes: of the separated splits whose upper group is a mode of its
    own, the widest gap on the transformed scale (a second, tight negative level cannot capture the gate);
    separation: the adjacent pair with the largest Ashman's D (the rule before issue 14)."""
    gmm_threshold: Literal["valley", "crossing"] = "valley"
    """gmm: crossing = where the posteriors of the negative and positive groups cross (the rule before issue 14);
    valley (default) = the same, except that when an empty stretch of the histogram (no cell) separates the two
    groups the gate stays inside it (a few rare positives beyond an empty gap pull the crossing into the
    negatives' tail). The only placement that passes every row of benchmarks/bench_gating.py (README)."""
    fallback: Literal["valley", "otsu"] = "valley"
    """gmm only: threshold used when the values are not bimodal (recorded as a warning). valley: the
    deepest density valley between the two main modes, or mode + 3 SD of the lower half when unimodal."""
    reference: dict[str, Any] = Field(default_factory=lambda: {"dose_gy": 0})
    """Sample-sheet query that selects reference samples, e.g. ``{dose_gy: 0}`` (a list = any of)."""
    group_by: str | None = "patient"
    """Reference samples are taken from the same value of this column (None = whole cohort)."""
    quantile: float = Field(0.99, gt=0, lt=1)

    @model_validator(mode="after")
    def _manual_needs_value(self) -> GateConfig:
        if self.method == "manual" and self.value is None:
            raise ValueError("method 'manual' needs a 'value'")
        return self


class MarkerConfig(_Section):
    """One gated marker."""

    compartment: Literal["nucleus", "cytoplasm", "cell"] = "cell"
    transform: Literal["none", "arcsinh", "log1p"] = "arcsinh"
    cofactor: PositiveFloat | None = None
    """Scale of the transform, in intensity units (arcsinh(x / c), log1p(max(x, 0) / c)). None = derived
    from the data: the 5th percentile of the marker's positive values pooled over the gated cells (scale-free)."""
    gate: GateConfig = Field(default_factory=GateConfig)


class RuleConfig(_Section):
    """One cell-type rule: all of ``pos`` positive, none of ``neg``, at least one of ``any``."""

    cell_type: str
    pos: list[str] = Field(default_factory=list)
    neg: list[str] = Field(default_factory=list)
    any: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> RuleConfig:
        both = sorted(set(self.pos) & set(self.neg))
        if both:
            raise ValueError(f"rule '{self.cell_type}' requires {both} both positive and negative")
        if not (self.pos or self.neg or self.any):
            raise ValueError(f"rule '{self.cell_type}' has no markers (give pos, neg or any)")
        return self


class PhenotypesConfig(_Section):
    """Gates, rule table and receptor flags."""

    markers: dict[str, MarkerConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)
    receptors: list[str] = Field(default_factory=list)
    """Markers appended as flags to ``phenotype`` (``NK CXCR2+``)."""
    receptor_cell_types: list[str] | None = None
    """Cell types that get receptor flags (None = every type except tumor/stroma/Other)."""
    default_cell_type: str = "Other"
    gates_file: Path | None = None
    """YAML of reviewed gates ``{marker: {sample_id or '*': value}}`` (measured intensity units) that
    overrides computed gates; write one with ``chemozone.phenotype.gates_to_file``."""
    classifier_file: Path | None = None
    """Cell classifiers trained in napari (``chemozone.classify.save_classifier``; default place
    ``<run>/classifier/classifier.czclf``), replayed on every sample: adds ``{marker}_prob`` / ``{marker}_pos``
    per marker classifier (used by markers whose ``gate.method`` is ``classifier``) and ``{class}_prob`` /
    ``classifier_{name}`` per cell-type classifier. Refused when the panel lacks a channel it was trained on."""

    @model_validator(mode="after")
    def _classifier_markers(self) -> PhenotypesConfig:
        uses = [m for m, mc in self.markers.items() if mc.gate.method == "classifier"]
        if uses and self.classifier_file is None:
            raise ValueError(f"markers {uses} use gate method 'classifier' but phenotypes.classifier_file is not set; "
                             "set it to a classifier file saved from napari (chemozone.classify.save_classifier)")
        return self


# --------------------------------------------------------------------------------------------- zones
# ------------------------------------------------------------------------------------------- spatial
class CognatePair(_Section):
    """A zone and the receptor of its chemokine, compared within lineages."""

    zone: str
    receptor: str
    cell_types: list[str] = Field(default_factory=list)
    """Lineages in which receptor+ and receptor- cells are compared (empty = all immune types with flags)."""


class NeighbourhoodConfig(_Section):
    radius_um: PositiveFloat = 30.0
    n_neighbors: PositiveInt | None = None
    """Use k nearest neighbours instead of a radius when set."""
    n_permutations: PositiveInt = 200
    seed: int = 0


MAX_OVERLAP_ZONES = 8
"""At most this many zones are combined in ``zone_overlap.parquet`` (2**8 regions)."""


class SpatialConfig(_Section):
    """Per-cell zone annotation and per-sample infiltration metrics."""

    distance_bands_um: list[float] = Field(default_factory=lambda: [0.0, 25.0, 50.0, 100.0, 200.0])
    """Edges of the distance bands outside each zone, µm."""
    edge_exclusion_um: float = Field(0.0, ge=0)
    """Exclude cells and tissue within this distance of the explant edge (0 = off)."""
    cognate_pairs: list[CognatePair] = Field(default_factory=list)
    overlap_zones: list[str] | None = Field(None, max_length=MAX_OVERLAP_ZONES)
    """Zones whose in/out combinations are counted in ``zone_overlap.parquet`` (default: the cognate pairs'
    zones; at most 8). Lets a receptor− control be adjusted for co-localised zones (``stats.dose_rate_test``)."""
    populations: list[Literal["cell_type", "phenotype"]] = Field(default_factory=lambda: ["cell_type", "phenotype"])
    calls: Literal["hard", "soft"] = "hard"
    """Receptor status in ``cognate.parquet``: ``hard`` counts ``{receptor}_pos`` cells; ``soft`` sums a cell
    classifier's ``{receptor}_prob`` (expected counts; the run stops if the column is missing)."""
    neighbourhood: NeighbourhoodConfig = Field(default_factory=NeighbourhoodConfig)

    @field_validator("distance_bands_um")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if len(v) < 2 or any(b <= a for a, b in zip(v, v[1:])) or v[0] < 0:
            raise ValueError(f"must be at least two increasing values >= 0, got {v}")
        return v


# --------------------------------------------------------------------------------------- cell tables
# --------------------------------------------------------------------------------------------- stats
class StatsConfig(_Section):
    effectiveness: dict[str, PositiveFloat] = Field(
        default_factory=lambda: {"photon": 1.0, "proton": 1.1, "carbon": 2.5}
    )
    """Relative effectiveness of each radiation type (effective dose = factor x physical dose)."""
    reference_radiation: str = "photon"
    n_bootstrap: PositiveInt = 200
    seed: int = 0
    ci_method: Literal["student-t", "bca", "bca-expanded", "percentile"] = "student-t"
    """Bootstrap interval of dose-response parameters in the report (student-t: estimate ± t·SD of the patient
    bootstrap; its coverage on simulated cohorts of six patients is in README, "Statistics: intervals ...")."""


# ----------------------------------------------------------------------------------------------- run
class RunConfig(_Section):
    workers: PositiveInt = 1
    threads_per_worker: PositiveInt = 1
    memory_limit: str = "4GB"
    """Memory limit per local worker (dask syntax)."""
    scheduler: str | None = None
    """Address of an existing Dask scheduler (e.g. tcp://host:8786); None starts a local cluster."""
    on_error: Literal["raise", "skip"] = "raise"
    seed: int = 0
    write_qc: bool = True
    qc_channels: list[str] | None = Field(None, min_length=1, max_length=4)
    """Channels of the QC composite, in colour order blue, green, red, magenta (at most 4). None = the
    nuclear channel plus a tumour, a leukocyte and a chemokine channel chosen from the config."""

    @field_validator("qc_channels")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(set(v)) != len(v) or any(not c.strip() for c in v)):
            raise ValueError(f"must be distinct, non-empty channel names, got {v}")
        return v


# ------------------------------------------------------------------------------------------ top level
def _default_pixel_threshold(zone: ZoneConfig, markers: dict[str, Any]) -> ZoneConfig:
    """A pixel zone without a ``threshold`` key gets the recommended ``halfmax`` mode when its producer marker(s)
    are gated (in ``phenotypes.markers``), else keeps the ``reference`` mode (q 0.99 of the same patient's sham).

    ``halfmax`` was the most accurate mode on both synthetic generators (README, "How good are the zones"), and it
    needs producer cells; the mode used is written to the run's config record and ``zone_thresholds.parquet``.
    Returns ``zone`` itself or a copy (a zone object shared with another config is never changed).
    """
    if zone.source != "pixels" or "threshold" in zone.model_fields_set:
        return zone
    halfmax = zone.model_copy(update={"threshold": ThresholdConfig(mode="halfmax")})
    return halfmax if set(halfmax_producer_markers(halfmax).values()) <= set(markers) else zone


def _check_absolute_offsets(zones: list[ZoneConfig], markers: dict[str, Any]) -> None:
    """Absolute thresholds with background offsets need tumor cells: a ``source: tumor`` zone whose channel is a
    marker in ``phenotypes.markers`` (channel names matched as images' are)."""
    from .io._channels import normalize_channel_name

    gated = {normalize_channel_name(m) for m in markers}
    tumor = [ch for z in zones if z.source == "tumor" for ch in z.channels]
    for i, z in enumerate(zones):
        if z.threshold.offsets is not None and not any(normalize_channel_name(ch) in gated for ch in tumor):
            raise ValueError(f"zones[{i}] '{z.name}': threshold tumor_offset/stroma_offset follow the tumor fraction, "
                             f"which needs a 'source: tumor' zone whose channel is in phenotypes.markers (tumor "
                             f"zone channels: {tumor or 'none'}); add them or remove the offsets")


class Config(_Section):
    """A whole experiment."""

    panel: PanelConfig = Field(default_factory=PanelConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    analysis_grid: AnalysisGridConfig = Field(default_factory=AnalysisGridConfig)
    tissue: TissueConfig = Field(default_factory=TissueConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    quantification: QuantificationConfig = Field(default_factory=QuantificationConfig)
    phenotypes: PhenotypesConfig = Field(default_factory=PhenotypesConfig)
    zones: list[ZoneConfig] = Field(default_factory=list)
    spatial: SpatialConfig = Field(default_factory=SpatialConfig)
    cell_tables: CellTablesConfig = Field(default_factory=CellTablesConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    regions: RegionsConfig = Field(default_factory=RegionsConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        names = [z.name for z in self.zones]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"zone names must be unique, repeated: {dupes}")
        check_region_zones(self.zones, self.regions)
        object.__setattr__(self, "zones", [_default_pixel_threshold(z, self.phenotypes.markers) for z in self.zones])
        for i, z in enumerate(self.zones):
            missing = sorted(set(halfmax_producer_markers(z).values()) - set(self.phenotypes.markers))
            if missing:
                raise ValueError(f"zones[{i}] '{z.name}': threshold mode 'halfmax' gates the producer cells, but "
                                 f"{missing} is not in phenotypes.markers; add a gate for it (e.g. method: reference) "
                                 "or set the zone's producer_marker")
        _check_absolute_offsets(self.zones, self.phenotypes.markers)
        for i, pair in enumerate(self.spatial.cognate_pairs):
            if pair.zone not in names:
                raise ValueError(
                    f"spatial.cognate_pairs[{i}].zone '{pair.zone}' is not a configured zone (zones: {names})"
                )
        if self.spatial.overlap_zones:
            masks = zone_mask_names(self.zones)
            for i, name in enumerate(self.spatial.overlap_zones):
                if name not in masks:
                    raise ValueError(f"spatial.overlap_zones[{i}] '{name}' is not a zone mask (masks: {masks})")
        return self


# --------------------------------------------------------------------------------------------- I/O
def config_from_dict(data: dict[str, Any] | None, *, source: str = "config", base_dir: Path | None = None) -> Config:
    """Validate a mapping into a :class:`Config`.

    Parameters
    ----------
    data : dict or None
        The parsed YAML (None = all defaults).
    source : str
        Name used in error messages (usually the file path).
    base_dir : Path, optional
        Directory that relative paths in the config are resolved against.

    Raises
    ------
    ConfigError
        One line naming the YAML path of the first problem, e.g. ``zones[1].smooth_um: must be > 0, got -3``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = move_deprecated_keys(data, source)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    if base_dir is not None:
        base = Path(base_dir)
        if cfg.samples.sheet is not None and not cfg.samples.sheet.is_absolute():
            cfg.samples.sheet = (base / cfg.samples.sheet).resolve()
        if cfg.phenotypes.gates_file is not None and not cfg.phenotypes.gates_file.is_absolute():
            cfg.phenotypes.gates_file = (base / cfg.phenotypes.gates_file).resolve()
    return cfg


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML config file (None = all defaults).

    Raises
    ------
    ConfigError
        If the file is missing, is not valid YAML, or fails validation.
    """
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file (see configs/example.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the syntax") from None
    return config_from_dict(data, source=str(path), base_dir=path.parent)


def dump_config(cfg: Config, path: str | Path | None = None) -> str:
    """Serialise a config to YAML (all keys, defaults included); write it atomically when ``path`` is given."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    if path is not None:
        from .layout import atomic_write_text

        atomic_write_text(Path(path), text)
    return text


def config_hash(cfg: Config) -> str:
    """A stable hash of the resolved config (sha256 of its canonical JSON)."""
    import hashlib

    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()


def load_gates_file(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a reviewed-gates YAML: ``{marker: {sample_id or '*': threshold}}``.

    A plain number for a marker means the same threshold for every sample (``'*'``).

    Raises
    ------
    ConfigError
        If the file is missing or malformed (names the marker).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: gates file not found; write one from napari's gate review or remove phenotypes.gates_file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{path}: gates file is not valid YAML") from None
    gates = data.get("gates", data) if isinstance(data, dict) else None
    if not isinstance(gates, dict):
        raise ConfigError(f"{path}: gates file must map marker -> {{sample_id: threshold}}")
    out: dict[str, dict[str, float]] = {}
    for marker, val in gates.items():
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            out[str(marker)] = {"*": float(val)}
        elif isinstance(val, dict):
            try:
                out[str(marker)] = {str(k): float(v) for k, v in val.items()}
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: gates.{marker}: thresholds must be numbers, got {val!r}") from None
        else:
            raise ConfigError(f"{path}: gates.{marker}: expected a number or {{sample_id: number}}, got {val!r}")
    return out


def save_gates_file(gates: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Write reviewed gates (``{marker: {sample_id or '*': threshold}}``) atomically as YAML."""
    from .layout import atomic_write_text

    clean = {str(m): {str(s): float(v) for s, v in per.items()} for m, per in gates.items()}
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump({"gates": clean}, sort_keys=True))
    return path
