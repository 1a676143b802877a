"""The import graph: every import runs down the layers of docs/architecture.md, and no
module imports itself back through others (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top, as docs/architecture.md draws them: a module may import its own layer
# (without a cycle) and the layers below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("gateway.policy",),
    (
        "gateway",  # the package itself: its version
        "gateway.config",
        "gateway.logs",
        "gateway.audit",
        "gateway.metrics",
        "gateway.responses",
        "gateway.limits",
        "gateway.boundedcache",
        "gateway.collector",
        "gateway.jsontext",
        "gateway.asgi",
    ),
    ("gateway.auth", "gateway.catalog", "gateway.events"),
    ("gateway.services",),
    ("gateway.health", "gateway.background", "gateway.system", "gateway.middleware"),
    ("ui",),
    ("gateway.app",),
    (
        "gateway.protocol",
        "gateway.server",
        "gateway.commands",
        "gateway.doctorchecks",
        "gateway.doctor",
        "gateway.cli",
        "gateway.__main__",
    ),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in ("gateway", "ui"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def layer(name: str) -> int:
    """The layer of a module: that of the longest prefix named in LAYERS."""
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank < 0:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS and docs/architecture.md")
    return rank


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ours that `path` imports, wherever in the file (lazy ones included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            # `from gateway import metrics` imports the module gateway.metrics.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {name: imports(path, set(modules())) - {name} for name, path in modules().items()}


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_only_run_down_the_layers(name: str) -> None:
    upward = sorted(other for other in GRAPH[name] if layer(other) > layer(name))
    assert not upward, f"{name} (layer {layer(name)}) imports from higher layers: {upward}"


def test_the_policy_library_imports_nothing_else_of_ours() -> None:
    for name, imported in GRAPH.items():
        if name.startswith("gateway.policy"):
            others = sorted(i for i in imported if not i.startswith("gateway.policy"))
            assert not others, f"{name} imports {others}"


def test_there_is_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise AssertionError(f"import cycle: {cycle}")
        if name in done:
            return
        for other in sorted(GRAPH[name]):
            # A package's __init__ importing its own submodules is how packages re-export.
            if other.startswith(name + "."):
                continue
            visit(other, [*path, name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])
