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
def test_export_spatialdata_write(fab, tmp_path):
    """The store written to disk reads back with spatialdata: same image, labels, table and µm frame."""
    sd = _sd()
    from spatialdata.transformations import get_transformation

    from chemozone.io import read_image, read_labels_zarr
    from chemozone.layout import RunLayout, read_run_json

    dest = export.export_spatialdata(fab["out"], tmp_path / "r.zarr")
    assert dest == tmp_path / "r.zarr"
    s = sd.read_zarr(dest)
    cells = pd.read_parquet(fab["out"] / "cells.parquet")
    t = s.tables["table"]
    assert t.n_obs == len(cells)
    np.testing.assert_array_equal(np.sort(t.obs["cell_id"].to_numpy()), np.sort(cells["cell_id"].to_numpy()))
    np.testing.assert_allclose(t.obsm["spatial"], cells[["x_um", "y_um"]].to_numpy())
    assert t.uns["spatialdata_attrs"]["instance_key"] == "cell_id"
    lay = RunLayout(fab["out"])
    with_images = [k[: -len("_cells")] for k in s.labels if k.endswith("_cells")]
    assert len(with_images) == 2  # fabricate_run(with_images=2)
    for sid in with_images:
        lab = s.labels[f"{sid}_cells"]
        assert lab.dtype == np.uint32
        np.testing.assert_array_equal(lab.values, read_labels_zarr(lay.masks(sid), "cells"))
        assert get_transformation(lab).scale.tolist() == [0.5, 0.5]
        assert get_transformation(s.labels[f"{sid}_tissue"]).scale.tolist() == [4.0, 4.0]
        img = s.images[f"{sid}_image"]
        assert list(img.coords["c"].values) == MARKERS
        src = read_image(export._image_path(fab["out"], sid, read_run_json(fab["out"]), fab["samples"]))
        np.testing.assert_array_equal(img.values, np.asarray(src.data))


def test_spatialdata_known_broken_versions_refused(monkeypatch, tmp_path):
    versions = {"spatialdata": "0.7.0", "dask": "2026.8.0"}
    monkeypatch.setattr(export, "_installed_version", versions.__getitem__)
    with pytest.raises(MissingDependencyError, match=r"spatialdata 0\.7\.0 cannot write.*dask 2026\.8\.0.*spatialdata>=0\.7\.3"):
        export.export_spatialdata(tmp_path, tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()
    export._check_spatialdata_writer("0.7.3", "2026.8.0")  # the fixed release writes with any dask
    export._check_spatialdata_writer("0.7.0", "2026.1.1")  # old release with the dask it was built for
