"""The package's house rules, read from the import graph (ast): they hold for lazy imports too."""

from __future__ import annotations

import ast
from pathlib import Path

import lusfeat

PACKAGE = Path(lusfeat.__file__).parent
COMMANDS = {"lusfeat.extract", "lusfeat.fit", "lusfeat.predict", "lusfeat.report", "lusfeat.explain"}
LAUNCHER = "lusfeat.__main__"  # `python -m lusfeat run`: calls the commands in turn


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every lusfeat module ``path`` imports, at the top or inside a function; ``from a import b`` counts a.b too."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "lusfeat" or name.startswith("lusfeat.")}


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    graph = import_graph()
    assert "lusfeat.embed" in graph["lusfeat.extract"]
    assert "lusfeat.models.video" in graph["lusfeat.models.registry"]
    assert COMMANDS <= set(graph)


def test_no_command_imports_another_command():
    graph = import_graph()
    crossing = sorted(f"{module} imports {target}" for module in COMMANDS for target in graph[module]
                      if target in COMMANDS and target != module)
    assert not crossing, "commands only parse, call and print; move what they share below them: " + "; ".join(crossing)


def test_the_library_never_imports_a_command():
    graph = import_graph()
    upward = sorted(f"{module} imports {target}" for module, targets in graph.items()
                    if module not in COMMANDS | {LAUNCHER} for target in targets if target in COMMANDS)
    assert not upward, "data flows one way; " + "; ".join(upward)


def test_nothing_in_the_product_imports_an_experiment():
    graph = import_graph()
    leaks = sorted(f"{module} imports {target}" for module, targets in graph.items()
                   if not module.startswith("lusfeat.experiments") for target in targets
                   if target.startswith("lusfeat.experiments"))
    assert not leaks, "lusfeat/experiments/ holds candidates that lost; the product never imports them: " + "; ".join(leaks)


def test_no_import_circles():
    """No module reaches back to one that imports it, however far round (lazy imports count)."""
    graph = {module: {target for target in targets if target in import_graph_modules()} for module, targets
             in import_graph().items()}
    circles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for target in sorted(graph.get(module, ())):
                if target == start:
                    circles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert not circles, "import circles (one module one job; move what both need below both): " + "; ".join(circles)


def import_graph_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py")}
