"""The run folder: paths of DESIGN.md's layout, atomic writes, and ``run.json`` provenance.

Every output is written to a temporary name in the same directory and then renamed, so a killed run
never leaves a half-written file under a final name.

Examples
--------
>>> lay = RunLayout("/tmp/out")
>>> lay.cells("s1").as_posix()
'/tmp/out/samples/s1/cells.parquet'
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "RunLayout",
    "SampleLayout",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "write_parquet",
    "file_fingerprint",
    "package_versions",
    "read_run_json",
    "new_provenance",
]

_TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class RunLayout:
    """Paths of a run folder (nothing is created until written)."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # cohort level
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def run_log(self) -> Path:
        return self.root / "run.log"

    @property
    def cohort_cells(self) -> Path:
        return self.root / "cells.parquet"

    @property
    def cohort_infiltration(self) -> Path:
        return self.root / "infiltration.parquet"

    @property
    def cohort_zones(self) -> Path:
        return self.root / "zones.parquet"

    @property
    def cohort_cognate(self) -> Path:
        return self.root / "cognate.parquet"

    @property
    def cohort_zone_overlap(self) -> Path:
        return self.root / "zone_overlap.parquet"

    @property
    def cohort_samples(self) -> Path:
        return self.root / "samples.parquet"

    @property
    def gates(self) -> Path:
        return self.root / "gates.parquet"

    @property
    def zone_thresholds(self) -> Path:
        return self.root / "zone_thresholds.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def export_anndata(self) -> Path:
        """Default destination of ``chemozone export --to anndata``."""
        return self.root / "export" / "cells.h5ad"

    @property
    def export_spatialdata(self) -> Path:
        """Default destination of ``chemozone export --to spatialdata``."""
        return self.root / "export" / "run.spatialdata.zarr"

    @property
    def export_qupath(self) -> Path:
        """Default destination folder of ``chemozone export --to qupath`` (one subfolder per sample)."""
        return self.root / "export" / "qupath"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def classifier_metrics(self) -> Path:
        """Cross-validated metrics of the run's cell classifiers: JSON ``{marker: {"balanced_accuracy": float,
        "f1": float, "n_labels": int}}`` (written by the classifier's training; shown by the report)."""
        return self.root / "classifier" / "metrics.json"

    @property
    def reviewed_gates(self) -> Path:
        """Default destination of napari's gate review (a gates YAML; set ``phenotypes.gates_file`` to it)."""
        return self.root / "gates_reviewed.yaml"

    @property
    def classifier_dir(self) -> Path:
        """Cell classifiers trained in napari (chemozone.classify): labels and classifier files."""
        return self.root / "classifier"

    @property
    def cell_labels(self) -> Path:
        """The user's cell labels (:class:`chemozone.classify.LabelStore`)."""
        return self.classifier_dir / "labels.parquet"

    @property
    def classifier_file(self) -> Path:
        """Default destination of a saved classifier (set ``phenotypes.classifier_file`` to it to replay it)."""
        return self.classifier_dir / "classifier.czclf"

    # sample level
    def sample_dir(self, sample_id: str) -> Path:
        return self.samples_dir / sample_id

    def sample(self, sample_id: str) -> SampleLayout:
        """The paths of one sample folder (:class:`SampleLayout`)."""
        return SampleLayout(self.sample_dir(sample_id))

    def masks(self, sample_id: str) -> Path:
        return self.sample(sample_id).masks

    def cells(self, sample_id: str) -> Path:
        return self.sample(sample_id).cells

    def zones(self, sample_id: str) -> Path:
        return self.sample(sample_id).zones

    def infiltration(self, sample_id: str) -> Path:
        return self.sample(sample_id).infiltration

    def cognate(self, sample_id: str) -> Path:
        return self.sample(sample_id).cognate

    def zone_overlap(self, sample_id: str) -> Path:
        return self.sample(sample_id).zone_overlap

    def qc(self, sample_id: str) -> Path:
        return self.sample(sample_id).qc

    def measurements(self, sample_id: str) -> Path:
        """Step A's per-cell measurements."""
        return self.sample(sample_id).measurements

    def step_a_stamp(self, sample_id: str) -> Path:
        """Step A's resume stamp (input hash + step-A config hash), written last."""
        return self.sample(sample_id).step_a_stamp

    def reviewed(self, sample_id: str) -> Path:
        """Hand-corrected phenotypes from napari (``cell_id, phenotype_reviewed``); never written by a run."""
        return self.sample(sample_id).reviewed

    @classmethod
    def of_sample(cls, sample_dir: str | os.PathLike) -> tuple[RunLayout | None, str]:
        """The run folder and sample id of ``RUN/samples/<sample_id>``; ``(None, name)`` for a lone folder.

        Examples
        --------
        >>> lay, sid = RunLayout.of_sample("run/samples/P1_sham")
        >>> str(lay.root), sid
        ('run', 'P1_sham')
        >>> RunLayout.of_sample("elsewhere/P1")[0] is None
        True
        """
        p = Path(sample_dir)
        if p.parent.name == "samples":
            return cls(p.parent.parent), p.name
        return None, p.name

    def sample_ids(self) -> list[str]:
        """Sample folders present on disk (sorted)."""
        if not self.samples_dir.is_dir():
            return []
        return sorted(p.name for p in self.samples_dir.iterdir() if p.is_dir() and _TMP_MARK not in p.name)

    def sample_image(self, sample_id: str) -> Path | None:
        """The image the run read for a sample, if it still exists.

        Looked up in the ``image`` column of ``samples.parquet``, then in ``run.json`` (the sample's ``samples``
        or ``inputs`` entry: ``image`` or ``path``, or an input keyed by its path); a relative path is taken
        from the run folder. None when no recorded image exists on disk (e.g. the run folder was moved
        without its inputs) or the run folder has neither file.
        """
        from .errors import RunError  # noqa: PLC0415

        candidates: list[str] = []
        if self.cohort_samples.is_file():
            import pandas as pd  # noqa: PLC0415 - layout stays import-light

            df = pd.read_parquet(self.cohort_samples)
            if "sample_id" in df.columns and "image" in df.columns:
                hit = df.loc[df["sample_id"].astype(str) == sample_id, "image"]
                candidates += [str(v) for v in hit if isinstance(v, str)]
        try:
            run = read_run_json(self.root)
        except (RunError, OSError):
            run = {}
        for section in ("samples", "inputs"):
            candidates += _run_json_images(run.get(section), sample_id)
        for c in candidates:
            p = Path(c)
            if not p.is_absolute():
                p = self.root / p
            if p.exists():
                return p
        return None


def _run_json_images(block: Any, sample_id: str) -> list[str]:
    """Image paths recorded for ``sample_id`` in a ``samples`` or ``inputs`` block of ``run.json``."""
    out: list[str] = []

    def paths(entry: dict) -> list[str]:
        return [str(entry[k]) for k in ("image", "path") if isinstance(entry.get(k), str)]

    if isinstance(block, dict):
        entry = block.get(sample_id)
        if isinstance(entry, dict):
            out += paths(entry)
        elif isinstance(entry, str):
            out.append(entry)
        for key, val in block.items():  # inputs keyed by path, values naming the sample
            if isinstance(val, dict) and str(val.get("sample_id")) == sample_id:
                out += paths(val)
                if Path(str(key)).suffix or str(key).endswith(".zarr"):
                    out.append(str(key))
    elif isinstance(block, list):
        for val in block:
            if isinstance(val, dict) and str(val.get("sample_id")) == sample_id:
                out += paths(val)
    return out


@dataclass(frozen=True)
class SampleLayout:
    """Paths of one sample folder: ``RUN/samples/<id>`` of a run folder, or a lone copy of one.

    Examples
    --------
    >>> s = SampleLayout("/tmp/out/samples/s1")
    >>> s.sample_id, s.cells.as_posix(), str(s.run.root)
    ('s1', '/tmp/out/samples/s1/cells.parquet', '/tmp/out')
    >>> SampleLayout("/tmp/copy/s1").run is None
    True
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def sample_id(self) -> str:
        return self.root.name

    @property
    def run(self) -> RunLayout | None:
        """The run folder holding this sample (None for a lone sample folder)."""
        return RunLayout.of_sample(self.root)[0]

    @property
    def masks(self) -> Path:
        return self.root / "masks.ome.zarr"

    @property
    def cells(self) -> Path:
        return self.root / "cells.parquet"

    @property
    def zones(self) -> Path:
        return self.root / "zones.parquet"

    @property
    def infiltration(self) -> Path:
        return self.root / "infiltration.parquet"

    @property
    def cognate(self) -> Path:
        return self.root / "cognate.parquet"

    @property
    def zone_overlap(self) -> Path:
        return self.root / "zone_overlap.parquet"

    @property
    def qc(self) -> Path:
        return self.root / "qc.png"

    @property
    def measurements(self) -> Path:
        """Step A's per-cell measurements."""
        return self.root / "measurements.parquet"

    @property
    def zone_cell_signal(self) -> Path:
        """Pass A of ``halfmax`` zones: the smoothed zone signal at every cell (``signal_at_cells``)."""
        return self.root / "zone_cell_signal.parquet"

    @property
    def overview(self) -> Path:
        """Display overview of a large image (:mod:`chemozone.overview`), written by step A's tissue pass."""
        return self.root / "overview.zarr"

    @property
    def grid_means(self) -> Path:
        """The zone channels' block means on the analysis grid, kept by step A's tissue pass for the zone pass
        (:mod:`chemozone.grid_means`)."""
        return self.root / ".grid_means.zarr"

    @property
    def zone_signal_cache(self) -> Path:
        """Pass A's zone signals on the grid (one float32 array per pixel or tumor zone), read again by step B
        instead of the image; temporary: removed when the sample's step B has finished."""
        return self.root / ".zone_signals.zarr"

    @property
    def step_a_stamp(self) -> Path:
        """Step A's resume stamp (input hash + step-A config hash), written last."""
        return self.root / "step_a.json"

    @property
    def reviewed(self) -> Path:
        """Hand-corrected phenotypes from napari (``cell_id, phenotype_reviewed``); never written by a run."""
        return self.root / "reviewed.parquet"


# ------------------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and for directories (e.g. a ``.zarr`` store): an existing target is replaced.
    On error the temporary is removed and the existing target is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}-{path.name}"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.parent / f"{_TMP_MARK}old-{os.urandom(4).hex()}-{path.name}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (indented, non-ASCII kept, numpy scalars converted)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return str(o)
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet(df, path: str | os.PathLike) -> Path:
    """Write a pandas DataFrame to Parquet atomically (pyarrow, no index)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow")
    _release_arrow_memory()
    return Path(path)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None, *, split_blocks: bool = False):
    """``pandas.read_parquet`` that hands pyarrow's freed buffers back to the system: its allocator otherwise keeps
    them (about the table's size again: 0.5 GB for a million-cell section, per reading process).

    ``split_blocks=True``: one pandas block per column, converted column by column as arrow frees them (pyarrow's
    ``to_pandas(split_blocks=True, self_destruct=True)``): the same frame, about 2× faster to read and without a
    second copy at the peak, for tables that are only looked at (napari); row selections on it are slower.
    """
    if split_blocks:
        import pyarrow.parquet as pq

        df = pq.read_table(path, columns=columns).to_pandas(split_blocks=True, self_destruct=True)
    else:
        import pandas as pd

        df = pd.read_parquet(path, columns=columns)
    _release_arrow_memory()
    return df


def _release_arrow_memory() -> None:
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# ------------------------------------------------------------------------------------- provenance
def file_fingerprint(path: str | os.PathLike, *, full_hash_limit_bytes: int = 256 * 2**20) -> dict[str, Any]:
    """Size, mtime and a sha256 of a file or directory store.

    Files up to ``full_hash_limit_bytes`` are hashed whole; larger ones hash their size plus the first
    and last 8 MiB and the mtime (``hash_kind = "sampled"``), so that fingerprinting a 20 GB slide stays
    cheap. Directories (``.zarr``) hash the sorted list of (relative path, size, mtime). A file is read once per
    process for the same path, size and mtime (a run records each input in ``run.json`` and in step A's stamp).
    """
    path = Path(path)
    st = path.stat()
    if path.is_dir():
        h = hashlib.sha256()
        total = 0
        for p in sorted(path.rglob("*")):
            if p.is_file():
                s = p.stat()
                total += s.st_size
                h.update(f"{p.relative_to(path)}:{s.st_size}:{s.st_mtime_ns}".encode())
        return {"path": str(path), "size": total, "mtime": st.st_mtime, "sha256": h.hexdigest(), "hash_kind": "listing"}
    return dict(_file_fingerprint(str(path), st.st_size, st.st_mtime_ns, st.st_mtime, int(full_hash_limit_bytes)))


@functools.lru_cache(maxsize=4096)
def _file_fingerprint(path: str, size: int, mtime_ns: int, mtime: float, full_hash_limit_bytes: int
                      ) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= full_hash_limit_bytes:
            for block in iter(lambda: fh.read(4 * 2**20), b""):
                h.update(block)
            kind = "full"
        else:
            chunk = 8 * 2**20
            h.update(str(size).encode())
            h.update(fh.read(chunk))
            fh.seek(size - chunk)
            h.update(fh.read(chunk))
            h.update(str(mtime_ns).encode())
            kind = "sampled"
    return {"path": path, "size": size, "mtime": mtime, "sha256": h.hexdigest(), "hash_kind": kind}


def package_versions() -> dict[str, str]:
    """Versions of chemozone, Python and the scientific packages it depends on (installed ones only)."""
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "chemozone", "numpy", "scipy", "scikit-image", "scikit-learn", "tifffile", "zarr", "dask",
        "distributed", "pandas", "pyarrow", "pydantic", "statsmodels", "skops", "cellpose", "torch", "napari",
    ]
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


def new_provenance(config: Any, *, command: list[str] | None = None) -> dict[str, Any]:
    """The skeleton of ``run.json``: resolved config, versions, start time; samples are added by the runner."""
    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return {
        "chemozone_run_version": 1,
        "started": datetime.now(timezone.utc).isoformat(),
        "command": command or [],
        "config": cfg,
        "versions": package_versions(),
        "inputs": {},
        "samples": {},
        "status": "running",
    }


def read_run_json(root: str | os.PathLike) -> dict[str, Any]:
    """Read ``run.json`` of a run folder.

    Raises
    ------
    RunError
        If the folder has no ``run.json`` (names the folder and says to run ``chemozone run`` first).
    """
    from .errors import RunError

    path = RunLayout(root).run_json
    if not path.is_file():
        raise RunError(f"{root}: no run.json here; run 'chemozone run' (or 'chemozone demo') into this folder first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise RunError(f"{path}: run.json is not valid JSON; re-run with --resume to rewrite it") from None


def make_tempdir(prefix: str = "chemozone-") -> Path:
    """A fresh temporary directory (caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
