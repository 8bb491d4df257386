"""Uploading a DeepSpeed ZeRO checkpoint's files as one set: inspected in the sandboxed child
as ``deepspeed``, and the client's folder upload picks the tag folder's rank files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.client.http import _shard_files
from tests.zero_fixtures import zero_checkpoint


def test_a_zero_folder_uploads_as_a_set(client: Any) -> None:
    ckpt = zero_checkpoint(3) / "ckpt"
    paths = _shard_files(ckpt)  # what `graft submit` uploads for the folder
    assert [p.name for p in paths] == sorted(p.name for p in (ckpt / "global_step2").glob("*.pt"))
    r = client.post("/v1/checkpoints", files=[("file", (p.name, p.read_bytes())) for p in paths])
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["format"], body["entry"], body["tensors"]) == ("deepspeed", "fp32", 11)
    inspected = client.get(f"/v1/checkpoints/{body['id']}/inspect")
    assert inspected.status_code == 200, inspected.text
    document = inspected.json()
    assert document["layout"]["zero_stage"] == 3
    shapes = {t["key"]: t["shape"] for t in document["tensors"]}
    assert shapes["embed.weight"] == [13, 6] and shapes["frozen.weight"] == [5, 6]


def test_a_folder_without_latest_uploads_its_rank_files(tmp_path: Path) -> None:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in _shard_files(tmp_path)] == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ]
