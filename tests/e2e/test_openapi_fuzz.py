"""Schemathesis against the running service's own OpenAPI: no 5xx, no schema violations.

Bounded (a few examples per operation, deterministic generation) so it stays well under a
minute; CI runs it with the rest of the e2e suite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.parts import require_part

pytestmark = pytest.mark.e2e

CHECKS = ",".join(
    [
        "not_a_server_error",
        "response_schema_conformance",
        "status_code_conformance",
        "content_type_conformance",
    ]
)


def test_openapi_fuzzing_finds_no_5xx_and_no_schema_violation(
    server: Server, tmp_path: Path
) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        require_part("schemathesis", "not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [
            exe,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "8",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-deterministic",
            "--workers",  # one: hypothesis' ast.parse in two threads trips a CPython 3.11
            "1",  # bug ("AST constructor recursion depth mismatch"), a crash of the tool
            "--request-timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # its .schemathesis/ cache stays out of the repository
    )
    assert result.returncode == 0, result.stdout[-6000:]
