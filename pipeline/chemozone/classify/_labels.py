"""The label store: a user's cell labels in the run folder, to save, continue and merge."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ClassifierError

LABEL_COLUMNS = ["sample_id", "cell_id", "target", "kind", "label", "timestamp"]
"""One row per labelled (sample, cell, target): ``kind`` is ``marker`` (``label`` ``pos``/``neg``) or
``cell_type`` (``label`` = the class name); ``timestamp`` is ISO 8601 UTC."""
_KEY = ["sample_id", "cell_id", "target"]


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"sample_id": pd.Series(dtype=object), "cell_id": pd.Series(dtype=np.int64),
                         "target": pd.Series(dtype=object), "kind": pd.Series(dtype=object),
                         "label": pd.Series(dtype=object), "timestamp": pd.Series(dtype=object)})


def merge_labels(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Union of two label tables; for a cell labelled in both, the later ``timestamp`` wins (``new`` on a tie).

    Parameters
    ----------
    old, new : DataFrame
        Label tables (:data:`LABEL_COLUMNS`).

    Returns
    -------
    DataFrame
        Sorted by sample, target, cell.

    Raises
    ------
    ClassifierError
        A target labelled both as a marker and as cell types.

    Examples
    --------
    >>> a = pd.DataFrame({"sample_id": ["s"], "cell_id": [1], "target": ["CD3"], "kind": ["marker"],
    ...                   "label": ["pos"], "timestamp": ["2024-01-01T00:00:00+00:00"]})
    >>> b = a.assign(label="neg", timestamp="2024-01-02T00:00:00+00:00")
    >>> merge_labels(a, b)["label"].tolist(), merge_labels(b, a)["label"].tolist()
    (['neg'], ['neg'])
    """
    both = pd.concat([_empty(), old[LABEL_COLUMNS], new[LABEL_COLUMNS]], ignore_index=True)
    both = both.astype({"sample_id": str, "cell_id": np.int64, "target": str, "kind": str, "label": str,
                        "timestamp": str})
    kinds = both.groupby("target")["kind"].nunique()
    mixed = sorted(kinds[kinds > 1].index)
    if mixed:
        raise ClassifierError(f"labels of {mixed} are both marker (pos/neg) and cell-type labels; use another target "
                              "name for the cell types")
    both["_order"] = np.arange(len(both))
    both = both.sort_values(["timestamp", "_order"], kind="stable").drop_duplicates(_KEY, keep="last")
    return both.drop(columns="_order").sort_values(["sample_id", "target", "cell_id"], kind="stable").reset_index(drop=True)


class LabelStore:
    """Cell labels kept in a Parquet file (default: the run folder's ``classifier/labels.parquet``).

    Examples
    --------
    >>> import tempfile
    >>> store = LabelStore(Path(tempfile.mkdtemp()) / "labels.parquet")
    >>> store.add("s1", [4, 5], target="CXCR3", labels=[True, False])
    >>> store.add("s1", [7], target="cell_type", labels="T cell")
    >>> _ = store.save()
    >>> again = LabelStore(store.path)
    >>> again.labels("CXCR3")["label"].tolist(), again.targets()
    (['pos', 'neg'], ['CXCR3', 'cell_type'])
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._table = self._read(self.path) if self.path.is_file() else _empty()

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike) -> LabelStore:
        """The store of a run folder (:attr:`chemozone.layout.RunLayout.cell_labels`)."""
        from ..layout import RunLayout

        return cls(RunLayout(run_dir).cell_labels)

    @staticmethod
    def _read(path: Path) -> pd.DataFrame:
        table = pd.read_parquet(path)
        missing = [c for c in LABEL_COLUMNS if c not in table.columns]
        if missing:
            raise ClassifierError(f"{path}: not a label file (lacks columns {missing}); move it away or delete it")
        return merge_labels(_empty(), table)

    def add(self, sample_id: str, cell_ids: Sequence[int] | np.ndarray, *, target: str,
            labels: bool | str | Sequence[bool] | Sequence[str], timestamp: str | None = None) -> None:
        """Label cells of one sample for one target (replacing earlier labels of the same cells).

        Parameters
        ----------
        sample_id : str
        cell_ids : sequence of int
        target : str
            The marker (bool labels: True = positive) or the cell-type classification (str labels: class names).
        labels : bool, str or sequence of them
            One for all cells, or one per cell.
        timestamp : str, optional
            ISO 8601; default now (UTC).
        """
        ids = np.atleast_1d(np.asarray(cell_ids, dtype=np.int64))
        vals = list(labels) if isinstance(labels, (list, tuple, np.ndarray, pd.Series)) else [labels] * len(ids)
        if len(vals) != len(ids):
            raise ClassifierError(f"labels for target '{target}': {len(vals)} labels for {len(ids)} cells")
        is_bool = [isinstance(v, (bool, np.bool_)) for v in vals]
        if any(is_bool) and not all(is_bool):
            raise ClassifierError(f"labels for target '{target}' mix True/False and class names; use one kind")
        kind = "marker" if all(is_bool) else "cell_type"
        text = [("pos" if v else "neg") if kind == "marker" else str(v) for v in vals]
        ts = timestamp or datetime.now(timezone.utc).isoformat()
        new = pd.DataFrame({"sample_id": str(sample_id), "cell_id": ids, "target": str(target), "kind": kind,
                            "label": text, "timestamp": ts})
        self._table = merge_labels(self._table, new)

    def remove(self, sample_id: str, cell_ids: Sequence[int] | np.ndarray, *, target: str) -> None:
        """Forget the labels of these cells for ``target``."""
        ids = set(np.atleast_1d(np.asarray(cell_ids, dtype=np.int64)).tolist())
        t = self._table
        drop = (t["sample_id"] == str(sample_id)) & (t["target"] == str(target)) & t["cell_id"].isin(ids)
        self._table = t[~drop].reset_index(drop=True)

    def merge(self, other: LabelStore | pd.DataFrame) -> None:
        """Take in another store's (or table's) labels; the later timestamp wins per cell."""
        table = other._table if isinstance(other, LabelStore) else other
        self._table = merge_labels(self._table, table)

    def labels(self, target: str | None = None) -> pd.DataFrame:
        """The labels (of one target, or all), :data:`LABEL_COLUMNS`."""
        t = self._table if target is None else self._table[self._table["target"] == str(target)]
        return t.reset_index(drop=True).copy()

    def targets(self) -> list[str]:
        """Targets with at least one label, sorted."""
        return sorted(self._table["target"].unique().tolist())

    def save(self) -> Path:
        """Write the store to :attr:`path` (atomically)."""
        from ..layout import write_parquet

        return write_parquet(self._table[LABEL_COLUMNS], self.path)

    def training_set(self, cells: pd.DataFrame, features: pd.DataFrame, *, target: str) -> tuple[pd.DataFrame, np.ndarray]:
        """Features and labels of the labelled cells of ``target`` found in ``cells``.

        Parameters
        ----------
        cells : DataFrame, shape (n_cells, ...)
            ``sample_id``, ``cell_id``.
        features : DataFrame, shape (n_cells, n_features)
            :func:`cell_features` of ``cells`` (same rows).

        Returns
        -------
        (DataFrame, ndarray)
            Feature rows of the labelled cells (in ``cells`` order) and their labels: bool for a marker,
            class names for cell types; labels of cells not in ``cells`` are left out.

        Raises
        ------
        ClassifierError
            No label of ``target`` matches a cell of ``cells``.
        """
        lab = self.labels(target)
        sid = cells["sample_id"].astype(str) if "sample_id" in cells.columns else pd.Series("", index=cells.index)
        keys = pd.MultiIndex.from_arrays([sid.to_numpy(), cells["cell_id"].astype(np.int64).to_numpy()])
        lookup = pd.Series(lab["label"].to_numpy(), index=pd.MultiIndex.from_arrays(
            [lab["sample_id"].to_numpy(), lab["cell_id"].to_numpy()]))
        hit = keys.isin(lookup.index)
        if not hit.any():
            raise ClassifierError(f"{self.path}: no label of '{target}' matches a cell of this table "
                                  f"({len(lab)} labels of samples {sorted(lab['sample_id'].unique())[:5]})")
        y = lookup.reindex(keys[hit]).to_numpy()
        if len(lab) and (lab["kind"] == "marker").all():
            y = y == "pos"
        x = features.iloc[np.flatnonzero(hit)]
        x.attrs.update(features.attrs)
        return x, y
