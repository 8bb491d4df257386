"""A raw safetensors upload's header is inspected (in the sandbox) while the rest of its body
arrives, and gives the same record as inspecting the whole file; whatever the probe cannot
stand for is inspected in full as before."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save

from app.engine.readers import inspect_source
from app.services.inspector import InspectorPool
from app.storage.staging import StagedFile
from tests.api.conftest import TestClient, temp_entries


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        "encoder.weight": torch.randn(64, 32, generator=gen),
        "encoder.bias": torch.randn(64, generator=gen).half(),
        "bn.running_mean": torch.zeros(64),
        "bn.num_batches_tracked": torch.tensor(7),
    }


@pytest.fixture
def inspected(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files each inspection was given (the real pool still answers)."""
    names: list[str] = []
    real = InspectorPool.inspect

    async def spy(self: InspectorPool, files: list[Path], **kwargs: Any) -> dict[str, Any]:
        names.extend(p.name for p in files)
        return await real(self, files, **kwargs)

    monkeypatch.setattr(InspectorPool, "inspect", spy)
    return names


def test_the_header_probe_gives_the_record_the_whole_file_gives(
    client: TestClient, settings: Any, tmp_path: Path, inspected: list[str]
) -> None:
    data = save(_tensors(), metadata={"format": "pt"})
    whole = tmp_path / "w.safetensors"
    whole.write_bytes(data)
    expected = inspect_source(whole)
    r = client.post("/v1/checkpoints?filename=w.safetensors", content=data)
    assert r.status_code == 201, r.text
    assert inspected == ["header-probe"]  # one inspection, of the probe, none of the file
    body = r.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["format"], body["tensors"], body["size"]) == ("safetensors", 4, len(data))
    assert body["elements"] == expected["totals"]["elements"]
    assert body["bytes"] == expected["totals"]["bytes"]
    listed = client.get(f"/v1/checkpoints/{body['id']}/tensors", params={"limit": 100}).json()
    assert [(t["key"], t["shape"], t["dtype"], t["kind"]) for t in listed["data"]] == [
        (t["key"], t["shape"], t["dtype"], t["kind"]) for t in expected["tensors"]
    ]
    assert temp_entries(settings) == []


def test_a_file_the_probe_cannot_stand_for_is_inspected_whole(
    client: TestClient, inspected: list[str]
) -> None:
    """Trailing bytes after the data: the probe (sized as announced) is refused, so the real
    file is inspected, and its own refusal is the answer."""
    data = save(_tensors()) + b"trailing"
    raw = client.post("/v1/checkpoints?filename=t.safetensors", content=data)
    assert raw.status_code == 422, raw.text
    assert inspected == ["header-probe", "part-0"]
    form = client.post("/v1/checkpoints", files={"file": ("t.safetensors", data)})
    assert form.status_code == 422
    assert raw.json()["detail"] == form.json()["detail"]


def test_a_torch_zip_is_not_probed(client: TestClient, inspected: list[str]) -> None:
    import io

    buf = io.BytesIO()
    torch.save(_tensors(), buf)
    r = client.post("/v1/checkpoints?filename=z.pt", content=buf.getvalue())
    assert r.status_code == 201, r.text
    assert inspected == ["part-0"]


def test_staged_file_hashes_on_its_thread_what_it_wrote(tmp_path: Path) -> None:
    """Batches written while the hashing thread digests earlier ones: the digest is the
    file's, with the writeback started along the way (a small interval)."""
    chunks = [bytes([i % 251]) * (100_000 + i) for i in range(40)]
    staged = StagedFile(tmp_path / "f")
    staged.WRITEBACK_EVERY = 1 << 20
    for i in range(0, len(chunks), 7):
        staged.write_many([memoryview(c) for c in chunks[i : i + 7]])
    staged.write(b"tail")
    digest = staged.close()
    whole = b"".join(chunks) + b"tail"
    assert (tmp_path / "f").read_bytes() == whole
    assert digest == hashlib.sha256(whole).hexdigest()
    assert staged.size == len(whole)
