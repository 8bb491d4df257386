"""Seeded initialisation: determinism, each fn's statistics, ``auto``'s picks, the record."""

from __future__ import annotations

import math

import pytest
import torch

from app.engine.errors import InvalidRecipeError, InvalidTargetError
from app.engine.ops.initialize import (
    InitRecord,
    initialize,
    key_generator,
    resolve_init,
)


def test_same_inputs_give_bit_identical_tensors() -> None:
    a, _ = initialize("fc.weight", (64, 32), "float32", fn="normal", seed=7)
    b, _ = initialize("fc.weight", (64, 32), "float32", fn="normal", seed=7)
    assert torch.equal(a, b)


def test_stream_depends_on_seed_and_key_not_order() -> None:
    keys = ["a.weight", "b.weight", "c.weight"]
    forward = {k: initialize(k, (16, 8), "float32", fn="trunc_normal", seed=3)[0] for k in keys}
    backward = {
        k: initialize(k, (16, 8), "float32", fn="trunc_normal", seed=3)[0] for k in reversed(keys)
    }
    for k in keys:
        assert torch.equal(forward[k], backward[k])
    assert not torch.equal(forward["a.weight"], forward["b.weight"])
    other_seed, _ = initialize("a.weight", (16, 8), "float32", fn="trunc_normal", seed=4)
    assert not torch.equal(forward["a.weight"], other_seed)


def test_key_generator_is_reproducible() -> None:
    a = torch.rand(5, generator=key_generator(0, "x"))
    b = torch.rand(5, generator=key_generator(0, "x"))
    c = torch.rand(5, generator=key_generator(0, "y"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_zeros_and_ones_are_exact() -> None:
    z, rz = initialize("x", (3, 4), "bfloat16", fn="zeros")
    o, _ = initialize("x", (3, 4), "float16", fn="ones")
    assert z.dtype == torch.bfloat16 and torch.equal(z, torch.zeros(3, 4, dtype=torch.bfloat16))
    assert o.dtype == torch.float16 and torch.equal(o, torch.ones(3, 4, dtype=torch.float16))
    assert rz == InitRecord(fn="zeros", args={}, seed=0)


def test_normal_statistics() -> None:
    t, record = initialize("x", (200, 500), "float32", fn="normal", args={"mean": 1, "std": 0.5})
    assert record.args == {"mean": 1.0, "std": 0.5}
    assert abs(t.mean().item() - 1.0) < 0.01
    assert abs(t.std().item() - 0.5) < 0.01


def test_trunc_normal_bounds_default_to_two_std() -> None:
    t, record = initialize("x", (200, 500), "float32", fn="trunc_normal")
    assert record.args == pytest.approx({"mean": 0.0, "std": 0.02, "a": -0.04, "b": 0.04})
    assert t.min().item() >= -0.04 and t.max().item() <= 0.04
    # A normal truncated at 2 std has std 0.88 times the untruncated one.
    assert abs(t.std().item() - 0.02 * 0.8796) < 0.0005


def test_xavier_uniform_bounds() -> None:
    t, _ = initialize("x", (300, 200), "float32", fn="xavier_uniform", args={"gain": 2})
    bound = 2 * math.sqrt(6 / (300 + 200))
    assert t.abs().max().item() <= bound
    assert t.abs().max().item() > 0.95 * bound


def test_kaiming_normal_fan_in_when_asked() -> None:
    t, record = initialize("w", (64, 512), "float32", fn="kaiming_normal", args={"mode": "fan_in"})
    assert record.args == {"a": 0.0, "mode": "fan_in", "nonlinearity": "relu"}
    assert abs(t.std().item() - math.sqrt(2 / 512)) < 0.002


def test_auto_conv_is_kaiming_fan_out() -> None:
    t, record = initialize("stem.conv.weight", (256, 64, 3, 3), "float32", module="Conv2d", seed=1)
    assert record == InitRecord(
        fn="kaiming_normal", args={"a": 0.0, "mode": "fan_out", "nonlinearity": "relu"}, seed=1
    )
    expected = math.sqrt(2 / (256 * 3 * 3))
    assert abs(t.std().item() - expected) / expected < 0.02
    assert abs(t.mean().item()) < 0.002


def test_auto_linear_and_embedding() -> None:
    _, linear = initialize("head.weight", (10, 512), "float32", module="Linear")
    _, embedding = initialize("tok.weight", (1000, 64), "float32", module="torch.nn.Embedding")
    assert linear.fn == "trunc_normal" and linear.args["std"] == 0.02
    assert embedding == InitRecord(fn="normal", args={"mean": 0.0, "std": 0.02}, seed=0)


def test_auto_batchnorm_is_exact() -> None:
    expected = {
        "bn.weight": torch.ones(8),
        "bn.bias": torch.zeros(8),
        "bn.running_mean": torch.zeros(8),
        "bn.running_var": torch.ones(8),
    }
    for key, value in expected.items():
        t, _ = initialize(key, (8,), "float32", module="BatchNorm2d")
        assert torch.equal(t, value), key
    tracked, record = initialize("bn.num_batches_tracked", (), "int64", module="BatchNorm2d")
    assert tracked.dtype == torch.int64 and tracked.item() == 0
    assert record.fn == "zeros"


@pytest.mark.parametrize(
    ("key", "shape", "fn"),
    [
        ("norm.weight", (8,), "ones"),
        ("layer.bias", (8,), "zeros"),
        ("attn.in_proj_bias", (24,), "zeros"),
        ("fc.weight", (8, 4), "trunc_normal"),
        ("conv.weight", (8, 4, 3, 3), "kaiming_normal"),
        ("pos_embed", (1, 197, 64), "trunc_normal"),
        ("ls.something", (8,), "zeros"),
        ("bn.running_var", (8,), "ones"),
    ],
)
def test_auto_without_module_by_name_and_rank(key: str, shape: tuple[int, ...], fn: str) -> None:
    assert resolve_init(key, shape, "float32").fn == fn


def test_auto_module_beats_rank() -> None:
    # A 2-D LayerNorm weight is still a norm scale.
    assert resolve_init("ln.weight", (4, 8), "float32", module="LayerNorm").fn == "ones"


def test_zero_element_tensor() -> None:
    t, _ = initialize("x", (0, 4), "float32", fn="trunc_normal")
    assert t.shape == (0, 4)


def test_errors_name_the_key() -> None:
    with pytest.raises(InvalidRecipeError, match=r"'pos_ids' is int64: only zeros and ones"):
        initialize("pos_ids", (4,), "int64", fn="normal")
    with pytest.raises(InvalidRecipeError, match=r"'x': unknown init fn 'glorot'"):
        resolve_init("x", (4, 4), "float32", fn="glorot")
    with pytest.raises(InvalidRecipeError, match=r"has no argument 'sigma'"):
        resolve_init("x", (4, 4), "float32", fn="normal", args={"sigma": 1.0})
    with pytest.raises(InvalidRecipeError, match=r"'auto' takes no args"):
        resolve_init("x", (4, 4), "float32", args={"std": 1.0})
    with pytest.raises(InvalidRecipeError, match=r"kaiming_normal needs a tensor of rank >= 2"):
        resolve_init("b", (4,), "float32", fn="kaiming_normal")
    with pytest.raises(InvalidRecipeError, match=r"mode must be one of fan_in, fan_out"):
        resolve_init("w", (4, 4), "float32", fn="kaiming_normal", args={"mode": "fan"})
    with pytest.raises(InvalidRecipeError, match=r"trunc_normal needs a < b"):
        resolve_init("w", (4, 4), "float32", fn="trunc_normal", args={"a": 1, "b": -1})
    with pytest.raises(InvalidTargetError, match=r"'x': unknown dtype 'float'"):
        resolve_init("x", (4,), "float")
