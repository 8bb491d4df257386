"""Verification overlapped with the copy: the same files and the same digests as computed
independently, checked step by step across tensor and window boundaries, in bounded memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import blake3
import pytest
import torch
from safetensors import safe_open

import app.engine.output.overlap as overlap
import app.engine.verify as engine_verify
from app.engine.options import WriteOptions
from app.engine.pipeline import convert
from app.engine.recipe import load_recipe
from app.engine.target import Target
from tests.engine._models import save_sd, save_st

RENAME = {"rename": [{"prefix": "", "to": "m."}]}


def _state_dict() -> dict[str, torch.Tensor]:
    """Odd sizes and mixed dtypes, so steps and windows fall inside tensors, off element
    boundaries of the run, and a tensor of one element sits between two large ones."""
    gen = torch.Generator().manual_seed(11)
    return {
        "a.weight": torch.randn(300, 77, generator=gen),
        "flags": torch.tensor([True, False, True]),
        "b.weight": torch.randn(513, 129, generator=gen).half(),
        "count": torch.tensor(5),
        "c.weight": torch.randn(1000, 33, generator=gen).to(torch.bfloat16),
        "d.bias": torch.randn(7, generator=gen, dtype=torch.float64),
    }


def _target(sd: dict[str, torch.Tensor]) -> Target:
    tensors = {
        f"m.{k}": {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in sd.items()
    }
    return Target.from_skeleton({"schema": "graft.skeleton/v1", "tensors": tensors})


def _digest(t: torch.Tensor) -> str:
    """BLAKE3 of a tensor's bytes, computed here from torch, independently of the engine."""
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return "blake3:" + blake3.blake3(raw).hexdigest()


def _run(src: Path, out: Path, sd: dict[str, torch.Tensor], **options: Any) -> Any:
    with _target(sd) as target:
        return convert(
            src, target, load_recipe(RENAME), output=out, options=WriteOptions(**options)
        )


@pytest.mark.parametrize("step", [overlap.STEP, 4096, 40_000])
@pytest.mark.parametrize("kind", ["zip", "safetensors"])
@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_overlapped_verification_gives_the_bytes_and_digests_computed_independently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int, kind: str, fmt: str
) -> None:
    monkeypatch.setattr(overlap, "STEP", step)
    monkeypatch.setattr(overlap, "VERIFY_WINDOW", 8192)  # windows inside steps too
    sd = _state_dict()
    src = (save_sd if kind == "zip" else save_st)(sd, tmp_path / f"src.{kind}")
    suffix = ".pt" if fmt == "torch" else ".safetensors"
    reread: list[str] = []
    real = engine_verify.compare_range

    def counting(*args: Any) -> Any:
        reread.append(str(args[0]))
        return real(*args)

    monkeypatch.setattr(engine_verify, "compare_range", counting)
    fast = _run(src, tmp_path / f"fast{suffix}", sd, format=fmt)
    assert reread == []  # one read of the written bytes, during the copy; none after it
    slow = _run(src, tmp_path / f"slow{suffix}", sd, format=fmt, byte_copy=False)
    assert fast.ok and slow.ok
    assert fast.report["output"]["copied"] == len(sd)
    assert slow.report["output"]["copied"] == 0
    # The same file, byte for byte, as the torch path writes (which digests what it wrote).
    assert (tmp_path / f"fast{suffix}").read_bytes() == (tmp_path / f"slow{suffix}").read_bytes()
    digests = {e["target"]: e["digest"] for e in fast.report["entries"]}
    assert digests == {e["target"]: e["digest"] for e in slow.report["entries"]}
    assert digests == {f"m.{k}": _digest(v) for k, v in sd.items()}
    assert fast.report["verification"]["equal"] == len(sd)
    if fmt == "safetensors":
        with safe_open(tmp_path / "fast.safetensors", "pt") as f:
            meta = f.metadata()
            for key, value in sd.items():
                assert torch.equal(f.get_tensor(f"m.{key}"), value)
        assert json.loads(meta["graft.recipe"])["rename"]
    else:
        loaded = torch.load(tmp_path / "fast.pt", weights_only=True)
        assert all(torch.equal(loaded[f"m.{k}"], v) for k, v in sd.items())


def test_a_nan_in_a_byte_copied_tensor_is_found_by_the_overlapped_check(tmp_path: Path) -> None:
    sd = _state_dict()
    sd["a.weight"][299, 76] = float("nan")
    src = save_st(sd, tmp_path / "src.safetensors")
    result = _run(src, tmp_path / "out.safetensors", sd)
    assert result.report["output"]["copied"] == len(sd)
    assert result.report["warnings"] == ["nan_or_inf: m.a.weight"]


def test_the_verifier_checks_each_segment_against_its_source(tmp_path: Path) -> None:
    """Segments handed over one by one: a byte differing in the middle one makes that tensor
    unequal; digests and CRCs are those of the written bytes."""
    import zlib

    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 1000)
    written = bytearray(src.read_bytes()[1000:251_000])
    written[100_000] ^= 0x01
    out = tmp_path / "out"
    out.write_bytes(bytes(written))
    verifier = overlap.CopyVerifier(crc=True)
    try:
        verifier.begin("x", out, 0, 200_000, "uint8")
        verifier.begin("y", out, 200_000, 50_000, "uint8")
        for start, stop in [(0, 65536), (65536, 131072), (131072, 200_000)]:
            verifier.segments(out, [("x", start, src, 1000 + start, stop - start)])
        verifier.segments(out, [("y", 200_000, src, 201_000, 50_000)])
        done = verifier.finish()
    finally:
        verifier.close()
    data = bytes(written)
    assert (done["x"].equal, done["y"].equal) == (False, True)
    assert done["x"].digest == "blake3:" + blake3.blake3(data[:200_000]).hexdigest()
    assert done["y"].digest == "blake3:" + blake3.blake3(data[200_000:]).hexdigest()
    assert (done["x"].crc, done["y"].crc) == (
        zlib.crc32(data[:200_000]),
        zlib.crc32(data[200_000:]),
    )
    assert done["x"].span == (out.resolve(), 0, 200_000)
