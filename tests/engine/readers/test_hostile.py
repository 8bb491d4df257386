"""Hostile and broken files: the exact error, one line on stderr, exit 2, and no payload run.

Every malicious pickle writes a canary file when unpickled; a control test proves the payloads
are live (plain ``pickle.loads`` does write the canary), so the canary staying absent in the
real tests means Graft never executed them.
"""

from __future__ import annotations

import builtins
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from app.engine.errors import (
    TooLargeError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)
from app.engine.readers import open_source
from app.engine.readers.unpickler import load_restricted
from tests.fixtures import (
    cli_inspect,
    dangling_memo_pickle,
    deep_pickle,
    forged_legacy_file,
    reduce_pickle,
    replace_zip_member,
    rezip,
    safetensors_bytes,
    save_hf_sharded_safetensors,
    tiny_state_dict,
)

PY_WRITE = "__import__('pathlib').Path({path!r}).write_text('pwned')"

# name -> (builds the payload pickle for a canary path and protocol, the global it must name).
# Protocol 2 writes Python 2 module names (__builtin__, commands), as old torch files do.
PAYLOADS: dict[str, tuple[Callable[[Path, int], bytes], str]] = {
    "os.system": (
        lambda canary, proto: reduce_pickle(
            os.system, f"touch {shlex.quote(str(canary))}", protocol=proto
        ),
        r"'(posix|os)\.system'",
    ),
    "builtins.eval": (
        lambda canary, proto: reduce_pickle(
            builtins.eval, PY_WRITE.format(path=str(canary)), protocol=proto
        ),
        r"'(builtins|__builtin__)\.eval'",
    ),
    "builtins.exec": (
        lambda canary, proto: reduce_pickle(
            builtins.exec, PY_WRITE.format(path=str(canary)), protocol=proto
        ),
        r"'(builtins|__builtin__)\.exec'",
    ),
    "subprocess.Popen": (
        lambda canary, proto: reduce_pickle(
            subprocess.Popen, ["touch", str(canary)], protocol=proto
        ),
        r"'(subprocess|commands)\.Popen'",
    ),
}


def _real_zip(tmp_path: Path) -> Path:
    path = tmp_path / "real.pt"
    torch.save(tiny_state_dict(), path)
    return path


def _assert_cli_refuses(path: Path | str, message: str) -> None:
    """``graft inspect`` exits 2 with one line on stderr that carries ``message``."""
    result = cli_inspect(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("graft: error: ")
    assert message in lines[0]
    assert result.stdout == ""


# --- payloads that would run code -------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_payloads_are_live_when_unpickled_naively(name: str, protocol: int, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    result = pickle.loads(
        PAYLOADS[name][0](canary, protocol)
    )  # the control: what torch.load(False) does
    if isinstance(result["weight"], subprocess.Popen):
        result["weight"].wait()
    assert canary.read_text() in ("pwned", "")  # touch writes nothing, the others write pwned
    assert canary.exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_reduce_payload_is_refused_and_never_runs(
    name: str, container: str, protocol: int, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    build, global_name = PAYLOADS[name]
    payload = build(canary, protocol)
    assert b"R" in payload  # the call goes through the REDUCE opcode
    path = tmp_path / "evil.pt"
    if container == "torch-zip":
        replace_zip_member(_real_zip(tmp_path), path, "/data.pkl", payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match=rf"the pickle references {global_name}"):
        open_source(path)
    if protocol == 2:  # one real process per payload and container keeps the suite quick
        _assert_cli_refuses(path, "unsafe checkpoint: the pickle references")
    assert not canary.exists()


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's own deprecation notices
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeCheckpointError, match="this is a TorchScript archive"):
        open_source(path)
    _assert_cli_refuses(path, "TorchScript archive")


# --- broken containers -------------------------------------------------------------------------


def test_truncated_zip(tmp_path: Path) -> None:
    data = _real_zip(tmp_path).read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableCheckpointError, match="corrupt or truncated zip archive"):
        open_source(path)
    _assert_cli_refuses(path, "corrupt or truncated zip archive")


def test_compressed_zip_members_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "deflated.pt"
    rezip(_real_zip(tmp_path), path, compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(UnsafeCheckpointError, match=r"zip member '.*' is compressed"):
        open_source(path)
    _assert_cli_refuses(path, "is compressed")


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_dangling_memo_reference(container: str, tmp_path: Path) -> None:
    path = tmp_path / "memo.pt"
    if container == "torch-zip":
        replace_zip_member(_real_zip(tmp_path), path, "/data.pkl", dangling_memo_pickle())
    else:
        path.write_bytes(dangling_memo_pickle())
    with pytest.raises(UnreadableCheckpointError, match=r"corrupt pickle \(.*[Mm]emo"):
        open_source(path)
    _assert_cli_refuses(path, "corrupt pickle")


def test_storage_member_missing_from_zip(tmp_path: Path) -> None:
    src = _real_zip(tmp_path)
    path = tmp_path / "nodata.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/0"):
                zout.writestr(info.filename, zin.read(info.filename))
    with pytest.raises(UnreadableCheckpointError, match="storage '0' has no data member"):
        open_source(path)


def test_legacy_storage_claims_more_than_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "forged.pth"
    forged_legacy_file(path, claimed=10**12, actual=4)
    with pytest.raises(
        UnreadableCheckpointError,
        match=r"storage '0' declares 1000000000000 elements but the file holds fewer",
    ):
        open_source(path)
    _assert_cli_refuses(path, "declares 1000000000000 elements")


def test_forged_legacy_builder_is_sound(tmp_path: Path) -> None:
    # Same builder, honest numbers: it opens and reads, so the test above fails for its claim.
    path = tmp_path / "honest.pth"
    forged_legacy_file(path, claimed=4, actual=4)
    with open_source(path) as source:
        assert source.format == "torch-legacy"
        assert torch.equal(source.read("weight"), torch.zeros(4))


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deeply_nested_pickle_in_a_zip(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "deep.pt"
    replace_zip_member(_real_zip(tmp_path), path, "/data.pkl", deep_pickle(100_000, kind))
    with pytest.raises(TooLargeError, match=r"^the pickle nests deeper than 1000 levels$"):
        open_source(path)
    _assert_cli_refuses(path, "the pickle nests deeper than 1000 levels")


def test_stride_0_view_declaring_a_billion_elements(tmp_path: Path) -> None:
    # One float32 on disk, viewed as 10**9 of them: reading it would allocate 4 GB.
    path = tmp_path / "expand.pt"
    torch.save({"w": torch.zeros(1).expand(10**9)}, path)
    assert path.stat().st_size < 4096
    with pytest.raises(TooLargeError, match=r"far more than the file holds \(stride-0"):
        open_source(path)
    _assert_cli_refuses(path, "far more than the file holds")


# --- safetensors headers -------------------------------------------------------------------------

F32x1 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}

SAFETENSORS_CASES = {
    "header-length-2**40": (
        lambda: safetensors_bytes({"w": F32x1}, bytes(4), length=2**40),
        TooLargeError,
        r"safetensors header claims 1099511627776 bytes \(limit",
    ),
    "overlapping-offsets": (
        lambda: safetensors_bytes(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
        ),
        UnreadableCheckpointError,
        r"safetensors entry 'b' overlaps another or leaves a gap at byte 8",
    ),
    "trailing-bytes": (
        lambda: safetensors_bytes({"w": F32x1}, bytes(4) + b"extra"),
        UnreadableCheckpointError,
        r"data ends at byte \d+ but the file has \d+ bytes \(truncated, or trailing bytes\)",
    ),
    "unknown-dtype": (
        lambda: safetensors_bytes(
            {"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, bytes(16)
        ),
        UnreadableCheckpointError,
        r"safetensors entry 'w' has unknown dtype 'F128'",
    ),
    "billion-elements-in-4-bytes": (
        lambda: safetensors_bytes(
            {"w": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4]}}, bytes(4)
        ),
        UnreadableCheckpointError,
        r"shape \[1000000000\] of float32 needs 4000000000 bytes but offsets span 4",
    ),
}


@pytest.mark.parametrize("case", list(SAFETENSORS_CASES))
def test_bad_safetensors_header(case: str, tmp_path: Path) -> None:
    build, error, message = SAFETENSORS_CASES[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(build())
    with pytest.raises(error, match=message):
        open_source(path)
    _assert_cli_refuses(path, "safetensors")


def test_safetensors_builder_is_sound(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    path.write_bytes(safetensors_bytes({"w": F32x1}, bytes(4)))
    with open_source(path) as source:
        assert torch.equal(source.read("w"), torch.zeros(1))


# --- not checkpoints at all ----------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(UnreadableCheckpointError, match=r"empty\.pt is empty"):
        open_source(path)
    _assert_cli_refuses(path, "empty.pt is empty")


def test_png_renamed_pth(tmp_path: Path) -> None:
    path = tmp_path / "cat.pth"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(32))
    with pytest.raises(
        UnreadableCheckpointError, match=r"cat\.pth is not a checkpoint: it looks like a PNG image"
    ):
        open_source(path)
    _assert_cli_refuses(path, "it looks like a PNG image")


def test_missing_file_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(UnreadableCheckpointError, match=r"cannot read nope\.pt"):
        open_source(path)
    _assert_cli_refuses(path, "nope.pt")


# --- sharded sets pointing outside themselves --------------------------------------------


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_index_pointing_outside_its_directory(where: str, tmp_path: Path) -> None:
    index = save_hf_sharded_safetensors(tiny_state_dict(), tmp_path / "set", shards=2)
    outside = tmp_path / "outside.safetensors"  # a valid file: only the path is wrong
    outside.write_bytes(safetensors_bytes({"fc.bias": F32x1}, bytes(4)))
    target = "../outside.safetensors" if where == "parent" else str(outside)
    text = index.read_text().replace('"fc.bias": "model-00002-of-00002.safetensors"', "X")
    assert "X" in text
    index.write_text(text.replace("X", f'"fc.bias": "{target}"'))
    with pytest.raises(
        UnsafeCheckpointError,
        match=rf"weight_map sends 'fc\.bias' to '{re.escape(target)}', which is not a plain file",
    ):
        open_source(index)
    # The index itself for one case, the set's directory for the other.
    _assert_cli_refuses(
        index if where == "parent" else index.parent,
        "unsafe checkpoint: weight_map sends 'fc.bias'",
    )


# --- issue 12: memory bombs, shared markers, impossible shapes, empty files ------------------


def _peak_rss_of_load(payload: bytes) -> tuple[str, int]:
    """Load ``payload`` with the restricted unpickler in a fresh process: (outcome, peak kB)."""
    code = (
        "import resource, sys\n"
        "from app.engine.readers.unpickler import load_restricted\n"
        "try:\n"
        "    load_restricted(sys.stdin.buffer.read()); outcome = 'loaded'\n"
        "except Exception as exc:\n"
        "    outcome = f'{type(exc).__name__}: {exc}'\n"
        "print(outcome); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, timeout=120, check=True
    )
    outcome, peak = result.stdout.decode().strip().splitlines()
    return outcome, int(peak)


@pytest.mark.parametrize("opcode", [b"r", b"q", b"p"])
def test_a_huge_memo_index_is_refused_without_allocating(opcode: bytes) -> None:
    # PROTO 2, NONE, PUT at index 5*10**7 (or the largest BINPUT index), STOP: 9 bytes that
    # made CPython's unpickler zero-fill an 820 MB memo table.
    index = 5 * 10**7
    if opcode == b"r":
        put = b"r" + struct.pack("<I", index)
    elif opcode == b"q":
        put, index = b"q\xff", 255
    else:
        put = b"p%d\n" % index
    outcome, peak_kb = _peak_rss_of_load(b"\x80\x02N" + put + b".")
    assert outcome.startswith(f"UnreadableCheckpointError: corrupt pickle: memo index {index}")
    baseline, baseline_kb = _peak_rss_of_load(b"\x80\x02N.")  # the same process, a harmless load
    assert baseline == "loaded"
    assert peak_kb < baseline_kb + 50_000, (peak_kb, baseline_kb)


def test_sequential_memo_indices_still_load() -> None:
    value = load_restricted(pickle.dumps({"a": [1, 2], "b": (3,)}, protocol=2))
    assert value == {"a": [1, 2], "b": (3,)}


# BUILD on an allow-listed object: each of these mutated a marker every later load shares.
_BUILD_ON_SHARED = {
    "tensor-marker-dict-state": b"\x80\x02ctorch\nTensor\n}X\x0c\x00\x00\x00is_parameter\x88sb.",
    "tensor-marker-setstate": b"\x80\x02ctorch._tensor\nTensor\n\x88\x85b.",
    "storage-dtype": b"\x80\x02ctorch\nFloatStorage\nX\x07\x00\x00\x00float64\x85b.",
    "rebuild-function": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nctorch\nSize\n\x85b.",
}


def _buffer_with_attribute(tmp_path: Path) -> Path:
    # A tensor with Python attributes is saved through _rebuild_from_type_v2(…, torch.Tensor, …),
    # the path that consults the shared Tensor marker.
    running_mean = torch.arange(3, dtype=torch.float32)
    running_mean.note = "kept"  # type: ignore[attr-defined]
    path = tmp_path / "bn.pt"
    torch.save({"bn.running_mean": running_mean, "conv.weight": torch.ones(2)}, path)
    return path


@pytest.mark.parametrize("case", list(_BUILD_ON_SHARED))
def test_one_hostile_pickle_cannot_change_how_the_next_is_read(case: str, tmp_path: Path) -> None:
    with pytest.raises((UnsafeCheckpointError, UnreadableCheckpointError)):
        load_restricted(_BUILD_ON_SHARED[case])
    with open_source(_buffer_with_attribute(tmp_path)) as source:
        described = {t["key"]: (t["kind"], t["dtype"]) for t in source.describe()["tensors"]}
        assert torch.equal(source.read("bn.running_mean"), torch.arange(3, dtype=torch.float32))
    assert described == {
        "bn.running_mean": ("buffer", "float32"),
        "conv.weight": ("parameter", "float32"),
    }


def test_marker_build_is_refused_as_unsafe() -> None:
    with pytest.raises(UnsafeCheckpointError, match="tries to modify TensorType"):
        load_restricted(_BUILD_ON_SHARED["tensor-marker-dict-state"])


def _zip_with_size(tmp_path: Path, size: tuple[int, ...]) -> Path:
    """A torch zip whose one tensor claims ``size`` (stride 1s, storage of 0 elements)."""
    path = tmp_path / "shape.pt"
    torch.save({"w": torch.zeros(0, 2)}, path)
    with zipfile.ZipFile(path) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    # (0, 2) is pickled as BININT1 0, BININT1 2, TUPLE2: put a LONG1 of 2**70 in its place.
    forged = pkl.replace(
        b"K\x00K\x02\x86", b"K\x00\x8a\x09" + (2**70).to_bytes(9, "little") + b"\x86"
    )
    assert forged != pkl
    out = tmp_path / "forged.pt"
    replace_zip_member(path, out, "/data.pkl", forged)
    return out


def test_dims_beyond_int64_in_a_torch_zip(tmp_path: Path) -> None:
    path = _zip_with_size(tmp_path, (0, 2**70))
    with pytest.raises(UnreadableCheckpointError, match="not a tuple of non-negative int64"):
        open_source(path)
    _assert_cli_refuses(path, "int64")


IMPOSSIBLE_SAFETENSORS = {
    "dim-2**70": (
        lambda: safetensors_bytes(
            {"w": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}, b""
        ),
        UnreadableCheckpointError,
        r"safetensors entry 'w': shape \[0, 1180591620717411303424\] does not fit in int64",
    ),
    "header-over-the-library-cap": (
        lambda: safetensors_bytes({"w": F32x1}, bytes(4), length=100_000_001),
        TooLargeError,
        r"safetensors header claims 100000001 bytes \(limit 100000000, as the safetensors",
    ),
}


@pytest.mark.parametrize("case", list(IMPOSSIBLE_SAFETENSORS))
def test_impossible_safetensors(case: str, tmp_path: Path) -> None:
    build, error, message = IMPOSSIBLE_SAFETENSORS[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(build())
    with pytest.raises(error, match=message):
        open_source(path)
    _assert_cli_refuses(path, "safetensors")
