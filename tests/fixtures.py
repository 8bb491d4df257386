"""Builders for tiny real models and checkpoints (good and hostile), shared by the tests.

Everything here writes real files with the real libraries (``torch.save``, ``safetensors``,
``zipfile``); hostile files start from a real ``torch.save`` archive and change one thing.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import json
import pickle
import struct
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from tests.parts import require_part

__all__ = [
    "REPO_ROOT",
    "TINY_EXPECTED",
    "TinyNet",
    "assert_source_equals",
    "cli_inspect",
    "dangling_memo_pickle",
    "deep_pickle",
    "forged_legacy_file",
    "package_file",
    "reduce_pickle",
    "replace_zip_member",
    "rezip",
    "safetensors_bytes",
    "save_hf_sharded_bin",
    "save_hf_sharded_safetensors",
    "tiny_state_dict",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


class TinyNet(nn.Module):
    """conv + BatchNorm + linear, a bf16 head and an int32 buffer: every kind a reader meets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2, dtype=torch.bfloat16)
        self.register_buffer("index", torch.arange(5, dtype=torch.int32))


# key -> (shape, dtype, kind), in state_dict order.
TINY_EXPECTED: dict[str, tuple[tuple[int, ...], str, str]] = {
    "index": ((5,), "int32", "buffer"),  # the root module's own buffer comes first
    "conv.weight": ((4, 3, 3, 3), "float32", "parameter"),
    "conv.bias": ((4,), "float32", "parameter"),
    "bn.weight": ((4,), "float32", "parameter"),
    "bn.bias": ((4,), "float32", "parameter"),
    "bn.running_mean": ((4,), "float32", "buffer"),
    "bn.running_var": ((4,), "float32", "buffer"),
    "bn.num_batches_tracked": ((), "int64", "buffer"),
    "fc.weight": ((3, 4), "float32", "parameter"),
    "fc.bias": ((3,), "float32", "parameter"),
    "head.weight": ((2, 3), "bfloat16", "parameter"),
    "head.bias": ((2,), "bfloat16", "parameter"),
}


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A TinyNet state dict with non-trivial BatchNorm statistics (one training step)."""
    torch.manual_seed(seed)
    model = TinyNet()
    model.train()
    model.bn(torch.randn(2, 4, 5, 5))  # running stats and num_batches_tracked move off defaults
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_source_equals(source: Any, expected: Mapping[str, torch.Tensor]) -> None:
    """Exact keys (in order), shapes, dtypes and values of an opened Source."""
    assert list(source.tensors) == list(expected)
    for key, tensor in expected.items():
        info = source.tensors[key]
        assert info.shape == tuple(tensor.shape), key
        assert info.dtype == str(tensor.dtype).removeprefix("torch."), key
        got = source.read(key)
        assert got.dtype == tensor.dtype, key
        assert got.device.type == "cpu", key
        assert torch.equal(got, tensor.detach()), key


# --- sharded sets --------------------------------------------------------------------------


def _split(state_dict: Mapping[str, torch.Tensor], shards: int) -> list[dict[str, torch.Tensor]]:
    keys = list(state_dict)
    size = -(-len(keys) // shards)
    return [{k: state_dict[k] for k in keys[i : i + size]} for i in range(0, len(keys), size)]


def save_hf_sharded_safetensors(
    state_dict: Mapping[str, torch.Tensor], folder: Path, shards: int = 3
) -> Path:
    """``model-0000N-of-0000M.safetensors`` + ``model.safetensors.index.json``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = _split(state_dict, shards)
    weight_map: dict[str, str] = {}
    for i, part in enumerate(parts, start=1):
        name = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in part.items()}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def save_hf_sharded_bin(
    state_dict: Mapping[str, torch.Tensor], folder: Path, shards: int = 2
) -> Path:
    """``pytorch_model-0000N-of-0000M.bin`` (torch zip) + ``pytorch_model.bin.index.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = _split(state_dict, shards)
    weight_map: dict[str, str] = {}
    for i, part in enumerate(parts, start=1):
        name = f"pytorch_model-{i:05d}-of-{len(parts):05d}.bin"
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


# --- hostile files -------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)`` through REDUCE: what a malicious checkpoint does."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def reduce_pickle(func: Any, *args: Any, protocol: int = 2) -> bytes:
    """A pickle of ``{"weight": func(*args)}``: a global, then REDUCE calls it."""
    return pickle.dumps({"weight": _Reduce(func, args)}, protocol=protocol)


def dangling_memo_pickle() -> bytes:
    """PROTO 2, BINGET 7 (never memoised), STOP."""
    return b"\x80\x02h\x07."


def deep_pickle(depth: int, kind: str = "list") -> bytes:
    """A pickle of ``depth`` nested lists (or dicts), built with opcodes, no recursion needed."""
    if kind == "list":
        return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    # d0 'k' d1 'k' d2 ... then SETITEM folds each dict into the one below it.
    return b"\x80\x02}" + b"X\x01\x00\x00\x00k}" * (depth - 1) + b"s" * (depth - 1) + b"."


def rezip(src: Path, dst: Path, *, compress_type: int = zipfile.ZIP_STORED) -> None:
    """Copy a zip member by member, e.g. with every member compressed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compress_type) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), compress_type=compress_type)


def replace_zip_member(src: Path, dst: Path, suffix: str, data: bytes) -> None:
    """Copy a torch.save zip (members stored), replacing the member ending in ``suffix``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        replaced = False
        for info in zin.infolist():
            if info.filename.endswith(suffix):
                zout.writestr(info.filename, data)
                replaced = True
            else:
                zout.writestr(info.filename, zin.read(info.filename))
    assert replaced, f"no member ends in {suffix!r}"


def safetensors_bytes(
    header: Mapping[str, Any], data: bytes, *, length: int | None = None
) -> bytes:
    """A safetensors file from a raw header dict; ``length`` overrides the declared size."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


class _FakeStorage:
    def __init__(self, numel: int) -> None:
        self.numel = numel


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _FakeStorage):
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel, None)
        return None


def forged_legacy_file(path: Path, *, claimed: int, actual: int) -> None:
    """A legacy torch.save stream whose one storage claims ``claimed`` float32 elements.

    The pickle and the storage record agree on the claim; only ``actual`` elements follow.
    """
    tensor = _Reduce(
        torch._utils._rebuild_tensor_v2,
        (_FakeStorage(claimed), 0, (claimed,), (1,), False, collections.OrderedDict()),
    )
    body = io.BytesIO()
    _LegacyPickler(body, protocol=2).dump({"weight": tensor})
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    path.write_bytes(
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
        + pickle.dumps(1001, protocol=2)
        + pickle.dumps(sys_info, protocol=2)
        + body.getvalue()
        + pickle.dumps(["0"], protocol=2)
        + struct.pack("<q", claimed)
        + bytes(4 * actual)
    )


# --- real published checkpoints --------------------------------------------------------------


def package_file(package: str, relative: str) -> Path | None:
    """A file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def published_file(package: str, relative: str) -> Path:
    """``package_file``, or a skip when the package (a real published checkpoint that
    requirements-fixtures.txt installs) is absent."""
    path = package_file(package, relative)
    if path is None:
        require_part(
            package,
            f"{package} is not installed (make setup installs requirements-fixtures.txt); "
            f"{relative} is the real checkpoint this test reads",
        )
    return path


# --- the CLI as a real process ---------------------------------------------------------------


def cli_inspect(*args: str | Path) -> Any:
    """Run ``graft inspect ARGS`` in a fresh interpreter via ``app.cli.main``."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "inspect", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refuses_code(path: Path, canary: Path) -> None:
    """A checkpoint planted with a pickle that would call ``os.system`` (touching ``canary``)
    is refused by the reader and by ``graft inspect`` (exit 2, one line), and nothing ran."""
    import pytest

    from app.engine.errors import UnsafeCheckpointError
    from app.engine.readers import open_source

    with pytest.raises(UnsafeCheckpointError, match=r"references '(posix|os)\.system'"):
        open_source(path)
    result = cli_inspect(path)
    assert result.returncode == 2
    assert result.stderr.startswith("graft: error: unsafe checkpoint: the pickle references")
    assert not canary.exists()
