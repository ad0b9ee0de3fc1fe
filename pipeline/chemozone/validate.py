"""Check a config and its inputs before any work.

:func:`validate_inputs` collects every problem, none is fatal there (``chemozone validate`` prints them all);
:func:`runnable_inputs` is ``chemozone run``'s gate: it refuses to start on any problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .errors import ChemozoneError, RunError

__all__ = ["ValidationReport", "validate_inputs", "runnable_inputs", "configured_channels", "check_sample_masks",
           "check_sample_regions"]


@dataclass
class ValidationReport:
    """What validation found: one printable line per sample, and every problem (one line each)."""

    samples: object = None  # pandas.DataFrame of samples (None if the sheet itself is broken)
    rows: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    images: dict[str, dict] = field(default_factory=dict)
    sample_problems: dict[str, str] = field(default_factory=dict)
    """Problems that concern one sample's image only (a run with ``--on-error skip`` skips that sample)."""
    notes: list[str] = field(default_factory=list)
    """Things to know that do not stop a run (e.g. a pixel size taken from ``panel.pixel_size_um``)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def configured_channels(cfg: Config) -> list[str]:
    """Every channel the config names (nuclear, tissue, quantified, gated, zones, membranes)."""
    names: list[str] = [cfg.panel.nuclear_channel]
    names += cfg.tissue.channels or []
    names += cfg.quantification.channels or []
    names += list(cfg.phenotypes.markers)
    names += cfg.segmentation.membrane_channels
    for z in cfg.zones:
        names += z.channels
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def validate_inputs(input_path: str | Path, cfg: Config) -> ValidationReport:
    """Validate the sample sheet and every image's channels and pixel size against ``cfg``.

    Never raises for a problem with one image: it is added to ``problems`` (naming the file) and the
    other images are still checked. A broken sample sheet is a single problem. An image without a plausible
    pixel size (none stored, or outside 0.05–5 µm/px such as a 72 dpi tag) is a problem unless
    ``panel.pixel_size_um`` is set; when it is used, or when it disagrees with the file, ``notes`` says so.
    """
    from .io import read_image_info, resolve_channels
    from .plausibility import format_warning, pixel_size_checks
    from .samples import load_samples

    rep = ValidationReport()
    try:
        samples = load_samples(input_path, cfg)
    except ChemozoneError as exc:
        rep.problems.append(str(exc))
        return rep
    rep.samples = samples
    rep.problems += _reference_problems(cfg, samples)
    wanted = configured_channels(cfg)
    for row in samples.itertuples(index=False):
        try:
            info = read_image_info(row.image, channels=cfg.panel.channels, pixel_size_um=cfg.panel.pixel_size_um)
            resolve_channels(info["channels"], wanted, aliases=cfg.panel.aliases, source=row.image)
        except ChemozoneError as exc:
            rep.problems.append(f"sample '{row.sample_id}': {exc}")
            rep.sample_problems[row.sample_id] = str(exc)
            rep.rows.append(f"{row.sample_id}: {row.image}: FAILED")
            continue
        for check in (_phenotype_problem, _qc_channel_problem):
            problem = check(cfg, info["channels"])
            if problem and not any(problem in p for p in rep.problems):  # a config problem: report it once
                rep.problems.append(f"sample '{row.sample_id}': {problem}")
        try:
            masks = check_sample_masks(row._asdict(), info["shape"][1:], cfg)
            masks += check_sample_regions(row._asdict(), info["shape"][1:], cfg)
        except ChemozoneError as exc:
            rep.problems.append(f"sample '{row.sample_id}': {exc}")
            rep.sample_problems[row.sample_id] = str(exc)
            rep.rows.append(f"{row.sample_id}: {row.image}: FAILED")
            continue
        rep.images[row.sample_id] = info
        c, y, x = info["shape"]
        px_from = " (panel.pixel_size_um)" if info["pixel_size_source"] == "config" else ""
        rep.rows.append(
            f"{row.sample_id}: {Path(row.image).name} [{info['format']}] {c}x{y}x{x} {info['dtype']}, "
            f"{info['pixel_size_um']:.4g} µm/px{px_from}, channels {info['channels']}, patient={row.patient}, "
            f"radiation={row.radiation}, dose_gy={row.dose_gy}{masks}"
        )
        rep.notes += [format_warning(w) for w in pixel_size_checks(
            row.sample_id, pixel_size_um=info["pixel_size_um"], source=info["pixel_size_source"],
            note=info["pixel_size_note"])]
    return rep


def _reference_problems(cfg: Config, samples) -> list[str]:
    """The reference queries that would stop the cohort step after every image was segmented: a ``reference`` gate
    or a ``reference``-mode zone threshold that no sample of the sheet matches, or whose ``group_by`` column the
    sheet lacks (``background`` and ``halfmax`` zones fall back with a warning instead)."""
    from .samples import select_reference

    checks = [(f"phenotypes.markers.{m}.gate", mc.gate.reference, mc.gate.group_by)
              for m, mc in cfg.phenotypes.markers.items() if mc.gate.method == "reference"]
    checks += [(f"zones[{i}].threshold", z.threshold.reference, z.threshold.group_by) for i, z in enumerate(cfg.zones)
               if z.source in ("pixels", "tumor") and z.threshold.mode == "reference"]
    out: list[str] = []
    for where, query, group_by in checks:
        try:
            select_reference(samples, query, group_by, where=where)
        except ChemozoneError as exc:
            out.append(str(exc))
    return out


def _phenotype_problem(cfg: Config, channels: list[str]) -> str | None:
    """The phenotype config's problem with an image's channels (markers and rules), or None."""
    from .options import phenotype_options
    from .phenotype import validate_phenotypes

    try:
        validate_phenotypes(channels, aliases=cfg.panel.aliases, **phenotype_options(cfg))
    except ChemozoneError as exc:
        return str(exc)
    return None


def _qc_channel_problem(cfg: Config, channels: list[str]) -> str | None:
    """A ``run.qc_channels`` name the image lacks (names the key, the channel and the image's channels), or None.

    Checked only when the QC picture is written (``run.write_qc``), as step B would otherwise stop on it.
    """
    if not (cfg.run.write_qc and cfg.run.qc_channels):
        return None
    from .options import qc_options
    from .qc import choose_qc_channels

    try:
        choose_qc_channels(channels, **qc_options(cfg))
    except ChemozoneError as exc:
        return str(exc)
    return None


def check_sample_masks(row: dict, shape_yx, cfg: Config) -> str:
    """Check a sample's precomputed masks (``nuclei_mask`` / ``cells_mask``) without reading their pixels.

    Returns a short description for ``chemozone validate`` (empty when the row names no mask).

    Raises
    ------
    MaskError
        A mask that is missing, unreadable, of a float/boolean type, or of another shape than the image; or a
        cells-only mask while ``phenotypes.markers`` gates a nucleus or cytoplasm compartment.
    """
    from .errors import MaskError
    from .io import mask_header, sample_mask_specs

    specs = sample_mask_specs(row)
    heads = {col: mask_header(spec, column=col, shape_yx=shape_yx) for col, spec in specs.items()}
    if heads and "nuclei_mask" not in heads:
        inner = [m for m, mc in cfg.phenotypes.markers.items() if mc.compartment in ("nucleus", "cytoplasm")]
        if inner:
            raise MaskError(f"{heads['cells_mask']['path']} (sample-sheet column 'cells_mask'): a cells mask without "
                            f"a nuclei_mask has no nucleus compartment, but phenotypes.markers.{inner[0]}.compartment "
                            f"is '{cfg.phenotypes.markers[inner[0]].compartment}'; add a nuclei_mask column or gate "
                            "on 'cell'")
    return "".join(f", {col}={Path(h['path']).name} ({h['source']})" for col, h in heads.items())


def check_sample_regions(row: dict, shape_yx, cfg: Config) -> str:
    """Check a sample's region annotations (``regions`` column) against its image and the ``source: regions``
    zones of the config. Returns a short description for ``chemozone validate`` (empty without a regions file,
    unless a regions zone needs one).

    Raises
    ------
    RegionError
        As :func:`chemozone.regions.load_regions`; a regions zone for a sample without a regions file, or whose
        class the file lacks.
    """
    from .options import region_options
    from .regions import load_sample_regions, region_zone_geometry

    regs = load_sample_regions(row, shape_yx=shape_yx, **region_options(cfg))
    for z in (z for z in cfg.zones if z.source == "regions"):  # fails here, before any work, not in step B
        region_zone_geometry(regs, z.region_class, zone=z.name)
    if regs is None:
        return ""
    counts = ", ".join(f"{c or 'unclassified'} {n}" for c, n in sorted(regs.counts.items()))
    return f", regions={Path(regs.source).name} ({counts or 'no area annotations'})"


def runnable_inputs(input_path: str | Path, cfg: Config, *, skip_unreadable: bool = False
                    ) -> tuple[ValidationReport, dict[str, str]]:
    """Validate the inputs of a run and refuse it on any problem (``chemozone run`` before any work).

    Parameters
    ----------
    input_path : path
        Folder of images (+ optional samples.csv), a sample sheet, or one image.
    cfg : Config
    skip_unreadable : bool
        True under ``--on-error skip``: a sample whose image cannot be read does not refuse the run.

    Returns
    -------
    (ValidationReport, dict)
        The report, and ``{sample_id: problem}`` of the unreadable samples to record as failed (empty
        unless ``skip_unreadable``).

    Raises
    ------
    RunError
        Any other problem (config, sample sheet, channels), or no sample can be read at all.
    """
    report = validate_inputs(input_path, cfg)
    # with --on-error skip, a sample whose image cannot be read is recorded as failed and the others run;
    # any other problem (config, sample sheet, channels) refuses the run
    skippable = report.sample_problems if skip_unreadable else {}
    blocking = [p for p in report.problems if not any(p == f"sample '{sid}': {m}" for sid, m in skippable.items())]
    if blocking:
        more = f" (and {len(blocking) - 1} more; run 'chemozone validate')" if len(blocking) > 1 else ""
        raise RunError(f"refusing to start: {blocking[0]}{more}")
    if report.samples is None or len(report.samples) == len(skippable):
        raise RunError(f"refusing to start: no sample can be read ({next(iter(skippable.values()), '')})")
    return report, skippable
