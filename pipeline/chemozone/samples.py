"""Samples: the sample sheet, or images in a folder with metadata parsed from file names.

Everything is validated before any work starts: duplicate or unsafe ``sample_id``, missing image file,
unreadable ``dose_gy``, each a one-line :class:`~chemozone.errors.SampleSheetError` naming the row.

The returned table has one row per sample with columns ``sample_id, image, patient, radiation,
dose_gy`` plus any extra columns of the sheet (carried into every output table). ``image`` is an
absolute path. The optional ``nuclei_mask`` / ``cells_mask`` columns (precomputed label masks,
:mod:`chemozone.io._masks`) are made absolute too (empty = segment that sample) and checked per sample by
:func:`chemozone.validate.validate_inputs`, so that ``--on-error skip`` skips only that sample; so is the
optional ``regions`` column (a QuPath GeoJSON of region annotations per sample, :mod:`chemozone.regions`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .config import Config
from .errors import SampleSheetError

__all__ = ["load_samples", "parse_filename", "pattern_to_regex", "select_samples", "select_reference", "REQUIRED_COLUMNS",
           "SAFE_ID"]

REQUIRED_COLUMNS = ["sample_id", "image", "patient", "radiation", "dose_gy"]
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def pattern_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a file-name pattern such as ``{patient}_{radiation}_{dose_gy}Gy_{replicate}``.

    Each ``{field}`` matches a non-empty run of characters other than ``_``; literal text must match
    exactly (case-insensitive).

    >>> pattern_to_regex("{patient}_{dose_gy}Gy").match("P1_2.5Gy").groupdict()
    {'patient': 'P1', 'dose_gy': '2.5'}
    """
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", pattern)
    rx = ""
    seen = set()
    for part in parts:
        m = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", part)
        if m:
            name = m.group(1)
            if name in seen:
                raise SampleSheetError(f"samples.filename_pattern '{pattern}': field '{{{name}}}' appears twice")
            seen.add(name)
            rx += f"(?P<{name}>[^_]+?)"
        else:
            rx += re.escape(part)
    return re.compile(f"^{rx}$", re.IGNORECASE)


def _stem(path: Path) -> str:
    name = path.name
    if path.is_dir() and not name.lower().endswith(".zarr"):
        return name  # a folder of single-channel TIFFs: the folder's name
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr", ".qptiff", ".tiff", ".tif", ".zarr", ".btf"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def parse_filename(path: str | Path, pattern: str) -> dict[str, str]:
    """Metadata fields parsed from a file's stem by ``pattern``.

    Raises
    ------
    SampleSheetError
        If the stem does not match (names the file and the pattern).
    """
    stem = _stem(Path(path))
    m = pattern_to_regex(pattern).match(stem)
    if not m:
        raise SampleSheetError(
            f"{path}: file name '{stem}' does not match samples.filename_pattern '{pattern}'; rename the file, "
            "fix the pattern, or use a samples.csv sheet"
        )
    return m.groupdict()


def _is_image(p: Path, extensions: list[str]) -> bool:
    """An image file (or OME-Zarr folder) by its name ending, or a folder of single-channel TIFFs."""
    from .io import is_channel_folder

    n = p.name.lower()
    if n.startswith("."):
        return False
    return any(n.endswith(e.lower()) for e in extensions) or (p.is_dir() and is_channel_folder(p))


def load_samples(input_path: str | Path, config: Config | None = None) -> pd.DataFrame:
    """The validated sample table for an input folder, a sample sheet, or a single image.

    Parameters
    ----------
    input_path : path
        A folder of images (with an optional ``samples.csv``), a ``.csv`` sample sheet, or one image.
        When a folder is scanned, each image file and each subfolder of single-channel TIFFs (a MIBI / IMC
        export, :func:`chemozone.io.is_channel_folder`; sample_id = the subfolder's name) is one sample.
    config : Config, optional
        ``samples.sheet`` and ``samples.filename_pattern`` are used from it.

    Returns
    -------
    pandas.DataFrame
        One row per sample, columns ``sample_id, image, patient, radiation, dose_gy`` + extras,
        ``dose_gy`` as float, sorted as in the sheet (or by file name).

    Raises
    ------
    SampleSheetError
        Missing input, missing columns, duplicate or unsafe ``sample_id``, missing image file,
        unreadable ``dose_gy``: each naming the row (1-based data row of the CSV) or the file.
    """
    config = config or Config()
    scfg = config.samples
    input_path = Path(input_path)
    if not input_path.exists():
        raise SampleSheetError(f"{input_path}: input not found; pass a folder of images, a samples.csv or an image")

    sheet: Path | None = None
    if scfg.sheet is not None:
        sheet = Path(scfg.sheet)
    elif input_path.is_file() and input_path.suffix.lower() == ".csv":
        sheet = input_path
    elif input_path.is_dir() and (input_path / "samples.csv").is_file():
        sheet = input_path / "samples.csv"

    if sheet is not None:
        df = _read_sheet(sheet)
    else:
        if input_path.is_dir() and not input_path.name.lower().endswith(".zarr"):
            images = sorted(p for p in input_path.iterdir() if _is_image(p, scfg.extensions))
        else:
            images = [input_path]
        if not images:
            raise SampleSheetError(
                f"{input_path}: no images found (looked for {scfg.extensions}) and no samples.csv; "
                "add images or a sample sheet"
            )
        rows = []
        for img in images:
            row = {"sample_id": _stem(img), "image": str(img.resolve())}
            if scfg.filename_pattern:
                row.update(parse_filename(img, scfg.filename_pattern))
            rows.append(row)
        df = pd.DataFrame(rows)
        for col in ("patient", "radiation", "dose_gy"):
            if col not in df:
                df[col] = pd.NA
        df = _validate(df, source=str(input_path), row_offset=None)
    return df.reset_index(drop=True)


def _read_sheet(sheet: Path) -> pd.DataFrame:
    if not sheet.is_file():
        raise SampleSheetError(f"{sheet}: sample sheet not found; fix samples.sheet or create the CSV")
    try:
        df = pd.read_csv(sheet, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - any CSV parse error is user-fixable
        raise SampleSheetError(f"{sheet}: cannot parse the sample sheet ({type(exc).__name__}: {exc})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("sample_id", "image") if c not in df.columns]
    if missing:
        raise SampleSheetError(
            f"{sheet}: missing column(s) {missing}; a sheet needs {REQUIRED_COLUMNS} (patient, radiation, "
            "dose_gy may be empty)"
        )
    for col in ("patient", "radiation", "dose_gy"):
        if col not in df:
            df[col] = ""
    df = df.replace({"": pd.NA})
    base = sheet.parent
    df["image"] = [
        str((base / p).resolve()) if isinstance(p, str) and not Path(p).is_absolute() else p for p in df["image"]
    ]
    from .io import MASK_COLUMNS, resolve_mask_spec

    for col in (c for c in MASK_COLUMNS if c in df.columns):  # precomputed masks: checked per sample later
        df[col] = [resolve_mask_spec(v.strip(), base) if isinstance(v, str) and v.strip() else pd.NA for v in df[col]]
    if "regions" in df.columns:  # region annotations (chemozone.regions): checked per sample later
        df["regions"] = [str((base / v.strip()).resolve()) if isinstance(v, str) and v.strip() else pd.NA
                         for v in df["regions"]]
    return _validate(df, source=str(sheet), row_offset=2)


def _validate(df: pd.DataFrame, *, source: str, row_offset: int | None) -> pd.DataFrame:
    def where(i: int) -> str:
        return f"{source} row {i + row_offset}" if row_offset is not None else f"{source} ({df['image'].iloc[i]})"

    seen: dict[str, int] = {}
    for i, sid in enumerate(df["sample_id"]):
        if sid is pd.NA or sid is None or (isinstance(sid, float)):
            raise SampleSheetError(f"{where(i)}: empty sample_id; give every row a unique sample_id")
        sid = str(sid).strip()
        if not SAFE_ID.match(sid) or sid in (".", ".."):
            raise SampleSheetError(
                f"{where(i)}: sample_id '{sid}' is not filesystem-safe; use letters, digits, '.', '_' or '-' "
                "(no spaces or slashes, at most 128 characters)"
            )
        if sid in seen:
            raise SampleSheetError(f"{where(i)}: duplicate sample_id '{sid}' (also in {where(seen[sid])}); make it unique")
        seen[sid] = i
    df["sample_id"] = df["sample_id"].astype(str).str.strip()

    for i, img in enumerate(df["image"]):
        if img is pd.NA or not isinstance(img, str) or not img:
            raise SampleSheetError(f"{where(i)}: empty 'image' for sample '{df['sample_id'].iloc[i]}'")
        if not Path(img).exists():
            raise SampleSheetError(f"{where(i)}: image file not found: {img}; fix the path (relative to the sheet)")

    doses = []
    for i, d in enumerate(df["dose_gy"]):
        if d is pd.NA or d is None or (isinstance(d, float) and pd.isna(d)):
            doses.append(float("nan"))
            continue
        text = str(d).strip().lower().removesuffix("gy").strip().replace(",", ".")
        try:
            val = float(text)
        except ValueError:
            raise SampleSheetError(
                f"{where(i)}: dose_gy '{d}' of sample '{df['sample_id'].iloc[i]}' is not a number; write e.g. 2 or 2.5"
            ) from None
        if val < 0 or val != val:
            raise SampleSheetError(f"{where(i)}: dose_gy {val} of sample '{df['sample_id'].iloc[i]}' must be >= 0")
        doses.append(val)
    df["dose_gy"] = pd.Series(doses, index=df.index, dtype="float64")
    for col in ("patient", "radiation"):
        df[col] = df[col].astype("string")
    if "radiation" in df:
        df["radiation"] = df["radiation"].str.strip().str.lower()
    front = REQUIRED_COLUMNS + [c for c in df.columns if c not in REQUIRED_COLUMNS]
    return df[front]


def select_samples(samples: pd.DataFrame, query: dict, *, where: str) -> pd.Series:
    """Which samples match a metadata query such as ``{dose_gy: 0}`` or ``{radiation: [sham, photon]}``.

    Numbers match numerically (``0`` matches ``0.0`` and ``"0"``), anything else as text. Used to pick
    the reference samples of gates and zone thresholds.

    Parameters
    ----------
    samples : DataFrame
        The sample table.
    query : dict
        ``{column: value or list of values}``; all columns must match.
    where : str
        The config path of the query, for error messages.

    Returns
    -------
    pandas.Series of bool, aligned with ``samples``.

    Raises
    ------
    ConfigError
        A query column that the sample sheet lacks (lists the columns).

    >>> df = pd.DataFrame({"dose_gy": [0.0, 2.0], "radiation": ["sham", "photon"]})
    >>> select_samples(df, {"dose_gy": 0}, where="q").tolist()
    [True, False]
    """
    import numpy as np

    from .errors import ConfigError

    sel = pd.Series(True, index=samples.index)
    for col, want in query.items():
        if col not in samples.columns:
            raise ConfigError(
                f"{where}: column '{col}' is not in the sample sheet (columns: {list(samples.columns)}); fix the query"
            )
        wants = want if isinstance(want, (list, tuple, set)) else [want]
        values = samples[col]
        hit = pd.Series(False, index=samples.index)
        for w in wants:
            if isinstance(w, (int, float)) and not isinstance(w, bool):
                num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
                hit |= pd.Series(np.isclose(num, float(w)), index=samples.index)
            else:
                hit |= values.astype(str) == str(w)
        sel &= hit
    return sel


def select_reference(samples: pd.DataFrame, query: dict, group_by: str | None, *, where: str) -> pd.Series:
    """The reference samples of a gate or zone threshold, after checking the query and ``group_by``.

    Parameters
    ----------
    samples : DataFrame
        The samples the threshold is computed for.
    query : dict
        Metadata query (see :func:`select_samples`), e.g. ``{dose_gy: 0}``.
    group_by : str or None
        Column whose value a sample's references must share (e.g. ``patient``); checked to exist.
    where : str
        Config path of the threshold (``...gate`` / ``...threshold``), for error messages.

    Returns
    -------
    pandas.Series of bool, aligned with ``samples``.

    Raises
    ------
    ConfigError
        No sample matches the query, or ``group_by`` is not a column of the sample sheet.
    """
    from .errors import ConfigError

    is_ref = select_samples(samples, query, where=f"{where}.reference")
    if not is_ref.any():
        empty = [c for c in query if samples[c].isna().all() or (samples[c].astype(str).str.strip() == "").all()]
        why = (f" (the sample sheet gives no {', '.join(repr(c) for c in empty)}: fill the column, e.g. dose_gy 0 for "
               "the sham samples, or query a column it fills)") if empty else ""
        raise ConfigError(
            f"{where}.reference: no sample matches {dict(query)} among {len(samples)} samples{why}; "
            "fix the query or use a pooled threshold"
        )
    if group_by is not None and group_by not in samples.columns:
        raise ConfigError(
            f"{where}.group_by: column '{group_by}' is not in the sample sheet (columns: {list(samples.columns)}); "
            "set it to a column or null"
        )
    return is_ref
