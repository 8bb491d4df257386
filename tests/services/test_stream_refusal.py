"""Which jobs stream from object store to object store, and why the others do not."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine.options import WriteOptions
from app.engine.target_spec import parse_target_spec
from app.services.jobs.streamed import part_count, stream_refusal

_SKELETON = {"schema": "graft.skeleton/v1", "tensors": {}}


def _why(**change: Any) -> str | None:
    job: dict[str, Any] = {
        "source_files": [("model.safetensors", "a" * 64)],
        "source_format": "safetensors",
        "template_formats": [],
        "several": False,
        "target": parse_target_spec({"skeleton": _SKELETON}),
        "options": WriteOptions(),
        "device": "cpu",
        "parity": False,
    }
    return stream_refusal(**{**job, **change})


def test_one_safetensors_file_into_one_streams() -> None:
    assert _why() is None
    checkpoint = parse_target_spec({"checkpoint": "c"})
    assert _why(template_formats=["safetensors"], target=checkpoint) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"source_format": "torch-zip"}, "streaming reads safetensors sources"),
        ({"source_files": [("a", "b"), ("c", "d")]}, "streaming reads one source file"),
        ({"several": True}, "streaming reads one source file"),
        ({"template_formats": ["torch-zip"]}, "a template is read as one safetensors"),
        ({"template_formats": ["safetensors", "files"]}, "a template is read as one safetensors"),
        ({"options": WriteOptions(format="torch")}, "streaming writes one safetensors"),
        ({"options": WriteOptions(folder=True)}, "streaming writes one safetensors"),
        ({"device": "cuda:0"}, "streaming runs on the CPU"),
        ({"parity": True}, "parity runs the output in a model"),
        (
            {"target": parse_target_spec({"architecture": "graft_resnet"})},
            "an architecture target runs the output",
        ),
    ],
)
def test_the_rest_takes_the_local_path(change: dict[str, Any], reason: str) -> None:
    assert _why(**change) == reason


def test_part_urls_cover_an_output_four_times_the_source() -> None:
    assert part_count(2 << 30, 16 << 20) == 4 * 128 + 2
    assert part_count(1 << 40, 16 << 20) == 10_000
