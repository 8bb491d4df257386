"""The streaming executor: byte-copy vs torch path, torch-free conversions, sharded output,
and the restricted reader refusing what ``weights_only=True`` refuses."""

from __future__ import annotations

import collections
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from app.engine.errors import UnsafeCheckpointError
from app.engine.options import WriteOptions
from app.engine.pipeline import convert
from app.engine.readers import open_source
from app.engine.recipe import load_recipe
from app.engine.target import Target
from tests.engine._models import SmallNet, save_sd, save_st, skeleton_of, small_state_dict
from tests.fixtures import REPO_ROOT, replace_zip_member

RENAME = {"rename": [{"prefix": "", "to": "net."}]}
RENAME_AND_ADAPT = {
    "rename": [{"prefix": "", "to": "net."}],
    "adapt": [{"match": "net.conv1.weight", "op": "channels", "fill": "repeat"}],
}


class Wrapped(nn.Module):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.net = SmallNet(**kwargs)


def _sources(tmp_path: Path) -> dict[str, Path]:
    sd = small_state_dict(0)
    return {
        "zip": save_sd(sd, tmp_path / "src.pt"),
        "legacy": save_sd(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False),
        "safetensors": save_st(sd, tmp_path / "src.safetensors"),
    }


def _convert(src: Path, target: Target, recipe: dict[str, Any], out: Path, **kw: Any) -> Any:
    with target:
        return convert(src, target, load_recipe(recipe), output=out, **kw)


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
@pytest.mark.parametrize("recipe", [RENAME, RENAME_AND_ADAPT], ids=["rename", "adapt"])
def test_byte_copy_and_torch_paths_write_identical_files(
    tmp_path: Path, kind: str, recipe: dict[str, Any]
) -> None:
    src = _sources(tmp_path)[kind]
    in_chans = 4 if "adapt" in recipe else 3
    fast = _convert(src, skeleton_of(Wrapped(in_chans=in_chans)), recipe, tmp_path / "fast.st")
    slow = _convert(
        src,
        skeleton_of(Wrapped(in_chans=in_chans)),
        recipe,
        tmp_path / "slow.st",
        options=WriteOptions(byte_copy=False),
    )

    assert fast.ok and slow.ok
    assert (tmp_path / "fast.st").read_bytes() == (tmp_path / "slow.st").read_bytes()
    n = len(fast.report["entries"])
    adapted = 1 if "adapt" in recipe else 0
    assert fast.report["output"]["copied"] == n - adapted
    assert fast.report["output"]["materialised"] == adapted
    assert slow.report["output"]["copied"] == 0
    assert slow.report["output"]["materialised"] == n
    verification = {"checked": n, "equal": n, "strict_load": True}
    if adapted:  # channels(fill=repeat): recomputed from the source as timm does it
        rederived = {"checked": 1, "how": {"recomputed": 1}, "unequal": []}
        verification["rederived"] = rederived  # type: ignore[assignment]
    assert fast.report["verification"] == verification


def test_non_contiguous_source_tensor_takes_the_torch_path(tmp_path: Path) -> None:
    sd = {"w": torch.arange(12.0).reshape(3, 4).t(), "b": torch.arange(3.0)}  # w is a view
    src = save_sd(sd, tmp_path / "view.pt")
    skeleton = {
        "schema": "graft.skeleton/v1",
        "tensors": {
            "w": {"shape": [4, 3], "dtype": "float32"},
            "b": {"shape": [3], "dtype": "float32"},
        },
    }
    result = _convert(src, Target.from_skeleton(skeleton), {}, tmp_path / "out.st")

    assert result.ok
    assert result.report["output"]["copied"] == 1  # b
    assert result.report["output"]["materialised"] == 1  # w, gathered in C order
    out = load_file(str(tmp_path / "out.st"))
    assert torch.equal(out["w"], sd["w"].contiguous())


_NO_TORCH = """
import sys
from app.engine.pipeline import convert
from app.engine.recipe import load_recipe
from app.engine.target import Target
with Target.from_skeleton(sys.argv[2]) as target:
    result = convert(sys.argv[1], target, load_recipe({"rename": [{"prefix": "", "to": "net."}]}),
                     output=sys.argv[3])
assert result.ok, result.report
print(result.report["output"]["copied"], "torch" in sys.modules)
"""


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_rename_only_conversion_never_imports_torch(tmp_path: Path, kind: str) -> None:
    src = _sources(tmp_path)[kind]
    skeleton = tmp_path / "target.json"
    from app.engine.target import skeleton_from_module

    skeleton.write_text(json.dumps(skeleton_from_module(Wrapped())))
    out = tmp_path / "out.safetensors"
    run = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(src), str(skeleton), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    copied, torch_loaded = run.stdout.split()
    assert torch_loaded == "False"
    assert int(copied) == len(small_state_dict(0))
    out_sd = load_file(str(out))
    for key, value in small_state_dict(0).items():
        assert torch.equal(out_sd[f"net.{key}"], value), key


def test_sharded_output_in_hugging_face_layout(tmp_path: Path) -> None:
    src = _sources(tmp_path)["zip"]
    folder = tmp_path / "sharded"
    result = _convert(
        src, skeleton_of(Wrapped()), RENAME, folder, options=WriteOptions(max_shard_size=600)
    )

    assert result.ok
    names = sorted(p.name for p in folder.iterdir())
    count = len(names) - 1
    assert count > 1
    expected = [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert names == sorted([*expected, "model.safetensors.index.json"])
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    sd = small_state_dict(0)
    assert set(index["weight_map"]) == {f"net.{k}" for k in sd}
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in sd.values())
    for name in expected:  # every shard but a lone oversized tensor's stays under the cap
        shard = load_file(str(folder / name))
        size = sum(v.numel() * v.element_size() for v in shard.values())
        assert size <= 600 or len(shard) == 1
    with open_source(folder) as back:  # the sharded output reads back as a source
        for key, value in sd.items():
            assert torch.equal(back.read(f"net.{key}"), value), key
    assert result.report["verification"]["equal"] == len(sd)


def test_sharded_output_replaces_an_existing_folder_only_when_complete(tmp_path: Path) -> None:
    src = _sources(tmp_path)["zip"]
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "stale.safetensors").write_bytes(b"old")
    result = _convert(
        src, skeleton_of(Wrapped()), RENAME, folder, options=WriteOptions(max_shard_size=10_000)
    )
    assert result.ok
    assert "stale.safetensors" not in {p.name for p in folder.iterdir()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- the restricted reader refuses what weights_only=True refuses -----------------------------


def _pickled_global(module: str, name: str) -> bytes:
    """A pickle of {"weight": <call module.name()>}, written opcode by opcode."""
    body = pickle.dumps({"weight": None}, protocol=2)
    ref = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + b")R"
    return body.replace(b"N", ref, 1)


REFUSED = [
    ("builtins", "print"),
    ("builtins", "getattr"),
    ("torch.nn.modules.linear", "Linear"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("functools", "partial"),
    ("torch", "load"),
]
# weights_only=True allows these; a state dict never needs them, so Graft allows even less.
STRICTER = [("collections", "Counter"), ("torch._utils", "_rebuild_device_tensor_from_numpy")]


@pytest.mark.parametrize(("module", "name"), REFUSED)
def test_restricted_reader_refuses_what_weights_only_refuses(
    tmp_path: Path, module: str, name: str
) -> None:
    good = save_sd({"weight": torch.zeros(2)}, tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    replace_zip_member(good, bad, "data.pkl", _pickled_global(module, name))

    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad, weights_only=True, map_location="cpu")
    with pytest.raises(UnsafeCheckpointError, match=rf"{module}\.{name}"):
        open_source(bad)


@pytest.mark.parametrize(("module", "name"), STRICTER)
def test_restricted_reader_allows_less_than_weights_only(
    tmp_path: Path, module: str, name: str
) -> None:
    good = save_sd({"weight": torch.zeros(2)}, tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    replace_zip_member(good, bad, "data.pkl", _pickled_global(module, name))
    with pytest.raises(UnsafeCheckpointError, match=rf"{module}\.{name}"):
        open_source(bad)


def test_what_weights_only_accepts_the_reader_accepts(tmp_path: Path) -> None:
    sd = collections.OrderedDict(
        conv=torch.randn(2, 3),
        param=nn.Parameter(torch.randn(3)),
        half=torch.randn(4).half(),
        big=torch.arange(6).reshape(2, 3).t(),
    )
    path = save_sd({"state_dict": sd, "epoch": 3, "size": torch.Size([2, 3])}, tmp_path / "ok.pt")
    reference = torch.load(path, weights_only=True, map_location="cpu")
    with open_source(path) as source:
        assert source.entry == "state_dict"
        for key, value in reference["state_dict"].items():
            assert torch.equal(source.read(key), value), key


def test_sharded_output_replaces_a_file_at_the_output_path(tmp_path: Path) -> None:
    src = _sources(tmp_path)["zip"]
    out = tmp_path / "out"
    out.write_bytes(b"an older single-file output")
    result = _convert(
        src, skeleton_of(Wrapped()), RENAME, out, options=WriteOptions(max_shard_size=10_000)
    )
    assert result.ok and out.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
