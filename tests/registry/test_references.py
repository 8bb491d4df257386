"""Parsing ``models:/`` and ``runs:/`` references, reserved aliases, and choosing the one
checkpoint."""

from __future__ import annotations

import pytest

from app.registry.artifacts import ArtifactFile, pick_checkpoint
from app.registry.errors import InvalidReferenceError, RegistryNotFoundError
from app.registry.mlflow import ModelRef, RunRef, parse_model_uri, parse_run_uri, validate_alias


@pytest.mark.parametrize(
    ("uri", "ref"),
    [
        ("models:/resnet/3", ModelRef("resnet", version="3")),
        ("models:/resnet/007", ModelRef("resnet", version="7")),
        ("models:/my model@prod", ModelRef("my model", alias="prod")),
        ("models:/a.b-c@champion-2", ModelRef("a.b-c", alias="champion-2")),
    ],
)
def test_parse(uri: str, ref: ModelRef) -> None:
    assert parse_model_uri(uri) == ref


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("runs:/abc/model", "not a models:/ URI"),
        ("models:/resnet/Production", "not a version number"),
        ("models:/m-0123456789abcdef", "not a model version reference"),
        ("models:/resnet/3/extra", "not a model version reference"),
        ("models:/@prod", "not a model version reference"),
        ("models:/resnet@", "not a model version reference"),
    ],
)
def test_parse_refuses(uri: str, match: str) -> None:
    with pytest.raises(InvalidReferenceError, match=match) as info:
        parse_model_uri(uri)
    assert info.value.type == "invalid-job"


@pytest.mark.parametrize(
    ("uri", "ref"),
    [
        ("runs:/0a1b2c/model", RunRef("0a1b2c", "model")),
        ("runs:/0a1b2c/model/weights.safetensors", RunRef("0a1b2c", "model/weights.safetensors")),
        ("runs:/0a1b2c//model/", RunRef("0a1b2c", "model")),
        ("runs:/0a1b2c", RunRef("0a1b2c", "")),
    ],
)
def test_parse_run(uri: str, ref: RunRef) -> None:
    assert parse_run_uri(uri) == ref
    assert parse_run_uri(ref.uri) == ref


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("models:/m/1", "not a runs:/ URI"),
        ("runs://profile@databricks/abc/model", "not a runs:/ URI on this server"),
        ("runs:/", "names no run id"),
        ("runs:/a b/model", "names no run id"),
        ("runs:/abc/../other/model", "must stay inside"),
        ("runs:/abc/model/./x", "must stay inside"),
        ("runs:/abc/model?x=1", "must stay inside"),
    ],
)
def test_parse_run_refuses(uri: str, match: str) -> None:
    with pytest.raises(InvalidReferenceError, match=match) as info:
        parse_run_uri(uri)
    assert info.value.type == "invalid-job"


@pytest.mark.parametrize("alias", ["latest", "LATEST", "v1", "v42", "V7"])
def test_reserved_aliases(alias: str) -> None:
    with pytest.raises(InvalidReferenceError, match="is reserved by MLflow"):
        validate_alias(alias)


@pytest.mark.parametrize("alias", ["", "a/b", "a@b", " prod", "x" * 256])
def test_unusable_aliases(alias: str) -> None:
    with pytest.raises(InvalidReferenceError, match="is not usable"):
        validate_alias(alias)


@pytest.mark.parametrize("alias", ["prod", "champion", "v1beta", "version2", "latest-good"])
def test_good_aliases(alias: str) -> None:
    assert validate_alias(alias) == alias


def _files(*paths: str) -> list[ArtifactFile]:
    return [ArtifactFile(p, 10) for p in paths]


def test_one_file_among_others() -> None:
    files = _files("MLmodel", "requirements.txt", "data/model.pth", "report.json")
    assert [f.path for f in pick_checkpoint(files)] == ["data/model.pth"]


def test_sharded_set_with_its_index() -> None:
    files = _files(
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "config.json",
    )
    assert [f.path for f in pick_checkpoint(files)] == [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]


def test_incomplete_set_is_refused() -> None:
    files = _files("model.safetensors.index.json", "model-00001-of-00003.safetensors")
    with pytest.raises(InvalidReferenceError, match="incomplete"):
        pick_checkpoint(files)


def test_several_need_a_path() -> None:
    files = _files("a/model.safetensors", "b/model.pt", "report.json")
    with pytest.raises(InvalidReferenceError, match=r'holds 2 checkpoints .*name one with "path"'):
        pick_checkpoint(files)
    assert [f.path for f in pick_checkpoint(files, path="b/model.pt")] == ["b/model.pt"]
    assert [f.path for f in pick_checkpoint(files, path="a/")] == ["a/model.safetensors"]


def test_path_naming_a_shard_picks_its_set() -> None:
    files = _files(
        "hf/model.safetensors.index.json",
        "hf/model-00001-of-00001.safetensors",
        "other.bin",
    )
    chosen = pick_checkpoint(files, path="hf/model-00001-of-00001.safetensors")
    assert [f.path for f in chosen] == [
        "hf/model.safetensors.index.json",
        "hf/model-00001-of-00001.safetensors",
    ]


def test_path_must_exist_and_stay_inside() -> None:
    files = _files("model.safetensors")
    with pytest.raises(RegistryNotFoundError, match="not among"):
        pick_checkpoint(files, path="nope.safetensors")
    with pytest.raises(InvalidReferenceError, match="must name a file or folder"):
        pick_checkpoint(files, path="../x")


def test_no_checkpoint() -> None:
    with pytest.raises(InvalidReferenceError, match="holds no checkpoint"):
        pick_checkpoint(_files("MLmodel", "report.json"))
