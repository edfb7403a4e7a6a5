"""The package's import graph has no cycles, function-level imports included.

A cycle hidden behind an import inside a function still ties the two modules together: neither
can be understood, tested or replaced alone, and moving the import to the top breaks at import
time. The graph is read from the source with ``ast``, so it sees every import, executed or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import streaming_llm

PACKAGE = "streaming_llm"
ROOT = Path(streaming_llm.__file__).parent

#: Edges that close a cycle and are tolerated for now: none. Each entry would be an edge that
#: closes such a cycle; the test fails if any cycle remains that does not use one of these edges,
#: and also once the edge is gone (so an exemption cannot outlive its reason).
PENDING_EDGES: set[tuple[str, str]] = set()


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imported(node: ast.AST, importer: str, is_package: bool, modules: dict[str, Path], package: str) -> list[str]:
    """Package modules that ``node`` imports (``from . import x`` names module ``x`` if it is one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == package]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != package:
        return []
    found = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
    if len(found) < len(node.names):
        found.append(target)  # names defined in the module (or package) itself
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """``module -> modules it imports`` over the package, every import statement included.

    Importing ``a.b.c`` also runs the ``__init__`` of packages ``a.b`` the importer is not inside
    of, so those are edges too (the root package is left out: every module is inside it).
    """
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in _imported(node, name, _is_package(name, modules), modules, package):
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):
                    ancestor = ".".join(parts[:depth])
                    inside = name == ancestor or name.startswith(ancestor + ".")
                    if ancestor in modules and ancestor != name and (depth == len(parts) or not inside):
                        graph[name].add(ancestor)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    for source, target in PENDING_EDGES:
        assert target in graph[source], f"{source} no longer imports {target}: drop it from PENDING_EDGES"
        graph[source].discard(target)
    assert cycles(graph) == []


def test_the_protocol_is_a_leaf():
    """Cache and policies meet in ``protocol``, which depends on nothing of ours."""
    graph = import_graph()
    assert graph[f"{PACKAGE}.protocol"] == set()
    assert not any(target.startswith(f"{PACKAGE}.policies") for target in graph[f"{PACKAGE}.cache"])


def test_the_cycle_finder_finds_cycles(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (package / "sub" / "__init__.py").write_text("from .c import g\n")
    (package / "sub" / "c.py").write_text("def g():\n    from ..a import x\n")
    (package / "d.py").write_text("from .a import b\n")
    graph = import_graph(package, "pkg")
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}  # a function-level import, and the package it runs
    assert graph["pkg.sub"] == {"pkg.sub.c"}  # inside its own package: no edge back to the package
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"]]
