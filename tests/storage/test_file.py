"""What only the file store promises: its layout on disk (the contract is in test_contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.storage import FileBlobStore


def test_blobs_live_at_their_digest(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.ensure()
    sha, _ = store.put_bytes(b"abcdef")
    assert store.path(sha) == store.local_path(sha) == tmp_path / "sha256" / sha[:2] / sha
    assert store.path(sha).read_bytes() == b"abcdef"
    assert list(store.tmp_dir.iterdir()) == []


def test_link_into_is_a_hard_link(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    store.ensure()
    sha, _ = store.put_bytes(b"weights")
    with store.workdir() as work:
        store.link_into(sha, work / "w")
        assert (work / "w").stat().st_ino == store.path(sha).stat().st_ino
    assert list(store.tmp_dir.iterdir()) == []


def test_path_refuses_non_digests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        FileBlobStore(tmp_path).path("../../etc/passwd")


def test_check_fails_without_the_layout(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        FileBlobStore(tmp_path / "missing").check()
