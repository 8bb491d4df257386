"""Architectures as targets: the registry, meta-device planning, verification on the model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.engine.adaptations import Adaptations
from app.engine.architectures import (
    bind_architecture,
    describe_architectures,
    get_architecture,
    load_registry,
    parse_architectures,
)
from app.engine.errors import InvalidTargetError
from app.engine.options import WriteOptions
from app.engine.pipeline import ConversionResult, KnownSource, convert
from app.engine.recipe import load_recipe
from app.engine.target import Target

# Two architectures computing the same function under different module names, registered the
# way a service does it (GRAFT_ARCHITECTURES) with this module as their home.
PAIR = parse_architectures(
    "tiny_a=tests.engine.test_architectures:TinyA,"
    "tiny_b=tests.engine.test_architectures:TinyB,"
    "tiny_wrong=tests.engine.test_architectures:TinyWrongShape"
)
GONE = parse_architectures("gone=no_such_mod:f")
RESNET = {"depth": 18, "img_size": 32}
BERT = {
    "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 64,
}  # fmt: skip


class TinyA(nn.Module):
    """conv-bn-relu-pool-linear, named ``features.{0,1}`` and ``head``."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.head = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.features(x)).mean(dim=(2, 3))
        return self.head(x)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.head.out_features)


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)


class TinyB(TinyA):
    """The same function as :class:`TinyA`, named ``stem.{conv,bn}`` and ``classifier``."""

    def __init__(self, num_classes: int = 4) -> None:
        nn.Module.__init__(self)
        self.stem = _Stem()
        self.classifier = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem.bn(self.stem.conv(x))).mean(dim=(2, 3))
        return self.classifier(x)

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.classifier.out_features)


class TinyWrongShape(TinyB):
    """Declares an output shape its forward pass does not produce."""

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, 99)


class TinyChans(TinyA):
    """:class:`TinyA` taking ``in_chans``; declares its stem and head by a class method."""

    def __init__(self, num_classes: int = 4, in_chans: int = 3) -> None:
        nn.Module.__init__(self)
        self.in_chans = in_chans
        self.features = nn.Sequential(nn.Conv2d(in_chans, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.head = nn.Linear(6, num_classes)

    @classmethod
    def adaptations(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"first_conv": "features.0", "classifier": ["head"]}

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.in_chans, 8, 8, generator=torch.Generator().manual_seed(0))


CHANS = parse_architectures("tiny_chans=tests.engine.test_architectures:TinyChans")

A_TO_B = [
    {"prefix": "features.0.", "to": "stem.conv."},
    {"prefix": "features.1.", "to": "stem.bn."},
    {"prefix": "head.", "to": "classifier."},
]


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    """Every float tensor random (BN statistics included), so a wrong mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif key.endswith("num_batches_tracked"):
                value.fill_(7)
    return model


def _save(model: nn.Module, path: Path) -> Path:
    save_file(model.state_dict(), str(path))
    return path


def _convert(
    src: Path, target: Target, recipe: dict[str, Any], out: Path, **kw: Any
) -> ConversionResult:
    with target:
        return convert(src, target, load_recipe({"version": 1, **recipe}), output=out, **kw)


# Registry ---------------------------------------------------------------------------------------


def test_builtins_are_listed_with_their_kwargs_defaults_and_types() -> None:
    listed = {a["name"]: a for a in describe_architectures()}
    assert {"graft_resnet", "graft_mobilenet", "graft_vit", "graft_bert"} <= set(listed)
    vit = listed["graft_vit"]
    assert vit["origin"] == "builtin"
    assert vit["ref"] == "app.zoo.vit:VisionTransformer"
    assert (vit["available"], vit["error"]) == (True, None)
    assert vit["kwargs"] == {
        "img_size": {"type": "int", "default": 224, "required": False},
        "patch_size": {"type": "int", "default": 16, "required": False},
        "embed_dim": {"type": "int", "default": 768, "required": False},
        "depth": {"type": "int", "default": 12, "required": False},
        "num_heads": {"type": "int", "default": 12, "required": False},
        "mlp_ratio": {"type": "float", "default": 4.0, "required": False},
        "num_classes": {"type": "int", "default": 1000, "required": False},
        "in_chans": {"type": "int", "default": 3, "required": False},
    }
    assert set(listed["graft_bert"]["kwargs"]) == {
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
    }  # fmt: skip
    assert set(listed["graft_mobilenet"]["kwargs"]) == {
        "num_classes", "in_chans", "width_mult", "img_size",
    }  # fmt: skip
    assert listed["graft_resnet"]["kwargs"]["depth"]["default"] == 50


def test_library_factories_register_only_when_installed() -> None:
    origins = {a["origin"] for a in describe_architectures()}
    for library in ("torchvision", "timm"):
        assert (library in origins) == (importlib.util.find_spec(library) is not None)


def test_setting_string_registers_and_is_validated() -> None:
    assert parse_architectures(" a=m.n:f , b=x:y ,") == [("a", "m.n", "f"), ("b", "x", "y")]
    registry = load_registry(PAIR)
    assert registry["tiny_b"].origin == "setting"
    assert registry["tiny_b"].ref == "tests.engine.test_architectures:TinyB"
    with pytest.raises(InvalidTargetError, match=r"'oops': write name=module:factory"):
        parse_architectures("oops")
    # A setting whose import fails is listed as unavailable, with its reason, not raised.
    assert "gone" not in load_registry(GONE)
    listed = {a["name"]: a for a in describe_architectures(GONE)}
    assert listed["gone"] == {
        "name": "gone", "kwargs": {}, "description": None, "origin": "setting",
        "ref": "no_such_mod:f", "available": False,
        "error": "ModuleNotFoundError: No module named 'no_such_mod'",
    }  # fmt: skip
    assert listed["graft_vit"]["available"] is True
    with pytest.raises(InvalidTargetError, match=r"'gone' \(no_such_mod:f\) is unavailable: "):
        get_architecture("gone", extra=GONE)


def test_unknown_architecture_and_bad_kwargs_name_the_culprit() -> None:
    with pytest.raises(
        InvalidTargetError, match=r"unknown architecture 'graft_resnt'.*graft_resnet"
    ):
        get_architecture("graft_resnt")
    with pytest.raises(InvalidTargetError, match=r"'graft_resnet' has no kwarg 'width'"):
        Target.from_architecture("graft_resnet", {"width": 8})
    with pytest.raises(InvalidTargetError, match=r"'graft_resnet'.*depth 20 is not one of 18, 34"):
        Target.from_architecture("graft_resnet", {"depth": 20})
    with pytest.raises(InvalidTargetError, match=r"'graft_vit': kwarg 'img_size' must be int"):
        Target.from_architecture("graft_vit", {"img_size": "384"})
    with pytest.raises(InvalidTargetError, match=r"'graft_vit': kwarg 'depth' must be int"):
        Target.from_architecture("graft_vit", {"depth": True})
    with pytest.raises(InvalidTargetError, match=r"'graft_vit'.*not a multiple of patch_size 16"):
        Target.from_architecture("graft_vit", {"img_size": 100})


def test_planning_builds_on_the_meta_device_with_exact_kinds() -> None:
    # 9.7 billion parameters: built for real this would take 39 GB; on meta it takes nothing.
    big = Target.from_architecture("graft_vit", {"embed_dim": 4096, "depth": 48, "num_heads": 32})
    assert sum(i.numel for i in big.tensors.values()) > 9_600_000_000
    target = Target.from_architecture("graft_bert", BERT)
    assert target.kind == "architecture" and target.name == "arch:graft_bert"
    assert target.architecture is not None and target.architecture.kwargs == BERT
    info = target.tensors["embeddings.word_embeddings.weight"]
    assert (info.shape, info.kind, info.module) == ((64, 32), "parameter", "Embedding")
    assert "embeddings.position_ids" not in target.tensors  # non-persistent buffer
    bn = Target.from_architecture("graft_mobilenet", {"width_mult": 0.5})
    assert bn.tensors["features.0.1.running_var"].kind == "buffer"
    assert bn.tensors["features.0.1.num_batches_tracked"].dtype == "int64"
    assert bn.tensors["features.1.conv.0.0.weight"].module == "Conv2d"
    assert bn.tensors["features.1.conv.0.0.weight"].shape == (16, 1, 3, 3)  # depthwise
    assert bn.tensors["classifier.1.weight"].shape == (1000, 1280)


# Verification on the model ----------------------------------------------------------------------


def test_resnet_into_four_channels_and_ten_classes(tmp_path: Path) -> None:
    # torchvision's own init (kaiming fan_out): all-positive random weights overflow 18 layers.
    torch.manual_seed(1)
    source = bind_architecture("graft_resnet", RESNET).build("cpu")
    src = _save(source, tmp_path / "src.safetensors")
    target = Target.from_architecture("graft_resnet", {**RESNET, "in_chans": 4, "num_classes": 10})
    recipe = {
        "adapt": [{"match": "conv1.weight", "op": "channels", "fill": "repeat"}],
        "drop": ["fc.*"],
        "strict": False,
    }
    result = _convert(src, target, recipe, tmp_path / "out.safetensors")
    report = result.report
    assert result.ok and report["ok"]
    entries = {e["target"]: e for e in report["entries"]}
    assert entries["conv1.weight"]["status"] == "adapted"
    assert entries["conv1.weight"]["ops"] == ["channels(3->4, fill=repeat)"]
    assert entries["conv1.weight"]["shape"] == [64, 4, 7, 7]
    assert {k: entries[k]["status"] for k in ("fc.weight", "fc.bias")} == dict.fromkeys(
        ("fc.weight", "fc.bias"), "initialized"
    )
    assert report["summary"]["adapted"] == 1 and report["summary"]["initialized"] == 2
    assert report["summary"]["loaded"] == len(entries) - 3
    out = load_file(str(tmp_path / "out.safetensors"))
    w = source.state_dict()["conv1.weight"]
    assert torch.equal(out["conv1.weight"], torch.cat([w, w], dim=1)[:, :4] * (3 / 4))
    assert out["fc.weight"].shape == (10, 512)
    forward = report["verification"]["forward"]
    assert {k: v for k, v in forward.items() if k != "seconds"} == {
        "architecture": "graft_resnet",
        "device": "cpu",
        "strict_load": True,
        "ok": True,
        "input_shape": [2, 4, 32, 32],
        "output_shape": [2, 10],
        "expected_shape": [2, 10],
        "finite": True,
    }
    assert "equivalence" not in report["verification"]
    # The same strict, assign load by hand, and the same forward pass, give the same numbers.
    model = bind_architecture("graft_resnet", {**RESNET, "in_chans": 4, "num_classes": 10}).build()
    model.load_state_dict(out, strict=True, assign=True)
    logits = model.eval()(model.example_input(2))
    assert logits.shape == (2, 10) and bool(torch.isfinite(logits).all())


def test_a_pure_rename_between_two_architectures_keeps_the_function(tmp_path: Path) -> None:
    src = _save(_randomized(TinyA(), 2), tmp_path / "a.safetensors")
    target = Target.from_architecture("tiny_b", extra=PAIR)
    result = _convert(
        src,
        target,
        {"rename": A_TO_B, "strict": True},
        tmp_path / "b.safetensors",
        known=KnownSource(architecture=bind_architecture("tiny_a", extra=PAIR)),
    )
    assert result.ok
    assert result.report["summary"]["loaded"] == 9 and result.report["unused"] == []
    assert result.report["verification"]["equivalence"] == {
        "source_architecture": "tiny_a",
        "run": True,
        "ok": True,
        "max_abs_diff": 0.0,
        "rtol": 1e-4,
        "atol": 1e-5,
    }


def test_equivalence_catches_a_rename_that_swaps_two_tensors(tmp_path: Path) -> None:
    src = _save(_randomized(TinyA(), 3), tmp_path / "a.safetensors")
    swap = [
        {"key": "features.1.weight", "to": "stem.bn.bias"},
        {"key": "features.1.bias", "to": "stem.bn.weight"},
        *A_TO_B,
    ]
    result = _convert(
        src,
        Target.from_architecture("tiny_b", extra=PAIR),
        {"rename": swap},
        tmp_path / "b.safetensors",
        known=KnownSource(architecture=bind_architecture("tiny_a", extra=PAIR)),
    )
    equivalence = result.report["verification"]["equivalence"]
    assert result.ok is False and result.report["ok"] is False
    assert equivalence["run"] is True and equivalence["ok"] is False
    assert equivalence["max_abs_diff"] > 1e-3
    assert result.report["verification"]["forward"]["ok"] is True  # it runs, wrongly
    assert [e for e in result.report["errors"] if "disagree" in e] == [
        f"verification: tiny_a (source) and the converted model disagree "
        f"(max |diff| {equivalence['max_abs_diff']:.3g})"
    ]


def test_equivalence_is_not_claimed_when_the_recipe_did_more_than_rename(tmp_path: Path) -> None:
    src = _save(_randomized(TinyA(), 4), tmp_path / "a.safetensors")
    result = _convert(
        src,
        Target.from_architecture("tiny_b", {"num_classes": 5}, extra=PAIR),
        {"rename": A_TO_B, "adapt": [{"match": "classifier.*", "op": "resize", "fill": "zeros"}]},
        tmp_path / "b.safetensors",
        known=KnownSource(architecture=bind_architecture("tiny_a", extra=PAIR)),
    )
    assert result.ok
    assert result.report["verification"]["equivalence"] == {
        "source_architecture": "tiny_a",
        "run": False,
        "reason": "classifier.weight is adapted, not only renamed",
    }


def test_a_wrong_output_shape_fails_the_conversion(tmp_path: Path) -> None:
    src = _save(_randomized(TinyA(), 5), tmp_path / "a.safetensors")
    result = _convert(
        src,
        Target.from_architecture("tiny_wrong", extra=PAIR),
        {"rename": A_TO_B},
        tmp_path / "w.safetensors",
    )
    forward = result.report["verification"]["forward"]
    assert result.ok is False
    assert (forward["ok"], forward["output_shape"], forward["expected_shape"]) == (
        False, [2, 4], [2, 99],
    )  # fmt: skip
    assert result.report["errors"] == [
        "verification: tiny_wrong returned shape [2, 4], declared [2, 99]"
    ]


def test_vit_from_224_to_384_interpolates_the_position_embedding(tmp_path: Path) -> None:
    vit = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16, "num_classes": 10}
    source = bind_architecture("graft_vit", {**vit, "img_size": 224}).build("cpu")
    src = _save(source, tmp_path / "vit.safetensors")
    target = Target.from_architecture("graft_vit", {**vit, "img_size": 384})
    recipe = {
        "adapt": [{"match": "pos_embed", "op": "interpolate", "prefix_tokens": 1}],
        "strict": True,
    }
    result = _convert(src, target, recipe, tmp_path / "out.safetensors")
    assert result.ok
    entries = {e["target"]: e for e in result.report["entries"]}
    assert entries["pos_embed"]["status"] == "adapted"
    assert entries["pos_embed"]["source_shape"] == [1, 197, 32]
    assert entries["pos_embed"]["shape"] == [1, 577, 32]
    assert result.report["summary"]["loaded"] == len(entries) - 1
    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out["pos_embed"][:, :1], source.state_dict()["pos_embed"][:, :1])
    forward = result.report["verification"]["forward"]
    assert (forward["ok"], forward["input_shape"], forward["output_shape"]) == (
        True, [2, 3, 384, 384], [2, 10],
    )  # fmt: skip


def test_half_precision_output_is_checked_in_float32_on_cpu(tmp_path: Path) -> None:
    bert = BERT
    src = _save(bind_architecture("graft_bert", bert).build("cpu"), tmp_path / "bert.safetensors")
    result = _convert(
        src,
        Target.from_architecture("graft_bert", bert),
        {"dtype": "bfloat16"},
        tmp_path / "half.safetensors",
        known=KnownSource(architecture=bind_architecture("graft_bert", bert)),
    )
    verification = result.report["verification"]
    assert result.ok
    assert load_file(str(tmp_path / "half.safetensors"))["pooler.dense.weight"].dtype == (
        torch.bfloat16
    )
    assert verification["forward"]["compute_dtype"] == "float32"
    assert verification["forward"]["output_shape"] == [2, 16, 32]
    assert verification["equivalence"]["run"] is False
    assert verification["equivalence"]["reason"].endswith("went through cast(float32->bfloat16)")


def test_a_dry_run_and_verify_false_never_build_the_model(tmp_path: Path) -> None:
    src = _save(TinyA(), tmp_path / "a.safetensors")
    with Target.from_architecture("tiny_b", extra=PAIR) as target:
        dry = convert(src, target, load_recipe({"version": 1, "rename": A_TO_B}), output=None)
        quick = convert(
            src, target, load_recipe({"version": 1, "rename": A_TO_B}),
            output=tmp_path / "b.safetensors", options=WriteOptions(verify=False),
        )  # fmt: skip
    assert dry.report["verification"] is None
    assert quick.report["verification"] == "skipped"


# Entry points -----------------------------------------------------------------------------------


def _installed(site: Path, module: str, distribution: str, entry_point: str) -> None:
    """Make ``site`` hold an installed distribution declaring one ``graft.architectures``
    entry point (the module itself is written by the caller)."""
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[graft.architectures]\n{entry_point}\n")


def test_an_installed_package_registers_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "graft_demo_models"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from torch import nn\n"
        "import torch\n\n"
        "class Demo(nn.Module):\n"
        '    """A demo model shipped by a team."""\n\n'
        "    def __init__(self, hidden: int = 5) -> None:\n"
        "        super().__init__()\n"
        "        self.body = nn.Linear(3, hidden)\n\n"
        "    def forward(self, x):\n"
        "        return self.body(x)\n\n"
        "    def example_input(self, batch=2):\n"
        "        return torch.ones(batch, 3)\n\n"
        "    def example_output_shape(self, batch=2):\n"
        "        return (batch, self.body.out_features)\n"
    )
    _installed(
        tmp_path, "graft_demo_models", "graft-demo-models", "demo_net = graft_demo_models:Demo"
    )
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(tmp_path))
        listed = {a["name"]: a for a in describe_architectures()}
        assert listed["demo_net"] == {
            "name": "demo_net",
            "kwargs": {"hidden": {"type": "int", "default": 5, "required": False}},
            "description": "A demo model shipped by a team.",
            "origin": "entry-point",
            "ref": "graft_demo_models:Demo",
            "available": True,
            "error": None,
        }
        src = tmp_path / "demo.safetensors"
        save_file({"body.weight": torch.ones(7, 3), "body.bias": torch.zeros(7)}, str(src))
        result = _convert(
            src, Target.from_architecture("demo_net", {"hidden": 7}), {}, tmp_path / "o.st"
        )
        assert result.ok and result.report["verification"]["forward"]["output_shape"] == [2, 7]
    sys.modules.pop("graft_demo_models", None)
    assert "demo_net" not in load_registry()


def test_a_plugin_whose_import_fails_is_listed_as_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plug-in built against another torch: its import raises, not with ImportError.
    (tmp_path / "graft_broken_models.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist\\nmore detail')\n"
    )
    _installed(
        tmp_path, "graft_broken_models", "graft-broken", "broken_net = graft_broken_models:Net"
    )
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(tmp_path))
        listed = {a["name"]: a for a in describe_architectures()}
        assert listed["broken_net"] == {
            "name": "broken_net", "kwargs": {}, "description": None, "origin": "entry-point",
            "ref": "graft_broken_models:Net", "available": False,
            "error": "RuntimeError: operator torchvision::nms does not exist",
        }  # fmt: skip
        assert listed["graft_resnet"]["available"] is True  # the rest still registers
        assert "broken_net" not in load_registry()
        with pytest.raises(InvalidTargetError, match=r"'broken_net' .* is unavailable: Runtime"):
            Target.from_architecture("broken_net")
    sys.modules.pop("graft_broken_models", None)


def test_vit_to_a_smaller_patch_resizes_the_kernel_and_the_grid(tmp_path: Path) -> None:
    vit = {"embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 0, "img_size": 64}
    torch.manual_seed(3)
    source = bind_architecture("graft_vit", {**vit, "patch_size": 16}).build("cpu")
    src = _save(source, tmp_path / "vit16.safetensors")
    recipe = {
        "adapt": [
            {"match": "patch_embed.proj.weight", "op": "kernel_resize"},
            {"match": "pos_embed", "op": "interpolate", "prefix_tokens": {"source": 1,
                                                                          "target": 1}},
        ],
        "strict": True,
    }  # fmt: skip
    target = Target.from_architecture("graft_vit", {**vit, "patch_size": 8})
    result = _convert(src, target, recipe, tmp_path / "vit8.safetensors")
    assert result.ok, result.report.get("errors")
    entries = {e["target"]: e for e in result.report["entries"]}
    assert entries["patch_embed.proj.weight"]["ops"] == [
        "kernel_resize(16x16->8x8, bicubic, antialias)"
    ]
    assert entries["pos_embed"]["ops"] == [
        "interpolate(4x4->8x8, prefix_tokens=1, bicubic, antialias)"
    ]
    assert result.report["summary"]["adapted"] == 2
    assert result.report["verification"]["forward"]["output_shape"] == [2, 32]


def test_init_auto_and_an_explicit_trunc_normal_cut_at_the_same_two_std(tmp_path: Path) -> None:
    # Both draw trunc_normal std .02 cut at mean ± 2 std (±0.04), never timm's absolute ±2.
    skeleton = {
        "schema": "graft.skeleton/v1",
        "tensors": {"head.weight": {"shape": [64, 64], "module": "Linear"}},
    }
    reports = []
    for init in ([{"match": "*", "fn": "auto"}], [{"match": "*", "fn": "trunc_normal"}]):
        src = tmp_path / "empty.safetensors"
        save_file({"other": torch.zeros(1)}, str(src))
        with Target.from_skeleton(skeleton) as target:
            result = convert(
                src, target, load_recipe({"version": 1, "init": init, "allow_empty": True}),
                output=tmp_path / f"{init[0]['fn']}.safetensors",
            )  # fmt: skip
        reports.append(result.report["entries"][0]["init"])
    assert reports[0] == reports[1] == {
        "fn": "trunc_normal", "args": {"mean": 0.0, "std": 0.02, "a": -0.04, "b": 0.04}, "seed": 0,
    }  # fmt: skip
    auto = load_file(str(tmp_path / "auto.safetensors"))["head.weight"]
    explicit = load_file(str(tmp_path / "trunc_normal.safetensors"))["head.weight"]
    assert torch.equal(auto, explicit) and float(auto.abs().max()) <= 0.04


def test_a_plugin_declares_its_stem_through_the_registry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _save(TinyA(), tmp_path / "a.safetensors")
    bound = bind_architecture("tiny_chans", {"in_chans": 1}, extra=CHANS)
    assert bound.adaptations() == Adaptations(("features.0",), ("head",))
    target = Target.from_architecture("tiny_chans", {"in_chans": 1}, extra=CHANS)
    result = _convert(src, target, {"strict": True}, tmp_path / "out.safetensors")
    assert result.ok, result.report["errors"]
    stem = next(e for e in result.report["entries"] if e["target"] == "features.0.weight")
    assert (stem["status"], stem["rules"], stem["ops"]) == (
        "adapted", ["arch-default"], ["channels(3->1, fill=repeat)"],
    )  # fmt: skip
    out = load_file(str(tmp_path / "out.safetensors"))["features.0.weight"]
    source = load_file(str(src))["features.0.weight"]
    assert torch.allclose(out, source.sum(dim=1, keepdim=True))
    assert result.report["verification"]["forward"]["input_shape"] == [2, 1, 8, 8]
