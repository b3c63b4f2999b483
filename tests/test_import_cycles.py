"""No import cycles among loracord's own modules (bot/, trainer/, storage/, loracord/), and its packages are layers.

The graph is built from the source with ``ast``: one node per module, one edge per ``import``
statement anywhere in the file, at module level or inside a function, class or ``if`` block
(a function-level import still ties the two modules together; it only hides the cycle until
the function runs). ``from a.b import c`` is an edge to ``a.b``, and to ``a.b.c`` when that is
a module. Not counted: the implicit import of a package's ``__init__`` when one of its
submodules is imported (a package that lists its own submodules, such as
``storage.jobkinds``, would otherwise always be a cycle), and a module importing itself (the
``if __name__ == "__main__"`` block of ``storage.worker`` re-imports its own module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "trainer", "storage", "loracord")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``path`` (module ``name``) imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # "import a.b.c" names a.b.c; keep the longest prefix that is one of our modules
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> nx.DiGraph:
    modules = project_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in imports_of(name, path, set(modules)))
    return graph


def test_the_graph_sees_the_project():
    """The walker finds module-level, function-level and relative imports (so an empty graph cannot pass)."""
    graph = import_graph()
    assert graph.number_of_nodes() > 60
    assert graph.has_edge("storage.queue", "storage.worker")  # module level, relative
    assert graph.has_edge("storage.jobrun", "storage.jobkinds")  # "from . import jobkinds"
    assert graph.has_edge("loracord.cli", "trainer.rundir")  # inside a command function
    assert graph.has_edge("storage.jobkinds.sample", "trainer.text.sample")  # inside a function, absolute


@pytest.mark.parametrize("edges", [[("a", "b"), ("b", "a")], [("a", "b"), ("b", "c"), ("c", "a")]])
def test_a_cycle_is_reported(edges):
    assert list(nx.simple_cycles(nx.DiGraph(edges)))


def test_no_import_cycles():
    cycles = sorted(" -> ".join([*c, c[0]]) for c in nx.simple_cycles(import_graph()))
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_packages_are_layers():
    """Top-level packages import only downwards: loracord -> bot -> storage -> trainer (so the
    package graph is acyclic too, and the trainer never needs Discord or the queue)."""
    order = {"trainer": 0, "storage": 1, "bot": 2, "loracord": 3}
    upwards = sorted(f"{a} -> {b}" for a, b in import_graph().edges()
                     if order[b.split(".")[0]] > order[a.split(".")[0]])
    assert upwards == []
