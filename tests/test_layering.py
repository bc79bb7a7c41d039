"""The package's dependencies point one way, and every module imports.

    core      <- the engine: imports nothing else of the package
    training  <- may import core
    sandbox   <- may import core and training
    nodes     <- may import core only (ComfyUI adapters)

The package root (``__init__``, ``__main__``, ``cli``) sits on top and may import any of them. Imports are
read from the source (module level and inside functions alike), so a lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import interleave_thinker

ROOT = Path(interleave_thinker.__file__).resolve().parent
PACKAGE = "interleave_thinker"
LAYERS = ("core", "training", "sandbox", "nodes")
ALLOWED = {
    "core": {"core"},
    "training": {"core", "training"},
    "sandbox": {"core", "training", "sandbox"},
    "nodes": {"core", "nodes"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] not in LAYERS and len(relative.parts) > 1:
            continue  # tests, bench, workflows: not part of the package
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([PACKAGE, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports, resolved to full names."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import memory` imports the submodule; `from .loop import X` the module itself.
            submodules = [f"{module}.{alias.name}" for alias in node.names]
            candidates = [c for c in submodules if c in MODULES] or [module]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            # The longest known module the name falls in: `from ..core import cli` imports core.cli.
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate.startswith(PACKAGE + ".") or candidate == PACKAGE:
                targets.add(candidate)
    targets.discard(name)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_arrow_points_down():
    wrong = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        if layer is None:
            continue  # the package root composes everything
        for target in sorted(targets):
            if _layer(target) not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle():
    """No module reaches itself through imports (the CLI and the sandbox once formed one circle)."""
    state: dict[str, int] = {}
    cycles = []

    def visit(module, path):
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if target == PACKAGE or target.endswith("__main__"):
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_module_imports(module):
    importlib.import_module(module)


def test_the_graph_sees_the_arrows_it_checks():
    """A guard on the checker itself: known arrows are found, so an empty list of errors means something."""
    assert f"{PACKAGE}.core.protocol" in GRAPH[f"{PACKAGE}.core.loop"]
    assert f"{PACKAGE}.core.cli" in GRAPH[f"{PACKAGE}.sandbox.cli"]
    assert f"{PACKAGE}.core.loop" in GRAPH[f"{PACKAGE}.nodes.agent_nodes"]
    assert f"{PACKAGE}.sandbox.cli" in GRAPH[f"{PACKAGE}.cli"]
