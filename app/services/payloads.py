"""Caps on the JSON a client sends besides uploads: nesting depth and skeleton size.

The body's size is capped before it is parsed (``app.api.access``); what a parsed body may
hold is checked here, before anything is stored or queued, so a worker never meets a target
it cannot walk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from app.services.errors import PayloadTooLargeError

__all__ = ["check_depth", "check_skeleton_size"]


def check_depth(value: Any, *, max_depth: int, what: str = "the request body") -> None:
    """Refuse JSON nested deeper than ``max_depth`` (walked without recursion).

    Raises:
        PayloadTooLargeError: 413 ``too-large``.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, BaseModel):
            children: Any = node.__dict__.values()
        elif isinstance(node, Mapping):
            children = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > max_depth:
            raise PayloadTooLargeError(
                f"{what} nests deeper than {max_depth} levels (GRAFT_MAX_JSON_DEPTH)"
            )
        stack.extend((child, depth + 1) for child in children)


def check_skeleton_size(skeleton: Any, *, max_tensors: int) -> None:
    """Refuse a skeleton target with more than ``max_tensors`` entries.

    Raises:
        PayloadTooLargeError: 413 ``too-large``.
    """
    tensors = skeleton.get("tensors") if isinstance(skeleton, Mapping) else None
    if isinstance(tensors, Mapping) and len(tensors) > max_tensors:
        raise PayloadTooLargeError(
            f"the skeleton has {len(tensors)} tensors; at most {max_tensors} are accepted "
            "(GRAFT_MAX_SKELETON_TENSORS)"
        )
