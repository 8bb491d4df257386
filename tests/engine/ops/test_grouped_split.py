"""``split`` with ``groups``: a fused QKV stored per query group (Megatron's ``linear_qkv``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.engine.errors import InvalidRecipeError
from app.engine.invert import invert_recipe
from app.engine.ops.multi import describe_split, part_shape, split_part
from app.engine.recipe import load_recipe
from tests.engine._models import entry, run, save_sd, skeleton_of

# 2 query groups of 3 q heads each, head dim 2: a group is [q q q k v] heads, 10 rows.
GROUPS, Q_PER_GROUP, HEAD, HIDDEN = 2, 3, 2, 4


def _fused() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A fused weight built from known q, k, v, the way Megatron lays it out, and those."""
    q = torch.arange(GROUPS * Q_PER_GROUP * HEAD * HIDDEN, dtype=torch.float32)
    q = q.reshape(GROUPS * Q_PER_GROUP * HEAD, HIDDEN)
    k = -torch.arange(GROUPS * HEAD * HIDDEN, dtype=torch.float32).reshape(-1, HIDDEN) - 1
    v = 1000 + torch.arange(GROUPS * HEAD * HIDDEN, dtype=torch.float32).reshape(-1, HIDDEN)
    rows = []
    for g in range(GROUPS):
        rows += [q[g * Q_PER_GROUP * HEAD : (g + 1) * Q_PER_GROUP * HEAD]]
        rows += [k[g * HEAD : (g + 1) * HEAD], v[g * HEAD : (g + 1) * HEAD]]
    return torch.cat(rows), {"q": q, "k": k, "v": v}


def test_describe_and_take_each_part_of_every_group() -> None:
    fused, want = _fused()
    sizes = [Q_PER_GROUP * HEAD, HEAD, HEAD]
    parts = describe_split(tuple(fused.shape), 0, 3, sizes, key="qkv", groups=GROUPS)
    assert parts == [(0, 0, 6, 2), (0, 6, 2, 2), (0, 8, 2, 2)]
    for part, name in zip(parts, "qkv", strict=True):
        got = split_part(fused, part)
        assert part_shape(tuple(fused.shape), part) == tuple(got.shape)
        assert torch.equal(got, want[name]) and got.is_contiguous()
    # groups: 1 is the plain split
    assert describe_split((6, 2), 0, 3, None, key="x") == [(0, 0, 2, 1), (0, 2, 2, 1), (0, 4, 2, 1)]


def test_sizes_that_do_not_fill_a_group_are_refused() -> None:
    with pytest.raises(InvalidRecipeError, match=r"add up to 9 .* per group \(2 groups\)"):
        describe_split((20, 4), 0, 3, [6, 2, 1], key="qkv", groups=2)
    with pytest.raises(InvalidRecipeError, match="does not split into 3 groups"):
        describe_split((20, 4), 0, 3, None, key="qkv", groups=3)


class _Separate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(HIDDEN, GROUPS * Q_PER_GROUP * HEAD, bias=False)
        self.k = nn.Linear(HIDDEN, GROUPS * HEAD, bias=False)
        self.v = nn.Linear(HIDDEN, GROUPS * HEAD, bias=False)


RECIPE = {
    "split": [
        {"from": "qkv.weight", "to": ["q.weight", "k.weight", "v.weight"], "dim": 0,
         "groups": GROUPS, "sizes": [Q_PER_GROUP * HEAD, HEAD, HEAD]}
    ]
}  # fmt: skip


def test_a_grouped_split_converts_and_is_rederived(tmp_path: Path) -> None:
    fused, want = _fused()
    src = save_sd({"qkv.weight": fused}, tmp_path / "fused.pt")
    result, out = run(src, skeleton_of(_Separate()), RECIPE, tmp_path / "out.safetensors")
    assert result.ok, result.report.get("errors")
    assert out is not None
    for name in "qkv":
        assert torch.equal(out[f"{name}.weight"], want[name])
    assert entry(result.report, "k.weight")["ops"] == ["split(0, 2/3, groups=2)"]
    # verification re-derives each part independently (index_select of the rows)
    assert result.report["verification"]["rederived"]["how"] == {"split": 3}
    assert result.report["verification"]["rederived"]["unequal"] == []


def test_a_grouped_split_has_no_inverse_yet() -> None:
    with pytest.raises(InvalidRecipeError, match="split with groups"):
        invert_recipe(load_recipe(RECIPE))
