"""The package's shape: every module named in docs/design.md's "Code layout", layers that import
only downwards, and no import cycle. `python -m pytest tests/test_code_layout.py` proves it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vastpanel"
# Lowest first: a module may import its own layer and the layers before it, never one after.
LAYERS = (
    (
        "base",
        (
            "config",
            "clock",
            "errors",
            "events",
            "formatting",
            "logs",
            "counters",
            "instance_http",
            "schedule_windows",
            "addresses",
        ),
    ),
    ("storage", ("storage",)),
    ("vast", ("vast",)),
    ("domain", ("domain",)),
    ("watchdog", ("watchdog",)),
    ("web", ("web",)),
    ("app", ("", "cli", "demo", "healthcheck", "serving")),
)
# storage and vast stand side by side: neither may import the other.
SIDE_BY_SIDE = {("storage", "vast"), ("vast", "storage")}
ALLOWED_ACROSS = {("storage", "base"), ("vast", "base")}


def layout_section() -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    return text.split("## Code layout", 1)[1].split("\n## ", 1)[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Return the package's modules that a module imports (at any place in its code)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from X import a` names the module X.a when there is one, else something of X.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> str | None:
    """Return the layer of a module of the package, or None for the simulator."""
    inner = name.split(".", 1)[1] if "." in name else ""
    if inner == "simulator" or inner.startswith("simulator."):
        return None
    first = inner.split(".", 1)[0]
    for layer, members in LAYERS:
        if first in members:
            return layer
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def test_every_module_has_its_line_in_the_code_layout():
    section = layout_section()
    rows = section.splitlines()
    for package in sorted(p.parent for p in PACKAGE.glob("*/__init__.py")):
        row = next(r for r in rows if f"`vastpanel/{package.name}/`" in r)
        if package.name == "simulator":
            continue  # a world of its own, described in its __init__.py
        named = set(re.findall(r"`(\w+\.py)`", row))
        modules = {p.name for p in package.glob("*.py")} - {"__init__.py"}
        assert modules <= named, (package.name, modules - named)
    base_row = next(r for r in rows if r.startswith("| base |"))
    for module in PACKAGE.glob("*.py"):
        assert f"`vastpanel/{module.name}`" in section or f"`{module.name}`" in base_row, module


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_from_a_higher_layer(name):
    order = [layer for layer, _ in LAYERS]
    mine = layer_of(name)
    for target in GRAPH[name]:
        theirs = layer_of(target)
        if mine is None or theirs is None:  # the simulator: only the app's demo uses it
            assert mine in (None, "app") and theirs is None, f"{name} -> {target}"
            continue
        assert (mine, theirs) not in SIDE_BY_SIDE, f"{name} ({mine}) imports {target} ({theirs})"
        assert order.index(theirs) <= order.index(mine), (
            f"{name} ({mine}) imports {target} ({theirs})"
        )


def test_the_web_layer_never_touches_sqlite():
    for name, targets in GRAPH.items():
        if layer_of(name) == "web":
            assert not {t for t in targets if layer_of(t) == "storage"}, name


def test_there_is_no_import_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert cycles == []


def test_test_helpers_do_not_ship_in_the_package():
    assert not (PACKAGE / "testing").exists()
    assert "FakeClock" not in (PACKAGE / "clock.py").read_text()


def test_every_top_level_path_named_exists():
    for path in re.findall(r"`(\w[\w./-]*/)`", layout_section()):
        if not path.startswith("vastpanel/"):
            assert (ROOT / path.rstrip("/")).exists(), path
