"""Per-tile partial results and the final per-cell table: merge the tiles' blocks by label, one column at a
time, and derive the statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._kernels import _block_layout
from ._morphology import _morphology
from ._quantiles import _finish_quantiles


@dataclass
class _Parts:
    """Per-tile partial results (compact: one row per label present in the tile), merged by label at the end."""

    labels: list = field(default_factory=list)     # (n,) int64 label values of each tile
    blocks: list = field(default_factory=list)     # (2n, G) float64 sums per bin of each tile (see measure_tile)
    runs: list = field(default_factory=list)       # (m, 4) label, row, first col, last col
    q_done: dict = field(default_factory=dict)     # compartment -> list of (labels, (n, C, Q))
    q_pending: list = field(default_factory=list)  # (label, nucflag, values (m, C)) of cells cut by tiles


class _Merged:
    """Per-label sums over all tiles, one column at a time (a cell cut by tile seams is summed once).

    The tiles' blocks are kept as they are (two rows per label present in the tile); a column of the merged
    table is gathered in label order and summed over the rows of the same label, so no second copy of
    all partial sums is ever made.
    """

    def __init__(self, labels_list, blocks):
        all_labels = np.concatenate(labels_list)
        self.order = np.argsort(all_labels, kind="stable")
        sl = all_labels[self.order]
        del all_labels
        self.starts = np.flatnonzero(np.r_[True, sl[1:] != sl[:-1]])
        self.labels = sl[self.starts]
        self.unique = self.starts.size == sl.size
        del sl
        self.blocks = blocks

    def __call__(self, f: int, flag: int) -> np.ndarray:
        """Column ``f`` of the bins ``2 × cell + flag`` (flag 1 = nucleus), summed per label, in label order."""
        col = np.concatenate([b[flag::2, f] for b in self.blocks])[self.order]
        return col if self.unique else np.add.reduceat(col, self.starts)

    def cell(self, f: int) -> np.ndarray:
        """Column ``f`` summed over both compartments of each cell."""
        return self(f, 0) + self(f, 1)


_MORPHOLOGY_COLUMNS = ["eccentricity", "solidity", "major_axis_length_um", "minor_axis_length_um"]


def _assemble(parts, channels, n_c, px, compartments, statistics, qstats, qs, morphology, has_nuc,
              background):
    """The per-cell table from the tiles' partial results (``parts`` is emptied on the way, to free memory)."""
    a_um2 = px * px
    if not parts.labels:
        return _empty_table(channels, compartments, statistics, morphology)
    merged = _Merged(parts.labels, parts.blocks)
    parts.labels = []
    labels = merged.labels
    n = labels.size
    off_s, off_q, _ = _block_layout(n_c, morphology, "std" in statistics)
    n_cyto, n_nuc = merged(0, 0), merged(0, 1)
    area = n_cyto + n_nuc
    names = ["x_um", "y_um", "area_um2", "nucleus_area_um2"] + _intensity_columns(channels, compartments,
                                                                                 statistics)
    if morphology:
        names += _MORPHOLOGY_COLUMNS
    # one float block, column-major so that every column is written contiguously; the DataFrame wraps it
    # without a copy
    table = np.empty((len(names), n)).T
    col_of = {nm_: i for i, nm_ in enumerate(names)}
    cols = _ColumnWriter(table, col_of)
    cols.update({
        "x_um": (merged.cell(2) / area + 0.5) * px,
        "y_um": (merged.cell(1) / area + 0.5) * px,
        "area_um2": area * a_um2,
        "nucleus_area_um2": n_nuc * a_um2 if has_nuc else np.full(n, np.nan),
    })
    bg = np.array([float(background.get(ch, 0.0)) for ch in channels])
    comp_n = {"nucleus": n_nuc, "cytoplasm": n_cyto, "cell": area}
    qres = _finish_quantiles(parts, labels, n_c, compartments, qs, has_nuc) if qs else {}
    _write_intensities(cols, merged, channels, compartments, statistics, qstats, qres, comp_n, bg,
                       off_s, off_q, has_nuc)
    if morphology:
        # moments in the order of _morphology: Σy, Σx, Σy², Σx², Σxy
        mom = np.stack([merged.cell(1 + i) for i in range(5)], axis=1)
        cols.update(_morphology(mom, area, labels, np.concatenate(parts.runs), px))
    del merged
    parts.blocks.clear()
    df = pd.DataFrame(table, columns=names, copy=False)
    df.insert(0, "cell_id", labels.astype(np.uint32))
    return df


def _empty_table(channels, compartments, statistics, morphology):
    """The table without cells: every column, no rows (``cell_id`` uint32, the others float64)."""
    cols = ["cell_id", "x_um", "y_um", "area_um2", "nucleus_area_um2"]
    cols += _intensity_columns(channels, compartments, statistics)
    if morphology:
        cols += _MORPHOLOGY_COLUMNS
    df = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in cols})
    df["cell_id"] = df["cell_id"].astype(np.uint32)
    return df


def _write_intensities(cols, merged, channels, compartments, statistics, qstats, qres, comp_n, bg, off_s, off_q,
                       has_nuc):
    """Write every ``{marker}_{compartment}[_{stat}]`` column from the merged sums (NaN for empty or undefined
    compartments); background ``bg`` (C,) is subtracted as documented."""
    want_sq = "std" in statistics
    with np.errstate(invalid="ignore", divide="ignore"):
        for ci, ch in enumerate(channels):
            s_cyto, s_nuc = merged(off_s + ci, 0), merged(off_s + ci, 1)
            comp_s = {"nucleus": s_nuc, "cytoplasm": s_cyto, "cell": s_nuc + s_cyto}
            if want_sq:
                q_cyto, q_nuc = merged(off_q + ci, 0), merged(off_q + ci, 1)
                comp_s2 = {"nucleus": q_nuc, "cytoplasm": q_cyto, "cell": q_nuc + q_cyto}
            for comp in compartments:
                defined = has_nuc or comp == "cell"
                nn = comp_n[comp]
                empty = (nn == 0) | (not defined)
                s = comp_s[comp]
                for stat in statistics:
                    name = f"{ch}_{comp}" if stat == "mean" else f"{ch}_{comp}_{stat}"
                    if stat == "mean":
                        v = s / nn - bg[ci]
                    elif stat == "total":
                        v = s - nn * bg[ci]
                    elif stat == "std":
                        s2 = comp_s2[comp]
                        var = (s2 - s * s / nn) / nn
                        v = np.sqrt(np.maximum(var, 0.0))
                    else:
                        v = qres[comp][:, ci, qstats.index(stat)] - bg[ci]
                    cols[name] = np.where(empty, np.nan, v)


class _ColumnWriter:
    """dict-like writer of float columns into a preallocated (n, k) block."""

    def __init__(self, table, col_of):
        self.table, self.col_of = table, col_of

    def __setitem__(self, name, values):
        self.table[:, self.col_of[name]] = values

    def update(self, mapping):
        for k, v in mapping.items():
            self[k] = v


def _intensity_columns(channels, compartments, statistics):
    return [f"{ch}_{comp}" if stat == "mean" else f"{ch}_{comp}_{stat}"
            for ch in channels for comp in compartments for stat in statistics]

