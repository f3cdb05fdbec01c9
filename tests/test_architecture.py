"""The house's rules, read from the code: the dependency direction, no import circle, small modules.

``shelfcast -> server, agent -> forecasting``: the forecasting library knows nothing of the server, the
agent or the CLI; the server and the agent never import each other; nothing below ``shelfcast`` imports
it. Every import counts, at the top of a module or inside a function, and type-only imports too (a
circle through ``TYPE_CHECKING`` still ties two modules into one unit to read and to change).
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shelfcast", "server", "agent", "forecasting")
MAX_MODULE_LINES = 620  # "about 600": a module past it is split by what its parts do
FORBIDDEN = {
    "forecasting": ("server", "agent", "shelfcast"),
    "server": ("agent", "shelfcast"),
    "agent": ("server", "shelfcast"),
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def _circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph.modules)))
    try:
        for module in sorted(graph.modules):
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return found


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_dependency_direction(graph: grimp.ImportGraph, importer: str) -> None:
    """A package imports only the packages below it (shelfcast -> server, agent -> forecasting)."""
    broken = {
        f"{importer} -> {imported}": sorted(" -> ".join(chain) for chain in chains)[:5]
        for imported in FORBIDDEN[importer]
        if (chains := graph.find_shortest_chains(importer=importer, imported=imported))
    }
    assert not broken, broken


def test_no_import_circle(graph: grimp.ImportGraph) -> None:
    """No module reaches itself through imports, within a package or across packages."""
    assert _circles(graph) == []


def test_no_module_is_over_about_600_lines() -> None:
    """Every Python module of the packages, the tests and the benchmarks stays readable in one sitting."""
    long = {
        str(path.relative_to(ROOT)): lines
        for folder in (*PACKAGES, "tests", "benchmarks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long
