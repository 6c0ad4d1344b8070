"""The floors point one way (ARCHITECTURE.md): no import cycle among the package's
modules, counting imports inside functions, and the trainer takes from the generator only
its shared layer and small public faces, never its command line or publishing rooms."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("doppelgen", "doppeltrain")
# What doppeltrain may not import: the generator's command line and its publishing rooms.
TRAINER_MAY_NOT_IMPORT = ("doppelgen.cli", "doppelgen.publish", "doppelgen.pack")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in its body (functions included):
    ``from a.b import c`` counts as ``a.b.c`` where that is a module, else ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            # The nearest enclosing module of the package.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        # A package's __init__ is imported with each of its modules: not an edge back.
        graph[name] = {m for m in imported_modules(path, modules) if m != name and not name.startswith(m + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back_through_others():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_trainer_imports_no_command_line_or_publishing_module_of_the_generator():
    graph = import_graph()
    wrong = sorted(
        (module, target)
        for module, targets in graph.items()
        if module.startswith("doppeltrain")
        for target in targets
        if target.startswith(TRAINER_MAY_NOT_IMPORT)
    )
    assert wrong == []


def test_imports_inside_functions_count(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import doppelgen.a\n\ndef f():\n    from doppelgen.b import thing\n    from doppelgen import c\n")
    modules = {"doppelgen", "doppelgen.a", "doppelgen.b", "doppelgen.c"}
    assert imported_modules(source, modules) == {"doppelgen", "doppelgen.a", "doppelgen.b", "doppelgen.c"}
