"""Optimal one-to-one assignment and order evidence, in numpy (scipy is not a dependency).

* :func:`linear_sum_assignment` maximises the total score of a rectangular matrix with the
  shortest-augmenting-path Hungarian method (O(n² m)), the algorithm behind scipy's function.
* :func:`forced_pairs` finds the pairs that every longest common subsequence of two unit
  sequences uses: when two layouts list the same modules in the same order, the n-th conv is
  paired with the n-th conv, and only where no other alignment of equal length exists.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["forced_pairs", "linear_sum_assignment"]


def linear_sum_assignment(score: NDArray[np.float64]) -> list[tuple[int, int]]:
    """Rows and columns paired one-to-one so that the total score is the largest.

    Args:
        score: an (n, m) matrix; ``-inf`` marks a pair that may not be made.

    Returns:
        The pairs ``(row, col)``, sorted by row; ``min(n, m)`` of them, less any forbidden one.
    """
    n, m = score.shape
    if n == 0 or m == 0:
        return []
    flipped = n > m
    matrix = score.T if flipped else score
    rows, cols = matrix.shape
    finite = np.isfinite(matrix)
    big = (np.abs(matrix[finite]).max() if finite.any() else 0.0) * 4 + 1e6
    cost = np.where(finite, -matrix, big)
    u = np.zeros(rows + 1)
    v = np.zeros(cols + 1)
    owner = np.zeros(cols + 1, dtype=np.int64)  # owner[j]: the row (1-based) holding column j
    way = np.zeros(cols + 1, dtype=np.int64)
    for i in range(1, rows + 1):
        owner[0] = i
        j0 = 0
        minv = np.full(cols + 1, np.inf)
        used = np.zeros(cols + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[owner[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    pairs = [(int(owner[j]) - 1, j - 1) for j in range(1, cols + 1) if owner[j]]
    pairs = [(c, r) if flipped else (r, c) for r, c in pairs]
    return sorted(p for p in pairs if np.isfinite(score[p]))


def _lcs_table(eq: NDArray[np.bool_]) -> NDArray[np.int64]:
    """``table[i, j]``: the longest common subsequence of the first i rows and j columns."""
    n, m = eq.shape
    table = np.zeros((n + 1, m + 1), dtype=np.int64)
    for i in range(1, n + 1):
        prev = table[i - 1]
        row = np.maximum(prev[1:], np.where(eq[i - 1], prev[:-1] + 1, 0))
        table[i, 1:] = np.maximum.accumulate(row)
    return table


def forced_pairs(eq: NDArray[np.bool_]) -> set[tuple[int, int]]:
    """The compatible pairs that every longest common subsequence uses.

    Args:
        eq: ``eq[i, j]`` is true when the i-th source unit may stand for the j-th target unit.

    Returns:
        Pairs ``(i, j)`` that lie on every optimal order-preserving alignment: the n-th unit
        of its kind on one side and the n-th on the other, with no alternative.
    """
    n, m = eq.shape
    if n == 0 or m == 0:
        return set()
    forward = _lcs_table(eq)
    backward = _lcs_table(eq[::-1, ::-1])[::-1, ::-1]  # backward[i, j]: rows i.., cols j..
    total = int(forward[n, m])
    rows, cols = np.nonzero(eq)
    level = forward[rows, cols] + 1
    on_path = level + backward[rows + 1, cols + 1] == total
    by_level: dict[int, list[tuple[int, int]]] = {}
    for i, j, lv, ok in zip(rows, cols, level, on_path, strict=True):
        if ok:
            by_level.setdefault(int(lv), []).append((int(i), int(j)))
    return {pairs[0] for pairs in by_level.values() if len(pairs) == 1}
