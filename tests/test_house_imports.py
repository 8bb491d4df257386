"""The house's import rules, for every file under ``app/`` (STYLE: "A test holds these lines").

Imports point one way: ``api``, ``executors`` (with ``worker``, its thin ``python -m`` entry)
and ``cli`` -> ``services`` -> ``engine``, ``db``, ``storage``, ``sandbox``. The engine is pure;
the sandbox is generic (it runs a function in a limited child and knows no use case: it
imports nothing of the app but the error base); executors own job running (no one else holds
a lease or executes a job); routes never touch the database themselves; there is one error
root (``app/errors.py``, importing nothing of the app).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.fixtures import REPO_ROOT

APP = REPO_ROOT / "app"


def imports_of(path: Path) -> list[str]:
    """Modules a file under the repository imports."""
    return parse_imports(path.read_text(), list(path.relative_to(REPO_ROOT).parts[:-1]))


def parse_imports(source: str, package: list[str]) -> list[str]:
    """Modules ``source`` imports (relative to ``package``; ``from X import y`` also as X.y)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for f in files:
        bad = sorted({m for m in imports_of(f) if _under(m, forbidden)})
        if bad:
            found[str(f.relative_to(REPO_ROOT))] = bad
    return found


def _files(*parts: str) -> list[Path]:
    root = APP.joinpath(*parts)
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    assert files and all(f.exists() for f in files), root
    return files


OUTER = ("app.api", "app.worker", "app.executors", "app.cli", "app.client")

RULES = {
    # The one error base (``app/errors.py``) imports nothing of the app, so every layer, the
    # engine included, may subclass it.
    "errors": (("errors",), ("app",)),
    # The engine: torch, safetensors, re2, blake3, pydantic, PyYAML, numpy, stdlib. No web,
    # no database, no settings, and not the zoo (it registers through entry points).
    "engine": (
        ("engine",),
        (
            "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pydantic_settings",
            "httpx", "celery", "boto3", "app.config", "app.db", "app.services", "app.storage",
            "app.sandbox", "app.registry", "app.zoo", *OUTER,
        ),
    ),
    # The sandbox is generic: it runs a function in a limited child process and knows no
    # use case, so nothing of the app but the one error base.
    "sandbox": (
        ("sandbox",),
        ("fastapi", "sqlalchemy", "torch", "app.config", "app.db", "app.engine", "app.services",
         "app.storage", "app.registry", "app.net", "app.zoo", *OUTER),
    ),
    # The registry client and the outbound guard: httpx only, no service, database or web.
    "registry": (
        ("registry",),
        ("fastapi", "sqlalchemy", "app.config", "app.db", "app.services", "app.storage",
         "app.sandbox", "app.engine", *OUTER),
    ),
    "net": (
        ("net",),
        ("fastapi", "sqlalchemy", "app.config", "app.db", "app.services", "app.storage",
         "app.sandbox", "app.engine", "app.registry", *OUTER),
    ),
    # Services are used by the outer layers, never the other way round.
    "services": (("services",), ("celery", "kombu", *OUTER)),
    # Tables and queries know nothing of use cases or HTTP.
    "db": (("db",), ("fastapi", "app.services", "app.sandbox", *OUTER)),
    # Executors own job running: nothing else holds a lease or runs a job's execution, and
    # ``app.worker`` is only the ``python -m app.worker`` entry into the local executor.
    "executors-own-jobs": (
        ("api",),
        ("app.executors.lease", "app.executors.runtime", "app.services.jobs.execution"),
    ),
    "services-run-no-jobs": (
        ("services",),
        ("app.executors", "app.services.jobs.execution.execute_job"),
    ),
    "worker": (("worker",), ("app.engine", "app.services", "app.sandbox", "app.db")),
    "executors": (
        ("executors",),
        ("fastapi", "app.api", "app.cli", "app.engine.pipeline",
         "app.sandbox.runner.run_sandboxed"),
    ),
    "cli": (("cli",), ("app.engine.pipeline", "app.sandbox.runner.run_sandboxed")),
    # The client talks HTTP: nothing of the server's insides (the manifest helper may use the
    # engine's schema names).
    "client": (
        ("client",),
        ("fastapi", "sqlalchemy", "app.api", "app.db", "app.services", "app.worker",
         "app.sandbox", "app.storage", "app.config", "app.cli"),
    ),
    # Thin routes: the database through services and dependencies only.
    "routes": (("api", "routes"), ("sqlalchemy", "app.db", "app.engine.pipeline")),
}  # fmt: skip


@pytest.mark.parametrize("rule", sorted(RULES))
def test_imports_point_one_way(rule: str) -> None:
    parts, forbidden = RULES[rule]
    assert offenders(_files(*parts), forbidden) == {}


def test_the_scanner_sees_every_import_form() -> None:
    source = (
        "import fastapi\nfrom app import config\nfrom ..db import session\nfrom . import keys\n"
        "def lazy():\n    import sqlalchemy.orm\n"
    )
    found = set(parse_imports(source, ["app", "engine"]))
    assert {"fastapi", "app.config", "app.db.session", "app.engine.keys", "sqlalchemy.orm"} <= found
    forbidden = RULES["engine"][1]
    assert {m for m in found if _under(m, forbidden)} == {
        "fastapi", "app.config", "app.db", "app.db.session", "sqlalchemy.orm",
    }  # fmt: skip
    worker = parse_imports("from app.engine.pipeline import convert\n", ["app", "worker"])
    assert [m for m in worker if _under(m, RULES["worker"][1])] == [
        "app.engine.pipeline",
        "app.engine.pipeline.convert",
    ]
    sandbox = parse_imports("from app.services.inspection import x\n", ["app", "sandbox"])
    assert [m for m in sandbox if _under(m, RULES["sandbox"][1])] != []
