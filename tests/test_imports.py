"""The harness's module graph: no import cycles (function-level imports included, since they hide cycles rather
than remove them), and the leaderboard does not depend on the grid scheduler."""
import ast
from pathlib import Path

import networkx as nx
import pytest

PKG = Path(__file__).resolve().parent.parent / "benchmark"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """Edges module -> the benchmark modules it imports anywhere in its body (`from . import x` counts as
    importing benchmark.x)."""
    g = nx.DiGraph()
    modules = {_module(p) for p in PKG.rglob("*.py")}
    for path in PKG.rglob("*.py"):
        mod = _module(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        g.add_node(mod)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    src = f"{base}.{node.module}" if node.module else base
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in modules and t != mod:
                    g.add_edge(mod, t)
    return g


def test_the_graph_is_read_correctly():
    g = import_graph()
    assert g.has_edge("benchmark.grid", "benchmark.gridfile")          # from .gridfile import load_grid
    assert g.has_edge("benchmark.models", "benchmark.architectures")   # from . import architectures
    assert g.has_edge("benchmark.grid", "benchmark.executors")         # a function-level `from . import executors`


def test_the_harness_has_no_import_cycle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], f"import cycles in benchmark/: {cycles}"


@pytest.mark.parametrize("scheduler", ["benchmark.grid", "benchmark.executors", "benchmark.tasks"])
def test_the_site_does_not_depend_on_the_scheduler(scheduler):
    assert scheduler not in nx.descendants(import_graph(), "benchmark.site")
