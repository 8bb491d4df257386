"""One row of ``make bench``'s table: what a bench script measured, beside its baseline.

Each script (bench/convert.py, dcp.py, shards.py, uploads.py, zero.py, s3_stream.py) keeps
printing its own table and, with ``--json FILE``, also writes its rows as a JSON list of
:class:`BenchRow` objects; ``bench/table.py`` runs them all (``--runs N --json FILE``, and
``--dir DIR`` for those that keep data) and prints one table.

A row's ratio is its median wall time over its baseline's median wall time, both measured in
the same run (interleaved); its goal is a largest ratio, and for some rows a smallest CPU/wall
(both cores busy) or a largest peak RSS.

    {"group": "shards", "row": "graft convert (verified)", "wall": 8.1, "cpu": 13.0,
     "rss": 130000000, "baseline": "durable copy", "baseline_wall": 7.2, "runs": 3,
     "goal_ratio": 1.3, "goal_cpu_per_wall": 1.5}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = ["DURABLE", "BenchRow", "read_rows", "write_rows"]

DURABLE = "durable copy"  # the usual baseline: cp, then sync of the copied files


@dataclass
class BenchRow:
    """One measured command against the baseline of the same run.

    Attributes:
        group: the script's part of the table (``convert``, ``shards``, ``uploads`` …).
        row: what was run.
        wall: median wall seconds.
        baseline: what the ratio is taken against (:data:`DURABLE`, or another command).
        baseline_wall: the baseline's median wall seconds, same run.
        runs: how many runs the medians are of.
        cpu: median CPU seconds (user + sys of the whole process), when measured.
        rss: median peak RSS in bytes, when measured.
        goal_ratio: the goal: at most this many times the baseline's wall.
        goal_cpu_per_wall: the goal: at least this CPU/wall (cores kept busy).
        goal_rss: the goal: peak RSS at most this many bytes.
        goal_wall: the goal: at most this many seconds (a row with no baseline).
        note: anything the reader needs (a size, what the RSS is compared with).
    """

    group: str
    row: str
    wall: float
    baseline: str
    baseline_wall: float
    runs: int
    cpu: float | None = None
    rss: int | None = None
    goal_ratio: float | None = None
    goal_cpu_per_wall: float | None = None
    goal_rss: int | None = None
    goal_wall: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        """Wall over the baseline's wall (NaN without a baseline)."""
        return self.wall / self.baseline_wall if self.baseline_wall > 0 else math.nan

    @property
    def cpu_per_wall(self) -> float | None:
        return self.cpu / self.wall if self.cpu is not None and self.wall > 0 else None

    def met(self) -> bool | None:
        """Whether every goal of the row holds (``None``: the row has no goal)."""
        checks: list[bool] = []
        if self.goal_ratio is not None:
            checks.append(self.ratio <= self.goal_ratio)
        if self.goal_cpu_per_wall is not None:
            cpw = self.cpu_per_wall
            checks.append(cpw is not None and cpw >= self.goal_cpu_per_wall)
        if self.goal_wall is not None:
            checks.append(self.wall <= self.goal_wall)
        if self.goal_rss is not None:
            checks.append(self.rss is not None and self.rss <= self.goal_rss)
        return all(checks) if checks else None

    def goal(self) -> str:
        """The goal in words, ``-`` for none."""
        parts = []
        if self.goal_ratio is not None:
            parts.append(f"<= {self.goal_ratio:g}x")
        if self.goal_cpu_per_wall is not None:
            parts.append(f"CPU/wall >= {self.goal_cpu_per_wall:g}")
        if self.goal_wall is not None:
            parts.append(f"<= {self.goal_wall:g} s")
        if self.goal_rss is not None:
            parts.append(f"RSS <= {self.goal_rss / 1e6:.0f} MB")
        return ", ".join(parts) or "-"


def write_rows(path: Path | None, rows: list[BenchRow]) -> None:
    """Write ``rows`` to ``path`` as JSON (nothing when ``path`` is None)."""
    if path is not None:
        path.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")


def read_rows(path: Path) -> list[BenchRow]:
    """The rows a script wrote with :func:`write_rows` (unknown fields are ignored)."""
    known = {f.name for f in fields(BenchRow)}
    return [
        BenchRow(**{k: v for k, v in r.items() if k in known}) for r in json.loads(path.read_text())
    ]
