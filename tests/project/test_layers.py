"""The layers of docs/architecture.md, read from the source: no module imports a layer above its own,
and no import (at module level or inside a function) closes a circle between revsde's modules."""
from __future__ import annotations

import ast
from pathlib import Path

import revsde

PACKAGE = Path(revsde.__file__).resolve().parent
#: the top-level part of revsde -> its layer (0: core; 1: kernels, nets, metrics, audio; 2: integrations,
#: apps; 3: the command line)
LAYERS = {"sde": 0, "samplers": 0, "model": 0, "grids": 0, "noise": 0, "solve": 0, "tensors": 0, "files": 0,
          "philox": 0, "brownian_tree": 0, "graphs": 0, "graph_buffers": 0, "grid_fit": 0, "grid_files": 0,
          "kernels": 1, "nets": 1, "metrics": 1, "audio": 1, "io": 1, "weights": 1,
          "integrations": 2, "apps": 2, "cli": 3, "__main__": 3}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the revsde modules it imports anywhere in its source (lazy imports included)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate not in paths and "." in candidate:
                    candidate = candidate.rsplit(".", 1)[0]
                if candidate in paths and candidate.startswith("revsde."):
                    targets.add(candidate)
                    break
        graph[name] = targets - {name}
    return graph


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_top_level_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.name != "__init__.py"}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                    if layer(a) is not None and layer(b) is not None and layer(b) > layer(a))
    assert not upward, "imports up the layers (docs/architecture.md):\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def is_training(module: str) -> bool:
    return module.endswith(".train") or module == "revsde.apps.trainer"


def test_inference_never_imports_training():
    """Below the command line, no module reaches a training module (``apps.<app>.train``, ``apps.trainer``)
    through its imports, directly or through others, unless it trains itself."""
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    found = sorted(f"{m} -> {', '.join(sorted(t for t in reach(m) if is_training(t)))}" for m in graph
                   if not is_training(m) and layer(m) is not None and layer(m) < LAYERS["cli"]
                   and any(is_training(t) for t in reach(m)))
    assert not found, "inference importing training:\n" + "\n".join(found)


def test_the_layout_limits():
    """docs/architecture.md: modules of at most 400 lines, folders of at most 15 modules."""
    long = sorted(f"{p.relative_to(PACKAGE.parent)}: {n}" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400)
    crowded = sorted(f"{d.relative_to(PACKAGE.parent)}: {n}" for d in [PACKAGE, *PACKAGE.rglob("*")] if d.is_dir()
                     and (n := len([p for p in d.glob("*.py") if p.name != "__init__.py"])) > 15)
    assert not long and not crowded, f"modules over 400 lines: {long}; folders over 15 modules: {crowded}"


def test_no_test_module_imports_another():
    """Tests by layer (docs/architecture.md): what test modules share is in ``tests/fixtures.py`` (and the
    pytest fixtures in ``conftest.py``); no test module imports another or ``conftest``."""
    tests = PACKAGE.parent / "tests"
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(tests)}: {n}" for n in names if n.split(".")[0].startswith("test_")
                      or n == "conftest"]
    assert not found, "test modules importing others:\n" + "\n".join(found)
