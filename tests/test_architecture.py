"""The package's architecture, read from its source with `ast` (nothing is imported): no import cycle, each room
imports only the rooms below it, and no module grows past 600 lines without saying why.

Every import counts: at the top of a module, inside a function, under `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rnninit_cli"

# room → the rooms it may import besides itself; a room is a subpackage or a module at the top of the package.
# The order of the data flow: formats (files) and layouts (names and gates) know nothing of the rest; init plans
# and draws; diagnostics reads tensors back; report and plot show; rewrite runs the pipelines; cli parses flags.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "terminal": set(),
    "interruption": set(),
    "bfloat16": set(),
    "formats": {"errors", "interruption", "bfloat16"},
    "layouts": {"errors", "bfloat16"},
    "init": {"errors", "layouts", "formats"},
    "diagnostics": {"errors", "layouts", "init", "bfloat16"},
    "documents": {"errors", "layouts", "init", "diagnostics"},
    "report": {"errors", "terminal", "layouts", "init", "diagnostics", "documents"},
    "plain": {"report"},
    "plot": {"errors", "terminal", "formats", "diagnostics"},
    "stale": {"errors"},
    "packing": {"errors", "formats", "layouts", "diagnostics"},
    "rewrite": {"errors", "formats", "layouts", "init", "diagnostics", "documents", "stale", "packing", "rnninit_cli"},
    "reading": {"formats", "layouts", "rewrite"},
    "cli_help": {"errors", "init", "layouts"},
    "cli": {"errors", "terminal", "interruption", "cli_help", "formats", "layouts", "init", "diagnostics",
            "documents", "report", "plain", "plot", "rewrite", "reading", "rnninit_cli"},
    "__main__": {"cli"},
    "rnninit_cli": set(),  # the package's __init__: its public names are imported lazily, by importlib
}
LINE_LIMIT = 600
LONG_MODULE_REASON = "Longer than 600 lines because"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], package_path: Path = PACKAGE) -> set[str]:
    """The package's modules that `path` imports anywhere in it (`from . import x` counts as module x)."""
    name = module_name(path, package_path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(path, package) for path in paths}
    return {module_name(path, package): imported_modules(path, modules, package) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} imports {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if room(target) != room(module) and room(target) not in MAY_IMPORT[room(module)]]


def test_every_room_is_in_the_contract() -> None:
    rooms = {room(module) for module in import_graph()}
    assert rooms == set(MAY_IMPORT), "add the new room to MAY_IMPORT (and to README's map)"


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_each_room_imports_only_the_rooms_below_it() -> None:
    assert layering_violations(import_graph()) == []


@pytest.mark.parametrize("back_import", [
    ("rnninit_cli.formats.checkpoint", "from ..report import apply_table"),  # a room importing one above it
    ("rnninit_cli.formats.unpickle.objects", "from ..checkpoint import Checkpoint"),  # a cycle inside a room
    ("rnninit_cli.layouts.discovery", "if TYPE_CHECKING:\n    from ..init.planning import Plan"),
])
def test_a_back_import_is_caught(back_import: tuple[str, str], tmp_path: Path) -> None:
    """The checks above can fail: a copy of the package with one import added back up is refused."""
    import shutil

    copy = tmp_path / "rnninit_cli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    module, line = back_import
    path = copy.joinpath(*module.split(".")[1:]).with_suffix(".py")
    path.write_text(path.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")
    graph = import_graph(copy)
    assert cycles(graph) or layering_violations(graph)


def test_long_modules_say_why() -> None:
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if lines > LINE_LIMIT and LONG_MODULE_REASON not in docstring:
            long[module_name(path)] = lines
    assert long == {}, f"split these modules, or state in their docstring: {LONG_MODULE_REASON} ..."
