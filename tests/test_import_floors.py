"""The packages form floors and every import points down: no upward arrow, no circle.

Floors, lowest first: core (run config, runtime, checkpoints, errors) -> data -> models -> eval
-> train -> analysis / workflow / bench -> cli. Imports inside functions count too.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "etrm"
FLOORS = {"core": 0, "data": 1, "models": 2, "eval": 3, "train": 4, "analysis": 5, "workflow": 5, "bench": 5,
          "cli": 6, "__main__": 7}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("etrm"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from etrm.x import module`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("etrm"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def test_every_package_has_a_floor():
    assert {_floor(m) for m in _graph()} - {None} and all(_floor(m) is not None for m in _graph() if m != "etrm")


def test_no_import_points_up():
    upward = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
              if _floor(a) is not None and _floor(b) is not None and _floor(b) > _floor(a)]
    assert not upward, upward


def test_no_import_circle():
    graph = _graph()
    # Package __init__ files re-export their own modules; an edge from a module to its own
    # package's __init__ and back is how Python packages work, not a circle between concerns.
    edges = {a: {b for b in targets if not a.startswith(b + ".")} for a, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
