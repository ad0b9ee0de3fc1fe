"""``chemozone export OUT --to anndata|spatialdata``: a run folder for the scverse ecosystem (scimap, squidpy).

* AnnData: ``X`` = per-cell marker means (the ``{marker}_cell`` columns, or every ``{marker}_{compartment}``
  column when there is no whole-cell compartment), ``obs`` = the rest of the cell table (with metadata),
  ``obsm["spatial"]`` = ``[x_um, y_um]``, ``uns["chemozone"]`` = provenance (JSON text).
* SpatialData (extra ``spatialdata``): per sample the image (read lazily from run.json's inputs), the
  labels (``cells``, ``nuclei`` and the grid masks of ``masks.ome.zarr``, with their µm scale) and one table
  annotating the ``{sample_id}_cells`` labels.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MissingDependencyError, MissingStepError

__all__ = ["cells_to_anndata", "export_anndata", "to_spatialdata", "export_spatialdata"]

_COMPARTMENTS = ("cell", "nucleus", "cytoplasm")


def _intensity_columns(cells: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(columns used as X, var names)."""
    bool_like = {c for c in cells.columns if cells[c].dtype == bool}
    num = [c for c in cells.columns if c not in bool_like and pd.api.types.is_numeric_dtype(cells[c])]
    cell_cols = [c for c in num if c.endswith("_cell") and c not in ("area_cell",)]
    if cell_cols:
        return cell_cols, [c[: -len("_cell")] for c in cell_cols]
    skip = ("dist_", "x_um", "y_um")
    comp = [c for c in num if c.rsplit("_", 1)[-1] in _COMPARTMENTS and not c.startswith(skip)]
    return comp, comp


def cells_to_anndata(cells: pd.DataFrame, *, uns: dict | None = None):
    """An AnnData of a cell table (see module docstring).

    Raises
    ------
    MissingStepError
        The table has no marker-intensity columns or no ``x_um``/``y_um``.
    """
    import anndata as ad

    cols, var = _intensity_columns(cells)
    if not cols:
        raise MissingStepError("cells table has no '{marker}_{compartment}' intensity columns; run quantification first")
    miss = [c for c in ("x_um", "y_um", "sample_id", "cell_id") if c not in cells.columns]
    if miss:
        raise MissingStepError(f"cells table lacks {miss}; run quantification first")
    obs = cells.drop(columns=cols).copy()
    obs.index = (obs["sample_id"].astype(str) + ":" + obs["cell_id"].astype(str)).to_numpy()
    for c in obs.columns:
        if obs[c].dtype == object or isinstance(obs[c].dtype, pd.StringDtype):  # tables: pandas strings too
            obs[c] = obs[c].astype(str).astype("category")
    X = cells[cols].to_numpy(np.float32)
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(var, dtype=str)))
    a.var["column"] = cols
    a.obsm["spatial"] = cells[["x_um", "y_um"]].to_numpy(float)
    if uns:
        a.uns["chemozone"] = {k: json.dumps(v, default=str) for k, v in uns.items()}
    return a


def _provenance(out: Path) -> dict:
    from .layout import read_run_json

    run = read_run_json(out)
    return {"run_folder": str(out.resolve()), "config": run.get("config"), "versions": run.get("versions")}


def export_anndata(out: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Write the cohort cell table as ``.h5ad`` (default ``OUT/export/cells.h5ad``); returns the path.

    Raises
    ------
    RunError, MissingStepError
        Not a run folder / no ``cells.parquet``.
    """
    from .layout import RunLayout, atomic_path

    out = Path(out)
    prov = _provenance(out)
    lay = RunLayout(out)
    if not lay.cohort_cells.is_file():
        raise MissingStepError(f"{lay.cohort_cells}: no cell table; run 'chemozone run' into {out} first")
    cells = pd.read_parquet(lay.cohort_cells)
    a = cells_to_anndata(cells, uns=prov)
    dest = Path(dest) if dest else lay.export_anndata
    with atomic_path(dest) as tmp:
        a.write_h5ad(tmp.with_suffix(".h5ad"))
        os.replace(tmp.with_suffix(".h5ad"), tmp)
    return dest


def _import_spatialdata():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # third-party import-time deprecation warnings
            import spatialdata
            import spatialdata.models
            import spatialdata.transformations
    except ImportError as e:
        raise MissingDependencyError(
            f"exporting to SpatialData needs the 'spatialdata' extra ({e}); "
            "install it with: pip install 'chemozone[spatialdata]'") from None
    return spatialdata


def _image_path(out: Path, sid: str, run: dict, samples: pd.DataFrame) -> Path | None:
    inputs = run.get("inputs") or {}
    v = inputs.get(sid)
    if isinstance(v, dict) and v.get("cells_table"):  # a run on cell tables: no image
        return None
    if isinstance(v, dict) and v.get("path"):
        return Path(v["path"])
    if isinstance(v, str):
        return Path(v)
    img = samples.set_index("sample_id")["image"].get(sid) if "image" in samples else None
    if img is None:
        return None
    for key, val in inputs.items():  # inputs keyed by path
        p = Path(val.get("path", key) if isinstance(val, dict) else key)
        if p.name == Path(str(img)).name:
            return p
    p = Path(str(img))
    return p if p.is_absolute() else None


def _installed_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "0"


def _check_spatialdata_writer(spatialdata_version: str, dask_version: str) -> None:
    """Refuse the one known-broken combination before anything is written.

    spatialdata < 0.7.3 passes dask's per-block chunks (a tuple of tuples) as ``storage_options`` to
    ome-zarr, which under dask >= 2026.3 forwards them to ``zarr.create_array`` (TypeError). The
    ``spatialdata`` extra pins a working set (spatialdata >= 0.7.3, which caps dask).
    """
    from packaging.version import Version

    if Version(spatialdata_version) < Version("0.7.3") and Version(dask_version) >= Version("2026.3.0"):
        raise MissingDependencyError(
            f"spatialdata {spatialdata_version} cannot write a store with dask {dask_version} (upstream "
            "incompatibility with ome-zarr/zarr 3); install the pinned versions with: "
            "pip install 'chemozone[spatialdata]' (spatialdata>=0.7.3)")


def export_spatialdata(out: str | os.PathLike, dest: str | os.PathLike | None = None,
                       *, images: bool = True) -> Path:
    """Write :func:`to_spatialdata` as a zarr store (default ``OUT/export/run.spatialdata.zarr``); returns the path.

    Raises
    ------
    MissingDependencyError
        The ``spatialdata`` extra is not installed.
    """
    from .layout import RunLayout

    _check_spatialdata_writer(_installed_version("spatialdata"), _installed_version("dask"))
    sdata = to_spatialdata(out, images=images)
    dest = Path(dest) if dest else RunLayout(out).export_spatialdata
    with atomic_path_(dest) as tmp:
        sdata.write(tmp)
    return dest


def to_spatialdata(out: str | os.PathLike, *, images: bool = True):
    """A SpatialData object of a run folder (images lazy, labels lazy, one table).

    Elements: ``{sample_id}_image`` (lazy, from run.json's inputs, skipped when the image is gone),
    ``{sample_id}_{label}`` for each label image of ``masks.ome.zarr`` (scale = its pixel size, so every
    element lives in µm in the ``global`` coordinate system), and ``table`` (the AnnData of
    :func:`cells_to_anndata` annotating ``{sample_id}_cells`` by ``cell_id``).

    Raises
    ------
    MissingDependencyError
        The ``spatialdata`` extra is not installed.
    """
    sd = _import_spatialdata()
    from spatialdata.models import Image2DModel, Labels2DModel, TableModel
    from spatialdata.transformations import Scale

    from .io import labels_pixel_size_um, list_labels_zarr, read_image, read_labels_zarr
    from .layout import RunLayout, read_run_json

    out = Path(out)
    run = read_run_json(out)
    lay = RunLayout(out)
    for p in (lay.cohort_cells, lay.cohort_samples):
        if not p.is_file():
            raise MissingStepError(f"{p}: not found; run 'chemozone run' into {out} first")
    cells = pd.read_parquet(lay.cohort_cells)
    samples = pd.read_parquet(lay.cohort_samples)
    status = run.get("samples") or {}
    done = [s for s in samples["sample_id"] if (status.get(s) or {}).get("status", "done") == "done"]
    imgs, labels = {}, {}
    for sid in done:
        path = _image_path(out, sid, run, samples) if images else None
        if path is not None and path.exists():
            im = read_image(path)
            px = float(im.pixel_size_um)
            imgs[f"{sid}_image"] = Image2DModel.parse(
                im.data, dims=("c", "y", "x"), c_coords=list(im.channels),
                transformations={"global": Scale([px, px], axes=("y", "x"))})
        store = lay.masks(sid)
        for name in list_labels_zarr(store):
            arr = read_labels_zarr(store, name, lazy=True)
            px = labels_pixel_size_um(store, name) or 1.0
            if arr.dtype == np.uint8 or arr.dtype == bool:
                arr = arr.astype(np.uint32)  # spatialdata labels are integer ids
            labels[f"{sid}_{name}"] = Labels2DModel.parse(
                arr, dims=("y", "x"), transformations={"global": Scale([px, px], axes=("y", "x"))})
    a = cells_to_anndata(cells[cells["sample_id"].isin(done)], uns=_provenance(out))
    a.obs["cell_id"] = a.obs["cell_id"].astype(np.int64)
    if any(f"{sid}_cells" in labels for sid in done):
        a.obs["region"] = pd.Categorical([f"{s}_cells" for s in a.obs["sample_id"]])
        table = TableModel.parse(a, region=sorted(a.obs["region"].unique().tolist()), region_key="region",
                                 instance_key="cell_id")
    else:  # a run on cell tables without any cells mask: the table annotates no label image
        table = TableModel.parse(a)
    return sd.SpatialData(images=imgs, labels=labels, tables={"table": table})


def atomic_path_(dest):
    from .layout import atomic_path

    return atomic_path(dest)
