"""The numpydoc examples in the library's docstrings run (they are documentation users copy)."""
import doctest
import importlib
import pkgutil

import pytest

import chemozone

# every module, packages' private submodules included (the examples live where the functions are)
MODULES = sorted(m.name for m in pkgutil.walk_packages(chemozone.__path__, "chemozone."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_library_import_pulls_no_gui_or_torch():
    import subprocess
    import sys

    code = ("import sys, chemozone, chemozone.run, chemozone.segment, chemozone.report, chemozone.stats;"
            "bad=[m for m in ('napari','qtpy','PyQt5','PyQt6','PySide6','magicgui','torch','cellpose') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
