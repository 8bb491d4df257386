"""DCP folders as sources, and ``--format dcp`` as an output (SPEC §2.3).

The checkpoints are written by torch itself (gloo on CPU, real processes: FSDP2 with 2 ranks,
DTensor on a 2x2 mesh with 4 ranks, and plain single-process ``dcp.save``), and every tensor
must equal torch's own merge, ``dcp_to_torch_save``, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shlex
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from app.engine.errors import UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.readers import inspect_source, open_source
from tests.dcp_fixtures import dcp_reference, save_distributed, sequential_model
from tests.fixtures import assert_refuses_code, cli_inspect, reduce_pickle, replace_zip_member
from tests.schemas import assert_valid
from tests.test_cli_convert import graft, graft_process


def _save_single(path: Path, state: dict[str, Any]) -> None:
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=path)


def _assert_equal(source_path: Path, expected: dict[str, torch.Tensor], **kw: Any) -> None:
    with open_source(source_path, **kw) as source:
        assert list(source.tensors) == list(expected)
        for key, want in expected.items():
            got = source.read(key)
            assert got.dtype == want.dtype and got.shape == want.shape, key
            assert torch.equal(got, want), key


@pytest.fixture(scope="module")
def fsdp2_ws2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("fsdp2") / "step-1"
    save_distributed(path, "fsdp2", 2)
    return path, dcp_reference(path, path.parent / "merged.pt")


@pytest.fixture(scope="module")
def dtensor_ws4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("dtensor") / "step-1"
    save_distributed(path, "dtensor", 4)
    return path, dcp_reference(path, path.parent / "merged.pt")


@pytest.fixture
def single(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    torch.manual_seed(0)
    state = {
        "model": {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4), "n": torch.arange(5)},
        "optimizer": {"state": {"a.weight": {"exp_avg": torch.ones(4, 3)}}, "lr": 0.1},
        "step": 7,
    }
    _save_single(tmp_path / "ckpt", state)
    return tmp_path / "ckpt", state


# --- reading: global shapes, bit-exact against torch's own merge -------------------------------


def test_fsdp2_two_ranks_reads_the_model_at_global_shapes(fsdp2_ws2: Any) -> None:
    path, merged = fsdp2_ws2
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    _assert_equal(path, merged["model"])
    with open_source(path) as source:
        assert source.format == "dcp"
        assert source.entry == "model"
        assert source.candidates == ["model", "optimizer"]
        assert source.layout is not None
        assert source.layout["world_size"] == 2
        assert source.layout["chunks"] == dict.fromkeys(merged["model"], 2)
        assert source.layout["left_out"] == {
            "optimizer": {"tensors": 18, "bytes": 1088, "values": 12}
        }
        assert source.ignored == {"optimizer": "dcp: 18 tensors, 1088 bytes, 12 values"}
        assert source.tensors["0.weight"].shape == (10, 7)


def test_optimizer_state_only_when_the_entry_asks(fsdp2_ws2: Any) -> None:
    path, merged = fsdp2_ws2
    expected = {
        f"state.{param}.{name}": value
        for param, states in merged["optimizer"]["state"].items()
        for name, value in states.items()
    }
    with open_source(path, entry="optimizer") as source:
        assert sorted(source.tensors) == sorted(expected)
        for key, want in expected.items():
            assert torch.equal(source.read(key), want), key
    _assert_equal(path, merged["model"], entry="model")
    with pytest.raises(UnreadableCheckpointError, match="entry 'ema' holds no tensors"):
        open_source(path, entry="ema")


def test_dtensor_four_ranks_chunks_split_both_dims(dtensor_ws4: Any) -> None:
    path, merged = dtensor_ws4
    _assert_equal(path, {k: merged[k] for k in merged})
    with open_source(path) as source:
        assert source.entry is None  # flat keys, as torchtitan writes them
        assert source.layout is not None
        assert source.layout["world_size"] == 4
        assert source.layout["chunks"] == {
            "tok_embeddings.weight": 4,
            "layers.0.attention.wq.weight": 4,
            "layers.0.feed_forward.w1.weight": 2,
            "norm.weight": 1,
            "output.bias": 4,
        }
        assert source.tensors["layers.0.feed_forward.w1.weight"].dtype == "bfloat16"


def test_single_process_save_is_a_source_too(single: Any) -> None:
    path, state = single
    _assert_equal(path, state["model"])
    with open_source(path / ".metadata") as source:  # the metadata file names its folder
        assert source.layout is not None and source.layout["world_size"] == 1
        assert source.ignored == {
            "optimizer": "dcp: 1 tensors, 48 bytes, 1 values",
            "step": "dcp: 1 values",
        }
        # one chunk per tensor: its bytes are a plain range of the .distcp file
        span = source.byte_range("a.weight")
        assert span is not None and span[0] == path / "__0_0.distcp" and span[2] == 48


# --- inspect -----------------------------------------------------------------------------------


def test_inspect_shows_global_shapes_and_the_layout(fsdp2_ws2: Any) -> None:
    path, _ = fsdp2_ws2
    result = cli_inspect(path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "source    .metadata, __0_0.distcp, __1_0.distcp  (dcp)",
        "entry     model   candidates: model, optimizer",
        "prefix    stripped: -",
        "layout    dcp v1.0.0  world size 2 (2 files)  chunks per tensor: 2 (6 tensors)",
        "ignored   optimizer (dcp: 18 tensors, 1088 bytes, 12 values)",
    ]
    assert "0.weight         1  [10, 7]  float32    parameter" in lines
    as_json = cli_inspect(path, "--json")
    document = json.loads(as_json.stdout)
    assert document == inspect_source(path)
    assert_valid("inspect", document)


# --- convert -----------------------------------------------------------------------------------


def test_convert_a_sharded_run_to_safetensors_with_a_rename(fsdp2_ws2: Any, tmp_path: Path) -> None:
    path, merged = fsdp2_ws2
    template = tmp_path / "target.pt"
    renamed = {
        k.replace("0.", "encoder.", 1).replace("2.", "head.", 1).replace("1.", "norm.", 1): v
        for k, v in merged["model"].items()
    }
    torch.save({k: torch.zeros_like(v) for k, v in renamed.items()}, template)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "rename:\n"
        "  - {prefix: '0.', to: 'encoder.'}\n"
        "  - {prefix: '1.', to: 'norm.'}\n"
        "  - {prefix: '2.', to: 'head.'}\n"
    )
    planned = graft("plan", path, template, "-r", recipe)
    assert planned.exit_code == 0, planned.output
    out = tmp_path / "model.safetensors"
    result = graft(
        "convert", path, template, "-o", out, "-r", recipe, "--report", tmp_path / "r.json"
    )
    assert result.exit_code == 0, result.output
    written = load_file(out)
    assert sorted(written) == sorted(renamed)
    assert all(torch.equal(written[k], v) for k, v in renamed.items())
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["source"]["format"] == "dcp"
    assert report["source"]["entry"] == "model"
    assert report["verification"]["equal"] == 6
    # every tensor split along its first dim: its chunks were copied end to end, in the kernel
    assert (report["output"]["copied"], report["output"]["materialised"]) == (6, 0)


@pytest.mark.parametrize("workers", [2, 6])
def test_dcp_to_shards_side_by_side_is_the_sequential_output(
    fsdp2_ws2: Any, tmp_path: Path, workers: int
) -> None:
    """Every tensor's chunks copied end to end, one output shard per tensor: shards written
    side by side are byte for byte the shards written one after the other."""
    from app.engine.options import WriteOptions
    from app.engine.pipeline import convert
    from app.engine.recipe import load_recipe
    from app.engine.target import Target

    path, merged = fsdp2_ws2
    template = tmp_path / "target.pt"
    torch.save({"net." + k: torch.zeros_like(v) for k, v in merged["model"].items()}, template)
    recipe = load_recipe({"rename": [{"prefix": "", "to": "net."}]})
    files = {}
    for n in (1, workers):
        with Target.from_checkpoint(template) as target:
            options = WriteOptions(max_shard_size=1, shard_workers=n)
            result = convert(path, target, recipe, output=tmp_path / f"w{n}", options=options)
        assert result.ok and result.report["output"]["copied"] == 6, result.report
        assert result.report["verification"]["equal"] == 6
        files[n] = {p.name: p.read_bytes() for p in sorted((tmp_path / f"w{n}").iterdir())}
    assert len(files[1]) == 7  # 6 shards and the index
    assert files[workers] == files[1]


def test_a_copy_from_chunks_is_compared_chunk_by_chunk(tmp_path: Path) -> None:
    from app.engine.output.digests import compare_range, tensor_digest

    parts = [torch.arange(6, dtype=torch.float32), torch.arange(6, 10, dtype=torch.float32)]
    for i, part in enumerate(parts):
        (tmp_path / f"src{i}").write_bytes(b"x" * 3 + part.numpy().tobytes())
    whole = torch.cat(parts)
    (tmp_path / "out").write_bytes(b"header" + whole.numpy().tobytes())
    spans = [(tmp_path / "src0", 3, 24), (tmp_path / "src1", 3, 16)]
    written = (tmp_path / "out", 6, 40)
    assert compare_range(written, spans, "float32") == (tensor_digest(whole), True, True)
    (tmp_path / "src1").write_bytes(b"x" * 3 + torch.zeros(4).numpy().tobytes())
    assert compare_range(written, spans, "float32") == (tensor_digest(whole), True, False)
    assert compare_range(written, spans[:1], "float32") == (tensor_digest(whole), True, False)


def test_dcp_output_loads_into_the_target_with_dcp_load(fsdp2_ws2: Any, tmp_path: Path) -> None:
    path, merged = fsdp2_ws2
    template = tmp_path / "target.pt"
    torch.save(sequential_model().state_dict(), template)
    out = tmp_path / "resume"
    result = graft_process("convert", path, template, "-o", out, "--format", "dcp")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == [".metadata", "__0_0.distcp"]
    fresh = sequential_model().state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(fresh, checkpoint_id=out)
    assert all(torch.equal(fresh[k], merged["model"][k]) for k in fresh)
    _assert_equal(out, merged["model"])  # and Graft reads its own output back


# --- hostile metadata ----------------------------------------------------------------------


def test_a_code_running_metadata_pickle_is_refused_and_never_runs(
    single: Any, tmp_path: Path
) -> None:
    path, _ = single
    canary = tmp_path / "canary"
    (path / ".metadata").write_bytes(reduce_pickle(os.system, f"touch {shlex.quote(str(canary))}"))
    assert_refuses_code(path, canary)


def _rewrite_metadata(path: Path, change: Any) -> None:
    with (path / ".metadata").open("rb") as f:
        metadata = pickle.load(f)  # our own fixture, written a line above by torch
    change(metadata)
    (path / ".metadata").write_bytes(pickle.dumps(metadata))


def test_a_code_running_chunk_is_refused_when_read(single: Any, tmp_path: Path) -> None:
    path, _ = single
    canary = tmp_path / "canary"
    torch.save(torch.ones(4, 3), tmp_path / "chunk.pt")
    payload = reduce_pickle(os.system, f"touch {shlex.quote(str(canary))}")
    replace_zip_member(tmp_path / "chunk.pt", tmp_path / "evil.pt", "/data.pkl", payload)
    start = (path / "__0_0.distcp").stat().st_size
    with (path / "__0_0.distcp").open("ab") as f:
        f.write((tmp_path / "evil.pt").read_bytes())

    def point_at_it(md: Any) -> None:
        index = next(i for i in md.storage_data if i.fqn == "model.a.weight")
        length = (tmp_path / "evil.pt").stat().st_size
        md.storage_data[index] = dataclasses.replace(
            md.storage_data[index], offset=start, length=length
        )

    _rewrite_metadata(path, point_at_it)
    # the metadata is sound; the chunk is unpickled when its tensor is read
    refused = pytest.raises(UnsafeCheckpointError, match=r"references '(posix|os)\.system'")
    with open_source(path) as source, refused:
        source.read("a.weight")
    template = tmp_path / "target.pt"
    torch.save({"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}, template)
    result = graft_process("convert", path, template, "-o", tmp_path / "out.safetensors")
    assert result.returncode == 2
    assert "unsafe checkpoint: the pickle references" in result.stderr
    assert not canary.exists() and not (tmp_path / "out.safetensors").exists()


def test_a_chunk_outside_the_folder_is_refused(single: Any) -> None:
    path, _ = single

    def escape(md: Any) -> None:
        index = next(iter(md.storage_data))
        info = md.storage_data[index]
        md.storage_data[index] = dataclasses.replace(info, relative_path="../../etc/passwd")

    _rewrite_metadata(path, escape)
    with pytest.raises(UnsafeCheckpointError, match="not a file of the checkpoint folder"):
        open_source(path)


def test_chunks_that_do_not_tile_the_tensor_are_refused(single: Any) -> None:
    path, _ = single

    def grow(md: Any) -> None:
        md.state_dict_metadata["model.a.weight"].size = torch.Size([5, 3])

    _rewrite_metadata(path, grow)
    with pytest.raises(UnreadableCheckpointError, match="do not add up to its size"):
        open_source(path)


def test_a_class_build_on_an_allowed_record_is_refused() -> None:
    from app.engine.readers.dcp_metadata import parse_metadata

    # GLOBAL Metadata, then BUILD with (None, {"x": 1}): slot state set on the class itself.
    payload = (
        b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\n"
        b"N}X\x01\x00\x00\x00xK\x01s\x86b."
    )
    with pytest.raises((UnsafeCheckpointError, UnreadableCheckpointError)):
        parse_metadata(payload, {})
    from app.engine.readers import dcp_metadata

    assert "x" not in vars(dcp_metadata._Metadata)
