"""Dry runs for the web app's form: the plan of a conversion, or the recipe alignment would
write (SPEC §2.2), computed at once, never a job.

A plan is a dry-run :class:`~app.services.conversion.ConversionRequest`. The source (and a
checkpoint target) are uploads, so it runs where every upload is read: in an inspection
child, under its resource limits and its timeout. Planning reads headers only, so it takes
about as long as an inspection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.db.repositories import CheckpointRepository
from app.engine.architectures import ArchitectureRef
from app.engine.recipe import load_recipe
from app.engine.target_spec import TargetSpec
from app.services.checkpoints import checkpoint_files
from app.services.conversion import ConversionRequest
from app.services.errors import InvalidJobError, NotFoundError
from app.services.inspector import InspectorPool
from app.services.jobs.service import check_target, validate_recipe
from app.services.set_names import member_path
from app.storage import BlobStore

__all__ = [
    "align_conversion",
    "inspect_checkpoint",
    "link_blobs",
    "plan_conversion",
    "resolve_plan_inputs",
]


def resolve_plan_inputs(
    session: Session,
    *,
    source: str,
    target: TargetSpec,
    recipe: dict[str, Any] | str | None,
    owner: str | None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Check what a plan names and return the ``(name, sha256)`` files of source and target.

    Raises:
        InvalidJobError: an unknown (or another owner's) checkpoint.
        InvalidRecipeError: naming the rule.
        InvalidTargetError: naming the skeleton entry.
    """
    checkpoints = CheckpointRepository(session)
    found = checkpoints.get(source, owner=owner)
    if found is None:
        raise InvalidJobError(f"source: no checkpoint with id {source!r}; upload it first")
    validate_recipe(recipe)
    templates = check_target(checkpoints, target, owner=owner)
    return checkpoint_files(found), [
        f for template in templates for f in checkpoint_files(template)
    ]


def resolve_named_sources(
    session: Session, sources: dict[str, str], *, owner: str | None
) -> dict[str, list[tuple[str, str]]]:
    """Several sources' ``(name, sha256)`` files by name (a plan's ``sources``).

    Raises:
        InvalidJobError: an unknown (or another owner's) checkpoint, naming its source.
    """
    checkpoints = CheckpointRepository(session)
    named = {}
    for name, checkpoint_id in sources.items():
        found = checkpoints.get(checkpoint_id, owner=owner)
        if found is None:
            raise InvalidJobError(
                f"sources.{name}: no checkpoint with id {checkpoint_id!r}; upload it first"
            )
        named[name] = checkpoint_files(found)
    return named


def link_blobs(store: BlobStore, files: list[tuple[str, str]], folder: Path) -> list[Path]:
    """Link each ``(name, sha256)`` blob into a new ``folder`` under its name (a relative
    path: a Megatron rank file's ``mp_rank_00_000/model_optim_rng.pt``); its paths."""
    if not files:
        return []
    folder.mkdir()
    paths = []
    for name, sha in files:
        path = member_path(folder, name)
        store.link_into(sha, path)
        paths.append(path)
    return paths


def _dry_run(
    store: BlobStore,
    work: Path,
    source_files: list[tuple[str, str]],
    target: TargetSpec,
    target_files: list[tuple[str, str]],
    recipe: dict[str, Any] | str | None,
    architectures: Sequence[ArchitectureRef],
    named_files: dict[str, list[tuple[str, str]]] | None = None,
) -> ConversionRequest:
    """Link the blobs into ``work`` and describe the dry run over those files (what a plan
    and an alignment both hand their inspection child); several sources each in its own
    folder ``sources/NAME``."""
    if named_files:
        (work / "sources").mkdir()
    return ConversionRequest(
        source=link_blobs(store, source_files, work / "source"),
        sources={
            name: link_blobs(store, files, work / "sources" / name)
            for name, files in (named_files or {}).items()
        },
        target=target,
        target_files=link_blobs(store, target_files, work / "target"),
        recipe=load_recipe(recipe),
        dry_run=True,
        architectures=tuple(architectures),
    )


async def plan_conversion(
    store: BlobStore,
    inspector: InspectorPool,
    *,
    source_files: list[tuple[str, str]],
    target: TargetSpec,
    target_files: list[tuple[str, str]],
    recipe: dict[str, Any] | str | None,
    architectures: Sequence[ArchitectureRef] = (),
    named_files: dict[str, list[tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """The dry-run report of converting the source (or several, ``named_files``) into the
    target with the recipe.

    Args:
        store: where the checkpoints' blobs are.
        inspector: the pool of sandboxed inspection children that plans.
        source_files, target_files: from :func:`resolve_plan_inputs`.
        target: the target spec.
        recipe: the recipe as data.
        architectures: more architectures, (name, module, factory) triples.

    Returns:
        The ``graft.report/v1`` document of the dry run.
    """
    with store.workdir() as work:
        request = _dry_run(
            store, work, source_files, target, target_files, recipe, architectures, named_files
        )
        outcome = await inspector.plan(request)
    return outcome.report


async def align_conversion(
    store: BlobStore,
    inspector: InspectorPool,
    *,
    source_files: list[tuple[str, str]],
    target: TargetSpec,
    target_files: list[tuple[str, str]],
    recipe: dict[str, Any] | None,
    min_confidence: float | None = None,
    architectures: Sequence[ArchitectureRef] = (),
) -> dict[str, Any]:
    """The recipe that feeds the target from the source (SPEC §2.2), from headers alone, in
    an inspection child.

    Args:
        store: where the checkpoints' blobs are.
        inspector: the pool of sandboxed inspection children that aligns.
        source_files, target_files: from :func:`resolve_plan_inputs`.
        target: the target spec.
        recipe: the user's rules, applied first.
        min_confidence: overrides the recipe's ``align_min_confidence``.
        architectures: more architectures, (name, module, factory) triples.

    Returns:
        ``{recipe, matches, unresolved, rules}``.
    """
    with store.workdir() as work:
        request = _dry_run(store, work, source_files, target, target_files, recipe, architectures)
        return await inspector.align(request, min_confidence=min_confidence)


async def inspect_checkpoint(
    session: Session,
    store: BlobStore,
    inspector: InspectorPool,
    checkpoint_id: str,
    *,
    owner: str | None,
) -> dict[str, Any]:
    """The ``graft.inspect/v1`` document of an uploaded checkpoint, read again in a child.

    Raises:
        NotFoundError: no such checkpoint, or another owner's.
    """
    checkpoint = CheckpointRepository(session).get(checkpoint_id, owner=owner)
    if checkpoint is None:
        raise NotFoundError(f"no checkpoint with id {checkpoint_id!r}")
    files, entry = checkpoint_files(checkpoint), checkpoint.entry
    with store.workdir() as work:
        paths = link_blobs(store, files, work / "files")
        summary = await inspector.inspect(
            paths, names=[name for name, _ in files], entry=entry or "auto"
        )
    # The child saw work-folder paths; the document names the files as they were uploaded.
    summary["paths"] = [name for name, _ in files]
    summary["id"] = checkpoint.id
    return summary
