"""Kernel copies against the buffered copy, verification against a flipped byte, the streamed
torch format, and what ``--no-verify`` leaves out."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import pytest
import torch
from safetensors import safe_open
from torch import nn

import app.engine.write as engine_write
from app.engine.options import CopyMethod, WriteOptions
from app.engine.output.files import OutputFile
from app.engine.output.kernel_copy import KernelCopier
from app.engine.pipeline import convert
from app.engine.readers import open_source
from app.engine.recipe import load_recipe
from app.engine.target import Target, skeleton_from_module
from tests.engine._models import SmallNet, save_sd, save_st, skeleton_of, small_state_dict
from tests.fixtures import REPO_ROOT

GRAFT = [sys.executable, "-c", "from app.cli import main; main()"]
RENAME = {"rename": [{"prefix": "", "to": "net."}]}
RENAME_AND_ADAPT = {
    "rename": [{"prefix": "", "to": "net."}],
    "adapt": [{"match": "net.conv1.weight", "op": "channels", "fill": "repeat"}],
}
METHODS: dict[str, tuple[CopyMethod, ...]] = {
    "reflink-first": ("reflink", "kernel", "buffered"),
    "kernel": ("kernel",),
    "buffered": ("buffered",),
}


class Wrapped(nn.Module):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.net = SmallNet(**kwargs)


def _source(tmp_path: Path, kind: str) -> Path:
    sd = small_state_dict(0)
    if kind == "safetensors":
        return save_st(sd, tmp_path / "src.safetensors")
    return save_sd(sd, tmp_path / "src.pt")


def _convert(src: Path, out: Path, recipe: dict[str, Any], **options: Any) -> Any:
    target: Target = skeleton_of(Wrapped(in_chans=4) if "adapt" in recipe else Wrapped())
    with target:
        return convert(
            src, target, load_recipe(recipe), output=out, options=WriteOptions(**options)
        )


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
@pytest.mark.parametrize("kind", ["zip", "safetensors"])
@pytest.mark.parametrize("recipe", [RENAME, RENAME_AND_ADAPT], ids=["rename", "adapt"])
def test_kernel_and_buffered_copies_write_identical_files(
    tmp_path: Path, fmt: str, kind: str, recipe: dict[str, Any]
) -> None:
    src = _source(tmp_path, kind)
    written: dict[str, bytes] = {}
    for name, methods in METHODS.items():
        result = _convert(src, tmp_path / name, recipe, format=fmt, copy_methods=methods)
        assert result.ok, result.report.get("errors")
        assert result.report["verification"]["equal"] == len(result.report["entries"])
        used = result.report["output"]["copy_methods"]
        assert set(used) == ({"buffered"} if name == "buffered" else {"kernel"}), used
        written[name] = (tmp_path / name).read_bytes()
    # and the torch path, with no byte copy at all
    _convert(src, tmp_path / "torch-path", recipe, format=fmt, byte_copy=False)
    written["torch-path"] = (tmp_path / "torch-path").read_bytes()
    assert len(set(written.values())) == 1, "the copy paths wrote different files"


def test_adjacent_tensors_are_copied_as_one_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(tmp_path, "safetensors")
    with open_source(src) as source:
        spans = {k: source.byte_range(k) for k in source.tensors}
        infos = dict(source.tensors)
    # a target whose keys come in the order the file lays their bytes out, end to end
    order = sorted(spans, key=lambda k: spans[k][1])  # type: ignore[index]
    skeleton = {
        "schema": "graft.skeleton/v1",
        "tensors": {
            f"net.{k}": {"shape": list(infos[k].shape), "dtype": infos[k].dtype} for k in order
        },
    }
    calls: list[int] = []
    real = OutputFile.copy_from

    def counting(self: OutputFile, copier: KernelCopier, src: int, offset: int, n: int) -> None:
        calls.append(n)
        real(self, copier, src, offset, n)

    monkeypatch.setattr(OutputFile, "copy_from", counting)
    with Target.from_skeleton(skeleton) as target:
        result = convert(src, target, load_recipe(RENAME), output=tmp_path / "out.st")
    assert result.ok and result.report["output"]["copied"] == len(order)
    assert calls == [sum(i.nbytes for i in infos.values())]


def _flip(path: Path, offset: int) -> None:
    with path.open("rb+") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def _key_at(output: Path, offset: int) -> str:
    with open_source(output, strip_prefixes="none") as out:
        for key in out.tensors:
            span = out.byte_range(key)
            if span is not None and span[1] <= offset < span[1] + span[2]:
                return key
    raise AssertionError(f"no tensor holds byte {offset}")


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
@pytest.mark.parametrize("methods", ["kernel", "buffered"])
@pytest.mark.parametrize("recipe", [RENAME, RENAME_AND_ADAPT], ids=["rename", "adapt"])
def test_verification_catches_a_byte_flipped_after_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, methods: str, recipe: Any
) -> None:
    """A byte copy is checked while the next range is copied: a bit flipped in the written
    file after the kernel copied it, as a disk or a stray writer would, is caught."""
    flipped: list[int] = []
    real = OutputFile.copy_from

    def copy_then_damage(
        self: OutputFile, copier: KernelCopier, src: int, offset: int, n: int
    ) -> None:
        real(self, copier, src, offset, n)
        if not flipped and n > 1:
            flipped.append(self.position - n // 2)
            _flip(self.path, flipped[0])

    monkeypatch.setattr(OutputFile, "copy_from", copy_then_damage)
    src = _source(tmp_path, "zip")
    result = _convert(src, tmp_path / "out", recipe, format=fmt, copy_methods=METHODS[methods])
    n = len(result.report["entries"])
    assert result.ok is False
    assert result.report["verification"]["checked"] == n
    assert result.report["verification"]["equal"] == n - 1
    assert result.report["verification"]["unequal"] == [_key_at(tmp_path / "out", flipped[0])]
    assert result.report["errors"] == ["verification: 1 tensors differ from the source"]


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_verification_catches_a_byte_flipped_in_a_produced_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """A tensor the ops produced is digested as it is written and its written range read
    back after writing: a bit flipped in between is caught."""
    real_verify = engine_write.verify_output
    flipped: list[str] = []

    def damage_then_verify(written: Path, plan: Any, *args: Any) -> Any:
        key = "net.conv1.weight"  # the adapted one: produced by torch, not byte-copied
        with open_source(written, strip_prefixes="none") as out:
            path, offset, length = out.byte_range(key)
        _flip(path, offset + length // 2)
        flipped.append(key)
        return real_verify(written, plan, *args)

    monkeypatch.setattr(engine_write, "verify_output", damage_then_verify)
    src = _source(tmp_path, "zip")
    result = _convert(src, tmp_path / "out", RENAME_AND_ADAPT, format=fmt)
    n = len(result.report["entries"])
    assert result.ok is False
    assert result.report["verification"]["equal"] == n - 1
    assert result.report["verification"]["unequal"] == flipped


def test_streamed_torch_output_loads_with_weights_only_and_is_reproducible(
    tmp_path: Path,
) -> None:
    sd = small_state_dict(0)
    sd["x16"] = torch.randn(3, 5).half()
    sd["flags"] = torch.tensor([True, False])
    sd["big_int"] = torch.tensor([2**40, -7])
    sd["bf16"] = torch.randn(7).to(torch.bfloat16)
    src = save_sd(sd, tmp_path / "src.pt")
    target = Target.from_skeleton(
        {
            "schema": "graft.skeleton/v1",
            "tensors": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                for k, v in sd.items()
            },
        }
    )
    with target:
        first = convert(src, target, load_recipe({}), output=tmp_path / "a.pt",
                        options=WriteOptions(format="torch"))  # fmt: skip
        second = convert(src, target, load_recipe({}), output=tmp_path / "b.pt",
                         options=WriteOptions(format="torch"))  # fmt: skip
    assert first.ok and second.ok
    assert first.report["output"]["copied"] == len(sd)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    loaded = torch.load(tmp_path / "a.pt", weights_only=True, map_location="cpu")
    assert list(loaded) == list(sd)
    for key, value in sd.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    # a valid zip: every CRC matches (unzip -t / zipfile check them, torch.load does not)
    import zipfile

    with zipfile.ZipFile(tmp_path / "a.pt") as archive:
        assert archive.testzip() is None
    # mmap loading relies on 64-byte aligned records
    mapped = torch.load(tmp_path / "a.pt", weights_only=True, mmap=True)
    assert torch.equal(mapped["x16"], sd["x16"])


def test_torch_output_of_an_adapted_tensor_matches_torch_save(tmp_path: Path) -> None:
    src = _source(tmp_path, "zip")
    result = _convert(src, tmp_path / "out.pt", RENAME_AND_ADAPT, format="torch")
    assert result.ok and result.report["output"]["materialised"] == 1
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    reference = _convert(src, tmp_path / "ref.st", RENAME_AND_ADAPT)
    assert reference.ok
    with safe_open(str(tmp_path / "ref.st"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            assert torch.equal(loaded[key], f.get_tensor(key)), key


def test_no_verify_takes_no_digest_and_no_source_identity(tmp_path: Path) -> None:
    src = _source(tmp_path, "zip")
    result = _convert(src, tmp_path / "out.st", RENAME, verify=False, source_digest="none")
    report = result.report
    assert report["verification"] == "skipped"
    assert report["source"]["sha256"] is None and "blake3" not in report["source"]
    assert all(e["digest"] is None for e in report["entries"])
    with safe_open(str(tmp_path / "out.st"), "pt") as f:
        metadata = f.metadata()
    assert "graft.source_sha256" not in metadata and "graft.source_blake3" not in metadata


def test_the_cli_identifies_the_source_by_blake3_unless_asked_for_sha256(tmp_path: Path) -> None:
    src = _source(tmp_path, "zip")
    skeleton = tmp_path / "target.json"
    skeleton.write_text(json.dumps(skeleton_from_module(SmallNet())))
    b3 = blake3.blake3(src.read_bytes()).hexdigest()
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    for extra, field, expected in ([], "blake3", b3), (["--sha256"], "sha256", sha):
        report_path = tmp_path / f"report-{field}.json"
        out = tmp_path / f"out-{field}.st"
        cmd = [*GRAFT, "convert", str(src), str(skeleton), "-o", str(out),
               "--report", str(report_path), *extra]  # fmt: skip
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=_env())
        assert done.returncode == 0, done.stderr
        report = json.loads(report_path.read_text())
        assert report["source"][field] == expected
        with safe_open(str(out), "pt") as f:
            assert f.metadata()[f"graft.source_{field}"] == expected


def _env() -> dict[str, str]:
    return {**os.environ, "GRAFT_DEVICE": "cpu"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_byte_copied_nan_or_inf_is_reported(tmp_path: Path, dtype: torch.dtype) -> None:
    sd = {
        "ok": torch.tensor([1.0, 65504.0, -2.5]).to(dtype),
        "inf": torch.tensor([1.0, float("inf")]).to(dtype),
        "nan": torch.tensor([float("nan"), 0.0, 3.0]).to(dtype),
    }
    src = save_st(sd, tmp_path / "src.safetensors")
    skeleton = {
        "schema": "graft.skeleton/v1",
        "tensors": {k: {"shape": list(v.shape), "dtype": str(dtype)[6:]} for k, v in sd.items()},
    }
    with Target.from_skeleton(skeleton) as target:
        result = convert(src, target, load_recipe({}), output=tmp_path / "out.st")
    assert result.report["output"]["copied"] == 3
    assert sorted(w for w in result.report["warnings"] if w.startswith("nan_or_inf")) == [
        "nan_or_inf: inf",
        "nan_or_inf: nan",
    ]
