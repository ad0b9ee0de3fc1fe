"""Cell tables written by other tools, in chemozone's columns (bring your own cell table).

:func:`read_cell_table` reads an inForm ``cell_seg_data.txt``, a HALO object export, QuPath detection
measurements, an MCMICRO (mcquant) / SCIMAP CSV, a CellProfiler object table or a CODEX (SPIAT-style) CSV, and
returns one row per cell with::

    sample_id, cell_id, x_um, y_um                 positions in µm (pixels × pixel_size_um for pixel tables)
    {marker}_{compartment}                         mean intensities (nucleus, cytoplasm, membrane, cell)
    {marker}_pos                                   the vendor's positivity (HALO flags, inForm/QuPath phenotypes)
    vendor_phenotype, tissue_category              the vendor's phenotype / class and tissue class, verbatim
    cell_area_um2, nucleus_area_um2                when the table states them

plus every other column of the file under its own name. The vendor readers (one small function per format)
live in ``chemozone.io._vendors``; this module holds what they share: reading the file, units, the checks and
the one-line errors (:class:`chemozone.errors.TableError`, naming the file, the column and what to do).

Units: a table in pixels (HALO boxes, CellProfiler, MCMICRO, CODEX; inForm and QuPath when their headers say
so) needs ``pixel_size_um``; a table whose headers state no unit needs ``unit``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import TableError
from ._vendors import READERS, ParsedTable

__all__ = ["TABLE_FORMATS", "CellTable", "read_cell_table", "detect_table_format", "table_markers"]

TABLE_FORMATS = ("inform", "halo", "qupath", "mcmicro", "cellprofiler", "codex")
"""Formats :func:`read_cell_table` reads (``scimap`` is read as ``mcmicro``)."""

_UNIT_HINT = "pass unit='um' or unit='px' (CLI: --unit um|px, with --pixel-size-um for pixels)"


@dataclass
class CellTable:
    """An imported cell table: ``cells`` in chemozone's columns and how it was read (for ``run.json``)."""

    cells: pd.DataFrame
    path: Path
    format: str
    unit: str
    pixel_size_um: float | None
    markers: list[str]
    positivity: list[str]
    annotation_area_um2: dict[str, float]

    def record(self) -> dict[str, Any]:
        """The import as recorded in ``run.json`` (path, format, unit, pixel size, markers, vendor positivity)."""
        return {"path": str(self.path), "format": self.format, "unit": self.unit, "pixel_size_um": self.pixel_size_um,
                "n_cells": int(len(self.cells)), "markers": self.markers, "vendor_positivity": self.positivity,
                "annotation_area_um2": self.annotation_area_um2 or None}


# ---------------------------------------------------------------------------------------- reading
def _read_frame(path: Path, sep: str | None = None) -> pd.DataFrame:
    """The file as strings-or-numbers (tab or comma separated, gzip allowed)."""
    if not path.is_file():
        raise TableError(f"{path}: cell table not found; fix the path")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as fh:
            head = fh.readline()
        if sep is None:
            sep = "\t" if head.count("\t") > head.count(",") else ","
        return pd.read_csv(path, sep=sep, encoding="utf-8-sig", na_values=["#N/A", "NA", "N/A", ""],
                           low_memory=False, compression="infer")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, EOFError) as exc:
        msg = " ".join(str(exc).split())
        raise TableError(f"{path}: not a readable CSV/TSV cell table ({msg}); export it as text") from None


_SIGNATURES: list[tuple[str, Callable[[list[str]], bool]]] = [
    ("inform", lambda c: "Cell X Position" in c),
    ("halo", lambda c: {"XMin", "XMax", "YMin", "YMax"} <= set(c)),
    ("qupath", lambda c: any(str(x).startswith("Centroid X") for x in c)),
    ("cellprofiler", lambda c: any(str(x).startswith("Location_Center_X") for x in c)),
    ("mcmicro", lambda c: "X_centroid" in c),
    ("codex", lambda c: "X.X" in c and "Y.Y" in c),
]


def detect_table_format(columns: list[str]) -> str | None:
    """The export format whose position columns the table has, or None.

    Examples
    --------
    >>> detect_table_format(["Cell ID", "Cell X Position", "Cell Y Position"]), detect_table_format(["a"])
    ('inform', None)
    """
    for name, test in _SIGNATURES:
        if test(list(columns)):
            return name
    return None


def table_markers(cells: pd.DataFrame) -> list[str]:
    """Markers of an imported table: those with a ``{marker}_{compartment}`` mean or a ``{marker}_pos`` column.

    Examples
    --------
    >>> table_markers(pd.DataFrame(columns=["x_um", "CD3_cell", "CD3_nucleus", "CK_pos", "cell_area_um2"]))
    ['CD3', 'CK']
    """
    out: list[str] = []
    for c in map(str, cells.columns):
        for suffix in ("_nucleus", "_cytoplasm", "_membrane", "_cell", "_pos"):
            if c.endswith(suffix) and c not in ("cell_area_um2", "nucleus_area_um2"):
                m = c[: -len(suffix)]
                if m and m not in out:
                    out.append(m)
    return out


def _scale(unit: str, pixel_size_um: float | None, path: Path, column: str) -> float:
    if unit == "um":
        return 1.0
    if unit == "px":
        if pixel_size_um is None or not pixel_size_um > 0:
            raise TableError(f"{path}: column '{column}' is in pixels; pass the pixel size (pixel_size_um, CLI: "
                             "--pixel-size-um, or panel.pixel_size_um in the config) to convert to µm")
        return float(pixel_size_um)
    raise TableError(f"{path}: column '{column}': unknown unit {unit!r}; {_UNIT_HINT}")


def _numeric(s: pd.Series, path: Path, column: str) -> np.ndarray:
    v = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(v)
    if bad.all():
        raise TableError(f"{path}: column '{column}' holds no numbers; export the cell positions as numbers")
    if bad.any():
        raise TableError(f"{path}: column '{column}' has {int(bad.sum())} empty or non-numeric value(s) (first at row "
                         f"{int(np.flatnonzero(bad)[0]) + 1}); drop those cells or fix the export")
    return v


def _sample_ids(p: ParsedTable, df: pd.DataFrame, path: Path, sample_column: str | None,
                sample_id: str | None) -> pd.Series:
    if sample_id is not None:
        return pd.Series(str(sample_id), index=df.index)
    if sample_column is not None:
        if sample_column not in df.columns:
            raise TableError(f"{path}: no column '{sample_column}' (sample_column); use one of {list(df.columns)[:12]}")
        s = df[sample_column]
    elif p.sample is not None and p.sample.notna().all():
        s = p.sample
    else:
        return pd.Series(path.name.split(".")[0], index=df.index)
    if s.isna().any():
        raise TableError(f"{path}: column '{sample_column or p.sample_column}' is empty in {int(s.isna().sum())} row(s); "
                         "fill it or pass sample_id")
    return s.astype(str).map(lambda v: Path(v.replace("\\", "/")).name if "/" in v or "\\" in v else v)


def _cell_ids(p: ParsedTable, sid: pd.Series, path: Path) -> np.ndarray:
    if p.cell_id is not None:
        ids = pd.to_numeric(p.cell_id, errors="coerce")
        if ids.notna().all() and (ids % 1 == 0).all() and not pd.DataFrame({"s": sid, "i": ids}).duplicated().any():
            return ids.to_numpy(np.int64)
    return (sid.groupby(sid).cumcount() + 1).to_numpy(np.int64)  # 1..n per sample, in file order


def _annotation_areas(p: ParsedTable, sid: pd.Series, scale: float) -> dict[str, float]:
    """Per sample, the sum of the distinct annotated regions' areas the export states (µm²), when complete."""
    if p.region_area is None:
        return {}
    area, key, unit = p.region_area
    a = pd.to_numeric(area, errors="coerce") * (scale**2 if unit == "px2" else 1.0)
    if not a.notna().all():
        return {}
    regions = pd.DataFrame({"s": sid.to_numpy(), "k": key.astype(str).to_numpy(), "a": a.to_numpy()})
    return {str(s): float(g.drop_duplicates("k")["a"].sum()) for s, g in regions.groupby("s")}


def read_cell_table(path: str | Path, format: str = "auto", *, pixel_size_um: float | None = None,
                    unit: str = "auto", sample_column: str | None = None, sample_id: str | None = None,
                    aliases: dict[str, list[str]] | None = None, phenotypes_file: str | Path | None = None
                    ) -> CellTable:
    """Read another tool's per-cell table into chemozone's columns.

    Parameters
    ----------
    path : path
        The export (``.txt``/``.tsv``/``.csv``, gzip allowed).
    format : {"auto", "inform", "halo", "qupath", "mcmicro", "scimap", "cellprofiler", "codex"}
        ``auto`` recognises the format by its position columns (:func:`detect_table_format`).
    pixel_size_um : float, optional
        µm per pixel; required when the positions are in pixels.
    unit : {"auto", "um", "px"}
        Unit of the positions; ``auto`` takes it from the headers (inForm ``(microns)``/``(pixels)``, QuPath
        ``Centroid X µm``/``px``) or the format (HALO boxes, CellProfiler, MCMICRO and CODEX are in pixels).
    sample_column : str, optional
        Column naming each cell's sample (default: the format's image column, e.g. inForm ``Sample Name``, HALO
        ``Image Location``, QuPath ``Image``; else the file name).
    sample_id : str, optional
        One sample id for the whole table (overrides ``sample_column``).
    aliases : dict, optional
        ``panel.aliases``: marker names as the config spells them (``{FOXP3: ["Opal 620"]}``).
    phenotypes_file : path, optional
        CODEX: tab-separated ``cluster id → phenotype name`` table.

    Returns
    -------
    CellTable
        ``cells`` with ``sample_id, cell_id, x_um, y_um``, ``{marker}_{compartment}``, ``{marker}_pos``,
        ``vendor_phenotype``, ``tissue_category``, areas, and the file's other columns.

    Raises
    ------
    TableError
        Unknown format, no coordinate columns, an unknown unit, pixels without a pixel size, non-numeric
        positions (one line naming the file and the column).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "cells.csv")
    >>> _ = open(p, "w").write("CellID,X_centroid,Y_centroid,CD3\\n1,10,20,5.5\\n2,30,40,0.5\\n")
    >>> t = read_cell_table(p, pixel_size_um=0.5)
    >>> t.format, t.cells[["cell_id", "x_um", "y_um", "CD3_cell"]].values.tolist()
    ('mcmicro', [[1.0, 5.0, 10.0, 5.5], [2.0, 15.0, 20.0, 0.5]])
    """
    path = Path(path)
    df = _read_frame(path)
    fmt = "mcmicro" if format == "scimap" else format
    if fmt == "auto":
        fmt = detect_table_format(list(df.columns))
        if fmt is None:
            raise TableError(f"{path}: not a known cell-table export (no position columns such as inForm 'Cell X "
                             f"Position', HALO 'XMin', QuPath 'Centroid X µm', CellProfiler 'Location_Center_X', "
                             f"MCMICRO 'X_centroid'); pass the format ({', '.join(TABLE_FORMATS)})")
    if fmt not in TABLE_FORMATS:
        raise TableError(f"{path}: unknown table format {format!r}; use one of {', '.join(TABLE_FORMATS)}")
    if unit not in ("auto", "um", "px"):
        raise TableError(f"{path}: unknown unit {unit!r}; {_UNIT_HINT}")
    p = READERS[fmt](df, path, phenotypes_file=phenotypes_file)
    return _to_cell_table(p, df, path, fmt, pixel_size_um=pixel_size_um, unit=unit, sample_column=sample_column,
                          sample_id=sample_id, aliases=aliases)


def _to_cell_table(p: ParsedTable, df: pd.DataFrame, path: Path, fmt: str, *, pixel_size_um, unit, sample_column,
                   sample_id, aliases) -> CellTable:
    """Units, ids, marker names and column order of an imported table."""
    from ._channels import canonical_channel_names  # noqa: PLC0415

    used_unit = p.unit if unit == "auto" else unit
    if used_unit is None:
        raise TableError(f"{path}: column '{p.x_column}': the headers state no unit for the positions; {_UNIT_HINT}")
    scale = _scale(used_unit, pixel_size_um, path, p.x_column)
    sid = _sample_ids(p, df, path, sample_column, sample_id)
    out = {"sample_id": sid.to_numpy(), "cell_id": _cell_ids(p, sid, path),
           "x_um": _numeric(p.x, path, p.x_column) * scale, "y_um": _numeric(p.y, path, p.y_column) * scale}
    raw_markers = list(dict.fromkeys([m for m, _ in p.intensities] + list(p.positive)))
    canon = dict(zip(raw_markers, canonical_channel_names(raw_markers, aliases)))
    for (m, comp), s in p.intensities.items():
        out[f"{canon[m]}_{comp}"] = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    for m, s in p.positive.items():
        out[f"{canon[m]}_pos"] = s.fillna(False).astype(bool).to_numpy()
    if p.phenotype is not None:
        out["vendor_phenotype"] = p.phenotype.astype(str).to_numpy()
    if p.category is not None:
        out["tissue_category"] = p.category.astype(str).to_numpy()
    for comp, (s, u) in p.areas.items():
        a = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
        out[f"{comp}_area_um2"] = a * (scale**2 if u == "px2" else 1.0)
    cells = pd.DataFrame(out, index=df.index)
    keep = [c for c in df.columns if c not in p.used and c not in cells.columns and c != sample_column]
    cells = pd.concat([cells, df[keep]], axis=1).reset_index(drop=True)
    return CellTable(cells=cells, path=path, format=fmt, unit=used_unit,
                     pixel_size_um=float(pixel_size_um) if used_unit == "px" else None,
                     markers=[canon[m] for m in raw_markers], positivity=[canon[m] for m in p.positive],
                     annotation_area_um2=_annotation_areas(p, sid, scale))
