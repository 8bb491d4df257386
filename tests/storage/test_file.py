"""The content-addressed blob store (app/storage.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.storage import BlobStore


def test_stage_hash_publish(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.ensure()
    staged = store.stage()
    staged.write(b"abc")
    staged.write(b"def")
    sha = staged.close()
    assert sha == hashlib.sha256(b"abcdef").hexdigest()
    path = store.publish(staged.path, sha)
    assert path == tmp_path / "sha256" / sha[:2] / sha
    assert path.read_bytes() == b"abcdef"
    assert list(store.tmp_dir.iterdir()) == []
    # Publishing the same bytes again keeps the one blob and drops the temp file.
    again, size = store.put_bytes(b"abcdef")
    assert (again, size) == (sha, 6)
    assert list(store.tmp_dir.iterdir()) == []


def test_path_refuses_non_digests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        BlobStore(tmp_path).path("../../etc/passwd")


def test_orphans_of_dead_processes_are_removed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.ensure()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    (store.tmp_dir / f"{dead_pid}-upload-aaaa").write_bytes(b"partial")
    (store.tmp_dir / f"{dead_pid}-work-bbbb").mkdir()
    live = store.tmp_dir / f"{os.getpid()}-upload-cccc"
    live.write_bytes(b"in progress")
    assert store.cleanup_orphans() == 2
    assert list(store.tmp_dir.iterdir()) == [live]


def test_workdir_is_removed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.ensure()
    with store.workdir() as work:
        (work / "x").write_bytes(b"1")
    assert list(store.tmp_dir.iterdir()) == []
    store.check()
