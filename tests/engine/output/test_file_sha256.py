"""Output files hashed as they are written: every digest the attestation takes that way is
``hashlib.sha256`` of the file on disk, verified or not, one file or shards (from a DCP
checkpoint too); a produced tensor or a rewritten header leaves the file to be hashed from
disk; and a byte damaged after the copy is still caught, its digest that of what was written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import blake3
import pytest
import torch

import app.engine.attest as engine_attest
from app.engine.options import WriteOptions
from app.engine.output.file_sha256 import RunningSha256
from app.engine.output.files import OutputFile
from app.engine.output.kernel_copy import KernelCopier
from app.engine.pipeline import ConversionResult, convert
from app.engine.recipe import load_recipe
from app.engine.target import Target
from app.services.attestation import attest_output
from tests.dcp_fixtures import dcp_reference, save_distributed
from tests.engine._models import save_sd, save_st

RENAME = {"rename": [{"prefix": "", "to": "m."}]}
CAST = {"rename": [{"prefix": "", "to": "m."}], "dtype": "float16"}


def _state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        "a.weight": torch.randn(300, 77, generator=gen),
        "b.weight": torch.randn(513, 129, generator=gen),
        "count": torch.tensor(5),
        "c.bias": torch.randn(7, generator=gen, dtype=torch.float64),
    }


def _target(sd: dict[str, torch.Tensor], dtype: str | None = None) -> Target:
    tensors = {
        f"m.{k}": {
            "shape": list(v.shape),
            "dtype": dtype if dtype and v.is_floating_point() else str(v.dtype)[6:],
        }
        for k, v in sd.items()
    }
    return Target.from_skeleton({"schema": "graft.skeleton/v1", "tensors": tensors})


def _convert(
    src: Path, out: Path, sd: dict[str, torch.Tensor], recipe: Any = RENAME, **options: Any
) -> ConversionResult:
    with _target(sd, recipe.get("dtype")) as target:
        return convert(
            src, target, load_recipe(recipe), output=out, options=WriteOptions(**options)
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _attest(
    result: ConversionResult, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], list[str]]:
    """The attestation's subject digests by name, and the files it hashed itself."""
    hashed: list[str] = []
    real = engine_attest.sha256_files

    def counting(paths: Any, *args: Any) -> Any:
        hashed.extend(p.name for p in paths)
        return real(paths, *args)

    monkeypatch.setattr(engine_attest, "sha256_files", counting)
    assert result.output is not None
    path = attest_output(
        result.output, result.report, recipe=RENAME, file_sha256=result.file_sha256
    )
    statement = json.loads(path.read_text())
    return {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}, hashed


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "no-verify"])
@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_a_file_of_byte_copies_is_hashed_as_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, verify: bool
) -> None:
    sd = _state_dict()
    src = (save_sd if kind == "zip" else save_st)(sd, tmp_path / f"src.{kind}")
    out = tmp_path / "out.safetensors"
    result = _convert(src, out, sd, verify=verify)
    assert result.ok and result.report["output"]["copied"] == len(sd)
    assert result.file_sha256 == {out: _sha256(out)}
    subjects, hashed = _attest(result, monkeypatch)
    assert subjects == {"out.safetensors": _sha256(out)}
    assert hashed == []  # nothing read the output again
    if verify:  # the digests taken of the source are the written bytes' digests
        with open(out, "rb") as f:
            raw = f.read()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        for e in result.report["entries"]:
            start, end = header[e["target"]]["data_offsets"]
            data = raw[8 + n + start : 8 + n + end]
            assert e["digest"] == "blake3:" + blake3.blake3(data).hexdigest()
    else:
        assert all("digest" not in e or e["digest"] is None for e in result.report["entries"])


@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_a_torch_zip_of_byte_copies_is_hashed_as_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Each record's CRC is taken from its source first, so the zip is final as it goes: the
    same bytes verified or not, and as the path that patches CRCs afterwards writes them."""
    sd = _state_dict()
    src = (save_sd if kind == "zip" else save_st)(sd, tmp_path / f"src.{kind}")
    files = {}
    for name, options in [
        ("verified", {}),
        ("no-verify", {"verify": False}),
        ("patched", {"byte_copy": False}),
    ]:
        out = tmp_path / f"{name}.pt"
        result = _convert(src, out, sd, format="torch", **options)
        assert result.ok
        files[name] = out.read_bytes()
        if name != "patched":
            assert result.report["output"]["copied"] == len(sd)
            assert result.file_sha256 == {out: _sha256(out)}
            subjects, hashed = _attest(result, monkeypatch)
            assert subjects == {out.name: _sha256(out)} and hashed == []
    assert files["verified"] == files["no-verify"] == files["patched"]
    loaded = torch.load(tmp_path / "verified.pt", weights_only=True)
    assert all(torch.equal(loaded[f"m.{k}"], v) for k, v in sd.items())


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "no-verify"])
@pytest.mark.parametrize("workers", [1, 3])
def test_shards_are_hashed_as_they_are_written_and_the_index_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify: bool, workers: int
) -> None:
    sd = _state_dict()
    src = save_st(sd, tmp_path / "src.safetensors")
    out = tmp_path / "model"
    result = _convert(src, out, sd, verify=verify, max_shard_size=100_000, shard_workers=workers)
    assert result.ok
    shards = sorted(p for p in out.iterdir() if p.name.startswith("model-"))
    assert len(shards) == 3
    assert result.file_sha256 == {p: _sha256(p) for p in shards}
    subjects, hashed = _attest(result, monkeypatch)
    assert subjects == {p.name: _sha256(p) for p in sorted(out.iterdir())}
    assert hashed == ["model.safetensors.index.json"]


def test_dcp_chunks_copied_into_shards_are_hashed_as_they_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DCP tensor's bytes come from several rank files: the shard's digest still is its
    file's, and each tensor's digest that of its bytes as written."""
    path = tmp_path / "step-1"
    save_distributed(path, "fsdp2", 2)
    merged = dcp_reference(path, tmp_path / "merged.pt")
    template = tmp_path / "target.pt"
    torch.save({"m." + k: torch.zeros_like(v) for k, v in merged["model"].items()}, template)
    with Target.from_checkpoint(template) as target:
        options = WriteOptions(max_shard_size=1)
        result = convert(path, target, load_recipe(RENAME), output=tmp_path / "hf", options=options)
    assert result.ok and result.report["output"]["copied"] == 6
    shards = sorted(p for p in (tmp_path / "hf").iterdir() if p.suffix == ".safetensors")
    assert result.file_sha256 == {p: _sha256(p) for p in shards}
    subjects, _ = _attest(result, monkeypatch)
    assert subjects == {p.name: _sha256(p) for p in sorted((tmp_path / "hf").iterdir())}


def test_a_produced_tensor_leaves_the_file_to_be_hashed_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = _state_dict()
    src = save_st(sd, tmp_path / "src.safetensors")
    out = tmp_path / "out.safetensors"
    result = _convert(src, out, sd, CAST)
    assert result.ok and result.report["output"]["materialised"] > 0
    assert result.file_sha256 == {}
    subjects, hashed = _attest(result, monkeypatch)
    assert subjects == {"out.safetensors": _sha256(out)} and hashed == ["out.safetensors"]


def test_a_byte_damaged_after_the_copy_is_caught_and_digested_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digests taken of the source before the copy are not taken on trust: the damaged
    tensor is unequal, its report digest is that of the written (damaged) bytes, and its
    header changed, so no digest taken before is kept for the file."""
    sd = _state_dict()
    src = save_st(sd, tmp_path / "src.safetensors")
    real = OutputFile.copy_from
    damaged: list[int] = []

    def copy_then_damage(self: OutputFile, copier: KernelCopier, fd: int, at: int, n: int) -> None:
        real(self, copier, fd, at, n)
        if not damaged:
            damaged.append(self.position - n + 100)
            with self.path.open("rb+") as f:
                f.seek(damaged[0])
                byte = f.read(1)[0]
                f.seek(damaged[0])
                f.write(bytes([byte ^ 0x01]))

    monkeypatch.setattr(OutputFile, "copy_from", copy_then_damage)
    out = tmp_path / "out.safetensors"
    result = _convert(src, out, sd, shard_workers=1)
    assert result.ok is False
    assert result.report["verification"]["unequal"] == ["m.a.weight"]
    raw = out.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8 : 8 + n])["m.a.weight"]["data_offsets"]
    written = raw[8 + n + start : 8 + n + end]
    entry = next(e for e in result.report["entries"] if e["target"] == "m.a.weight")
    assert entry["digest"] == "blake3:" + blake3.blake3(written).hexdigest()
    assert written != sd["a.weight"].numpy().tobytes()
    assert result.file_sha256 == {}


def test_a_running_digest_counts_only_a_whole_file_in_order() -> None:
    whole = RunningSha256()
    whole.update(0, b"abc")
    whole.update(3, b"def")
    assert whole.result(6) == hashlib.sha256(b"abcdef").hexdigest()
    assert whole.result(7) is None  # the file is longer than what went in
    gap = RunningSha256()
    gap.update(0, b"abc")
    gap.update(4, b"ef")
    assert gap.broken and gap.result(6) is None
