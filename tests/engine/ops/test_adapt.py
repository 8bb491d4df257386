"""Shape ops: exact values for every fill, early returns, dtypes, and the layouts they refuse."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from app.engine.errors import InvalidRecipeError
from app.engine.ops.adapt import (
    InterpolateOptions,
    adapt_channels,
    apply_adapt,
    cast,
    describe_adapt,
    describe_cast,
    interpolate_pos_embed,
    resize,
)
from app.engine.ops.initialize import key_generator


@pytest.fixture
def conv() -> torch.Tensor:
    return torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0))


def test_channels_repeat_tiles_crops_and_rescales(conv: torch.Tensor) -> None:
    out, op = adapt_channels(conv, (8, 4, 5, 5), fill="repeat")
    assert op == "channels(3->4, fill=repeat)"
    expected = torch.cat([conv, conv[:, :1]], dim=1) * (3 / 4)
    assert torch.equal(out, expected)


def test_channels_repeat_to_one_channel_sums(conv: torch.Tensor) -> None:
    out, op = adapt_channels(conv, (8, 1, 5, 5), fill="repeat")
    assert op == "channels(3->1, fill=repeat)"
    assert torch.equal(out, conv.sum(dim=1, keepdim=True))


def test_channels_repeat_fewer_crops_and_rescales() -> None:
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    out, op = adapt_channels(w, (8, 2, 3, 3), fill="repeat")
    assert op == "channels(4->2, fill=repeat)"
    assert torch.equal(out, w[:, :2] * 2.0)


def test_channels_zeros(conv: torch.Tensor) -> None:
    out, op = adapt_channels(conv, (8, 4, 5, 5), fill="zeros")
    assert op == "channels(3->4, fill=zeros)"
    assert torch.equal(out[:, :3], conv)
    assert torch.equal(out[:, 3], torch.zeros(8, 5, 5))


def test_channels_mean(conv: torch.Tensor) -> None:
    out, _ = adapt_channels(conv, (8, 5, 5, 5), fill="mean")
    assert torch.equal(out[:, :3], conv)
    mean = conv.mean(dim=1)
    assert torch.equal(out[:, 3], mean) and torch.equal(out[:, 4], mean)


def test_channels_random_is_kaiming_fan_out_and_seeded() -> None:
    src = torch.randn(256, 3, 3, 3)
    a, op = adapt_channels(src, (256, 67, 3, 3), fill="random", generator=key_generator(0, "c"))
    b, _ = adapt_channels(src, (256, 67, 3, 3), fill="random", generator=key_generator(0, "c"))
    assert op == "channels(3->67, fill=random)"
    assert torch.equal(a, b)
    assert torch.equal(a[:, :3], src)
    expected = (2 / (256 * 9)) ** 0.5
    assert abs(a[:, 3:].std().item() - expected) / expected < 0.03


def test_channels_random_linear_is_trunc_normal() -> None:
    out, _ = adapt_channels(
        torch.zeros(64, 2), (64, 400), fill="random", generator=key_generator(0, "fc.weight")
    )
    assert out[:, 2:].abs().max().item() <= 0.04
    assert out[:, 2:].std().item() > 0.01


def test_channels_random_needs_a_generator(conv: torch.Tensor) -> None:
    with pytest.raises(TypeError, match="pass a generator"):
        adapt_channels(conv, (8, 4, 5, 5), fill="random")


@pytest.mark.parametrize("fill", ["zeros", "random", "mean"])
def test_channels_fewer_crops(conv: torch.Tensor, fill: str) -> None:
    big = torch.randn(8, 4, 5, 5)
    out, op = adapt_channels(big, (8, 3, 5, 5), fill=fill)
    assert op == f"channels(4->3, fill={fill})"
    assert torch.equal(out, big[:, :3])
    assert out.is_contiguous()


def test_channels_keeps_bfloat16(conv: torch.Tensor) -> None:
    src = conv.to(torch.bfloat16)
    out, _ = adapt_channels(src, (8, 4, 5, 5), fill="zeros")
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[:, :3], src)


def test_channels_linear_and_conv1d() -> None:
    lin = torch.randn(4, 3)
    out, _ = adapt_channels(lin, (4, 6), fill="repeat")
    assert torch.equal(out, torch.cat([lin, lin], dim=1) * 0.5)
    c1, _ = adapt_channels(torch.randn(4, 3, 7), (4, 5, 7), fill="zeros")
    assert c1.shape == (4, 5, 7)


def test_same_shape_returns_the_same_object(conv: torch.Tensor) -> None:
    assert adapt_channels(conv, conv.shape, fill="repeat") == (conv, None)
    assert resize(conv, conv.shape, fill="zeros") == (conv, None)
    pe = torch.randn(1, 197, 8)
    assert interpolate_pos_embed(pe, pe.shape) == (pe, None)
    assert cast(conv, "float32") == (conv, None)


def test_channels_refuses_other_layouts(conv: torch.Tensor) -> None:
    with pytest.raises(InvalidRecipeError, match=r"'conv1.weight': channels changes dim 1 only"):
        adapt_channels(conv, (16, 4, 5, 5), fill="zeros", key="conv1.weight")
    with pytest.raises(InvalidRecipeError, match=r"rank 2\) or conv \(rank 3-5\)"):
        adapt_channels(torch.zeros(3), (4,), fill="zeros")
    with pytest.raises(InvalidRecipeError, match=r"unknown channels fill 'tile'"):
        adapt_channels(conv, (8, 4, 5, 5), fill="tile")
    with pytest.raises(InvalidRecipeError, match=r"floating tensors only, got int64"):
        adapt_channels(torch.zeros(2, 3, dtype=torch.int64), (2, 4), fill="zeros")


def test_resize_crop_copies_the_block() -> None:
    head = torch.randn(1000, 512)
    out, op = resize(head, (10, 512), fill="zeros")
    assert op == "resize([1000, 512]->[10, 512], fill=zeros)"
    assert torch.equal(out, head[:10])
    # A crop is a copy, never a view of the source.
    assert out.untyped_storage().data_ptr() != head.untyped_storage().data_ptr()


def test_resize_zeros() -> None:
    head = torch.randn(10, 6)
    out, _ = resize(head, (12, 6), fill="zeros")
    assert torch.equal(out[:10], head) and torch.equal(out[10:], torch.zeros(2, 6))


def test_resize_mean_along_each_grown_dim() -> None:
    head = torch.arange(6.0).reshape(2, 3)
    out, op = resize(head, (3, 4), fill="mean")
    assert op == "resize([2, 3]->[3, 4], fill=mean)"
    expected = torch.tensor([[0.0, 1.0, 2.0, 1.0], [3.0, 4.0, 5.0, 4.0], [1.5, 2.5, 3.5, 2.5]])
    assert torch.equal(out, expected)


def test_resize_random_is_init_style_and_seeded() -> None:
    head = torch.randn(10, 512)
    a, _ = resize(head, (12, 512), fill="random", generator=key_generator(0, "head.weight"))
    b, _ = resize(head, (12, 512), fill="random", generator=key_generator(0, "head.weight"))
    assert torch.equal(a, b) and torch.equal(a[:10], head)
    assert a[10:].abs().max().item() <= 0.04 and a[10:].std().item() > 0.01
    bias, _ = resize(
        torch.randn(10), (12,), fill="random", generator=key_generator(0, "b"), key="head.bias"
    )
    assert torch.equal(bias[10:], torch.zeros(2))


def test_resize_normal_like() -> None:
    head = torch.randn(100, 64, generator=torch.Generator().manual_seed(1)) * 3 + 5
    a, op = resize(head, (150, 64), fill="normal_like", generator=key_generator(0, "h"))
    b, _ = resize(head, (150, 64), fill="normal_like", generator=key_generator(0, "h"))
    assert op == "resize([100, 64]->[150, 64], fill=normal_like)"
    assert torch.equal(a, b) and torch.equal(a[:100], head)
    new = a[100:]
    assert abs(new.mean().item() - head.mean().item()) < 0.15
    assert abs(new.std().item() - head.std().item()) < 0.15


def test_resize_keeps_float16() -> None:
    head = torch.randn(4, 4).half()
    out, _ = resize(head, (2, 6), fill="zeros")
    assert out.dtype == torch.float16
    assert torch.equal(out[:, :4], head[:2])


def test_resize_refuses() -> None:
    with pytest.raises(InvalidRecipeError, match=r"'head.weight': resize keeps the rank"):
        resize(torch.zeros(4, 4), (16,), fill="zeros", key="head.weight")
    with pytest.raises(InvalidRecipeError, match=r"needs existing values"):
        resize(torch.zeros(0, 4), (2, 4), fill="mean")


def test_interpolate_keeps_prefix_and_matches_reference() -> None:
    pe = torch.randn(1, 1 + 14 * 14, 32)
    out, op = interpolate_pos_embed(pe, (1, 1 + 16 * 16, 32), InterpolateOptions(prefix_tokens=1))
    assert op == "interpolate(14x14->16x16, prefix_tokens=1, bicubic, antialias)"
    assert out.shape == (1, 257, 32)
    assert torch.equal(out[:, :1], pe[:, :1])
    grid = pe[:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 256, 32))


def test_interpolate_two_dim_without_prefix_and_bf16() -> None:
    pe = torch.randn(16, 8).to(torch.bfloat16)
    out, op = interpolate_pos_embed(
        pe, (36, 8), InterpolateOptions(prefix_tokens=0, mode="bilinear")
    )
    assert op == "interpolate(4x4->6x6, prefix_tokens=0, bilinear, antialias)"
    assert out.shape == (36, 8) and out.dtype == torch.bfloat16


def test_interpolate_refuses() -> None:
    pe = torch.randn(1, 197, 8)
    with pytest.raises(InvalidRecipeError, match=r"'pos_embed': the target has 200 tokens"):
        interpolate_pos_embed(pe, (1, 200, 8), key="pos_embed")
    with pytest.raises(InvalidRecipeError, match=r"the source has 197 tokens, which is not 2"):
        interpolate_pos_embed(pe, (1, 258, 8), InterpolateOptions(prefix_tokens=2))
    with pytest.raises(InvalidRecipeError, match=r"keeps the channels, got 8 -> 16"):
        interpolate_pos_embed(pe, (1, 257, 16))
    with pytest.raises(InvalidRecipeError, match=r"unknown interpolate mode 'cubic'"):
        interpolate_pos_embed(pe, (1, 257, 8), InterpolateOptions(mode="cubic"))
    with pytest.raises(InvalidRecipeError, match=r"\[1, N, C\] or \[N, C\]"):
        interpolate_pos_embed(torch.randn(1, 1, 197, 8), (1, 1, 257, 8))


def test_cast() -> None:
    t = torch.randn(3)
    out, op = cast(t, "bfloat16")
    assert op == "cast(float32->bfloat16)"
    assert torch.equal(out, t.to(torch.bfloat16))
    with pytest.raises(InvalidRecipeError, match=r"'ids': cannot cast int64 to float16"):
        cast(torch.zeros(3, dtype=torch.int64), "float16", key="ids")
    with pytest.raises(InvalidRecipeError, match=r"unknown dtype 'half'"):
        cast(t, "half")
    assert describe_cast("float16", "float16") is None


def test_describe_matches_apply(conv: torch.Tensor) -> None:
    cases: list[tuple[str, torch.Tensor, tuple[int, ...], dict[str, Any]]] = [
        ("channels", conv, (8, 4, 5, 5), {"fill": "repeat"}),
        ("resize", torch.randn(10, 4), (12, 4), {"fill": "zeros"}),
        ("interpolate", torch.randn(1, 197, 4), (1, 257, 4), {"prefix_tokens": 1}),
    ]
    for op, t, shape, options in cases:
        out, description = apply_adapt(op, t, shape, **options)
        assert out.shape == shape
        assert description == describe_adapt(op, t.shape, shape, **options)
    assert describe_adapt("resize", (4,), (4,), fill="zeros") is None


def test_dispatcher_refuses() -> None:
    with pytest.raises(InvalidRecipeError, match=r"'x': unknown adapt op 'stretch'"):
        apply_adapt("stretch", torch.zeros(2), (3,), key="x")
    with pytest.raises(InvalidRecipeError, match=r"resize needs a fill"):
        describe_adapt("resize", (2,), (3,))


def test_channels_repeat_keeps_a_grey_response_only_for_one_channel_or_a_multiple(
    conv: torch.Tensor,
) -> None:
    """What docs/recipe.md claims of ``repeat``, computed."""
    from tests.fixtures import REPO_ROOT

    def grey_response(weight: torch.Tensor) -> torch.Tensor:
        grey = torch.full((1, weight.shape[1], 9, 9), 0.5)
        return F.conv2d(grey, weight)

    reference = grey_response(conv)
    changes = {}
    for channels in (1, 4, 6):
        out, _ = adapt_channels(conv, (8, channels, 5, 5), fill="repeat")
        diff = (grey_response(out) - reference).norm() / reference.norm()
        changes[channels] = float(diff)
    assert changes[1] < 1e-6 and changes[6] < 1e-6
    assert changes[4] > 0.1  # 3 -> 4 is not grey-invariant
    doc = " ".join((REPO_ROOT / "docs" / "recipe.md").read_text().split())
    assert "response to a grey image is unchanged);" not in doc
    assert "unchanged only when the target's count is 1 or a multiple of the source's" in doc
