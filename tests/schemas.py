"""Every document the suite produces is checked against its published JSON Schema.

:func:`assert_valid` checks one document. :func:`validate_everything` (an autouse session
fixture in ``tests/conftest.py``) wraps the two places reports and manifests are born in a
test process, so every conversion a test runs is checked without the test asking:

- ``app.engine.pipeline.build_report`` / ``build_manifest``: every in-process conversion (the
  engine's tests, the CLI's in-process runs);
- ``app.services.conversion._convert_in_sandbox``: what a sandbox child (a fresh fork-server
  process the patch cannot reach) hands back to the service, workers' jobs included.

Reports read from separate processes (the CLI run as a subprocess, the e2e service over HTTP)
are checked by those tests with :func:`assert_valid`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from app.engine.schemas import load_schema

__all__ = ["assert_valid", "validate_everything"]

CHECKED: dict[str, int] = {"report": 0, "manifest": 0}


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid(name: str, document: Any) -> None:
    """Fail with every violation listed when ``document`` (or a typed document's JSON form)
    does not fit schema ``name``."""
    document = document.to_json() if hasattr(document, "to_json") else document
    errors = sorted(_validator(name).iter_errors(document), key=lambda e: list(e.path))
    if errors:
        lines = [f"  at /{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:20]]
        raise AssertionError(f"a {name} does not fit graft.{name}/v1:\n" + "\n".join(lines))
    CHECKED[name] = CHECKED.get(name, 0) + 1


def validate_everything() -> Iterator[None]:
    """Wrap the report and manifest builders and the sandbox hand-back; see the module doc."""
    from app.engine import pipeline
    from app.services import conversion

    patch = pytest.MonkeyPatch()
    build_report, build_manifest = pipeline.build_report, pipeline.build_manifest
    from_sandbox = conversion._convert_in_sandbox

    def report(*args: Any, **kwargs: Any) -> Any:
        built = build_report(*args, **kwargs)
        assert_valid("report", built)
        return built

    def manifest(*args: Any, **kwargs: Any) -> Any:
        built = build_manifest(*args, **kwargs)
        assert_valid("manifest", built)
        return built

    def sandboxed(*args: Any, **kwargs: Any) -> Any:
        outcome = from_sandbox(*args, **kwargs)
        assert_valid("report", outcome.report)
        if outcome.manifest is not None:
            assert_valid("manifest", outcome.manifest)
        return outcome

    patch.setattr(pipeline, "build_report", report)
    patch.setattr(pipeline, "build_manifest", manifest)
    patch.setattr(conversion, "_convert_in_sandbox", sandboxed)
    try:
        yield
    finally:
        patch.undo()
