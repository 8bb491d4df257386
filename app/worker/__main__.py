"""``python -m app.worker [--embedded] [--index N]``: one local worker process."""

from __future__ import annotations

import logging
import sys

from app.executors.local import run_worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
args = sys.argv[1:]
index = int(args[args.index("--index") + 1]) if "--index" in args else 0
run_worker(watch_parent="--embedded" in args, index=index)
