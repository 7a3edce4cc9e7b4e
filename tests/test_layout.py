"""The architecture as a tested property (DESIGN.md §1): the import graph of ``ingest/`` and
``catalog/`` has no cycles, the catalog never imports the pipeline, the top of ``ingest/`` holds
only the shared leaf modules, and modules stay small enough to read.

Every ``import`` and ``from … import`` counts, wherever it stands: at the top of a module,
inside a function (lazy) or under ``if TYPE_CHECKING``. ``from package import name`` counts as
importing the submodule ``package.name`` when there is one, and the package otherwise.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ingest", "catalog", "s2ingest")
# the shared leaf modules at the top of ingest/ (everything else lives in a stage's folder)
TOP_LEVEL = {"ingest.errors", "ingest.config", "ingest.grid", "ingest.variables", "ingest.holders"}
# what the catalog may import from ingest/: errors, lock holders, product-name parsing
CATALOG_MAY_IMPORT = {"ingest", "ingest.errors", "ingest.holders", "ingest.products",
                      "ingest.products.names"}
MAX_LINES = 600
TEST_KITS = ("ingest.synth", "ingest.testing")


def _modules() -> dict[str, Path]:
    mods = {}
    for base in PACKAGES:
        for path in (ROOT / base).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES]
            targets = subs or [source]
        else:
            continue
        for target in targets:
            resolved = _resolve(target)
            if resolved and resolved != module:
                found.add(resolved)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_no_cycles_between_the_packages_of_ingest():
    def room(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] == "ingest" and len(parts) > 1 else parts[0]

    rooms: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        for target in targets:
            if room(module) != room(target):
                rooms.setdefault(room(module), set()).add(room(target))
    for r in list(rooms.values()):
        for target in r:
            rooms.setdefault(target, set())
    assert _cycles(rooms) == []


def test_the_catalog_never_imports_the_pipeline():
    used = {t for m, targets in GRAPH.items() if m.startswith("catalog") for t in targets
            if t.startswith("ingest")}
    assert used <= CATALOG_MAY_IMPORT, sorted(used - CATALOG_MAY_IMPORT)


def test_only_the_shared_leaf_modules_lie_at_the_top_of_ingest():
    loose = {m for m, p in MODULES.items()
             if m.count(".") == 1 and m.startswith("ingest.") and p.name != "__init__.py"}
    assert loose <= TOP_LEVEL, sorted(loose - TOP_LEVEL)


@pytest.mark.parametrize("leaf", sorted(TOP_LEVEL))
def test_the_shared_leaf_modules_import_no_stage(leaf):
    stages = {t for t in GRAPH[leaf] if t.startswith("ingest.") and t not in TOP_LEVEL}
    assert not stages, f"{leaf} imports {sorted(stages)}"


def test_nothing_outside_the_command_line_imports_it():
    users = {m for m, targets in GRAPH.items() if not m.startswith("ingest.cli")
             and any(t.startswith("ingest.cli") for t in targets)}
    assert not users, sorted(users)


def test_modules_are_small_enough_to_read():
    long = {m: n for m, p in MODULES.items()
            if not m.startswith(TEST_KITS) and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
