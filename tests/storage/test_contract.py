"""The BlobStore contract, run against the file store and a real S3 server alike."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from app.storage import BlobStore, FileBlobStore, S3BlobStore
from tests.storage.conftest import PART_SIZE


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(store: BlobStore, sha: str, start: int, stop: int, chunk: int = 1 << 20) -> bytes:
    return b"".join(store.iter_range(sha, start, stop, chunk_size=chunk))


def _scratch_entries(store: BlobStore) -> list[Path]:
    return sorted(store.scratch.root.iterdir())


def test_stage_hash_publish(store: BlobStore) -> None:
    staged = store.stage()
    staged.write(b"abc")
    staged.write(b"def")
    sha = staged.close()
    assert sha == _sha(b"abcdef")
    store.publish(staged.path, sha)
    assert store.exists(sha)
    assert not staged.path.exists()
    assert [(b.sha256, b.size) for b in store.blobs()] == [(sha, 6)]
    assert _read(store, sha, 0, 6) == b"abcdef"
    assert _scratch_entries(store) == []


def test_same_bytes_are_one_blob_and_republishing_refreshes_it(store: BlobStore) -> None:
    sha, size = store.put_bytes(b"weights")
    (first,) = store.blobs()
    time.sleep(1.1)  # past the servers' one-second modification-time resolution
    assert store.put_bytes(b"weights") == (sha, size) == (_sha(b"weights"), 7)
    (again,) = store.blobs()
    assert (again.sha256, again.size) == (sha, 7)
    assert again.modified > first.modified
    assert _scratch_entries(store) == []


def test_ingest_publishes_a_file_from_a_workdir(store: BlobStore) -> None:
    data = os.urandom(3000)
    with store.workdir() as work:
        out = work / "model.safetensors"
        out.write_bytes(data)
        assert store.ingest(out) == (_sha(data), 3000)
        assert not out.exists()
    assert _read(store, _sha(data), 0, 3000) == data
    assert _scratch_entries(store) == []


def test_empty_blob(store: BlobStore, tmp_path: Path) -> None:
    sha, size = store.put_bytes(b"")
    assert (sha, size) == (_sha(b""), 0)
    assert _read(store, sha, 0, 0) == b""
    store.link_into(sha, tmp_path / "empty")
    assert (tmp_path / "empty").read_bytes() == b""


@pytest.mark.parametrize(
    ("start", "stop"), [(0, 1), (5, 300), (1023, 1025), (4095, 4096), (0, 4096), (7, 7)]
)
def test_ranged_reads_are_exact(store: BlobStore, start: int, stop: int) -> None:
    data = os.urandom(4096)
    sha, _ = store.put_bytes(data)
    # A chunk size that does not divide the range: the chunks must still add up exactly.
    assert _read(store, sha, start, stop, chunk=100) == data[start:stop]


def test_link_into_is_bit_exact(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    sha, _ = store.put_bytes(data)
    with store.workdir() as work:
        store.link_into(sha, work / "source.pt")
        assert (work / "source.pt").read_bytes() == data
    assert _scratch_entries(store) == []


def test_link_into_a_missing_blob_raises(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.link_into(_sha(b"never stored"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_delete(store: BlobStore) -> None:
    keep, _ = store.put_bytes(b"keep")
    gone, _ = store.put_bytes(b"gone")
    store.delete(gone)
    store.delete(gone)  # idempotent
    assert not store.exists(gone)
    assert store.exists(keep)
    assert [b.sha256 for b in store.blobs()] == [keep]


def test_listing_holds_every_blob_with_its_size(store: BlobStore) -> None:
    expected = {store.put_bytes(bytes([i]) * i) for i in range(1, 6)}
    assert {(b.sha256, b.size) for b in store.blobs()} == expected


def test_digests_are_checked(store: BlobStore, tmp_path: Path) -> None:
    for bad in ("../../etc/passwd", "A" * 64, "ab"):
        with pytest.raises(ValueError, match="not a sha256"):
            store.exists(bad)
        with pytest.raises(ValueError, match="not a sha256"):
            store.link_into(bad, tmp_path / "x")


def test_large_blob_round_trips_in_parts(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(4 * PART_SIZE - 12345)  # ~20 MB: 4 parts, the last one short
    parts: list[int] = []
    if isinstance(store, S3BlobStore):
        # Count the parts on the wire (botocore's own event hooks; nothing is replaced).
        store._client.meta.events.register(
            "before-parameter-build.s3.UploadPart",
            lambda params, **_: parts.append(params["PartNumber"]),
        )
    staged = store.stage()
    for offset in range(0, len(data), 1 << 20):
        staged.write(data[offset : offset + (1 << 20)])
    sha = staged.close()
    store.publish(staged.path, sha)
    if isinstance(store, S3BlobStore):
        assert sorted(parts) == [1, 2, 3, 4]
    store.link_into(sha, tmp_path / "big")
    assert (tmp_path / "big").read_bytes() == data
    assert (
        _read(store, sha, PART_SIZE - 10, PART_SIZE + 10) == data[PART_SIZE - 10 : PART_SIZE + 10]
    )
    assert [(b.sha256, b.size) for b in store.blobs()] == [(sha, len(data))]
    assert _scratch_entries(store) == []


def test_local_temp_of_dead_processes_is_swept(store: BlobStore, dead_pid: int) -> None:
    (store.scratch.root / f"{dead_pid}-upload-aaaa").write_bytes(b"partial")
    (store.scratch.root / f"{dead_pid}-work-bbbb").mkdir()
    live = store.scratch.root / f"{os.getpid()}-upload-cccc"
    live.write_bytes(b"in progress")
    assert store.cleanup_orphans() == 2
    assert _scratch_entries(store) == [live]


def test_check_and_local_path(store: BlobStore) -> None:
    store.check()
    sha, _ = store.put_bytes(b"x")
    path = store.local_path(sha)
    if isinstance(store, FileBlobStore):
        assert path is not None and path.read_bytes() == b"x"
    else:
        assert path is None
