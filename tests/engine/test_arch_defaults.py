"""Architectures that declare their own adaptations (stem, classifier, position embedding)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from app.cli import cli
from app.engine.adaptations import Adaptations, read_adaptations
from app.engine.architectures import bind_architecture
from app.engine.errors import InvalidTargetError
from app.engine.pipeline import ConversionResult, convert
from app.engine.recipe import load_recipe
from app.engine.target import Target

VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 16, "num_classes": 10}
RESNET = {"depth": 18, "img_size": 32}


def _save(name: str, kwargs: dict[str, Any], path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_file(bind_architecture(name, kwargs).build("cpu").state_dict(), str(path))
    return path


def _convert(src: Path, target: Target, recipe: dict[str, Any], out: Path) -> ConversionResult:
    with target:
        return convert(src, target, load_recipe({"version": 1, **recipe}), output=out)


def _entries(result: ConversionResult) -> dict[str, dict[str, Any]]:
    return {e["target"]: e for e in result.report["entries"]}


def test_the_four_builtins_declare_their_parts() -> None:
    got = {
        name: bind_architecture(name).adaptations()
        for name in ("graft_resnet", "graft_mobilenet", "graft_vit", "graft_bert")
    }
    assert got == {
        "graft_resnet": Adaptations(("conv1",), ("fc",)),
        "graft_mobilenet": Adaptations(("features.0.0",), ("classifier.1",)),
        "graft_vit": Adaptations(("patch_embed.proj",), ("head",), ("pos_embed",), 1),
        "graft_bert": Adaptations(pos_embed=("embeddings.position_embeddings",)),
    }


def test_a_declaration_is_checked() -> None:
    def factory() -> None: ...

    factory.adaptations = {"first_conv": "stem", "typo": 1}  # type: ignore[attr-defined]
    with pytest.raises(InvalidTargetError, match="must be a mapping of classifier"):
        read_adaptations(factory, {})
    factory.adaptations = lambda kwargs: {"pos_embed": ["a", "b"], "num_prefix_tokens": 5}  # type: ignore[attr-defined]
    assert read_adaptations(factory, {}) == Adaptations(pos_embed=("a", "b"), num_prefix_tokens=5)


def test_a_larger_vit_interpolates_pos_embed_by_default_exactly_as_a_rule_would(
    tmp_path: Path,
) -> None:
    src = _save("graft_vit", {**VIT, "img_size": 32}, tmp_path / "vit.safetensors")
    runner = CliRunner()
    default_out = tmp_path / "default.safetensors"
    result = runner.invoke(
        cli,
        ["convert", str(src), "arch:graft_vit", "--target-kwargs",
         json.dumps({**VIT, "img_size": 64}), "-o", str(default_out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    pos = {e["target"]: e for e in report["entries"]}["pos_embed"]
    assert (pos["status"], pos["rules"], pos["source_shape"], pos["shape"]) == (
        "adapted", ["arch-default"], [1, 5, 32], [1, 17, 32],
    )  # fmt: skip
    assert report["rules"][1:] == [
        {"rule": "arch-default", "matched": 5, "applied": 1,
         "pattern": "first_conv patch_embed.proj; classifier head; pos_embed pos_embed"},
    ]  # fmt: skip
    assert report["summary"]["adapted"] == 1 and report["summary"]["initialized"] == 0
    ruled = _convert(
        src,
        Target.from_architecture("graft_vit", {**VIT, "img_size": 64}),
        {"adapt": [{"match": "pos_embed", "op": "interpolate", "prefix_tokens": 1}]},
        tmp_path / "ruled.safetensors",
    )
    assert ruled.ok and _entries(ruled)["pos_embed"]["rules"] == ["adapt[0]"]
    assert _entries(ruled)["pos_embed"]["ops"] == pos["ops"]
    by_default = load_file(str(default_out))["pos_embed"]
    assert torch.equal(by_default, load_file(str(tmp_path / "ruled.safetensors"))["pos_embed"])
    assert torch.equal(by_default[:, :1], load_file(str(src))["pos_embed"][:, :1])


def test_a_four_channel_resnet_repeats_the_stem_and_reinitialises_another_head(
    tmp_path: Path,
) -> None:
    src = _save("graft_resnet", RESNET, tmp_path / "resnet.safetensors")
    target = Target.from_architecture("graft_resnet", {**RESNET, "in_chans": 4, "num_classes": 7})
    result = _convert(src, target, {}, tmp_path / "out.safetensors")
    assert result.ok, result.report["errors"]
    entries = _entries(result)
    assert (entries["conv1.weight"]["rules"], entries["conv1.weight"]["ops"]) == (
        ["arch-default"], ["channels(3->4, fill=repeat)"],
    )  # fmt: skip
    assert {k: (entries[k]["status"], entries[k]["rules"]) for k in ("fc.weight", "fc.bias")} == {
        "fc.weight": ("initialized", ["arch-default", "init[0]"]),
        "fc.bias": ("initialized", ["arch-default", "init[0]"]),
    }
    assert result.report["unused"] == [
        {"source": "fc.weight", "reason": "mismatched", "rule": "arch-default"},
        {"source": "fc.bias", "reason": "mismatched", "rule": "arch-default"},
    ]
    assert [r for r in result.report["rules"] if r["rule"] == "arch-default"] == [
        {"rule": "arch-default", "matched": 3, "applied": 3,
         "pattern": "first_conv conv1; classifier fc"},
    ]  # fmt: skip
    assert not any(w.startswith("shape_mismatch") for w in result.report["warnings"])
    w = load_file(str(src))["conv1.weight"]
    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out["conv1.weight"], torch.cat([w, w], dim=1)[:, :4] * (3 / 4))
    assert result.report["verification"]["forward"]["ok"] is True


def test_a_recipe_rule_overrides_the_default(tmp_path: Path) -> None:
    src = _save("graft_resnet", RESNET, tmp_path / "resnet.safetensors")
    target = Target.from_architecture("graft_resnet", {**RESNET, "in_chans": 4})
    recipe = {"adapt": [{"match": "conv1.weight", "op": "channels", "fill": "zeros"}]}
    result = _convert(src, target, recipe, tmp_path / "out.safetensors")
    assert result.ok
    conv = _entries(result)["conv1.weight"]
    assert (conv["rules"], conv["ops"]) == (["adapt[0]"], ["channels(3->4, fill=zeros)"])
    assert [r["rule"] for r in result.report["rules"]] == ["adapt[0]", "init[0]"]  # no default
    out = load_file(str(tmp_path / "out.safetensors"))["conv1.weight"]
    assert torch.equal(out[:, :3], load_file(str(src))["conv1.weight"])
    assert torch.equal(out[:, 3], torch.zeros_like(out[:, 3]))


def test_equal_shapes_leave_the_report_as_it_was(tmp_path: Path) -> None:
    src = _save("graft_resnet", RESNET, tmp_path / "resnet.safetensors")
    result = _convert(src, Target.from_architecture("graft_resnet", RESNET), {}, tmp_path / "o")
    assert result.ok
    assert all(e["rules"] == [] for e in result.report["entries"])
    assert [r["rule"] for r in result.report["rules"]] == ["init[0]"]


def test_a_timm_model_that_declares_nothing_is_read_from_its_pretrained_cfg() -> None:
    class TimmLike(torch.nn.Module):
        """What timm sets on its models: ``pretrained_cfg``, ``num_prefix_tokens``."""

        def __init__(self, no_embed_class: bool) -> None:
            super().__init__()
            self.pretrained_cfg = {"first_conv": "patch_embed.proj", "classifier": "head"}
            self.num_prefix_tokens, self.no_embed_class = 5, no_embed_class
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 2))

    def create_model() -> None: ...

    assert read_adaptations(create_model, {}, TimmLike(False)) == Adaptations(
        ("patch_embed.proj",), ("head",), ("pos_embed",), 5
    )
    # timm's no_embed_class: the prefix tokens have no position of their own.
    assert read_adaptations(create_model, {}, TimmLike(True)).num_prefix_tokens == 0  # type: ignore[union-attr]
    assert read_adaptations(create_model, {}, torch.nn.Linear(1, 1)) is None
