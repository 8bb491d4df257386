"""``python -m app.worker [--embedded]``: one worker process."""

from __future__ import annotations

import logging
import sys

from app.worker.main import run_worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
run_worker(watch_parent="--embedded" in sys.argv[1:])
