"""chemozone.export: AnnData and SpatialData from a fabricated run folder."""
from __future__ import annotations

import builtins
import types
import warnings

import numpy as np
import pandas as pd
import pytest

from chemozone import export
from chemozone.cli import cli_export
from chemozone.errors import MissingDependencyError, MissingStepError, RunError
from chemozone.testing import MARKERS, fabricate_run


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    return fabricate_run(out, n_patients=1, seed=3, with_images=2, cells_per_sample=50, n_failed=0)


def test_export_anndata(fab, tmp_path):
    import anndata as ad

    dest = tmp_path / "c.h5ad"
    assert cli_export(types.SimpleNamespace(out=fab["out"], to="anndata", dest=dest)) == 0
    a = ad.read_h5ad(dest)
    cells = pd.read_parquet(fab["out"] / "cells.parquet")
    assert a.n_obs == len(cells)
    assert list(a.var_names) == MARKERS
    np.testing.assert_allclose(a.X[:, 1], cells["PanCK_cell"].to_numpy(np.float32))
    np.testing.assert_allclose(a.obsm["spatial"], cells[["x_um", "y_um"]].to_numpy())
    assert {"cell_type", "phenotype", "patient", "dose_gy", "CXCL8_pos"} <= set(a.obs.columns)
    assert "config" in a.uns["chemozone"]
    # default destination inside the run folder
    assert export.export_anndata(fab["out"]) == fab["out"] / "export" / "cells.h5ad"


def test_anndata_compartment_fallback():
    cells = pd.DataFrame({"sample_id": ["s"] * 3, "cell_id": [1, 2, 3], "x_um": [0.0, 1, 2], "y_um": [0.0, 1, 2],
                          "CD3_nucleus": [1.0, 2, 3], "CD3_cytoplasm": [4.0, 5, 6], "dist_t_um": [1.0, 2, 3]})
    a = export.cells_to_anndata(cells)
    assert list(a.var_names) == ["CD3_nucleus", "CD3_cytoplasm"]
    assert "dist_t_um" in a.obs.columns
    with pytest.raises(MissingStepError, match="intensity columns"):
        export.cells_to_anndata(cells[["sample_id", "cell_id", "x_um", "y_um"]])


def test_export_errors(tmp_path):
    with pytest.raises(RunError, match="no run.json"):
        export.export_anndata(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(MissingStepError, match="cells.parquet.*chemozone run"):
        export.export_anndata(tmp_path)


def test_spatialdata_missing_extra(monkeypatch, tmp_path):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("spatialdata"):
            raise ImportError("No module named 'spatialdata'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingDependencyError, match=r"chemozone\[spatialdata\]"):
        export.export_spatialdata(tmp_path)


def _sd():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import spatialdata as sd
    except ImportError:
        pytest.skip("spatialdata extra not importable")
    return sd


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_to_spatialdata(fab):
    _sd()
    s = export.to_spatialdata(fab["out"])
    sid = fab["samples"]["sample_id"].iloc[0]
    assert f"{sid}_image" in s.images and f"{sid}_cells" in s.labels and f"{sid}_zone_CXCL8" in s.labels
    assert list(s.images[f"{sid}_image"].coords["c"].values) == MARKERS
    t = s.tables["table"]
    assert t.n_obs == len(pd.read_parquet(fab["out"] / "cells.parquet"))
    assert t.uns["spatialdata_attrs"]["instance_key"] == "cell_id"
    lab = s.labels[f"{sid}_cells"]
    assert lab.dtype == np.uint32 and lab.shape == (64, 64)
    from spatialdata.transformations import get_transformation

    # the grid masks (4 um pixels) and the full-resolution labels (0.5 um) share the micrometre frame
    assert get_transformation(s.labels[f"{sid}_tissue"]).scale.tolist() == [4.0, 4.0]
    assert get_transformation(lab).scale.tolist() == [0.5, 0.5]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.xfail(raises=TypeError, strict=False,
                   reason="spatialdata 0.7.0 passes dask's tuple-of-tuples chunks to ome-zarr 0.18 / zarr 3.1 "
                          "(TypeError 'Expected an iterable of integers'); upstream incompatibility")
def test_export_spatialdata_write(fab, tmp_path):
    sd = _sd()
    dest = export.export_spatialdata(fab["out"], tmp_path / "r.zarr")
    s = sd.read_zarr(dest)
    assert "table" in s.tables
