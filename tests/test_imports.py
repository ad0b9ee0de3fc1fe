"""The library's import graph has no cycle (module-level and function-level imports alike).

Each module's imports are read from its source (``import``/``from ... import`` anywhere in the file,
relative imports resolved), and the graph of chemozone modules is searched for strongly connected
components with more than one module. A package that imports a sibling through its own ``__init__``
(``from chemozone.stats import x`` inside ``chemozone/stats/_tests.py``) counts as a cycle too.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [(ROOT / "pipeline" / "chemozone", "chemozone"), (ROOT / "plugins" / "chemozone_napari", "chemozone_napari")]


def _modules(pkg_dir: Path, pkg: str) -> dict[str, Path]:
    mods = {}
    for p in pkg_dir.rglob("*.py"):
        parts = [pkg, *p.relative_to(pkg_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """chemozone modules that ``name`` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` needs pkg's __init__
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods: dict[str, Path] = {}
    for d, pkg in PACKAGES:
        mods.update(_modules(d, pkg))
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_inside_functions(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\nfrom ..a import f\n")
    mods = _modules(pkg, "p")
    g = {m: _imports(m, p, set(mods)) for m, p in mods.items()}
    assert g["p.a"] == {"p.sub.b"} and g["p.sub.b"] == {"p.a"}
    assert cycles(g) == [["p.a", "p.sub.b"]]


def test_library_and_plugin_have_no_import_cycle():
    graph = import_graph()
    assert "chemozone.grid" in graph and "chemozone.config" in graph
    assert cycles(graph) == []


def test_grid_module_is_bottom_level():
    """The analysis grid imports no other chemozone module at module level (errors only, lazily)."""
    assert import_graph()["chemozone.grid"] <= {"chemozone.errors"}


def test_library_never_imports_napari_qt_or_torch():
    code = ("import sys, chemozone, chemozone.run, chemozone.cli, chemozone.stats, chemozone.segment, "
            "chemozone.synth, chemozone.zones, chemozone.spatial, chemozone.phenotype, chemozone.report\n"
            "bad = sorted(m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'torch', 'cellpose', 'magicgui') "
            "if m in sys.modules)\nprint(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("module", ["chemozone.cli"])
def test_cli_imports_no_science_at_module_level(module):
    code = (f"import sys, {module}\nheavy = sorted(m for m in ('chemozone.run', 'chemozone.stats', 'chemozone.segment', "
            "'chemozone.synth', 'pandas', 'dask', 'scipy', 'skimage') if m in sys.modules)\nprint(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
