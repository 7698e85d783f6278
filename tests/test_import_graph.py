"""No import cycles between the subpackages of rtdetr_spartan.

Every module's imports are read with ``ast``: top-level ones, those inside functions (a deferred
import that breaks a cycle at import time is still a cycle in the design) and those under
``TYPE_CHECKING``. A module ``rtdetr_spartan.<package>.x`` belongs to ``<package>``; a top-level
module (``rtdetr_spartan/api.py``) is a package of its own. The package root ``rtdetr_spartan``
itself (``__version__``) is not a package of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rtdetr_spartan"
PACKAGE = ROOT.name


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules ``module`` imports anywhere in its body."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            # ``from rtdetr_spartan import deploy`` imports the subpackage deploy
            names.update(f"{target}.{alias.name}" for alias in node.names if target == PACKAGE)
    return names


def _package_of(module: str, packages: set[str]) -> str | None:
    """The package of ``module``; None outside rtdetr_spartan, for the root itself and for names
    of the root (``from rtdetr_spartan import __version__``)."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2 or parts[1] not in packages:
        return None
    return parts[1]


def package_graph(root: Path = ROOT) -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the modules of ``package`` that import it."""
    packages = {p.stem for p in root.iterdir() if (p / "__init__.py").is_file() or p.suffix == ".py"}
    packages.discard("__init__")
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        source = _package_of(module, packages)
        if source is None:
            continue
        graph.setdefault(source, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in _imported(tree, module, path.name == "__init__.py"):
            target = _package_of(name, packages)
            if target is not None and target != source:
                graph[source].setdefault(target, set()).add(module)
    return graph


def find_cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def describe(graph: dict[str, dict[str, set[str]]], component: list[str]) -> str:
    edges = [
        f"  {a} -> {b} (in {', '.join(sorted(graph[a][b]))})"
        for a in component
        for b in sorted(graph.get(a, {}))
        if b in component
    ]
    return "cycle between " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_finder_reports_a_deferred_import_cycle(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    for package in ("a", "b", "c"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "a" / "x.py").write_text(f"from {PACKAGE}.b.y import f\n")
    (root / "b" / "y.py").write_text("def f():\n    from ..a import x\n    return x\n")
    (root / "c" / "z.py").write_text(f"from {PACKAGE}.a import x\n")
    graph = package_graph(root)
    assert graph["a"] == {"b": {f"{PACKAGE}.a.x"}}
    assert graph["b"] == {"a": {f"{PACKAGE}.b.y"}}
    assert find_cycles(graph) == [["a", "b"]]
    assert "b -> a (in rtdetr_spartan.b.y)" in describe(graph, ["a", "b"])


def test_no_cycles_between_packages() -> None:
    graph = package_graph()
    assert {"core", "data", "deploy", "benchmark", "visualize", "pipeline", "misc", "cli"} <= set(graph)
    cycles = find_cycles(graph)
    if cycles:
        pytest.fail("\n".join(describe(graph, c) for c in cycles))
