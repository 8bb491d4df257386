"""The public alignment benchmark: ``python bench/align.py`` prints one row per layout pair.

Each pair (``bench/align_pairs.py``) is aligned from headers alone with ``graft align``'s
function, and the recipe it wrote is then planned like any recipe: every target key it feeds
is checked against the hand-written truth (same source keys, same transpose/split/merge).
``wrong`` counts fed keys that disagree with the truth, or that the truth calls ambiguous.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.align import align
from app.engine.align.core import _header_source
from app.engine.plan import PlanEntry, build_plan
from app.engine.recipe import load_recipe
from app.engine.target import Target
from bench.align_pairs import PAIRS, Pair

__all__ = ["Row", "run_pair"]


@dataclass(frozen=True)
class Row:
    """One pair's result."""

    pair: str
    keys: int
    applied: int
    correct: int
    wrong: int
    decidable: int
    seconds: float
    wrong_keys: tuple[str, ...] = ()

    @property
    def recall(self) -> float:
        return self.correct / self.decidable if self.decidable else 1.0


def _what(entry: PlanEntry) -> tuple[tuple[str, ...], bool, int | None, bool]:
    transposed = any(op.startswith("transpose") for op in entry.ops)
    part = None
    if entry.part is not None:
        part = entry.part[1] // entry.part[2] + 1
    return tuple(entry.sources), transposed, part, entry.merge_dim is not None


def _truth(
    sources: tuple[str, ...], ops: tuple[str, ...]
) -> tuple[tuple[str, ...], bool, int | None, bool]:
    part = None
    for op in ops:
        if op.startswith("split"):
            part = int(op.split(", ")[1].split("/")[0])
    return sources, "transpose" in ops, part, any(op.startswith("merge") for op in ops)


def run_pair(name: str, *, sort: bool = False) -> Row:
    """Align one pair and grade the recipe it wrote.

    Args:
        name: the pair.
        sort: list both sides' keys sorted, as a safetensors file does (no module order).
    """
    pair: Pair = PAIRS[name]()
    if sort:
        pair.source, pair.target = (
            dict(sorted(pair.source.items())),
            dict(sorted(pair.target.items())),
        )
    start = time.perf_counter()
    result = align(pair.source, pair.target)
    seconds = time.perf_counter() - start
    recipe = load_recipe(result.recipe).model_copy(update={"strict": False})
    plan = build_plan(_header_source(pair.source), Target("skeleton", dict(pair.target), name="t"),
                      recipe)  # fmt: skip
    applied = correct = 0
    wrong: list[str] = []
    for entry in plan.entries:
        if not entry.fed:
            continue
        applied += 1
        truth = pair.truth.get(entry.target)
        if entry.target in pair.ambiguous or truth is None or _what(entry) != _truth(*truth):
            wrong.append(entry.target)
        else:
            correct += 1
    decidable = sum(1 for t in pair.truth if t not in pair.ambiguous)
    return Row(pair.name, len(pair.target), applied, correct, len(wrong), decidable, seconds,
               tuple(wrong))  # fmt: skip


def main() -> None:
    print(f"{'pair':<44} {'keys':>5} {'applied':>8} {'correct':>8} {'wrong':>6} "
          f"{'recall':>7} {'seconds':>8}")  # fmt: skip
    sort = "--sorted" in sys.argv  # both key lists sorted, as safetensors files list them
    for name in PAIRS:
        row = run_pair(name, sort=sort)
        print(f"{row.pair:<44} {row.keys:>5} {row.applied:>8} {row.correct:>8} {row.wrong:>6} "
              f"{row.recall:>7.1%} {row.seconds:>8.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
