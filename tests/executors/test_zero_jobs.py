"""A DeepSpeed ZeRO folder as a job's source: its rank files uploaded as a set, converted by a
real runner to DeepSpeed's own fp32 merge, bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch

from app.client.http import _shard_files
from app.db.session import Database
from app.storage import FileBlobStore
from tests.executors.test_dcp_jobs import _converted_set, _register_set
from tests.zero_fixtures import REFERENCE, zero_checkpoint


def test_a_zero3_folder_converts_in_a_job(sqlite_database: Database, tmp_path: Path) -> None:
    fixture = zero_checkpoint(3)
    store = FileBlobStore(tmp_path / "blobs")
    store.ensure()
    files = _shard_files(fixture / "ckpt")
    assert len(files) == 4  # two ranks' model states and optimizer states
    source, fmt = _register_set(sqlite_database, store, files)
    assert fmt == "deepspeed"
    reference = torch.load(fixture / REFERENCE, weights_only=True)
    target = tmp_path / "target.pth"
    torch.save({k: torch.zeros_like(v) for k, v in reference.items()}, target)
    report, weights = _converted_set(sqlite_database, store, source, files, target)
    assert (report["source"]["format"], report["source"]["entry"]) == ("deepspeed", "fp32")
    assert sorted(weights) == sorted(reference)
    assert all(
        torch.equal(weights[k], v) and weights[k].dtype == v.dtype for k, v in reference.items()
    )
