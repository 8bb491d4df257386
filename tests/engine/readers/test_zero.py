"""DeepSpeed ZeRO checkpoints as sources (SPEC §2.3), read without DeepSpeed.

The checkpoints are written by DeepSpeed 0.19.8 itself (its own venv, 2 ranks on gloo, bf16,
ZeRO 1, 2 and 3; see tests/zero_fixtures.py), and every tensor must equal DeepSpeed's own
``get_fp32_state_dict_from_zero_checkpoint``, or the model states' ``module`` as torch.load
reads it with DeepSpeed installed, bit for bit.
"""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from app.engine.errors import UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.readers import open_source
from app.engine.readers.placeholders import Placeholder
from app.engine.readers.unpickler import load_restricted
from app.engine.readers.zero import ZeroReader
from app.engine.readers.zero_layout import DEEPSPEED_GLOBALS
from tests.fixtures import reduce_pickle, replace_zip_member
from tests.zero_fixtures import MODULE, REFERENCE, STAGES, zero_checkpoint

STEP = "global_step2"


@pytest.fixture(scope="module")
def zero() -> dict[int, Path]:
    """Stage -> fixture folder (``ckpt/``, ``reference.pt``, ``module.pt``), built once."""
    return {stage: zero_checkpoint(stage) for stage in STAGES}


def _copy(src: Path, tmp_path: Path) -> Path:
    tmp_path.mkdir(exist_ok=True)
    shutil.copytree(src / "ckpt", tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.mark.parametrize("stage", STAGES)
def test_auto_is_deepspeeds_own_fp32_merge_bit_for_bit(zero: dict[int, Path], stage: int) -> None:
    reference = torch.load(zero[stage] / REFERENCE, weights_only=True)
    module = torch.load(zero[stage] / MODULE, weights_only=True)
    with open_source(zero[stage] / "ckpt") as source:
        assert source.format == "deepspeed"
        assert source.entry == "fp32"
        assert [k for k in source.tensors if k in reference] == list(reference)
        for key, want in reference.items():
            got = source.read(key)
            assert (got.dtype, got.shape) == (want.dtype, want.shape), key
            assert torch.equal(got, want), key
            assert source.tensors[key].dtype == str(want.dtype).removeprefix("torch.")
        # ZeRO 1 records no frozen parameters (zero_to_fp32 drops them): Graft takes the module's
        extra = [k for k in source.tensors if k not in reference]
        assert extra == (["frozen.weight", "frozen.bias"] if stage == 1 else [])
        for key in extra:
            assert torch.equal(source.read(key), module[key])
        assert source.tensors["scale"].kind == "buffer"


@pytest.mark.parametrize("stage", STAGES)
def test_frozen_and_tied_parameters_come_out_right(zero: dict[int, Path], stage: int) -> None:
    module = torch.load(zero[stage] / MODULE, weights_only=True)
    with open_source(zero[stage] / "ckpt") as source:
        layout = source.layout
        assert layout is not None
        assert layout["frozen"] == ["frozen.weight", "frozen.bias"]
        assert layout["tied"] == {"head.weight": "embed.weight"}
        assert source.storage_id("head.weight") == source.storage_id("embed.weight")
        assert source.storage_id("body.weight") != source.storage_id("embed.weight")
        frozen = source.read("frozen.weight")
        assert frozen.dtype == torch.bfloat16  # saved 16-bit, never trained: as DeepSpeed keeps it
        if stage != 3:  # ZeRO 3's module holds empty placeholders
            assert torch.equal(frozen, module["frozen.weight"])
        assert torch.equal(source.read("head.weight"), source.read("embed.weight"))


@pytest.mark.parametrize("stage", [1, 2])
def test_module_entry_is_the_model_states_module(zero: dict[int, Path], stage: int) -> None:
    module = torch.load(zero[stage] / MODULE, weights_only=True)
    with open_source(zero[stage] / "ckpt", entry="module") as source:
        assert source.entry == "module"
        assert list(source.tensors) == list(module)
        for key, want in module.items():
            got = source.read(key)
            assert got.dtype == want.dtype and torch.equal(got, want), key
        assert source.tensors["embed.weight"].dtype == "bfloat16"
        assert source.storage_id("head.weight") == source.storage_id("embed.weight")


def test_zero3_keeps_no_whole_module_weights_and_says_so(zero: dict[int, Path]) -> None:
    with pytest.raises(UnreadableCheckpointError, match="ZeRO 3 saves no whole 16-bit weights"):
        open_source(zero[3] / "ckpt", entry="module")
    with pytest.raises(UnreadableCheckpointError, match="'auto' or 'fp32'"):
        open_source(zero[2] / "ckpt", entry="optimizer")


@pytest.mark.parametrize("stage", STAGES)
def test_each_tensor_is_its_pieces_ranges_and_nothing_else(
    zero: dict[int, Path], stage: int
) -> None:
    with open_source(zero[stage] / "ckpt") as source:
        for key in source.tensors:
            entry = source._entries[key]
            assert isinstance(entry.reader, ZeroReader)
            spans = source.byte_ranges(key)
            assert spans is not None, key
            data = bytearray()
            for path, offset, length in spans:
                with path.open("rb") as f:
                    f.seek(offset)
                    data += f.read(length)
            got = source.read(key)
            assert sum(n for *_, n in spans) == got.numel() * got.element_size()
            assert bytes(data) == got.contiguous().view(torch.uint8).numpy().tobytes(), key
        if stage == 3:  # every parameter is cut across both ranks' files
            names = {p.name for p, *_ in source.byte_ranges("body.weight") or []}
            assert len(names) == 2


def test_the_folder_its_latest_its_tag_folder_and_its_files_all_open(
    zero: dict[int, Path],
) -> None:
    ckpt = zero[3] / "ckpt"
    files = sorted((ckpt / STEP).glob("*_states.pt"))
    ways: list[Any] = [ckpt, ckpt / "latest", ckpt / STEP, files, {p.name: p for p in files}]
    for way in ways:
        with open_source(way) as source:
            assert source.format == "deepspeed"
            assert len(source.tensors) == 11
            assert sorted(p.name for p in source.paths) == [p.name for p in files]


def test_a_missing_rank_is_refused(zero: dict[int, Path], tmp_path: Path) -> None:
    ckpt = _copy(zero[2], tmp_path)
    (ckpt / STEP / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(UnreadableCheckpointError, match=r"ranks \[1\] are not 0\.\.0"):
        open_source(ckpt)
    (ckpt / STEP / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    shutil.copy(
        zero[2] / "ckpt" / STEP / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", ckpt / STEP
    )
    with pytest.raises(UnreadableCheckpointError, match=r"partitioned over \[2, 2\] ranks, but 1"):
        open_source(ckpt)


def test_partitions_that_do_not_fit_the_shapes_are_refused(
    zero: dict[int, Path], tmp_path: Path
) -> None:
    ckpt = _copy(zero[3], tmp_path)
    rank1 = sorted((ckpt / STEP).glob("*rank_1*optim_states.pt"))[0]
    shutil.copy(zero[2] / "ckpt" / STEP / rank1.name, rank1)  # a ZeRO 2 rank among ZeRO 3's
    with pytest.raises(UnreadableCheckpointError, match=r"ZeRO stages \[2, 3\]"):
        open_source(ckpt)
    ckpt = _copy(zero[2], tmp_path / "other")
    rank0 = ckpt / STEP / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shutil.copy(zero[1] / "ckpt" / STEP / rank0.name, rank0)  # same sizes, another run's stage
    with pytest.raises(UnreadableCheckpointError, match=r"ZeRO stages \[1, 2\]"):
        open_source(ckpt)


# --- the restricted unpickler and DeepSpeed's objects ------------------------------------------


def test_deepspeed_objects_are_inert_placeholders() -> None:
    # ZeroStageEnum(3), then a LossScaler created with NEWOBJ and given its state by BUILD.
    payload = (
        b"\x80\x02}(X\x01\x00\x00\x00s"
        b"cdeepspeed.runtime.zero.config\nZeroStageEnum\nK\x03\x85R"
        b"X\x01\x00\x00\x00l"
        b"cdeepspeed.runtime.fp16.loss_scaler\nLossScaler\n)\x81}X\x03\x00\x00\x00curG?\xf0"
        b"\x00\x00\x00\x00\x00\x00sbu."
    )
    root = load_restricted(payload, extra=DEEPSPEED_GLOBALS)
    stage, scaler = root["s"], root["l"]
    assert isinstance(stage, Placeholder) and stage.qualname.endswith("ZeroStageEnum")
    assert stage.first_arg == 3
    assert isinstance(scaler, Placeholder) and scaler.state == {"cur": 1.0}
    assert repr(scaler) == "<deepspeed.runtime.fp16.loss_scaler.LossScaler (not loaded)>"
    assert "deepspeed" not in sys.modules
    with pytest.raises(TypeError):
        pickle.dumps(scaler)


def test_a_build_on_a_placeholder_class_is_refused() -> None:
    cls = DEEPSPEED_GLOBALS[("deepspeed.runtime.zero.config", "ZeroStageEnum")]
    payload = (
        b"\x80\x02cdeepspeed.runtime.zero.config\nZeroStageEnum\nN}X\x01\x00\x00\x00xK\x01s\x86b."
    )
    with pytest.raises((UnsafeCheckpointError, UnreadableCheckpointError)):
        load_restricted(payload, extra=DEEPSPEED_GLOBALS)
    assert "x" not in vars(cls)


def test_other_deepspeed_classes_are_refused() -> None:
    payload = b"\x80\x02cdeepspeed.runtime.engine\nDeepSpeedEngine\n)R."
    with pytest.raises(UnsafeCheckpointError, match=r"deepspeed\.runtime\.engine\.DeepSpeedEngine"):
        load_restricted(payload, extra=DEEPSPEED_GLOBALS)


def test_a_code_running_optim_states_pickle_is_refused_and_never_runs(
    zero: dict[int, Path], tmp_path: Path
) -> None:
    ckpt = _copy(zero[2], tmp_path)
    canary = tmp_path / "canary"
    target = ckpt / STEP / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    payload = reduce_pickle(os.system, f"touch {shlex.quote(str(canary))}")
    replace_zip_member(target, tmp_path / "evil.pt", "/data.pkl", payload)
    shutil.move(tmp_path / "evil.pt", target)
    with pytest.raises(UnsafeCheckpointError, match=r"references '(posix|os)\.system'"):
        open_source(ckpt)
    assert not canary.exists()


def _open_files_under(folder: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    targets = (os.readlink(fds / fd) for fd in os.listdir(fds) if (fds / fd).exists())
    return [t for t in targets if t.startswith(str(folder))]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_no_rank_file_stays_open_between_reads(zero: dict[int, Path]) -> None:
    ckpt = zero[3] / "ckpt"
    with open_source(ckpt) as source:
        assert _open_files_under(ckpt) == []  # any world size: no descriptor per rank file
        source.read("body.weight")
        assert _open_files_under(ckpt) == []
    with open_source(zero[2] / "ckpt", entry="module") as source:
        held = _open_files_under(zero[2] / "ckpt")
        assert [Path(p).name for p in held] == ["mp_rank_00_model_states.pt"]
