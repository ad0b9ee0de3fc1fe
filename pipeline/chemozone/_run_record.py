"""``run.json`` as a run goes: the ledger of sample statuses and plausibility warnings (used by :mod:`chemozone.run`).

The warnings come from the pure checks of :mod:`chemozone.plausibility`; this module feeds them what a run
knows at each point (the validated image info, step A's record and tissue mask, the cohort step's gates and
zone thresholds, step B's positive counts) and records them: ``run.json["warnings"]`` holds every record,
``run.json["samples"][id]["warnings"]`` the sample's own (both lists, empty when nothing is implausible).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import RunError
from .layout import RunLayout, atomic_write_json, file_fingerprint
from .plausibility import (
    format_warning,
    gate_checks,
    marker_checks,
    pixel_size_checks,
    sample_checks,
    zone_area_checks,
    zone_threshold_checks,
)
from .scheduler import StageError

log = logging.getLogger("chemozone")


@dataclass
class RunResult:
    """What a batch run did.

    ``warnings`` holds the plausibility warning records of the run (:mod:`chemozone.plausibility`), also
    in ``run.json``.
    """

    out: Path
    statuses: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None


UM_DIGITS = 12
"""Significant digits of the µm values ``run.json`` records (float noise such as 3 × 0.65 = 1.9500000000000002
sits in the 16th-17th digit)."""


def tidy_um(record: Any, *, digits: int = UM_DIGITS, _um: bool = False) -> Any:
    """A copy of a ``run.json`` record whose µm values carry ``digits`` significant digits.

    A µm value is a float under a key ending in ``_um`` (``grid_um``, ``pixel_size_um``,
    ``nucleus_diameter_um``, ...), also inside a list there; everything else is copied unchanged. Only the
    record is rounded: the run computes with the unrounded values.

    Parameters
    ----------
    record : dict, list or scalar
        The record (``run.json``'s dict), nested dicts and lists of JSON values.
    digits : int
        Significant digits kept.

    Returns
    -------
    The same structure (new dicts and lists; the input is not modified).

    Examples
    --------
    >>> tidy_um({"grid_um": 3 * 0.65, "n": 0.1 + 0.2, "step_a": {"pixel_size_um": 0.65, "sizes_um": [0.1 + 0.2]}})
    {'grid_um': 1.95, 'n': 0.30000000000000004, 'step_a': {'pixel_size_um': 0.65, 'sizes_um': [0.3]}}
    """
    if isinstance(record, dict):
        return {k: tidy_um(v, digits=digits, _um=isinstance(k, str) and k.endswith("_um")) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [tidy_um(v, digits=digits, _um=_um) for v in record]
    if _um and isinstance(record, float) and math.isfinite(record):
        return float(f"{record:.{digits}g}")
    return record


class Ledger:
    """``run.json`` as the run goes: every change of a sample's status is written at once (atomically), so a
    killed run leaves a true record. A failed sample is logged with its traceback and, under
    ``on_error="raise"``, stops the run. Warnings are recorded for the cohort and per sample."""

    def __init__(self, prov: dict[str, Any], lay: RunLayout, on_error: str) -> None:
        self.prov, self.lay, self.on_error = prov, lay, on_error
        self.prov.setdefault("warnings", [])
        self.result = RunResult(out=lay.root)

    def save(self) -> None:
        atomic_write_json(self.lay.run_json, tidy_um(self.prov))

    def status(self, sid: str) -> str:
        return self.prov["samples"][sid]["status"]

    def record(self, sid: str, **kw: Any) -> None:
        self.prov["samples"][sid].update(kw)
        self.save()

    def warn(self, records: list[dict[str, Any]]) -> None:
        """Record warnings (run.json, the run's result, run.log); a sample's also under its own entry."""
        if not records:
            return
        for r in records:
            self.prov["warnings"].append(r)
            sample = self.prov["samples"].get(r["sample"]) if r["sample"] is not None else None
            if sample is not None:
                sample.setdefault("warnings", []).append(r)
            log.warning("%s", format_warning(r))
        self.result.warnings += records
        self.save()

    def fail(self, exc: StageError) -> None:
        log.error("%s\n%s", exc, exc.tb)
        self.record(exc.sample_id, status="failed", stage=exc.stage, error=exc.message)
        self.result.errors[exc.sample_id] = str(exc)
        if self.on_error == "raise":
            err = RunError(f"{exc} (details in {self.lay.run_log}; use --on-error skip to finish the other samples)")
            self.stop(err, stage=exc.stage)
            raise err

    def stop(self, exc: BaseException, *, stage: str | None = None) -> None:
        """Close ``run.json`` as a failed run: ``status: failed``, the one-line ``error``, the ``stage`` it
        stopped in and the time. The first stop is kept (an outer guard does not overwrite an inner one)."""
        if self.prov.get("status") == "failed" and "error" in self.prov:
            return
        from .errors import ChemozoneError

        msg = str(exc) if isinstance(exc, ChemozoneError) else f"{type(exc).__name__}: {exc}"
        self.prov.update(status="failed", error=" ".join(msg.split()), failed_stage=stage,
                         finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.save()

    @contextmanager
    def stopping(self, stage: str | None = None) -> Iterator[None]:
        """Record an error raised inside as the run's failure (:meth:`stop`), then let it propagate; the
        per-sample outputs already written are left as they are."""
        try:
            yield
        except Exception as exc:
            log.error("run stopped%s: %s", f" in the {stage}" if stage else "", exc)
            self.stop(exc, stage=stage)
            raise


# ------------------------------------------------------------------------------------- what to check when
def image_warnings(images: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Before any work: pixel sizes taken from ``panel.pixel_size_um`` or disagreeing with it."""
    out = []
    for sid, info in images.items():
        if info:
            out += pixel_size_checks(sid, pixel_size_um=info["pixel_size_um"],
                                     source=info.get("pixel_size_source", "file"), note=info.get("pixel_size_note", ""))
    return out


def _diameters(step_a: dict[str, Any] | None, seg_cfg: Any) -> tuple[float | None, float | None]:
    """The nucleus diameter the sample was segmented with (step A's record first, e.g. an ``auto`` estimate,
    else the config's number) and the smallest configured one."""
    for d in ((step_a or {}).get("nucleus_diameter_um"), getattr(seg_cfg, "nucleus_diameter_um", None)):
        if isinstance(d, (int, float)) and d > 0:
            small = getattr(seg_cfg, "small_nucleus_diameter_um", None)
            return float(d), float(small) if isinstance(small, (int, float)) and small > 0 else None
    return None, None


def step_a_warnings(sid: str, step_a: dict[str, Any] | None, image: dict[str, Any], seg_cfg: Any,
                    lay: RunLayout) -> list[dict[str, Any]]:
    """After step A: no cells, little tissue, implausible density (:func:`~chemozone.plausibility.sample_checks`).

    ``step_a`` is step A's record (``n_cells``, and ``tissue_fraction`` when step A reports it, else the
    tissue mask is read); ``image`` the validated image info (shape, pixel size).
    """
    import pandas as pd

    from .io import read_labels_zarr

    step_a = step_a or {}
    n_cells = step_a.get("n_cells")
    if n_cells is None:
        n_cells = len(pd.read_parquet(lay.measurements(sid), columns=["cell_id"]))
    frac = step_a.get("tissue_fraction")
    if frac is None:
        frac = float(read_labels_zarr(lay.masks(sid), "tissue").astype(bool).mean())
    _, y, x = image["shape"]
    px = float(step_a.get("pixel_size_um") or image["pixel_size_um"])
    d, small = _diameters(step_a, seg_cfg)
    return sample_checks(sid, n_cells=int(n_cells), tissue_fraction=float(frac), field_area_mm2=y * x * px * px / 1e6,
                         nucleus_diameter_um=d, smallest_diameter_um=small)


def cohort_warnings(cohort: dict[str, Any]) -> list[dict[str, Any]]:
    """After the cohort step: the ``warning`` columns of the gates and zone thresholds (fallbacks, missing
    reference samples)."""
    return gate_checks(cohort.get("gates")) + zone_threshold_checks(cohort.get("zone_thresholds"))


def marker_warnings(step_b: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """After step B: markers almost never / almost always positive (from each sample's ``positive_counts``)."""
    import pandas as pd

    rows = [r for rec in step_b.values() for r in (rec or {}).get("positive_counts", [])]
    return marker_checks(pd.DataFrame(rows)) if rows else []


def zone_warnings(step_b: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """After step B: chemokine zones covering (almost) all of a sample's tissue or almost none of any sample's
    (from each sample's ``zone_fractions``, :func:`~chemozone.plausibility.zone_area_checks`)."""
    import pandas as pd

    rows = [r for rec in step_b.values() for r in (rec or {}).get("zone_fractions", [])]
    return zone_area_checks(pd.DataFrame(rows)) if rows else []


def zone_fractions(zones_df) -> list[dict[str, Any]]:
    """``{sample_id, zone, source, area_fraction}`` of each row of a sample's zones table (the step-B record's
    ``zone_fractions``; NaN fractions, a sample without tissue, become None)."""
    import pandas as pd

    return [{"sample_id": str(r.sample_id), "zone": str(r.zone), "source": str(r.source),
             "area_fraction": float(r.area_fraction) if pd.notna(r.area_fraction) else None}
            for r in zones_df[["sample_id", "zone", "source", "area_fraction"]].itertuples(index=False)]


# ------------------------------------------------------------------------- inputs and step-A stamps
def input_record(row: dict[str, Any], image_info: dict[str, Any] | None) -> dict[str, Any]:
    """``run.json["inputs"][sample_id]``: the image's fingerprint and info, and each precomputed mask's
    (``masks: {column: {spec, path, sha256, ...}}``, only for samples whose sheet row names masks)."""
    from .io import sample_mask_specs, split_mask_spec

    rec = {**file_fingerprint(row["image"]), "image_info": image_info}
    specs = sample_mask_specs(row)
    if specs:
        rec["masks"] = {col: {"spec": spec, **(file_fingerprint(split_mask_spec(spec)[0]) if split_mask_spec(spec)[0]
                                                .exists() else {"missing": True})} for col, spec in specs.items()}
    if isinstance(row.get("regions"), str) and row["regions"].strip():  # region annotations (QuPath GeoJSON)
        p = Path(row["regions"].strip())
        rec["regions"] = {"path": str(p), **(file_fingerprint(p) if p.is_file() else {"missing": True})}
    return rec


def _section_hash(cfg: Any, sections: tuple[str, ...]) -> str:
    import hashlib
    import json

    payload = json.dumps({s: getattr(cfg, s).model_dump(mode="json") for s in sections}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def step_a_stamp(row: dict[str, Any], cfg: Any, sections: tuple[str, ...]) -> dict[str, Any]:
    """What step A of a sample depends on: the image, the precomputed masks and region annotations (if any) and
    the config sections."""
    from .io import sample_mask_specs, split_mask_spec

    fp = file_fingerprint(row["image"])
    stamp = {"input_sha256": fp["sha256"], "input_size": fp["size"], "config_sha256": _section_hash(cfg, sections)}
    for col, spec in sample_mask_specs(row).items():  # a changed mask file redoes step A under --resume
        stamp[f"{col}_sha256"] = f"{spec}:{file_fingerprint(split_mask_spec(spec)[0])['sha256']}"
    if isinstance(row.get("regions"), str) and row["regions"].strip():  # a redrawn annotation redoes step A
        stamp["regions_sha256"] = f"{row['regions']}:{file_fingerprint(row['regions'].strip())['sha256']}"
    return stamp


def step_a_is_current(sid: str, lay: RunLayout, stamp: dict[str, Any]) -> bool:
    """Whether step A's outputs of ``sid`` exist with this stamp (``--resume`` may skip it)."""
    import json

    p = lay.step_a_stamp(sid)
    if not p.is_file() or not lay.measurements(sid).is_file() or not lay.masks(sid).is_dir():
        return False
    try:
        old = json.loads(p.read_text())
    except json.JSONDecodeError:
        return False
    return old == stamp  # same keys too: a mask column added or removed redoes step A


def previous_samples(lay: RunLayout) -> dict[str, Any]:
    """The per-sample records of the ``run.json`` an earlier run left (``{}`` when none or unreadable)."""
    import json

    if not lay.run_json.is_file():
        return {}
    try:
        return json.loads(lay.run_json.read_text()).get("samples", {})
    except json.JSONDecodeError:
        return {}
