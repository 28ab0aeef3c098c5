"""The import graph of gptcore's Python modules (parsed with `ast`, not imported): no cycle, no
import of a gptcore module inside a function (a cycle held open by deferred imports), model.py on
ops alone, and no module importing one of a higher layer (DESIGN.md's layering)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "python" / "gptcore"

# DESIGN.md, top to bottom: a module may import its own layer's modules and lower layers' (by name prefix).
LAYERS = [
    ("gptcore.cli", "gptcore.__main__"),
    ("gptcore.serve", "gptcore.training", "gptcore.finetune"),
    (
        "gptcore.generate",
        "gptcore.core_decoder",
        "gptcore.evaluate",
        "gptcore.multiple_choice",
        "gptcore.parallel",
        "gptcore.checkpoint",
        "gptcore.convert",
    ),
    ("gptcore.model", "gptcore.optim", "gptcore.data"),
    ("gptcore.ops",),
    ("gptcore.native",),  # where the installed C API is: standard library only
]


def _modules() -> dict[str, Path]:
    """{dotted module name: file} of every module under python/gptcore (a package by its __init__)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _target(name: str) -> str | None:
    """The gptcore module an imported name lives in (its longest module prefix), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(gptcore module imported, line, inside a function) of every import statement in `module`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _parse_imports(path.read_text(encoding="utf-8"), module, package)


def _parse_imports(source: str, module: str, package: str) -> list[tuple[str, int, bool]]:
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                names = [f"{base}.{alias.name}" for alias in child.names]  # a submodule, or a name in base
            else:
                visit(child, nested)
                continue
            for name in names:
                target = _target(name)
                if target is not None and target != module:
                    found.append((target, child.lineno, in_function))

    visit(ast.parse(source), False)
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the gptcore modules it imports, at module or function level. A submodule importing
    its own package (whose __init__ re-exports it) is left out: that is how packages are built."""
    graph = {}
    for module in MODULES:
        targets = {target for target, _, _ in _imports(module)}
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of `graph`: one path around each strongly connected component of two or more."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_path_around(graph, min(component), component) for component in components]


def _path_around(graph: dict[str, set[str]], start: str, component: set[str]) -> list[str]:
    """A shortest import path start -> ... -> start inside one component (breadth first)."""
    previous, frontier = {}, [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start}: no cycle in its component")


def _layer(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module}: in no layer of test_architecture.LAYERS; add it where DESIGN.md puts it")


def test_the_graph_sees_every_kind_of_import():
    graph = _graph()
    assert "gptcore.ops" in graph["gptcore.model"]  # from gptcore import ops as gptcore_ops
    assert "gptcore.ops.reference" in graph["gptcore.model"]  # from gptcore.ops import reference
    assert "gptcore.data.tokenizer" in graph["gptcore.data.preprocess"]  # from gptcore.data.tokenizer import ...
    assert "gptcore.checkpoint.names" in graph["gptcore.checkpoint.folders"]
    assert "gptcore.checkpoint.folders" in graph["gptcore.checkpoint"]  # a package re-exporting its modules
    assert graph["gptcore.data.indexed"] == set()  # from gptcore import _C: its own package, left out
    source = "import torch\nfrom gptcore import ops\nclass A:\n    def f(self):\n        from . import model\n"
    assert _parse_imports(source, "gptcore.x", "gptcore") == [("gptcore.ops", 2, False), ("gptcore.model", 5, True)]
    # cycles are found and named
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("module", MODULES)
def test_no_function_level_import_of_gptcore(module):
    inside = sorted({(line, target) for target, line, in_function in _imports(module) if in_function})
    inside = [f"line {line}: {target}" for line, target in inside]
    assert not inside, f"{MODULES[module]} imports gptcore modules inside functions: {', '.join(inside)}"


def test_model_imports_only_ops():
    others = sorted(
        target
        for target in _graph()["gptcore.model"]
        if not (target == "gptcore.ops" or target.startswith(("gptcore.ops.", "gptcore.model")))
    )
    assert not others, f"gptcore.model imports {others}; the model may import gptcore.ops and its own config only"


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        if module != "gptcore"  # the package root, whose lazy attributes reach into every layer
        for target in sorted(targets)
        if target != "gptcore" and _layer(target) < _layer(module)
    ]
    assert not upward, "imports of a higher layer (DESIGN.md's layering): " + ", ".join(upward)
