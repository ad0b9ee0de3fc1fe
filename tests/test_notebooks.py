"""The notebooks execute end to end (nbclient) on a fabricated run folder, with outputs stripped in git."""
from __future__ import annotations

from pathlib import Path

import pytest

from chemozone.testing import fabricate_run

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb") / "run"
    fabricate_run(out, n_patients=3, seed=4, cells_per_sample=80, with_images=1)
    return out


def test_notebooks_found_and_stripped():
    import nbformat

    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_dose_response.ipynb", "03_spatial_zones.ipynb"]
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{p.name}: outputs not stripped"
                assert "def " not in c.source and "class " not in c.source, f"{p.name}: library code in a notebook"
        assert "import chemozone" in "".join(c.source for c in nb.cells) or "from chemozone" in "".join(
            c.source for c in nb.cells)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, run_folder, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CHEMOZONE_RUN", str(run_folder))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(o.output_type in ("execute_result", "display_data") for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
