"""The house's size rules and its import graph, for every file under ``app/``.

STYLE and issue 19: no file over 600 lines, no function over 80, no signature over 8
parameters (``self``/``cls`` not counted) except FastAPI routes, Typer commands and the zoo's
namesake kwargs; and no import cycle among ``app`` modules at import time.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

from tests.fixtures import REPO_ROOT

APP = REPO_ROOT / "app"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 8
# The objects whose methods FastAPI registers as routes (``@router.post(...)``, ``@app.get``).
ROUTE_OWNERS = {"router", "app"}


def _files() -> list[Path]:
    files = sorted(APP.rglob("*.py"))
    assert files
    return files


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    count = len([a for a in named if a.arg not in ("self", "cls")])
    return count + (args.vararg is not None) + (args.kwarg is not None)


def _is_route(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        func = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in ROUTE_OWNERS
        ):
            return True
    return False


def _typer_commands() -> set[tuple[Path, str]]:
    """``(file, function name)`` of every command and callback the ``graft`` Typer app holds."""
    from app.cli import cli

    found: set[tuple[Path, str]] = set()
    apps = [cli]
    while apps:
        typer_app = apps.pop()
        callbacks = [c.callback for c in typer_app.registered_commands]
        callbacks.append(
            typer_app.registered_callback.callback if typer_app.registered_callback else None
        )
        for group in typer_app.registered_groups:
            if group.typer_instance is not None:
                apps.append(group.typer_instance)
        for callback in callbacks:
            if callback is not None:
                fn = inspect.unwrap(callback)
                found.add((Path(inspect.getfile(fn)).resolve(), fn.__name__))
    return found


def test_typer_commands_are_found() -> None:
    commands = _typer_commands()
    names = {name for _, name in commands}
    assert {"convert", "plan", "inspect", "submit", "serve", "worker"} <= names
    assert all(path.is_relative_to(APP.resolve() / "cli") for path, _ in commands)


def test_no_file_is_over_600_lines() -> None:
    long = {
        str(f.relative_to(REPO_ROOT)): n
        for f in _files()
        if (n := f.read_text().count("\n")) > MAX_FILE_LINES
    }
    assert long == {}


def test_no_function_is_over_80_lines() -> None:
    long = {}
    for f in _files():
        for node in _functions(ast.parse(f.read_text())):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long[f"{f.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"] = lines
    assert long == {}


def test_no_signature_takes_more_than_8_parameters() -> None:
    commands = _typer_commands()
    zoo = APP / "zoo"
    wide = {}
    for f in _files():
        if f.is_relative_to(zoo):
            continue  # the zoo's constructors take their namesakes' kwargs, by design
        for node in _functions(ast.parse(f.read_text())):
            if _is_route(node) or (f.resolve(), node.name) in commands:
                continue  # FastAPI dependencies and Typer options are parameters by design
            count = _parameter_count(node)
            if count > MAX_PARAMETERS:
                wide[f"{f.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"] = count
    assert wide == {}


# Import cycles ----------------------------------------------------------------------------------


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _import_time_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not TYPE_CHECKING-only."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, module: str, modules: set[str]) -> set[str]:
    """The ``app`` modules one import statement loads (by name, not their parent packages)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules
    if node.level:
        package = module.split(".")
        is_package = module in modules and (APP.parent / Path(*package) / "__init__.py").exists()
        base = package if is_package else package[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    found = set()
    for alias in node.names:
        child = f"{source}.{alias.name}"
        found.add(child if child in modules else source)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``app`` modules it imports at import time (none of its own ancestors)."""
    paths = {_module_name(f): f for f in _files()}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        edges: set[str] = set()
        for node in _import_time_imports(ast.parse(path.read_text())):
            edges |= _targets(node, module, modules)
        graph[module] = {m for m in edges if m != module and not module.startswith(m + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
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
    return sorted(found)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]


def test_import_graph_resolves_from_imports_to_modules() -> None:
    graph = import_graph()
    assert "app.engine.readers.source" in graph["app.engine.readers.opening"]
    # Imported only inside a function, or only for type checking: no edge.
    assert "app.engine.pipeline" not in graph["app.services.conversion"]
    assert "app.engine.architectures" not in graph["app.engine.pipeline"]


def test_no_module_level_import_cycles() -> None:
    assert cycles(import_graph()) == []
