"""The package's layering, read from its source: one direction, no cycles, small modules.

Every import counts, including those inside functions, so a cycle cannot hide
behind a lazy import.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cnnvis_ext"

#: The library: what it imports must stay inside the library.
LIBRARY = ("io", "seeding", "_modules", "ops", "nn", "graph", "vis", "distributed", "metrics")
#: The application built on it.
APPLICATION = ("models", "data", "train", "report", "cli")

MAX_LINES = 700


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(current: str, is_pkg: bool, node: ast.ImportFrom):
    if node.level == 0:
        base = node.module or ""
    else:
        parts = current.split(".")
        if not is_pkg:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return base


#: Compiled modules: leaves of the graph.
EXTENSIONS = ("cnnvis_ext._C",)


def _imports(mods):
    """``{module: set of package modules it imports}`` (a name imported from a package
    counts as the submodule when one exists by that name)."""
    graph = {e: set() for e in EXTENSIONS}
    mods = {**mods, **{e: None for e in EXTENSIONS}}
    for name, path in mods.items():
        if path is None:
            continue
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("cnnvis_ext"):
                    deps.add(t)
        graph[name] = deps
    return graph


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles():
    mods = _modules()
    graph = _imports(mods)
    # a package's __init__ re-exports its submodules; an edge submodule -> own package
    # __init__ would be a cycle only through that re-export, so it is counted too.
    color = {}
    stack = []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if color.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in color:
                visit(d)
        stack.pop()
        color[n] = 2

    for n in sorted(graph):
        if n not in color:
            visit(n)


def test_library_does_not_import_the_application():
    graph = _imports(_modules())
    bad = [(m, d) for m, deps in graph.items() if _top(m) in LIBRARY
           for d in deps if _top(d) in APPLICATION]
    assert not bad, f"library modules import the application: {bad}"


def test_every_module_is_in_a_layer():
    unknown = sorted({_top(m) for m in _modules()} - set(LIBRARY) - set(APPLICATION)
                     - {"", "__main__", "_C"})
    assert not unknown, f"modules in no layer (add them to LIBRARY or APPLICATION): {unknown}"


def test_modules_are_small():
    long = {m: n for m, p in _modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_checker_sees_cycles_and_layers(tmp_path, monkeypatch):
    """The checks above can fail: a fake package with a cycle and an upward import trips them."""
    pkg = tmp_path / "cnnvis_ext"
    (pkg / "vis").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "vis" / "__init__.py").write_text("")
    (pkg / "vis" / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "vis" / "b.py").write_text("from .a import f\nfrom ..train import x\n")
    (pkg / "train.py").write_text("x = 1\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PKG"]), "PKG", pkg)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()
    with pytest.raises(AssertionError, match="import the application"):
        test_library_does_not_import_the_application()
