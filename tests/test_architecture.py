"""The package's shape as a test: dependencies flow one way, files stay small.

Every module under `src/lavt` is parsed with `ast` and every `import` / `from ... import`
is collected, also those inside functions (a local import is still a dependency). Layers,
lowest first; a module may import its own layer and the ones below, never one above:

    ops < models < data < loading, runtime < engine < inference, demo, serve, export < cli

`errors`, `visualize`, `metrics`, `precision`, `images` and `hub` are helpers usable from every layer; they
import no other lavt module except `lavt.errors`. The root package `lavt` is the public
facade (its names are loaded lazily by string, which this test does not follow) and no lavt
module imports it.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lavt"

# Second name component (lavt.<part>...) -> rank; equal ranks may import each other.
LAYERS: dict[str, int] = {
    "ops": 0,
    "models": 1,
    "data": 2,
    "loading": 3,
    "checkpoint_format": 3,  # the training-run format, read by loading, written by the engine
    "runtime": 3,  # the torch-free ONNX runtime: imports only lavt.errors and torch-free helpers
    "onnx_module": 3,  # an exported folder behind LAVT's calls, for loading
    "export": 5,
    "engine": 4,
    "inference": 5,
    "demo": 5,
    "serve": 5,
    "cli": 6,
    "__main__": 6,
}
HELPERS = {"errors", "visualize", "metrics", "precision", "images", "hub"}
TORCH_FREE = {"lavt.errors", "lavt.images", "lavt.hub"}  # what lavt.runtime may import besides itself
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> Iterator[tuple[str, int]]:
    """(imported lavt module, line) for every import statement in module `name`, at any depth.

    `from a.b import c` names the module `a.b.c` when that is a module, else `a.b`; relative
    imports are resolved against the importing module's package.
    """
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in MODULES:  # `import lavt.x.y` imports lavt.x.y
                    target = target.rpartition(".")[0]
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "lavt":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if sub in MODULES else source
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                if target:
                    yield target, node.lineno


GRAPH: dict[str, dict[str, int]] = {
    name: {target: line for target, line in imports_of(name) if target != name} for name in MODULES
}


def layer_of(name: str) -> str | None:
    """The layer key of a module (`lavt.models.swin` -> 'models'); None for the root facade."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """The first import cycle of a depth-first search, as a path that returns to its start."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def layer_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Every import that goes up the layer order, out of a helper, or into the root facade."""
    wrong = []
    for name, targets in graph.items():
        here = layer_of(name)
        for target, line in sorted(targets.items()):
            there = layer_of(target)
            where = f"{MODULES[name].relative_to(SRC) if name in MODULES else name}:{line} imports {target}"
            if there is None:
                wrong.append(f"{where} (the root facade; import from the defining module)")
            elif here in HELPERS:
                if target != "lavt.errors":
                    wrong.append(f"{where} (helpers import nothing of lavt but lavt.errors)")
            elif there in HELPERS or here is None:
                continue
            elif LAYERS[there] > LAYERS[here]:
                wrong.append(f"{where} (layer {there} is above {here})")
    return wrong


def test_the_checker_sees_local_imports_and_finds_what_is_wrong() -> None:
    """The collector and both checks on known cases: an import inside a function counts,
    `from pkg import name` names the package, and a planted cycle or upward import is found."""
    assert "lavt.errors" in GRAPH["lavt.models.config"]
    assert "lavt.models" in GRAPH["lavt.cli.convert"]  # imported inside its run function only
    assert "lavt.data.synthref.writer" in GRAPH["lavt.data.synthref"]
    planted = {"lavt.models.a": {"lavt.models.b": 1}, "lavt.models.b": {"lavt.models.a": 2}, "lavt.ops.c": {}}
    assert find_cycle(planted) == ["lavt.models.a", "lavt.models.b", "lavt.models.a"]
    assert find_cycle({"lavt.models.a": {"lavt.ops.c": 1}, "lavt.ops.c": {}}) is None
    upward = {"lavt.models.a": {"lavt.data.b": 3, "lavt.errors": 4}, "lavt.metrics": {"lavt.models.a": 5},
              "lavt.cli.x": {"lavt.engine.y": 6, "lavt": 7}}
    found = layer_violations(upward)
    assert len(found) == 3, found
    assert any("lavt.data.b (layer data is above models)" in f for f in found)
    assert any("helpers import nothing" in f for f in found) and any("root facade" in f for f in found)


def test_every_module_has_a_layer() -> None:
    unknown = sorted(n for n in MODULES if n != "lavt" and layer_of(n) not in LAYERS and layer_of(n) not in HELPERS)
    assert not unknown, f"modules outside every layer (add them to LAYERS or HELPERS in this test): {unknown}"


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_are_imported_downwards_only() -> None:
    wrong = layer_violations(GRAPH)
    assert not wrong, "dependencies against the layer order:\n" + "\n".join(wrong)


def test_the_runtime_imports_nothing_that_imports_torch() -> None:
    """lavt.runtime runs where torch is absent (tests/test_runtime.py runs it so); statically, it
    imports only itself and the torch-free helpers, and those import no torch either."""
    wrong = [f"{name} imports {target}" for name, targets in GRAPH.items() if name.startswith("lavt.runtime")
             for target in targets if not target.startswith("lavt.runtime") and target not in TORCH_FREE]
    assert not wrong, wrong
    for name in TORCH_FREE | {n for n in MODULES if n.startswith("lavt.runtime")}:
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        roots = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not roots & {"torch", "transformers"}, f"{name} imports {roots & {'torch', 'transformers'}}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_file_is_over_the_line_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines (limit {MAX_LINES}): split it"


def test_exactly_one_backward_call() -> None:
    """One place calls `.backward(` (method or `torch.autograd.backward`): every training loop shares it."""
    calls = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
                calls.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert len(calls) == 1, f"expected exactly one .backward( call in src/lavt, found {len(calls)}: {calls}"
