"""``graft serve`` on the embedded defaults: one server per data folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.config import Settings
from app.services.instance_lock import hold_instance_lock, instance_lock_path
from tests.fixtures import REPO_ROOT


def test_a_second_server_on_the_same_data_folder_refuses_to_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GRAFT_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'graft.db'}",
        "GRAFT_STORAGE_DIR": str(tmp_path / "data" / "blobs"),
    }
    settings = Settings(
        database_url=env["GRAFT_DATABASE_URL"], storage_dir=Path(env["GRAFT_STORAGE_DIR"])
    )
    first = hold_instance_lock(settings)  # the first server's lock, held by this process
    assert first is not None
    try:
        second = subprocess.run(
            [sys.executable, "-c", "from app.cli import main; main()", "serve", "--port", "1"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        first.close()

    assert second.returncode == 2
    assert second.stderr == (
        f"graft: error: another graft serve (pid {os.getpid()}) already uses "
        f"{tmp_path / 'data' / 'graft.db'}, and its workers would run this server's jobs: stop "
        "it, or give this one its own folder (GRAFT_DATABASE_URL and GRAFT_STORAGE_DIR)\n"
    )
    assert not (tmp_path / "data" / "graft.db").exists()  # refused before touching it
    # Released when its holder goes: the next server takes it.
    again = hold_instance_lock(settings)
    assert again is not None
    again.close()


def test_shared_deployments_take_no_lock(tmp_path: Path) -> None:
    sqlite = f"sqlite:///{tmp_path / 'graft.db'}"
    assert instance_lock_path(Settings(database_url=sqlite)) == tmp_path / "graft.db.lock"
    postgres = "postgresql+psycopg://graft@db/graft"
    assert instance_lock_path(Settings(database_url=postgres)) is None
    assert instance_lock_path(Settings(database_url=sqlite, storage_url="s3://bucket/x")) is None
    assert instance_lock_path(Settings(database_url="sqlite://")) is None
