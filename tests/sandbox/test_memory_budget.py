"""Inspection's own memory budget (issue 12, item 1): far below a conversion's limit."""

from __future__ import annotations

import subprocess
import sys

_CODE = """
from app.sandbox.runner import memory_budget
outcome = []
with memory_budget(64 * 1024**2):
    try:
        bytearray(256 * 1024**2)
        outcome.append("allocated")
    except MemoryError:
        outcome.append("refused")
data = bytearray(256 * 1024**2)  # the budget is gone with the block
outcome.append(str(len(data)))
print(",".join(outcome))
"""


def test_a_block_gets_only_its_budget_and_the_limit_comes_back() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CODE], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == f"refused,{256 * 1024**2}"


def test_the_service_gives_inspection_a_budget_below_a_conversion() -> None:
    from app.config import Settings
    from app.services.limits import conversion_limits, inspection_memory_budget

    settings = Settings()
    assert inspection_memory_budget(settings) == 1024**3
    assert inspection_memory_budget(settings) * 16 == conversion_limits(settings).address_space
