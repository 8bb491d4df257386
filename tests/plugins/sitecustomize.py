"""Run at start by the processes the tests start (see ``tests/plugins/__init__.py``): with
``GRAFT_TEST_STAGE_DELAY=S`` set, their executors pause S seconds at each stage of a job."""

from __future__ import annotations

import os

_SECONDS = float(os.environ.get("GRAFT_TEST_STAGE_DELAY", "0") or 0)

if _SECONDS > 0:
    from stage_delay import pause_at_stages

    from app.executors.hooks import install_stage_hook

    install_stage_hook(pause_at_stages(_SECONDS))
