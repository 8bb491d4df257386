"""``python -m app.worker [--embedded] [--index N] [--gate FILE]``: one local worker process."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from app.executors.pool import start_warming

# First: the fork server imports torch and the engine while this process imports its own.
start_warming()

from app.executors.local import run_worker  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
args = sys.argv[1:]
index = int(args[args.index("--index") + 1]) if "--index" in args else 0
gate = Path(args[args.index("--gate") + 1]) if "--gate" in args else None
run_worker(watch_parent="--embedded" in args, index=index, gate=gate)
