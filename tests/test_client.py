"""``apply_manifest`` on a real model: frozen parameters and BatchNorm layers kept in eval."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from app.client import apply_manifest, keeps_eval
from app.engine.architectures import bind_architecture
from app.engine.errors import InvalidTargetError
from app.engine.pipeline import convert
from app.engine.recipe import load_recipe
from app.engine.target import Target

RESNET = {"depth": 18, "img_size": 32, "num_classes": 3}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return bind_architecture("graft_resnet", RESNET).build("cpu")


def _batchnorms(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _manifest(frozen: list[str], bn_eval: list[str]) -> dict[str, object]:
    return {"schema": "graft.manifest/v1", "frozen": frozen, "bn_eval": bn_eval}


def test_the_conversion_manifest_freezes_and_pins_exactly_what_it_lists(tmp_path: Path) -> None:
    src = tmp_path / "src.safetensors"
    save_file(_model().state_dict(), str(src))
    recipe = load_recipe({"version": 1, "freeze": ["conv1.*", "layer1.*"], "freeze_bn": True})
    with Target.from_architecture("graft_resnet", RESNET) as target:
        result = convert(src, target, recipe, output=tmp_path / "out.safetensors")
    assert result.ok
    manifest = result.manifest
    model = _model()
    apply_manifest(model, manifest)
    model.train()
    listed = set(manifest["frozen"])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        n: n not in listed for n, _ in model.named_parameters()
    }
    # freeze_bn lists every BatchNorm: all of them stay in eval after model.train().
    assert manifest["bn_eval"] == list(_batchnorms(model))
    assert _batchnorms(model) == dict.fromkeys(manifest["bn_eval"], False)
    assert model.training and model.fc.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [n for n, _ in model.named_parameters() if n not in listed]
    assert "fc.weight" in trainable and "layer2.0.conv1.weight" in trainable


def test_listed_batchnorms_ignore_train_and_their_statistics_never_move() -> None:
    model = _model()
    pinned = ["bn1", "layer2.0.downsample.1"]
    apply_manifest(model, _manifest(["bn1.weight", "bn1.bias", "bn1.running_mean"], pinned))
    model.train()
    modes = _batchnorms(model)
    assert modes == {name: name not in pinned for name in modes}
    assert [keeps_eval(m) for m in (model.bn1, model.layer1[0].bn1)] == [True, False]
    assert (model.bn1.weight.requires_grad, model.bn1.bias.requires_grad) == (False, False)
    assert model.conv1.weight.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(model.example_input(2))
    after = model.state_dict()
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert torch.equal(after["bn1.num_batches_tracked"], before["bn1.num_batches_tracked"])
    assert not torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    model.eval()
    model.train(True)
    assert _batchnorms(model) == modes


def test_the_pinning_survives_deepcopy_and_pickle() -> None:
    model = apply_manifest(_model(), _manifest([], ["bn1"]))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        assert clone.bn1.training is False and clone.layer1[0].bn1.training is True
        assert clone.bn1.train.module is clone.bn1  # bound to the copy, not the original
    assert list(model.state_dict()) == list(_model().state_dict())


def test_a_manifest_for_another_model_is_refused_and_changes_nothing() -> None:
    model = _model()
    with pytest.raises(InvalidTargetError, match=r"freezes \['head.weight'\]"):
        apply_manifest(model, _manifest(["conv1.weight", "head.weight"], []))
    with pytest.raises(InvalidTargetError, match=r"'layer1.0.conv1'.*Conv2d, not a BatchNorm"):
        apply_manifest(model, _manifest([], ["layer1.0.conv1"]))
    with pytest.raises(InvalidTargetError, match=r"BatchNorm 'bn9', not in the model"):
        apply_manifest(model, _manifest([], ["bn9"]))
    with pytest.raises(InvalidTargetError, match=r"graft.manifest/v1"):
        apply_manifest(model, {"frozen": []})
    assert all(p.requires_grad for p in model.parameters())
    assert not any(keeps_eval(m) for m in model.modules())
