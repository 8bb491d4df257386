"""The real parts some tests need (PostgreSQL, RabbitMQ, S3, MLflow, Chromium, …), and what
happens when one is missing.

On a person's machine a missing part skips its tests with a one-line reason. Under ``CI=true``
it fails them, naming the part, so CI can never pass with a whole area untested.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["DEFAULT_POSTGRES_URL", "import_part", "in_ci", "postgres_url", "require_part"]

# The server .ci/run and a newcomer's machine both have; used when it answers.
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def in_ci() -> bool:
    """True under ``CI=true`` (or ``CI=1``), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_part(name: str, reason: str) -> NoReturn:
    """Stop this test because the real part ``name`` is missing: fail under CI, else skip.

    Args:
        name: The part, as a person would name it (``PostgreSQL``, ``RabbitMQ``, ``Chromium``).
        reason: One line: why it is missing and how to get it.
    """
    if in_ci():
        pytest.fail(f"{name} is missing under CI=true: {reason}", pytrace=False)
    pytest.skip(f"{name}: {reason}")


def import_part(module: str, name: str, how: str) -> ModuleType:
    """``pytest.importorskip`` that fails under CI: the module, or ``require_part``.

    Args:
        module: The module to import.
        name: The part it stands for.
        how: How to install it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        require_part(name, f"{module} is not importable ({exc}); {how}")


@functools.cache
def postgres_url() -> str | None:
    """``GRAFT_TEST_POSTGRES_URL``, else the local server when it answers, else None.

    ``make test`` and ``.ci/run`` so run the same suite: neither needs to set the variable.
    """
    url = os.environ.get("GRAFT_TEST_POSTGRES_URL")
    if url:
        return url
    try:
        import psycopg

        conninfo = DEFAULT_POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(conninfo, connect_timeout=3):
            return DEFAULT_POSTGRES_URL
    except Exception:
        return None
