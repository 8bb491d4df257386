"""The file names a job's downloads get: after the source and the target, never the job id.

``mobilenet_v2-b0353104.pth`` converted into the ``graft_mobilenet`` architecture downloads
as ``mobilenet_v2-b0353104.graft_mobilenet.safetensors`` (its report as
``….graft_mobilenet.report.json``); a checkpoint target contributes its file's stem.
"""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from app.db.models import Artifact, Checkpoint, Job

__all__ = ["download_filename"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def download_filename(session: Session, job: Job, artifact: Artifact) -> str:
    """The name ``artifact`` downloads as: ``<source stem>.<target>.<artifact suffix>``.

    Args:
        session: a read session (the checkpoints' file names are looked up).
        job: the artifact's job.
        artifact: one of its published artifacts (``<job id>.<suffix>`` as stored).

    Returns:
        A name safe in any file system; the job id stands in for a deleted source.
    """
    _, dot, suffix = artifact.filename.partition(".")
    suffix = suffix if dot else artifact.name
    source = _stem(session, job.source_id) or job.id
    return f"{_safe(source)}.{_safe(_target_name(session, job))}.{suffix}"


def _target_name(session: Session, job: Job) -> str:
    target = job.target or {}
    if "architecture" in target:
        return str(target["architecture"])
    if "checkpoint" in target:
        return _stem(session, job.target_checkpoint_id or target["checkpoint"]) or "checkpoint"
    return "skeleton"


def _stem(session: Session, checkpoint_id: str | None) -> str | None:
    if checkpoint_id is None:
        return None
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None:
        return None
    name = checkpoint.filename.rsplit("/", 1)[-1]
    for ext in (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".zip"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or name
    return name.rsplit(".", 1)[0] or name


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "_"
