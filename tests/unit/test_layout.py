"""The package's shape: no import cycles, metrics recorded only at the edge, errors that
do not depend on gRPC, and modules small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "semcache_server"
GENERATED = PACKAGE / "v1"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if GENERATED in path.parents:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """semcache modules imported at module level (not inside functions or TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("semcache")}


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {i for i in _imports(path) if i in modules and i != name} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        for dep in graph[name]:
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_only_the_facade_and_the_server_use_metrics():
    users = {name for name, path in _modules().items() if "semcache_server.metrics" in _imports(path)}
    assert users <= {"semcache_server.cache", "semcache_server.server"}, users


def test_errors_do_not_import_grpc():
    assert not any(i.startswith("grpc") for i in _imports(PACKAGE / "errors.py"))
    source = (PACKAGE / "errors.py").read_text()
    assert "import grpc" not in source


def test_no_module_is_over_about_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 420}
    assert not long, long
