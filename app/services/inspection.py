"""What an inspection child runs: read a checkpoint's headers, list or bind architectures,
align two checkpoints' headers.

These run in sandbox children only, never in the API process: pooled ones (the API's
:class:`~app.services.inspector.InspectorPool`), or a one-shot one (a worker fetching a
source by reference). They import the engine alone, so a child pays no other import.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.engine.architectures import ArchitectureRef
from app.engine.errors import GraftError, UnreadableCheckpointError
from app.errors import InternalError
from app.sandbox.runner import describe_failure, failure_answer

__all__ = [
    "TENSOR_PAGE",
    "align_in_child",
    "architectures_in_child",
    "bind_in_child",
    "inspect_in_child",
    "tensor_pages",
]

# Tensors per stored page of a checkpoint's index (one compact record each).
TENSOR_PAGE = 1000

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


@contextlib.contextmanager
def _unexpected_is_unreadable() -> Iterator[None]:
    """A limit keeps its type; an engine bug reading a file means the file is unreadable."""
    try:
        yield
    except GraftError:
        raise
    except Exception as exc:
        if not isinstance(describe_failure(exc), InternalError):
            raise
        logger.exception("inspection failed")
        raise UnreadableCheckpointError(f"cannot read: {exc}") from exc


def _extra(payload: dict[str, Any]) -> tuple[ArchitectureRef, ...]:
    """The payload's architecture triples, back from JSON's lists."""
    return tuple((name, module, attr) for name, module, attr in payload.get("extra") or ())


def architectures_in_child(payload: dict[str, Any], emit: Emit) -> list[dict[str, Any]]:
    """The engine's registered architectures, with ``payload["extra"]`` ones."""
    from app.engine.architectures import describe_architectures

    with _unexpected_is_unreadable():
        return describe_architectures(_extra(payload))


def bind_in_child(payload: dict[str, Any], emit: Emit) -> None:
    """Bind ``payload["name"]`` with ``payload["kwargs"]`` (an error says what is wrong)."""
    from app.engine.architectures import bind_architecture

    with _unexpected_is_unreadable():
        bind_architecture(payload["name"], payload.get("kwargs"), extra=_extra(payload))


def _summary(payload: dict[str, Any]) -> dict[str, Any]:
    from app.engine.readers import inspect_source

    files = [Path(p) for p in payload["files"]]
    names = payload.get("names") or [p.name for p in files]
    # One file is opened by its path; a set (or one file in a folder of the set, as a
    # Megatron rank file's ``mp_rank_00_000/model_optim_rng.pt``) by its names.
    one = len(files) == 1 and "/" not in names[0]
    source: Path | dict[str, Path] = files[0] if one else dict(zip(names, files, strict=True))
    summary: dict[str, Any] = inspect_source(source, entry=payload.get("entry", "auto"))
    return summary


def tensor_pages(tensors: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """A tensor list as the pages a checkpoint's index is stored in: ``(start, JSON of
    [[key, shape, dtype, kind], ...])``. Serialised here, never under the write lock."""
    return [
        (
            start,
            json.dumps(
                [
                    [t["key"], list(t["shape"]), t["dtype"], t["kind"]]
                    for t in tensors[start : start + TENSOR_PAGE]
                ],
                separators=(",", ":"),
            ),
        )
        for start in range(0, len(tensors), TENSOR_PAGE)
    ]


def inspect_in_child(payload: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Inspect ``payload["files"]`` (``names``, ``entry``, ``max_tensors`` optional).

    With ``payload["paged"]``, the summary's ``tensors`` come as ``tensor_pages`` (see
    :func:`tensor_pages`) and their number as ``tensor_count``: a few hundred strings
    decode in milliseconds in the API, 200,000 objects in seconds with the GIL held.

    Returns:
        ``{"ok": True, "result": summary}`` or ``{"ok": False, "type", "message"}``: a
        refusal is an answer, so a one-shot child and a pooled one report it alike.
    """
    del emit  # inspection reports no progress
    try:
        with _unexpected_is_unreadable():
            summary = _summary(payload)
    except Exception as exc:
        return {"ok": False, **failure_answer(exc)}
    if not summary["tensors"]:
        # An upload is only worth a record if it holds weights: an empty header, or a
        # pickle of an empty dict, is refused like any unreadable file.
        return {
            "ok": False,
            "type": "unreadable-checkpoint",
            "message": "the checkpoint holds no tensors",
        }
    cap = payload.get("max_tensors")
    if cap is not None and len(summary["tensors"]) > cap:
        return {
            "ok": False,
            "type": "too-large",
            "message": f"the checkpoint holds {len(summary['tensors'])} tensors; "
            f"this service accepts at most {cap} (GRAFT_MAX_TENSORS)",
        }
    if payload.get("paged"):
        tensors = summary.pop("tensors")
        summary["tensor_count"] = len(tensors)
        summary["tensor_pages"] = tensor_pages(tensors)
    return {"ok": True, "result": summary}


def _files(paths: list[str]) -> Path | list[Path]:
    files = [Path(p) for p in paths]
    return files[0] if len(files) == 1 else files


def align_in_child(payload: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Align the source's headers to the target's (SPEC §2.2), from headers alone.

    ``payload``: ``source`` (files), ``target`` (a target spec as JSON), ``target_files``
    (a checkpoint target's files), ``recipe`` (validated, as JSON), ``min_confidence``
    (or ``None``) and ``extra`` (architecture triples).

    Returns:
        ``{recipe, matches, unresolved, rules}`` (:func:`app.engine.align.align_document`).
    """
    del emit  # alignment reports no progress
    from app.engine.align import align, align_document
    from app.engine.readers import open_source
    from app.engine.recipe import load_recipe
    from app.engine.target import Target
    from app.engine.target_spec import parse_target_spec

    recipe = load_recipe(payload["recipe"])
    spec = parse_target_spec(payload["target"])
    target_files = payload.get("target_files") or []
    strip = recipe.source.strip_prefixes
    with (
        _unexpected_is_unreadable(),
        open_source(
            _files(payload["source"]), entry=recipe.source.entry, strip_prefixes=strip
        ) as src,
        Target.from_spec(
            spec,
            files=_files(target_files) if target_files else None,
            architectures=_extra(payload),
        ) as target,
    ):
        result = align(
            src.tensors, target.tensors, recipe, min_confidence=payload["min_confidence"]
        )
    return align_document(result)
