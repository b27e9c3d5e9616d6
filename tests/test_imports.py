"""The package's import graph: no circles at any depth, and no stage importing a later one.

Every `import` and `from ... import` in `finetune/` counts, those inside functions included, so
a circle cannot hide behind a late import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "finetune"
# The floors, lowest first: a module may import its own floor's and lower floors' modules only.
FLOORS = [
    {"errors", "files", "deps", "hardware", "quiet", "progress", "fetch", "stats"},
    {"tasks"},
    {"models"},
    {"recipe"},
    {"data"},
    {"runs", "tracking"},
    {"train"},
    {"systems"},
    {"teach", "judge"},
    {"evaluate"},
    {"report"},
    {"experiment"},
    {"deploy"},
    {"cli", "docs", "__main__", "__init__"},
]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `root` (a package's is its own)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(module: str, path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - node.level + 1]
        prefix = ".".join([*base, node.module] if node.module else base)
    else:
        prefix = node.module or ""
    return [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file. A submodule importing
    its own package's `__init__` is not counted: that is how a package hands names on."""
    names = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in names}
    for module, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(module, path, node):
                while target and target not in names:
                    target = target.rpartition(".")[0]
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def floor_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    for number, floor in enumerate(FLOORS):
        if part in floor:
            return number
    raise AssertionError(f"finetune.{part} is on no floor: add it to FLOORS in {__file__}")


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_no_module_imports_a_later_stage():
    graph = import_graph(PACKAGE)
    upward = [
        f"{m} -> {t}" for m, targets in graph.items() for t in targets if floor_of(t) > floor_of(m)
    ]
    assert upward == []


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("x = 1\n\ndef late():\n    from pkg import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("module", ["finetune.systems.registry", "finetune.tasks.metrics"])
def test_every_module_has_a_floor(module):
    assert floor_of(module) in range(len(FLOORS))
