"""TargetSpec: one typed shape for a target, from request body to ``Target.from_spec``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ValidationError

from app.engine.errors import InvalidTargetError
from app.engine.target import Target, skeleton_from_module
from app.engine.target_spec import (
    ArchitectureTarget,
    CheckpointTarget,
    SkeletonTarget,
    TargetSpec,
    parse_target_spec,
)
from tests.engine._models import SmallNet, save_st


class Body(BaseModel):
    target: TargetSpec


def test_the_key_present_picks_the_kind() -> None:
    assert isinstance(parse_target_spec({"checkpoint": "abc"}), CheckpointTarget)
    assert isinstance(parse_target_spec({"skeleton": {"tensors": {}}}), SkeletonTarget)
    arch = parse_target_spec({"architecture": "graft_resnet", "kwargs": {"depth": 18}})
    assert arch == ArchitectureTarget(architecture="graft_resnet", kwargs={"depth": 18})
    assert arch.architecture_ref() == ("graft_resnet", {"depth": 18})
    assert parse_target_spec({"checkpoint": "abc"}).checkpoint_refs() == ["abc"]
    assert arch.checkpoint_refs() == []


def test_a_misspelled_target_is_one_sentence() -> None:
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"target": {"architecure": "graft_resnet"}})
    errors = caught.value.errors()
    assert len(errors) == 1
    assert errors[0]["msg"] == "target must have one of checkpoint, skeleton, architecture"
    with pytest.raises(InvalidTargetError, match="one of checkpoint, skeleton, architecture"):
        parse_target_spec({"checkpont": "x"})
    with pytest.raises(InvalidTargetError, match=r"target\.kwargs"):
        parse_target_spec({"architecture": "a", "kwargs": [1]})


def test_the_spec_round_trips_through_json_and_the_public_form_summarises_skeletons() -> None:
    skeleton = skeleton_from_module(SmallNet())
    spec = parse_target_spec({"skeleton": skeleton})
    assert parse_target_spec(spec.model_dump(mode="json")) == spec
    assert spec.public() == {"skeleton": {"tensors": len(skeleton["tensors"])}}
    spec.check()
    with pytest.raises(InvalidTargetError, match="shape must be a list"):
        parse_target_spec({"skeleton": {"schema": "graft.skeleton/v1",
                                        "tensors": {"w": {"shape": "x"}}}}).check()  # fmt: skip


def test_from_spec_builds_each_kind(tmp_path: Path) -> None:
    model = SmallNet()
    template = save_st(model.state_dict(), tmp_path / "t.safetensors")
    by_file = Target.from_spec(CheckpointTarget(checkpoint="an-upload-id"), files=template)
    by_path = Target.from_spec(CheckpointTarget(checkpoint=str(template)))
    skeleton = Target.from_spec(SkeletonTarget(skeleton=skeleton_from_module(model)))
    arch = Target.from_spec(ArchitectureTarget(architecture="graft_resnet"))
    with by_file, by_path, skeleton, arch:
        assert by_file.kind == by_path.kind == "template"
        assert torch.equal(by_file.read("fc.weight"), model.state_dict()["fc.weight"])
        assert set(by_file.tensors) == set(skeleton.tensors) == set(model.state_dict())
        assert skeleton.kind == "skeleton" and arch.name == "arch:graft_resnet"
        assert arch.kind == "architecture" and arch.architecture is not None and arch.tensors
