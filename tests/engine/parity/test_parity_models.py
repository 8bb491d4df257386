"""What parity builds and feeds: registered architectures only unless imports are allowed
(the service never allows them), and inputs derived from the first layer."""

from __future__ import annotations

import pytest
from torch import nn

from app.engine.errors import InvalidTargetError
from app.engine.parity_models import InputSpec, build_model, derive_inputs, resolve_inputs


def test_an_import_is_refused_unless_allowed() -> None:
    with pytest.raises(InvalidTargetError, match=r"only registered architectures \(arch:NAME\)"):
        build_model("torch.nn:Linear", {"in_features": 2, "out_features": 3}, device="cpu",
                    architectures="", allow_imports=False)  # fmt: skip
    model = build_model("torch.nn:Linear", {"in_features": 2, "out_features": 3}, device="cpu",
                        architectures="", allow_imports=True)  # fmt: skip
    assert isinstance(model, nn.Linear) and not model.training


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (nn.Sequential(nn.Embedding(50, 4), nn.Linear(4, 2)),
         InputSpec(shape=[2, 16], dtype="int64", high=50)),
        (nn.Sequential(nn.Conv2d(5, 4, 3)), InputSpec(shape=[2, 5, 224, 224])),
        (nn.Sequential(nn.Conv1d(3, 4, 3)), InputSpec(shape=[2, 3, 64])),
        (nn.Sequential(nn.Linear(7, 2)), InputSpec(shape=[2, 7])),
        (nn.Sequential(nn.LayerNorm(7)), None),
    ],
)  # fmt: skip
def test_inputs_are_derived_from_the_first_layer(
    model: nn.Module, expected: InputSpec | None
) -> None:
    assert derive_inputs(model) == ([expected] if expected else None)


def test_a_model_nothing_describes_needs_inputs() -> None:
    with pytest.raises(InvalidTargetError, match="give --inputs"):
        resolve_inputs(nn.Sequential(nn.LayerNorm(7)), None, seed=0, device="cpu")
    tensors, described = resolve_inputs(
        nn.LayerNorm(7), [InputSpec(shape=[3, 7])], seed=0, device="cpu"
    )
    assert [list(t.shape) for t in tensors] == [[3, 7]]
    assert described == [{"shape": [3, 7], "dtype": "float32", "low": 0}]
