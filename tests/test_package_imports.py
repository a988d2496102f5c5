"""docs/design.md's table of which package imports which is the code's: a new import across
packages (or one removed) fails here until the table says so. And the packages stay in
layers: none imports one that imports it back, directly or through others."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from graphlib import TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "core", "jobs", "project", "realtime")


def imports_across_packages() -> dict[tuple[str, str], set[str]]:
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    target = name.split(".")[0]
                    if target in PACKAGES and target != package:
                        edges[(package, target)].add(path.relative_to(ROOT).as_posix())
    return dict(edges)


def documented() -> dict[tuple[str, str], set[str]]:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("## Packages and their imports") :]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (.+) \|$", section, re.MULTILINE)
    return {(a, b): set(re.findall(r"`([^`]+)`", through)) for a, b, through in rows}


def test_the_documented_import_graph_is_the_codes() -> None:
    assert documented() == imports_across_packages()


def test_no_package_imports_one_that_imports_it_back() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, imported in imports_across_packages():
        graph[importer].add(imported)
    # Raises CycleError, naming the cycle, if any package reaches itself through imports.
    order = list(TopologicalSorter(graph).static_order())
    assert set(order) <= set(PACKAGES)
