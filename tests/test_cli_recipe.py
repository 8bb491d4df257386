"""``graft --version``, a typo'd rule refused by name on a real published checkpoint, and
``graft recipe invert`` (with a bit-exact round trip through the real MiniLM)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from app import __version__
from tests.engine.test_convert import MINILM_RECIPE, _minilm_skeleton, minilm_path
from tests.test_cli_convert import graft, graft_process


def test_version() -> None:
    result = graft_process("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"graft {__version__}\n", "")


def test_typo_in_a_rule_on_the_real_minilm_is_refused_by_name(tmp_path: Path) -> None:
    path = minilm_path()
    skeleton = tmp_path / "skeleton.json"
    skeleton.write_text(json.dumps(_minilm_skeleton(path, vocab=1000)))
    recipe = tmp_path / "recipe.json"
    typo = {**MINILM_RECIPE, "drop": ["pooler.dense.wieght"]}  # the user meant .weight
    recipe.write_text(json.dumps(typo))
    out, rep = tmp_path / "out.safetensors", tmp_path / "report.json"

    result = graft_process("convert", path, skeleton, "-r", recipe, "-o", out, "--report", rep)

    assert result.returncode == 1
    assert not out.exists()
    error = (
        "unmatched: drop[0] (pooler.dense.wieght) matched no key; check it for a typo "
        "(unmatched: error; `unmatched: warn` lets it pass)"
    )
    assert f"graft: refused: {error}\n" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(rep.read_text())
    assert report["ok"] is False and report["errors"] == [error]
    rules = {r["rule"]: r["matched"] for r in report["rules"]}
    assert rules == {"rename[0]": 96, "drop[0]": 0, "adapt[0]": 1, "init[0]": 106}
    shown = "  drop[0]            0       0  pooler.dense.wieght  <- MATCHED NOTHING"
    assert shown in result.stdout
    assert f"  x {error}" in result.stdout

    recipe.write_text(json.dumps({**typo, "unmatched": "warn"}))
    warned = graft_process("convert", path, skeleton, "-r", recipe, "-o", out)
    assert warned.returncode == 0, warned.stderr
    assert "graft: WARNING: unmatched: drop[0] (pooler.dense.wieght) matched no key" in (
        warned.stderr
    )


def test_recipe_invert_round_trip_on_the_real_minilm_is_bit_exact(tmp_path: Path) -> None:
    path = minilm_path()
    forward = tmp_path / "forward.yaml"
    forward.write_text(
        "version: 1\nrename:\n"
        "  - {regex: '^encoder\\.layer\\.(\\d+)\\.', to: 'blocks.\\1.'}\n"
        "  - {prefix: 'embeddings.', to: 'embed.'}\n"
        "  - {key: 'pooler.dense.weight', to: 'pool.weight'}\n"
        "strict: true\n"
    )
    back = tmp_path / "back.yaml"

    inverted = graft_process("recipe", "invert", forward, "--source", path, "-o", back)

    assert inverted.returncode == 0, inverted.stderr
    assert inverted.stderr == (
        "graft: proved: the renames map the source's 104 keys one-to-one and back\n"
    )
    assert yaml.safe_load(back.read_text()) == {
        "version": 1,
        "rename": [
            {"key": "pool.weight", "to": "pooler.dense.weight"},
            {"prefix": "embed.", "to": "embeddings."},
            {"regex": "^blocks\\.(\\d+)\\.", "to": "encoder.layer.\\1."},
        ],
        "strict": True,
    }
    with safe_open(str(path), framework="pt") as f:
        source = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    renamed = tmp_path / "renamed.safetensors"
    there_skeleton = tmp_path / "there.json"
    there_skeleton.write_text(json.dumps(_skeleton_renamed(source)))
    there = graft("convert", path, there_skeleton, "-r", forward, "-o", renamed)
    assert there.exit_code == 0, there.output
    again = tmp_path / "again.safetensors"
    result = graft("convert", renamed, path, "-r", back, "-o", again, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["summary"]["loaded"] == 104 and report["summary"]["unexpected"] == 0
    round_trip = load_file(str(again))
    assert set(round_trip) == set(source)
    for key, value in source.items():
        assert round_trip[key].dtype == value.dtype and torch.equal(round_trip[key], value), key


def _skeleton_renamed(source: dict[str, torch.Tensor]) -> dict[str, object]:
    def rename(key: str) -> str:
        if key.startswith("encoder.layer."):
            return "blocks." + key.removeprefix("encoder.layer.")
        if key.startswith("embeddings."):
            return "embed." + key.removeprefix("embeddings.")
        return "pool.weight" if key == "pooler.dense.weight" else key

    return {
        "schema": "graft.skeleton/v1",
        "tensors": {
            rename(k): {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in source.items()
        },
    }


def test_recipe_invert_refuses_what_cannot_be_inverted_by_name(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nrename:\n  - {prefix: 'a.', to: 'b.'}\ntransform:\n"
        "  - {match: 'b.head.weight', op: slice, start: 1}\n"
    )
    result = graft_process("recipe", "invert", recipe)
    assert result.returncode == 2
    assert result.stderr == (
        "graft: error: transform[0]: a slice transform cannot be inverted (it keeps a subset)\n"
    )
    recipe.write_text("version: 1\ndrop: ['fc.*']\n")
    result = graft_process("recipe", "invert", recipe)
    assert (result.returncode, result.stderr) == (
        2,
        "graft: error: drop[0]: drop rules cannot be inverted (they lose or duplicate tensors)\n",
    )


QKV = r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$"


def _fused_skeleton(source: dict[str, torch.Tensor]) -> dict[str, object]:
    """MiniLM with each layer's query, key and value fused into one ``qkv`` projection."""
    tensors: dict[str, object] = {}
    for key, value in source.items():
        shape, name = list(value.shape), key
        if (m := re.match(QKV, key)) is not None:
            if m.group(2) != "query":
                continue
            shape[0] *= 3
            name = f"encoder.layer.{m.group(1)}.attention.self.qkv.{m.group(3)}"
        tensors[name] = {"shape": shape, "dtype": str(value.dtype).removeprefix("torch.")}
    return {"schema": "graft.skeleton/v1", "tensors": tensors}


def test_merge_qkv_of_the_real_minilm_and_split_it_back_bit_exact(tmp_path: Path) -> None:
    path = minilm_path()
    with safe_open(str(path), framework="pt") as f:
        source = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    forward = tmp_path / "fuse.json"
    forward.write_text(
        json.dumps(
            {
                "merge": [
                    {
                        "from": [
                            r"re:encoder\.layer\.(\d+)\.attention\.self\.query\.(weight|bias)",
                            r"encoder.layer.\1.attention.self.key.\2",
                            r"encoder.layer.\1.attention.self.value.\2",
                        ],
                        "to": r"encoder.layer.\1.attention.self.qkv.\2",
                        "dim": 0,
                    }
                ],
                "strict": True,
            }
        )
    )
    skeleton = tmp_path / "fused.json"
    skeleton.write_text(json.dumps(_fused_skeleton(source)))
    fused = tmp_path / "fused.safetensors"

    there = graft("convert", path, skeleton, "-r", forward, "-o", fused, "--json")

    assert there.exit_code == 0, there.output
    report = json.loads(there.stdout)
    summary = report["summary"]
    assert (summary["loaded"], summary["used"], summary["unexpected"]) == (
        80,
        104,
        0,
    )  # 104 - 36 parts + 12 fused
    assert {r["rule"]: r["matched"] for r in report["rules"]}["merge[0]"] == 12
    qkv = load_file(str(fused))["encoder.layer.3.attention.self.qkv.weight"]
    parts = [
        source[f"encoder.layer.3.attention.self.{n}.weight"] for n in ("query", "key", "value")
    ]
    assert torch.equal(qkv, torch.cat(parts))

    back = tmp_path / "split.yaml"
    inverted = graft_process("recipe", "invert", forward, "--source", path, "-o", back)
    assert inverted.returncode == 0, inverted.stderr
    assert yaml.safe_load(back.read_text())["split"][0]["to"] == [
        r"encoder.layer.\1.attention.self.query.\2",
        r"encoder.layer.\1.attention.self.key.\2",
        r"encoder.layer.\1.attention.self.value.\2",
    ]
    again = tmp_path / "again.safetensors"
    result = graft("convert", fused, path, "-r", back, "-o", again)
    assert result.exit_code == 0, result.output
    round_trip = load_file(str(again))
    assert set(round_trip) == set(source)
    for key, value in source.items():
        assert torch.equal(round_trip[key], value), key
