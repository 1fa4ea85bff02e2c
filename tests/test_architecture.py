"""The walls of the house, read from the code's own imports (every import statement, lazy ones inside functions
included): no cycles, stages that never import each other, a training core without the lake or the engines,
pure rewards, engines that know nothing of the lake."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = "proxyreward_pl"
STAGES = {f"{PACKAGE}.{s}" for s in ("rollout", "score", "select", "train", "evaluate", "report")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources(folder: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO / folder).rglob("*.py"))}


MODULES = _sources(PACKAGE)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module `path` imports (absolute names; `from pkg import mod` counts as pkg.mod when that is a
    module), lazy imports included."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = set(MODULES)
    return {name: imports_of(name, path, known) for name, path in MODULES.items()}


def _internal(graph, name):
    return {m for m in graph[name] if m in graph}


def test_no_import_cycle(graph):
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(_internal(graph, node)):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_stage_imports_another_stage_or_the_loop(graph):
    for stage in STAGES:
        assert stage in graph, stage
        wrong = _internal(graph, stage) & (STAGES | {f"{PACKAGE}.iterate"})
        assert not wrong, f"{stage} imports {sorted(wrong)}"


def _closure(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        current = todo.pop()
        for nxt in graph.get(current, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_training_core_needs_neither_lake_nor_engines_nor_duckdb(graph):
    core = [m for m in graph if m.startswith(f"{PACKAGE}.training")]
    assert f"{PACKAGE}.training.core" in core
    forbidden = ("duckdb", "polars", f"{PACKAGE}.lake", f"{PACKAGE}.engines")
    for module in core:
        reached = _closure(graph, module)
        bad = sorted(m for m in reached if any(m == f or m.startswith(f + ".") for f in forbidden))
        assert not bad, f"{module} reaches {bad}"


@pytest.mark.parametrize("room, forbidden", [
    ("rewards", ("lake", "engines", "asking", "judging", "prompts")),   # pure functions of answers
    ("engines", ("lake", "asking", "judging")),                        # engines know nothing of the lake
    ("lake", ("engines", "asking", "judging", "rewards", "training")),
])
def test_rooms_keep_their_walls(graph, room, forbidden):
    for module in (m for m in graph if m.startswith(f"{PACKAGE}.{room}")):
        bad = sorted(m for m in graph[module]
                     if any(m == f"{PACKAGE}.{f}" or m.startswith(f"{PACKAGE}.{f}.") for f in forbidden))
        assert not bad, f"{module} imports {bad}"


def test_the_package_imports_no_tests_notebooks_or_benchmarks(graph):
    for module, targets in graph.items():
        bad = sorted(t for t in targets if t.split(".")[0] in ("tests", "notebooks", "benchmarks"))
        assert not bad, f"{module} imports {bad}"


def test_benchmarks_use_fixture_servers_not_test_modules():
    for name, path in _sources("benchmarks").items():
        for target in imports_of(name, path, set()):
            if target.startswith("tests"):
                assert target.startswith("tests.servers"), f"{name} imports {target}"


def test_nothing_imports_the_closed_world_benchmark(graph):
    bench = f"{PACKAGE}.closedworld.bench"
    users = sorted(m for m, targets in graph.items() if bench in targets and m != f"{PACKAGE}.__main__")
    assert not users, f"{users} import the benchmark"
