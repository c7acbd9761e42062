"""The package's layout: imports point down from room to room, no cycles, small modules.

Every ``import`` in ``core/`` and ``integrations/`` counts, including those inside functions and
under ``TYPE_CHECKING``: a lazy import is still a dependency. Rooms are the top-level modules and
sub-packages of ``power_sampling``; a room may import only rooms of a lower rank.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"core": "power_sampling", "integrations": "power_sampling.integrations"}
MAX_LINES = 400

# Lower ranks are more basic; equal ranks may not import each other.
RANKS = {
    "power_math": 0,
    "text": 0,
    "config": 0,
    "errors": 0,
    "progress": 0,
    "constraints": 1,
    "fields": 1,
    "generation": 2,
    "request": 2,
    "backends": 3,
    "exact": 4,
    "samplers": 4,
    "testing": 4,
    "chat": 5,
    "engine": 6,
    "measure": 7,
    "evals": 7,
    "serving": 8,
    "integrations": 8,
    "cli": 9,
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules that ``name`` imports (a name imported from a package counts as
    its submodule where one exists)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                bases = [".".join([*parts, *([node.module] if node.module else [])])]
            else:
                bases = [node.module or ""]
            names = [alias.name for alias in node.names]
        else:
            continue
        for base in bases:
            if not base.startswith("power_sampling"):
                continue
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            targets.update(subs or [base])
    targets.discard(name)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_room_is_ranked() -> None:
    rooms = {_room(m) for m in MODULES} - {""}
    assert rooms <= set(RANKS), f"rank these rooms in RANKS: {sorted(rooms - set(RANKS))}"


def test_nothing_imports_the_package_facade() -> None:
    offenders = sorted(m for m, targets in GRAPH.items() if "power_sampling" in targets)
    assert not offenders, f"import from the defining module, not `power_sampling`: {offenders}"


def test_imports_point_down() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in GRAPH.items()
        for target in targets
        if _room(source)
        and _room(target)
        and _room(source) != _room(target)
        and RANKS[_room(target)] >= RANKS[_room(source)]
    ]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(GRAPH.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concern"
