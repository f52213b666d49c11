"""The package's imports go one way (docs/architecture.md): no cycles, no layer imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "convunext"

LAYERS = {
    "errors": 0,
    "runtime": 1,
    "utils": 2,
    "models": 3,
    "data": 3,
    "checkpoint": 4,
    "pretrained": 5,
    "inference": 6,
    "evaluation": 7,
    "training": 8,
    "benchmarking": 9,
    "reproduce": 9,
    "cli": 10,
    "__main__": 11,
}
"""Layer of each top-level module or subpackage; a module may import only from lower layers and its own part."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    """Module -> {(imported convunext module, names imported from it)}, module-level and function-level alike."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    found: dict[str, set[tuple[str, tuple[str, ...]]]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = tuple(alias.name for alias in node.names)
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                if submodules:
                    found[name].update((module, ()) for module in submodules)
                elif target in modules:
                    found[name].add((target, names))
            elif isinstance(node, ast.Import):
                found[name].update((alias.name, ()) for alias in node.names if alias.name in modules)
    return found


def part(module: str) -> str:
    """``convunext.models.layers.mlp`` -> ``models``; the root package -> ``""``."""
    return module.split(".")[1] if "." in module else ""


def test_every_part_has_a_layer() -> None:
    parts = {part(module) for module in imports()} - {""}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


def test_imports_only_go_down() -> None:
    upward = []
    for module, targets in imports().items():
        for target, names in targets:
            source_part, target_part = part(module), part(target)
            if target_part == "":  # the root package: only its version string may be read from below
                if source_part and names != ("__version__",):
                    upward.append(f"{module} -> {target} {names}")
            elif source_part and source_part != target_part and LAYERS[source_part] <= LAYERS[target_part]:
                upward.append(f"{module} -> {target}")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = {module: {target for target, _ in targets if target != module} for module, targets in imports().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert not cycles, cycles
