"""Test-only plugins for the processes the tests start (servers, workers).

This folder goes first on their ``PYTHONPATH`` (:func:`pythonpath`), so Python runs its
``sitecustomize.py`` at start. Production code knows nothing of it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PLUGINS", "pythonpath"]

PLUGINS = Path(__file__).resolve().parent


def pythonpath() -> str:
    """``PYTHONPATH`` for a child process: this folder, then the current one's."""
    return os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)
