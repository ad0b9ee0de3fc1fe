"""Chemokine co-expression modules of tumor cells (:func:`chemokine_modules`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MissingStepError, require_columns


def chemokine_modules(cells: pd.DataFrame, *, markers: Sequence[str] | None = None,
                      cell_types: Sequence[str] | None = None, tumor_prefix: str = "Tumor",
                      level: str = "cell", bin_um: float = 50.0, min_cells_per_bin: int = 5,
                      n_modules: int | None = None, distance_threshold: float = 0.7,
                      method: str = "average") -> dict[str, Any]:
    """Chemokine co-expression modules: Spearman correlation of positivity, hierarchically clustered.

    Parameters
    ----------
    cells : DataFrame
        Cells with ``{marker}_pos`` columns, ``cell_type`` and (for ``neighbourhood``) ``x_um, y_um, sample_id``.
    markers : sequence of str, optional
        Chemokine markers (default: every ``_pos`` marker starting with CXCL/CCL/CX3CL/XCL).
    cell_types : sequence of str, optional
        Cells used (default: cell types starting with ``tumor_prefix``).
    level : {"cell", "neighbourhood"}
        Correlate per tumor cell, or per square neighbourhood of ``bin_um`` (fraction positive, bins with at
        least ``min_cells_per_bin`` tumor cells, per sample).
    n_modules : int, optional
        Cut the tree into this many clusters; else cut at ``distance_threshold`` on ``1 − ρ``.
    method : str
        scipy linkage method.

    Returns
    -------
    dict
        ``corr`` (markers × markers Spearman ρ DataFrame), ``modules`` (Series marker → module number,
        1-based, ordered by the dendrogram), ``linkage`` (scipy linkage matrix), ``order`` (leaf order),
        ``n_units`` (cells or neighbourhoods used).
    """
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
    from scipy.spatial.distance import squareform
    from scipy.stats import spearmanr

    if markers is None:
        markers = [c[:-4] for c in cells.columns if c.endswith("_pos") and c.upper().startswith(("CXCL", "CCL", "CX3CL", "XCL"))]
    markers = list(markers)
    if len(markers) < 2:
        raise MissingStepError(f"need at least two gated chemokine markers ({{marker}}_pos columns), found {markers}; "
                               f"gate the chemokine channels in phenotypes.markers")
    require_columns(cells, [f"{m}_pos" for m in markers] + ["cell_type"], "cells table", "the phenotype step")
    ct = cells["cell_type"].astype(str)
    t = cells[ct.isin(cell_types) if cell_types is not None else ct.str.startswith(tumor_prefix)]
    X = t[[f"{m}_pos" for m in markers]].astype(float)
    if level == "neighbourhood":
        require_columns(t, ["x_um", "y_um", "sample_id"], "cells table", "quantification")
        key = [t["sample_id"].astype(str), (t["x_um"] // bin_um).astype(int), (t["y_um"] // bin_um).astype(int)]
        g = X.groupby(key)
        X = g.mean()[g.size() >= min_cells_per_bin]
    elif level != "cell":
        raise ValueError(f"level must be 'cell' or 'neighbourhood', got {level!r}")
    X.columns = markers
    if len(X) < 3:
        raise MissingStepError(f"only {len(X)} tumor cells/neighbourhoods to correlate; need at least 3")
    const = [m for m in markers if X[m].nunique() < 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant columns give NaN (set to 0 below)
        rho = spearmanr(X.to_numpy(), axis=0).statistic
    rho = np.atleast_2d(np.asarray(rho, float))
    if rho.shape != (len(markers), len(markers)):
        if rho.size == 1:  # two markers: spearmanr returns their one coefficient (as a 1x1 array here)
            r = float(rho.ravel()[0])
            rho = np.array([[1.0, r], [r, 1.0]])
    rho = np.nan_to_num(rho, nan=0.0)
    np.fill_diagonal(rho, 1.0)
    dist = np.clip(1 - rho, 0, 2)
    np.fill_diagonal(dist, 0)
    Z = linkage(squareform((dist + dist.T) / 2, checks=False), method=method)
    if n_modules is not None:
        lab = fcluster(Z, t=n_modules, criterion="maxclust")
    else:
        lab = fcluster(Z, t=distance_threshold, criterion="distance")
    order = leaves_list(Z)
    # renumber modules by first appearance in the dendrogram order
    ren: dict[int, int] = {}
    for i in order:
        ren.setdefault(int(lab[i]), len(ren) + 1)
    modules = pd.Series([ren[int(v)] for v in lab], index=markers, name="module")
    corr = pd.DataFrame(rho, index=markers, columns=markers)
    return {"corr": corr, "modules": modules, "linkage": Z, "order": [markers[i] for i in order],
            "n_units": int(len(X)), "constant": const}
