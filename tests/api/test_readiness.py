"""``/readyz`` with embedded workers waits for one of them to be warm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.api.main import create_app
from app.config import Settings
from app.services.bootstrap import prepare
from app.services.warmth import clear_marks, mark_warm, markers_dir, warm_workers
from tests.api.conftest import TestClient


def test_markers_count_only_live_processes(tmp_path: Path) -> None:
    folder = tmp_path / "workers"
    assert warm_workers(folder) == 0
    mark_warm(folder)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mark_warm(folder, dead.pid)
    assert warm_workers(folder) == 1
    clear_marks(folder)
    assert warm_workers(folder) == 0


def test_readyz_waits_for_a_warm_worker(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'graft.db'}", storage_dir=tmp_path / "blobs",
        inspectors=1, workers=1,
    )  # fmt: skip
    prepare(settings)
    with TestClient(create_app(settings, embedded_workers=1)) as client:
        r = client.get("/readyz")
        assert (r.status_code, r.json()["type"]) == (503, "not-ready")
        assert r.json()["checks"]["workers"] == "warming up"
        mark_warm(markers_dir(settings.storage_dir), os.getpid())
        r = client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["checks"] == {"database": "ok", "storage": "ok", "workers": "ok: 1 warm"}
