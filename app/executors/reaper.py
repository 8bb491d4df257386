"""Seeing a dead lease holder at once, rather than after its lease lapses.

A holder's name is ``host:pid:random`` (:func:`app.executors.runtime.worker_owner`). A job's
lease is ended early when its holder is known dead:

- on this host, its process is gone (``kill(pid, 0)`` finds no such process); a pid reused
  by another process only means the lease is waited out as before;
- its ``workers`` row is stale: no heartbeat for :data:`STALE_BEATS` beats (a holder on
  another host, or one that hangs). Local workers record themselves under their holder name.

Ending a lease early is safe because leases are fenced (:mod:`app.executors.lease`): a
holder that was only paused finds its token stale when it wakes, and writes nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from pathlib import Path

from app.db.base import utcnow
from app.db.repositories import JobRepository, Lease, WorkerRepository
from app.db.session import Database

__all__ = ["STALE_BEATS", "expire_dead_holders", "holder_dead"]

logger = logging.getLogger(__name__)

STALE_BEATS = 3
"""A worker row silent this many heartbeats is taken for dead."""


def holder_dead(owner: str, *, stale: set[str]) -> bool:
    """Whether the holder named ``owner`` is known dead.

    Args:
        owner: a holder name, ``host:pid:random``.
        stale: the ids of worker rows silent past :data:`STALE_BEATS` beats.
    """
    if owner in stale:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits for its parent to reap it (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ")" (comm may hold one).
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def expire_dead_holders(database: Database, *, beat_seconds: float) -> list[Lease]:
    """End the leases of the running jobs whose holder is dead, and forget stale workers.

    A read first; the write transaction is opened only when there is something to end.

    Args:
        database: the shared database.
        beat_seconds: the workers' heartbeat period.

    Returns:
        The leases ended (their jobs are claimable now).
    """
    now = utcnow()
    before = now - timedelta(seconds=STALE_BEATS * beat_seconds)
    with database.transaction(write=False) as session:
        stale = {w.id for w in WorkerRepository(session).stale(before=before)}
        dead = [
            lease
            for lease in JobRepository(session).holders()
            if holder_dead(lease.owner, stale=stale)
        ]
    if not dead and not stale:
        return []
    with database.transaction() as session:
        jobs = JobRepository(session)
        ended = [lease for lease in dead if jobs.expire(lease, now=now)]
        if stale:
            WorkerRepository(session).prune(before=before)
    if ended:
        logger.warning("ended %d lease(s) of dead holders: %s", len(ended), ended)
    return ended
