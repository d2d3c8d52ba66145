"""The package's layers and the directions they may import in (``docs/architecture.md``).

Every ``import`` in ``src/megaphone`` is read (module level, inside functions, and under
``TYPE_CHECKING`` alike) and checked against :data:`MAY_IMPORT`; module-level imports must form
no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "megaphone"

#: Each layer, bottom up, and the layers it may import (itself always).
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "models": set(),
    "conf": {"core"},
    "protocol": {"core"},
    "backends": {"core", "conf", "models"},
    "engine": {"core", "conf", "protocol", "backends"},
    "server": {"core", "conf", "protocol", "backends", "engine"},
    "api": {"core", "conf", "protocol", "backends", "engine", "server"},
    "contrib": {"core", "conf", "protocol", "backends", "engine", "server", "api"},
    # The Python client runs in processes without Django: the pure core only.
    "client": {"core"},
}
#: Django's entry points and the public API sit on top and may import any layer.
ENTRY_POINTS = {
    "__init__",
    "apps",
    "urls",
    "api_urls",
    "routing",
    "asgi",
    "checks",
    "testing",
    "management",
    "migrations",
}


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every import of Megaphone's in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name == "megaphone" or name.startswith("megaphone."):
                found.append((name, id(node) in top_level))
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module ``name`` names (``from megaphone.core import hub`` names
    ``megaphone.core.hub``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    layer = _layer(module)
    if layer in ENTRY_POINTS:
        return
    assert layer in MAY_IMPORT, f"{module}: layer {layer!r} is not declared in MAY_IMPORT"
    allowed = MAY_IMPORT[layer] | {layer}
    wrong = sorted(
        {
            target
            for name, _ in _imports(module, MODULES[module])
            if (target := _resolve(name)) and target != "megaphone"
            if _layer(target) not in allowed
        }
    )
    assert not wrong, (
        f"{module} ({layer}) imports {wrong}; {layer} may import only {sorted(allowed)}"
    )


def test_every_layer_says_what_it_owns_and_may_import() -> None:
    for layer in MAY_IMPORT:
        init = PACKAGE / layer / "__init__.py"
        if init.exists():
            doc = ast.get_docstring(ast.parse(init.read_text())) or ""
            assert "Owns:" in doc and "May import:" in doc, f"{init} must say both"


def test_no_import_cycle_at_module_level() -> None:
    graph = {
        module: {
            target
            for name, top in _imports(module, path)
            if top and (target := _resolve(name)) and target not in (module, "megaphone")
        }
        for module, path in MODULES.items()
    }
    # Importing a package runs its __init__: a module importing its own package is no cycle.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
