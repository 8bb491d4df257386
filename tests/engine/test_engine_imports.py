"""The engine's boundaries: no web, database or settings imports, and torch-free inspection."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.fixtures import REPO_ROOT, save_hf_sharded_safetensors, tiny_state_dict

ENGINE = REPO_ROOT / "app" / "engine"

# STYLE: "The engine never imports FastAPI, SQLAlchemy or settings", and imports point one way
# (api, worker, cli -> services -> engine): nothing above the engine may be imported from it.
FORBIDDEN = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "pydantic_settings",
    "app.config",
    "app.api",
    "app.db",
    "app.services",
    "app.worker",
    "app.storage",
    "app.cli",
    "app.zoo",
)


def _imported_modules(source: str) -> list[str]:
    """Modules a file imports: relative imports resolved, ``from X import y`` also as X.y."""
    package = ["app", "engine"]
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


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_the_scanner_sees_every_import_form() -> None:
    source = (
        "import fastapi\nfrom app import config\nfrom ..db import session\nfrom . import keys\n"
        "def lazy():\n    import sqlalchemy.orm\n"
    )
    found = _imported_modules(source)
    assert {m for m in found if _is_forbidden(m)} == {
        "fastapi",
        "app.config",
        "app.db",
        "app.db.session",
        "sqlalchemy.orm",
    }
    assert "app.engine.keys" in found


def test_engine_never_imports_web_database_or_settings() -> None:
    files = sorted(ENGINE.rglob("*.py"))
    assert (
        ENGINE / "readers" / "opening.py" in files and ENGINE / "readers" / "unpickler.py" in files
    )
    offenders = {
        str(f.relative_to(REPO_ROOT)): bad
        for f in files
        if (bad := [m for m in _imported_modules(f.read_text()) if _is_forbidden(m)])
    }
    assert offenders == {}


_PROBE = """
import json, sys
from app.engine.readers import inspect_source
out = {p: inspect_source(p)["totals"]["tensors"] for p in sys.argv[1:]}
out["torch_modules"] = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps(out))
"""


def test_header_inspection_never_imports_torch(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    torch.save(sd, tmp_path / "zip.pt")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(sd, str(tmp_path / "one.safetensors"))
    index = save_hf_sharded_safetensors(sd, tmp_path / "set", shards=2)
    paths = [str(tmp_path / n) for n in ("zip.pt", "legacy.pth", "one.safetensors")] + [str(index)]
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *paths],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {**dict.fromkeys(paths, 12), "torch_modules": []}
