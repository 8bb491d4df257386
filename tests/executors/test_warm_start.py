"""``graft serve`` starts its workers before it migrates the database: a worker warms up
(torch imported in its fork server) at once, and touches the database only once the gate is
open (issue 26 item 11: a warm restart ready sooner, its first job still warm)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from app.config import Settings
from app.db.base import utcnow
from app.db.repositories import WorkerRepository
from app.db.session import Database
from app.executors.local import wait_for_gate
from app.services.bootstrap import prepare
from app.services.warmth import clear_marks, markers_dir, warm_workers
from tests.plugins import pythonpath


def test_the_gate_waits_for_its_file_or_a_stop(tmp_path: Path) -> None:
    gate, stop = tmp_path / "migrated-1", threading.Event()
    opened = threading.Thread(target=wait_for_gate, args=(gate, stop))
    opened.start()
    opened.join(0.2)
    assert opened.is_alive()
    gate.write_text("open\n")
    opened.join(10)
    assert not opened.is_alive()
    stop.set()
    wait_for_gate(tmp_path / "never", stop)  # returns: the worker is stopping


def _lines(stream: object, seen: list[str], event: threading.Event, text: str) -> None:
    for raw in stream:  # type: ignore[attr-defined]
        seen.append(raw.decode(errors="replace"))
        if text in seen[-1]:
            event.set()


def test_a_worker_warms_before_the_schema_and_touches_the_database_after(
    tmp_path: Path,
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'graft.db'}",
        storage_dir=tmp_path / "blobs",
        device="cpu",
    )
    markers = markers_dir(settings.storage_dir)
    clear_marks(markers)
    gate = markers / "migrated-test"
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath(),
        "GRAFT_DATABASE_URL": settings.database_url,
        "GRAFT_STORAGE_DIR": str(settings.storage_dir),
        "GRAFT_DEVICE": "cpu",
        "GRAFT_POLL_SECONDS": "0.05",
    }
    argv = [sys.executable, "-m", "app.worker", "--embedded", "--gate", str(gate)]
    worker = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    seen: list[str] = []
    waiting = threading.Event()
    reader = threading.Thread(
        target=_lines, args=(worker.stderr, seen, waiting, "waiting for the schema"), daemon=True
    )
    reader.start()
    try:
        assert waiting.wait(180), "".join(seen)[-3000:]
        # Warm, and nothing in the database yet: it does not even exist.
        assert not (tmp_path / "graft.db").exists()
        assert warm_workers(markers) == 0
        prepare(settings)
        markers.mkdir(parents=True, exist_ok=True)
        gate.write_text("open\n")
        deadline = time.monotonic() + 60
        while warm_workers(markers) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert warm_workers(markers) == 1, "".join(seen)[-3000:]
        database = Database(settings.database_url)
        try:
            while time.monotonic() < deadline:
                with database.transaction(write=False) as session:
                    rows = WorkerRepository(session).alive(since=utcnow() - timedelta(minutes=5))
                if rows:
                    break
                time.sleep(0.05)
            assert [w.pid for w in rows] == [worker.pid]
        finally:
            database.dispose()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        reader.join(10)  # the pipe ends with the worker
        assert worker.stderr is not None
        worker.stderr.close()
