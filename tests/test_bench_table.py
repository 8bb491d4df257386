"""make bench's one table: rows written by the bench scripts as JSON, read back, judged
against their goals, and printed with the scripts that gave none."""

from __future__ import annotations

from pathlib import Path

from bench.rows import DURABLE, BenchRow, read_rows, write_rows
from bench.table import render


def _shards(wall: float, cpu: float) -> BenchRow:
    return BenchRow(group="shards", row="graft convert (verified)", wall=wall, cpu=cpu,
                    rss=140_000_000, baseline=DURABLE, baseline_wall=8.0, runs=3,
                    goal_ratio=1.3, goal_cpu_per_wall=1.5)  # fmt: skip


def test_rows_round_trip_through_json(tmp_path: Path) -> None:
    rows = [_shards(10.0, 16.0), BenchRow("uploads", "API e2e", 0.4, "-", 0.0, 30, goal_wall=1.0)]
    write_rows(tmp_path / "rows.json", rows)
    assert read_rows(tmp_path / "rows.json") == rows


def test_a_row_meets_its_goal_only_when_every_part_holds() -> None:
    assert _shards(10.0, 16.0).met() is True  # 1.25x, CPU/wall 1.6
    assert _shards(10.0, 14.0).met() is False  # both cores not busy enough
    assert _shards(10.8, 17.0).met() is False  # 1.35x
    assert BenchRow("dcp", "naive", 9.0, DURABLE, 3.0, 1).met() is None  # no goal
    rss = BenchRow("zero", "graft", 2.0, "DeepSpeed", 4.0, 1, rss=100, goal_rss=99)
    assert rss.met() is False and rss.ratio == 0.5


def test_the_table_names_each_row_its_baseline_and_what_was_not_built() -> None:
    text = render([_shards(10.0, 14.0)], {"s3": "not built"}, 3)
    row = next(line for line in text.splitlines() if "graft convert (verified)" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:9] == ["shards", "graft convert (verified)", "10.00", "durable copy 8.00 s",
                         "1.25x", "<= 1.3x, CPU/wall >= 1.5", "NO", "1.40", "140"]  # fmt: skip
    assert any(line.startswith("| s3 ") and "not built" in line for line in text.splitlines())
