"""A safetensors output streamed in parts from a source read by ranges: the bytes a local
file would hold, part by part, and the same report (bar how byte copies went)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load

from app.engine.errors import GraftError
from app.engine.options import WriteOptions
from app.engine.pipeline import ConversionResult, KnownSource, StreamedOutput, convert
from app.engine.readers import ReadAhead, RemoteBlob, open_source
from app.engine.recipe import load_recipe
from app.engine.target import Target
from app.engine.target_spec import parse_target_spec
from tests.engine._models import SmallNet, save_st, skeleton_of, small_state_dict, template_of


class _Parts:
    """A sink that keeps every part it is given, by number."""

    def __init__(self, part_size: int, max_parts: int = 10_000, in_order: bool = False) -> None:
        self.part_size, self.max_parts, self.in_order = part_size, max_parts, in_order
        self.parts: dict[int, bytes] = {}
        self.order: list[int] = []

    def put(self, number: int, data: bytearray) -> None:
        self.parts[number] = bytes(data)
        self.order.append(number)

    def joined(self) -> bytes:
        assert sorted(self.parts) == list(range(1, len(self.parts) + 1))
        return b"".join(self.parts[n] for n in sorted(self.parts))


class _Fetches:
    """A remote file over local bytes that records every range asked for."""

    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, []

    def __call__(self, offset: int, length: int) -> bytes:
        self.asked.append((offset, length))
        return self.data[offset : offset + length]


def _weights(seed: int) -> dict[str, torch.Tensor]:
    """A small model's weights, large enough for several parts of a few KiB."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _both(
    tmp_path: Path, options: WriteOptions, sink: _Parts, block: int = 4096, **recipe: Any
) -> tuple[ConversionResult, ConversionResult, bytes, _Fetches]:
    src = save_st(_weights(0), tmp_path / "src.safetensors")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    local = convert(
        src, template_of(_weights(1), tmp_path / "tgt.safetensors"),
        load_recipe(recipe), output=tmp_path / "out.safetensors", options=options,
        known=KnownSource(sha256=sha),
    )  # fmt: skip
    fetches = _Fetches(src.read_bytes())
    blob = RemoteBlob("src.safetensors", len(fetches.data), fetches, block=block)
    streamed = convert(
        blob, template_of(_weights(1), tmp_path / "tgt.safetensors"),
        load_recipe(recipe), output=StreamedOutput("out.safetensors", sink), options=options,
        known=KnownSource(sha256=sha),
    )  # fmt: skip
    return local, streamed, (tmp_path / "out.safetensors").read_bytes(), fetches


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_streamed_bytes_are_the_local_file(tmp_path: Path, dtype: str | None) -> None:
    sink = _Parts(part_size=4096)
    local, streamed, written, _ = _both(tmp_path, WriteOptions(dtype=dtype), sink)
    assert streamed.ok and local.ok
    assert sink.joined() == written
    assert len(sink.parts) > 2
    assert sink.order[-1] == 1  # the header's part goes last, with its final metadata
    assert all(len(sink.parts[n]) == len(sink.parts[1]) for n in sink.parts if n != len(sink.parts))
    for key, value in load(sink.joined()).items():
        expected = _weights(0)[key]
        assert torch.equal(value, expected if dtype is None else expected.to(torch.bfloat16))
    drop = ("output",)  # how byte copies went: "stream" instead of the kernel's
    assert {k: v for k, v in streamed.report.items() if k not in drop} == {
        k: v for k, v in local.report.items() if k not in drop
    }
    assert streamed.report["output"]["report_sha256"] == local.report["output"]["report_sha256"]
    assert streamed.report["verification"]["checked"] == len(_weights(0))


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_parts_in_order_take_a_digest_pass_first(tmp_path: Path, dtype: str | None) -> None:
    """For a server that takes parts in order only, the header is final in part 1."""
    sink = _Parts(part_size=4096, in_order=True)
    local, streamed, written, fetches = _both(tmp_path, WriteOptions(dtype=dtype), sink)
    assert sink.order == list(range(1, len(sink.parts) + 1))
    assert sink.joined() == written
    assert streamed.report["verification"] == local.report["verification"]
    assert sum(length for _, length in fetches.asked) >= 2 * (len(fetches.data) - 4096)


def test_a_header_larger_than_a_part_makes_the_parts_larger(tmp_path: Path) -> None:
    sink = _Parts(part_size=1024)
    _, _, written, _ = _both(tmp_path, WriteOptions(), sink)
    header = 8 + int.from_bytes(written[:8], "little")
    assert header > 1024
    assert sink.joined() == written
    assert len(sink.parts[1]) >= header


def test_parts_grow_to_fit_the_parts_there_are(tmp_path: Path) -> None:
    sink = _Parts(part_size=4096, max_parts=3)
    _, _, written, _ = _both(tmp_path, WriteOptions(), sink)
    assert len(sink.parts) <= 3
    assert sink.joined() == written


def test_the_source_is_read_in_blocks_once(tmp_path: Path) -> None:
    sink = _Parts(part_size=4096)
    _, _, _, fetches = _both(tmp_path, WriteOptions(), sink, block=4096)
    starts = [offset for offset, _ in fetches.asked]
    assert len(starts) > 2
    assert all(length <= 4096 for _, length in fetches.asked)
    assert len(starts) == len(set(starts))  # a byte-copy conversion reads each block once
    assert sum(length for _, length in fetches.asked) == len(fetches.data)


def test_read_ahead_serves_reads_across_blocks() -> None:
    data = bytes(range(256)) * 40
    fetches = _Fetches(data)
    with ReadAhead(RemoteBlob("x", len(data), fetches, block=1000)) as f:
        f.seek(990)
        assert f.read(25) == data[990:1015]
        assert f.read(5000) == data[1015:6015]
        view = bytearray(10)
        assert f.read_at(10_235, memoryview(view)) == 5
        assert bytes(view[:5]) == data[10_235:]


def test_a_short_fetch_is_refused() -> None:
    blob = RemoteBlob("x.safetensors", 1000, lambda offset, length: b"\0" * (length - 1))
    with pytest.raises(GraftError, match="asked for 1000 bytes at 0, got 999"):
        open_source(blob)


def test_a_model_target_is_not_streamed(tmp_path: Path) -> None:
    """The model check would need the whole output on this host: refused, not skipped."""
    src = save_st(small_state_dict(0), tmp_path / "src.safetensors")
    data = src.read_bytes()
    blob = RemoteBlob("src.safetensors", len(data), lambda o, n: data[o : o + n])
    known = KnownSource(sha256=hashlib.sha256(data).hexdigest())
    result = convert(
        blob, skeleton_of(SmallNet()), load_recipe({}),
        output=StreamedOutput("o.safetensors", _Parts(4096)), known=known,
    )  # fmt: skip
    assert result.ok  # a skeleton runs no model: streamed
    architecture = Target.from_spec(
        parse_target_spec({"architecture": "graft_resnet", "kwargs": {"depth": 18}})
    )
    with pytest.raises(GraftError, match="cannot be run in a model"):
        convert(
            blob, architecture, load_recipe({}),
            output=StreamedOutput("o.safetensors", _Parts(4096)), known=known,
        )  # fmt: skip
