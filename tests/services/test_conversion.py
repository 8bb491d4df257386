"""The conversion seam: the same request in a sandbox child and in-process, byte for byte."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.engine.errors import UnreadableCheckpointError
from app.engine.options import WriteOptions
from app.engine.recipe import load_recipe
from app.engine.target import skeleton_from_module
from app.engine.target_spec import parse_target_spec
from app.sandbox.pool import ChildPool
from app.sandbox.runner import Limits
from app.services.conversion import (
    ConversionOutcome,
    ConversionRequest,
    PathSink,
    run_conversion,
    run_conversion_pooled,
)
from tests.engine._models import SmallNet, save_sd

RECIPE = {
    "version": 1,
    "rename": [{"prefix": "", "to": "net."}],
    "adapt": [{"match": "net.conv1.weight", "op": "channels", "fill": "mean"}],
}


class Wrapped(torch.nn.Module):
    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.net = SmallNet(in_chans=in_chans)


def _request(tmp_path: Path, **changes: object) -> ConversionRequest:
    torch.manual_seed(0)
    source = save_sd(SmallNet().state_dict(), tmp_path / "src.pt")
    fields: dict[str, object] = {
        "source": [source],
        "target": parse_target_spec({"skeleton": skeleton_from_module(Wrapped(in_chans=4))}),
        "recipe": load_recipe(RECIPE),
        "options": WriteOptions(device="cpu"),
        **changes,
    }
    return ConversionRequest(**fields)  # type: ignore[arg-type]


class FolderSink:
    """A sink like a job's: the child writes weights and reports into one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.published: list[ConversionOutcome] = []

    def weights_path(self, request: ConversionRequest) -> Path | None:
        return None if request.dry_run else self.folder / "out.safetensors"

    def reports_dir(self) -> Path | None:
        return self.folder

    def publish(self, outcome: ConversionOutcome) -> None:
        self.published.append(outcome)


def test_the_request_crosses_into_the_child_as_it_is(tmp_path: Path) -> None:
    request = _request(tmp_path)
    assert ConversionRequest.model_validate(request.model_dump(mode="json")) == request


def test_sandboxed_and_in_process_write_the_same_bytes(tmp_path: Path) -> None:
    request = _request(tmp_path)
    (tmp_path / "child").mkdir()
    sink = FolderSink(tmp_path / "child")
    child = run_conversion(request, sink, limits=Limits(cpu_seconds=120))
    local = run_conversion(request, PathSink(tmp_path / "local.safetensors", tmp_path / "r.json"),
                           limits=None)  # fmt: skip

    assert child.ok and local.ok and sink.published == [child]
    assert child.device == "cpu" and local.device is None
    assert child.weights == tmp_path / "child" / "out.safetensors"
    assert child.weights.read_bytes() == (tmp_path / "local.safetensors").read_bytes()
    assert child.report["summary"] == local.report["summary"]
    assert {p.name for p in (tmp_path / "child").iterdir()} == {
        "out.safetensors", "report.json", "report.txt", "manifest.json", "attestation.json",
    }  # fmt: skip
    assert (tmp_path / "r.json").exists()
    # The manifest goes beside the weights, and only when it asks for something (not here).
    assert local.manifest["frozen"] == local.manifest["bn_eval"] == []
    assert not (tmp_path / "local.manifest.json").exists()
    assert not (tmp_path / "r.manifest.json").exists()
    written = load_file(str(child.weights))
    assert torch.equal(written["net.fc.weight"], load_file_source(tmp_path)["fc.weight"])


def load_file_source(tmp_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(tmp_path / "src.pt", weights_only=True)


def test_a_dry_run_writes_no_weights(tmp_path: Path) -> None:
    (tmp_path / "child").mkdir()
    outcome = run_conversion(
        _request(tmp_path, dry_run=True), FolderSink(tmp_path / "child"), limits=Limits()
    )
    assert outcome.weights is None and outcome.report["summary"]["adapted"] == 1
    assert not (tmp_path / "child" / "out.safetensors").exists()


def test_an_engine_refusal_in_the_child_keeps_its_type(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    request = _request(tmp_path, source=[tmp_path / "bad.pt"])
    with pytest.raises(UnreadableCheckpointError) as caught:
        run_conversion(request, FolderSink(tmp_path), limits=Limits())
    assert caught.value.type == "unreadable-checkpoint"


def test_a_pooled_dry_run_reports_as_a_one_shot_one(tmp_path: Path) -> None:
    request = _request(tmp_path, dry_run=True)
    one_shot = run_conversion(request, PathSink(None), limits=Limits())

    async def pooled() -> ConversionOutcome:
        pool = ChildPool(size=1, timeout=60.0)
        try:
            return await run_conversion_pooled(request, PathSink(None), pool=pool)
        finally:
            await pool.close()

    outcome = asyncio.run(pooled())
    assert outcome == one_shot and outcome.weights is None
