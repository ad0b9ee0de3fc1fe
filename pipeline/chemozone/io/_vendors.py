"""One small reader per cell-table format: which columns hold positions, ids, samples, means, positivity.

Each reader takes the file as a DataFrame and returns a :class:`ParsedTable` in the file's
units; :func:`chemozone.io.read_cell_table` does the rest (units, ids, names). Column conventions:

inForm ``cell_seg_data.txt``
    ``Cell X/Y Position`` (µm when a header says ``(microns)`` / ``(sq microns)``, pixels when ``(pixels)``),
    ``Cell ID``, ``Sample Name``, ``{Nucleus|Cytoplasm|Membrane|Entire Cell} {marker} (dye) Mean ...``,
    ``Phenotype`` (``CD8+``, ``AMACR+PD-L1-``) or ``Phenotype {marker}`` columns → ``{marker}_pos``,
    ``Tissue Category`` and its ``Tissue Category Area``.
HALO object export
    Cell box ``XMin/XMax/YMin/YMax`` (pixels; the centre is the position), ``Object Id``, ``Image Location``,
    ``{marker} ({dye}) {Nucleus|Cytoplasm|Membrane} Intensity``, ``{marker} ({dye}) Positive`` → ``{marker}_pos``
    (``Dye N`` named from ``Analysis Inputs``), ``Classifier Label``, areas in µm², ``Region Area``; R-mangled
    names (``FOXP3..Opal.620..Nucleus.Intensity``, as spatialTIME writes them) are read too.
QuPath detection measurements
    ``Centroid X µm`` (or ``px``), ``Image``, ``{Nucleus|Cytoplasm|Membrane|Cell}: {marker}: Mean``,
    ``Classification``/``Class`` (``CD3: CD8`` = positive for CD3 and CD8) → ``{marker}_pos``, ``Parent``.
MCMICRO (mcquant) / SCIMAP
    ``CellID``, ``X_centroid``, ``Y_centroid`` (pixels), one column per marker (mean over the cell mask;
    ``{marker}_{mask}Mask`` when several masks), ``Area``, SCIMAP's ``imageid`` and ``phenotype``.
CellProfiler
    ``ImageNumber``, ``ObjectNumber``, ``Location_Center_X/Y`` (pixels), ``Intensity_MeanIntensity_{image}``
    (the object's mean, taken as the whole cell), ``AreaShape_Area`` (px²).
CODEX (SPIAT's format)
    ``X.X``, ``Y.Y`` (pixels), ``sample_Xtile_Ytile``, one column per marker, ``Imaging.phenotype.cluster.ID``
    (named through a ``cluster id → name`` file when given).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..errors import TableError

__all__ = ["READERS", "ParsedTable", "phenotype_flags"]


@dataclass
class ParsedTable:
    """What a vendor reader found, in the file's own units (filled by ``chemozone.io._vendors``)."""

    x: pd.Series
    y: pd.Series
    x_column: str
    y_column: str
    unit: str | None
    """``"um"``, ``"px"``, or None when the headers state no unit."""
    cell_id: pd.Series | None = None
    sample: pd.Series | None = None
    sample_column: str | None = None
    intensities: dict[tuple[str, str], pd.Series] = field(default_factory=dict)
    """(marker, compartment) → mean intensity."""
    positive: dict[str, pd.Series] = field(default_factory=dict)
    phenotype: pd.Series | None = None
    category: pd.Series | None = None
    areas: dict[str, tuple[pd.Series, str]] = field(default_factory=dict)
    """``cell`` / ``nucleus`` → (values, ``"um2"`` or ``"px2"``)."""
    region_area: tuple[pd.Series, pd.Series, str] | None = None
    """(area of the annotated region a cell lies in, the region's key, ``"um2"`` or ``"px2"``): the export's own
    annotation area (HALO ``Region Area``, inForm ``Tissue Category Area``)."""
    used: set[str] = field(default_factory=set)
    """Source columns turned into chemozone columns (the others are kept verbatim)."""

_COMPARTMENTS = {"nucleus": "nucleus", "nuclei": "nucleus", "cytoplasm": "cytoplasm", "membrane": "membrane",
                 "entire cell": "cell", "cell": "cell"}


def _need(df: pd.DataFrame, path: Path, cols: list[str], fmt: str) -> None:
    miss = [c for c in cols if c not in df.columns]
    if miss:
        raise TableError(f"{path}: no column '{miss[0]}' for the cell positions of a {fmt} export; export the cell "
                         "positions (centroids) with the table, or pass the right format")


def _first(df: pd.DataFrame, names: list[str]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def phenotype_flags(values: pd.Series, markers: list[str]) -> dict[str, pd.Series]:
    """Per-marker positivity from phenotype labels such as ``CD8+``, ``AMACR+PD-L1-`` or ``other``.

    A marker is positive in a cell when its label contains ``{marker}+`` (matched against the known ``markers``,
    longest first, so ``PD-L1-`` is PD-L1 negative); labels naming no marker (``other``) are negative for all.
    Markers that no label names get no column.

    Examples
    --------
    >>> f = phenotype_flags(pd.Series(["CK+", "CD8+", "AMACR+PD-L1-", "other"]), ["CK", "CD8", "AMACR", "PD-L1"])
    >>> {m: s.tolist() for m, s in f.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'CK': [True, False, False, False], 'CD8': [False, True, False, False],
     'AMACR': [False, False, True, False], 'PD-L1': [False, False, False, False]}
    """
    known = sorted(markers, key=len, reverse=True)
    low = {m.lower(): m for m in known}
    parsed: dict[str, dict[str, bool]] = {}
    for lab in pd.unique(values.astype(str)):
        flags: dict[str, bool] = {}
        rest = lab.strip()
        while rest:
            hit = next((m for m in low if rest.lower().startswith(m) and rest[len(m):len(m) + 1] in ("+", "-")), None)
            if hit is None:
                tok = re.match(r"^([^+\-\s]+)([+\-])", rest)
                if tok is None:
                    break
                low.setdefault(tok.group(1).lower(), tok.group(1))
                hit = tok.group(1).lower()
            flags[low[hit]] = rest[len(hit)] == "+"
            rest = rest[len(hit) + 1:].lstrip(" ,;/")
        parsed[lab] = flags
    named = list(dict.fromkeys(m for f in parsed.values() for m in f))
    lab_s = values.astype(str)
    return {m: lab_s.map(lambda v, m=m: parsed[v].get(m, False)).astype(bool) for m in named}


def _marker_name(raw: str) -> str:
    """``CD3 (Opal 520)`` → ``CD3``; ``Nuclei (DAPI)`` → ``DAPI``; ``Alexa 594`` stays."""
    m = re.match(r"^\s*(.*?)\s*\(([^)]*)\)\s*$", raw)
    if not m:
        return raw.strip()
    base, dye = m.group(1), m.group(2).strip()
    return "DAPI" if dye.upper() == "DAPI" else (base or dye)


# -------------------------------------------------------------------------------------------- inForm
_INFORM_MEAN = re.compile(r"^(Nucleus|Cytoplasm|Membrane|Entire Cell) (.+?) Mean(?: \(.*\))?$")


def _inform_unit(columns: list[str]) -> str | None:
    text = " ".join(map(str, columns)).lower()
    if "(microns)" in text or "sq microns" in text or "square microns" in text:
        return "um"
    if "(pixels)" in text:
        return "px"
    return None


def read_inform(df: pd.DataFrame, path: Path, **_: Any) -> ParsedTable:
    """inForm ``cell_seg_data`` (see the module notes)."""
    _need(df, path, ["Cell X Position", "Cell Y Position"], "inForm")
    unit = _inform_unit(list(df.columns))
    p = ParsedTable(x=df["Cell X Position"], y=df["Cell Y Position"], x_column="Cell X Position",
                    y_column="Cell Y Position", unit=unit, cell_id=df.get("Cell ID"), sample=df.get("Sample Name"),
                    sample_column="Sample Name")
    p.used |= {"Cell X Position", "Cell Y Position", "Cell ID", "Phenotype", "Tissue Category"}
    for c in df.columns:
        m = _INFORM_MEAN.match(str(c))
        if m:
            p.intensities[(_marker_name(m.group(2)), _COMPARTMENTS[m.group(1).lower()])] = df[c]
            p.used.add(c)
    markers = list(dict.fromkeys(k for k, _ in p.intensities))
    per_marker = [c for c in df.columns if str(c).startswith("Phenotype ")]
    if "Phenotype" in df.columns:
        p.phenotype = df["Phenotype"]
        p.positive.update(phenotype_flags(df["Phenotype"].fillna("other"), markers))
    for c in per_marker:  # inForm 2.4+ multi-schema: one column per marker, values "CD8+" / "CD8-"
        p.positive.update(phenotype_flags(df[c].fillna("other"), [str(c)[len("Phenotype "):]]))
    if "Tissue Category" in df.columns:
        p.category = df["Tissue Category"]
    for comp, key in (("cell", "Entire Cell Area"), ("nucleus", "Nucleus Area")):
        col = next((c for c in df.columns if str(c).startswith(key + " (") and "percent" not in str(c)), None)
        if col is not None:
            p.areas[comp] = (df[col], "px2" if "pixels" in str(col) else "um2")
            p.used.add(col)
    area_col = next((c for c in df.columns if str(c).startswith("Tissue Category Area")), None)
    if area_col is not None and "Tissue Category" in df.columns:
        p.region_area = (df[area_col], df["Tissue Category"], "px2" if "pixels" in str(area_col) else "um2")
    return p


# ---------------------------------------------------------------------------------------------- HALO
def _unmangle(name: str) -> str:
    """R's ``make.names`` spelling back to HALO's: ``FOXP3..Opal.620..Nucleus.Intensity`` →
    ``FOXP3 (Opal 620) Nucleus Intensity``."""
    if " " in name or "." not in name:
        return name
    parts = name.split("..")
    out = parts[0]
    for i, part in enumerate(parts[1:]):
        out += (" (" if i % 2 == 0 else ") ") + part
    return out.replace(".", " ").strip()


_HALO_MEAN = re.compile(r"^(.+?) (Nucleus|Cytoplasm|Membrane|Cell) Intensity$")
_HALO_POS = re.compile(r"^(.+?) Positive$")
_HALO_POS_COMP = re.compile(r"^(.+?) Positive (Nucleus|Cytoplasm|Membrane)$")


def _halo_dyes(df: pd.DataFrame) -> dict[str, str]:
    """``Dye N`` → its name from HALO's ``Analysis Inputs`` (``Dye 2:Opal 620;``)."""
    col = _first(df, ["Analysis Inputs", "Analysis.Inputs"])
    if col is None or df[col].dropna().empty:
        return {}
    return {f"Dye {n}": name.strip() for n, name in re.findall(r"Dye (\d+):([^;]+);", str(df[col].dropna().iloc[0]))}


def read_halo(df: pd.DataFrame, path: Path, **_: Any) -> ParsedTable:
    """HALO object export (see the module notes)."""
    _need(df, path, ["XMin", "XMax", "YMin", "YMax"], "HALO")
    x = (pd.to_numeric(df["XMin"], errors="coerce") + pd.to_numeric(df["XMax"], errors="coerce")) / 2
    y = (pd.to_numeric(df["YMin"], errors="coerce") + pd.to_numeric(df["YMax"], errors="coerce")) / 2
    sample_col = _first(df, ["Image Location", "Image.Location", "Image File Name", "Image Name"])
    p = ParsedTable(x=x, y=y, x_column="XMin", y_column="YMin", unit="px",
                    cell_id=df.get(_first(df, ["Object Id", "Object.Id"]) or "", None),
                    sample=df[sample_col] if sample_col else None, sample_column=sample_col)
    p.used |= {"XMin", "XMax", "YMin", "YMax", "Object Id", "Object.Id"}
    dyes = _halo_dyes(df)

    def name(raw: str) -> str:
        return _marker_name(dyes.get(raw, raw))

    for c in df.columns:
        clean = _unmangle(str(c))
        if (m := _HALO_MEAN.match(clean)) and not clean.startswith(("Region", "Analysis")):
            p.intensities[(name(m.group(1)), _COMPARTMENTS[m.group(2).lower()])] = df[c]
        elif m := _HALO_POS.match(clean):
            p.positive[name(m.group(1))] = pd.to_numeric(df[c], errors="coerce").fillna(0) > 0
        elif m := _HALO_POS_COMP.match(clean):
            continue  # per-compartment positivity stays as a vendor column
        elif re.match(r"^(Cell|Nucleus|Cytoplasm) Area\b", clean):
            comp = clean.split(" ")[0].lower()
            if comp in ("cell", "nucleus"):
                p.areas[comp] = (df[c], "um2")  # HALO states areas in µm² (R's names drop the symbol)
            continue
        else:
            continue
        p.used.add(c)
    label = _first(df, ["Classifier Label", "Classifier.Label"])
    if label is not None:
        p.category = df[label]
        p.used.add(label)
    region = _first(df, ["Region Area (μm²)", "Region Area (µm²)"])
    if region is not None:
        key = df[_first(df, ["Analysis Region", "Analysis.Region"]) or region]
        p.region_area = (df[region], key, "um2")
    return p


# -------------------------------------------------------------------------------------------- QuPath
_QUPATH_X = re.compile(r"^Centroid X(?:\s*\[?(µm|um|μm|px|pixels?)\]?)?$")
_QUPATH_MEAN = re.compile(r"^(Nucleus|Cytoplasm|Membrane|Cell): (.+?)(?:: | )[Mm]ean$")


def read_qupath(df: pd.DataFrame, path: Path, **_: Any) -> ParsedTable:
    """QuPath detection measurements (see the module notes)."""
    xcol = next((c for c in df.columns if _QUPATH_X.match(str(c))), None)
    if xcol is None:
        raise TableError(f"{path}: no column 'Centroid X µm' (or 'Centroid X px') for the cell positions of a QuPath "
                         "export; export detection measurements with centroids")
    ycol = str(xcol).replace("Centroid X", "Centroid Y")
    _need(df, path, [ycol], "QuPath")
    u = _QUPATH_X.match(str(xcol)).group(1)
    unit = None if u is None else ("px" if u.startswith("p") else "um")
    p = ParsedTable(x=df[xcol], y=df[ycol], x_column=str(xcol), y_column=ycol, unit=unit,
                    sample=df.get("Image"), sample_column="Image")
    p.used |= {xcol, ycol}
    for c in df.columns:
        m = _QUPATH_MEAN.match(str(c))
        if m:
            p.intensities[(_marker_name(m.group(2)), _COMPARTMENTS[m.group(1).lower()])] = df[c]
            p.used.add(c)
    cls = _first(df, ["Classification", "Class"])
    if cls is not None:
        p.phenotype = df[cls]
        markers = {m for m, _ in p.intensities}
        parts = df[cls].fillna("").astype(str).map(lambda v: {s.strip() for s in v.split(":")})
        for m in sorted(markers):
            if parts.map(lambda s, m=m: m in s).any():
                p.positive[m] = parts.map(lambda s, m=m: m in s).astype(bool)
    if "Parent" in df.columns:
        p.category = df["Parent"]
    for comp, key in (("cell", "Cell: Area"), ("nucleus", "Nucleus: Area")):
        col = next((c for c in df.columns if str(c).startswith(key)), None)
        if col is not None:
            p.areas[comp] = (df[col], "um2" if re.search(r"µm|um|μm", str(col)) else "px2")
            p.used.add(col)
    return p


# ------------------------------------------------------------------------- MCMICRO / SCIMAP, CODEX
_MCMICRO_SHAPE = {"CellID", "X_centroid", "Y_centroid", "Area", "MajorAxisLength", "MinorAxisLength",
                  "Eccentricity", "Solidity", "Extent", "Orientation", "imageid", "phenotype", "Z_centroid"}


def read_mcmicro(df: pd.DataFrame, path: Path, **_: Any) -> ParsedTable:
    """MCMICRO mcquant / SCIMAP CSV (see the module notes)."""
    _need(df, path, ["X_centroid", "Y_centroid"], "MCMICRO")
    p = ParsedTable(x=df["X_centroid"], y=df["Y_centroid"], x_column="X_centroid", y_column="Y_centroid", unit="px",
                    cell_id=df.get("CellID"), sample=df.get("imageid"), sample_column="imageid")
    p.used |= {"X_centroid", "Y_centroid", "CellID"}
    for c in df.columns:
        if c in _MCMICRO_SHAPE or not pd.api.types.is_numeric_dtype(df[c]):
            continue
        m = re.match(r"^(.+?)_(cell|nuclei|nucleus|cyto|cytoplasm|membrane)(?:Ring)?Mask$", str(c))
        comp = {"nuclei": "nucleus", "cyto": "cytoplasm"}.get(m.group(2), m.group(2)) if m else "cell"
        p.intensities[(m.group(1) if m else str(c), comp)] = df[c]
        p.used.add(c)
    if "phenotype" in df.columns:
        p.phenotype = df["phenotype"]
    if "Area" in df.columns:
        p.areas["cell"] = (df["Area"], "px2")
        p.used.add("Area")
    return p


_CODEX_OTHER = {"X.X", "Y.Y", "Z.Z", "Imaging.phenotype.cluster.ID", "niche.cluster.ID", "sample_Xtile_Ytile"}


def read_codex(df: pd.DataFrame, path: Path, *, phenotypes_file: str | Path | None = None, **_: Any) -> ParsedTable:
    """CODEX CSV in SPIAT's format (see the module notes)."""
    p = ParsedTable(x=df["X.X"], y=df["Y.Y"], x_column="X.X", y_column="Y.Y", unit="px",
                    sample=df.get("sample_Xtile_Ytile"), sample_column="sample_Xtile_Ytile")
    p.used |= {"X.X", "Y.Y"}
    for c in df.columns:
        if c not in _CODEX_OTHER and pd.api.types.is_numeric_dtype(df[c]):
            p.intensities[(str(c), "cell")] = df[c]
            p.used.add(c)
    cluster = df.get("Imaging.phenotype.cluster.ID")
    if cluster is not None and phenotypes_file is not None:
        names = pd.read_csv(phenotypes_file, sep="\t", header=None, names=["id", "name"], compression="infer")
        p.phenotype = cluster.map(dict(zip(names["id"], names["name"]))).fillna("unknown")
    return p


def read_cellprofiler(df: pd.DataFrame, path: Path, **_: Any) -> ParsedTable:
    """CellProfiler object table (see the module notes)."""
    xcol = next((c for c in df.columns if str(c).startswith("Location_Center_X")), "Location_Center_X")
    ycol = str(xcol).replace("_X", "_Y")
    _need(df, path, [xcol, ycol], "CellProfiler")
    p = ParsedTable(x=df[xcol], y=df[ycol], x_column=xcol, y_column=ycol, unit="px", cell_id=df.get("ObjectNumber"),
                    sample=df.get("ImageNumber"), sample_column="ImageNumber")
    p.used |= {xcol, ycol, "ObjectNumber"}
    for c in df.columns:
        if str(c).startswith("Intensity_MeanIntensity_"):
            p.intensities[(str(c)[len("Intensity_MeanIntensity_"):], "cell")] = df[c]
            p.used.add(c)
    if "AreaShape_Area" in df.columns:
        p.areas["cell"] = (df["AreaShape_Area"], "px2")
        p.used.add("AreaShape_Area")
    return p


READERS: dict[str, Callable[..., ParsedTable]] = {
    "inform": read_inform, "halo": read_halo, "qupath": read_qupath, "mcmicro": read_mcmicro,
    "cellprofiler": read_cellprofiler, "codex": read_codex,
}
"""Format name → reader."""

