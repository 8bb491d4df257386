"""The service commands: ``graft serve`` (the HTTP API) and ``graft worker``."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

__all__ = ["serve", "worker"]


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default: GRAFT_PORT, else 8000).")
    ] = None,
) -> None:
    """Run the HTTP API with GRAFT_WORKERS embedded worker processes (migrates on start)."""
    import logging
    import os
    import signal

    from app.config import get_settings
    from app.executors.pool import WorkerPool
    from app.services.instance_lock import hold_instance_lock
    from app.services.warmth import clear_marks, markers_dir

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    if settings.executor == "celery":
        _check_celery(settings)
    # Before anything touches the database: one server per embedded data folder.
    lock = hold_instance_lock(settings)
    markers = markers_dir(settings.storage_dir)
    clear_marks(markers)
    # With Celery the workers are `graft worker --executor celery` processes elsewhere.
    embedded = settings.workers if settings.executor == "local" else 0
    # The workers start first: their warm-up (torch, the engine) overlaps the migrations and
    # this process's imports below; they touch the database once the gate is open.
    pool = WorkerPool(embedded, gate=markers / f"migrated-{os.getpid()}")
    pool.start()
    # uvicorn re-raises the signal that stopped it once it has shut down; a handler of our
    # own makes that a no-op so the workers below are stopped (and release their jobs).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        from app.api.main import create_app
        from app.api.server import run
        from app.services.bootstrap import bind_host, prepare

        prepare(settings)
        pool.open_gate()
        # local mode: loopback only, and it says so; beyond loopback: keys, always.
        host, auth = bind_host(settings, host)
        settings = settings.model_copy(update={"auth": auth})
        run(
            create_app(settings, embedded_workers=embedded),
            host=host,
            port=port if port is not None else settings.port,
            header_timeout=settings.header_timeout_seconds,
        )
    finally:
        pool.stop()
        if lock is not None:
            lock.close()


def worker(
    index: Annotated[
        int,
        typer.Option(
            "--index",
            min=0,
            help="This worker's number on the host: with several GPUs and GRAFT_DEVICE=auto "
            "or cuda, worker i uses GPU i % count.",
        ),
    ] = 0,
    executor: Annotated[
        str | None,
        typer.Option(
            help="local (claim jobs from the database) or celery; default GRAFT_EXECUTOR."
        ),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(
            help="celery: the queues to consume, gpu and/or cpu; default gpu,cpu on a host "
            "with CUDA, else cpu (gpu without CUDA is refused)."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="celery: cpu, cuda or cuda:N (pins one GPU); default GRAFT_DEVICE."),
    ] = None,
) -> None:
    """Run one more worker process against the configured database and storage."""
    import logging

    from app.config import get_settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    chosen = executor or settings.executor
    if chosen not in ("local", "celery"):
        typer.echo(f"graft: error: --executor takes local or celery, not {chosen!r}", err=True)
        raise typer.Exit(2)
    if chosen == "local":
        from app.executors.local import run_worker

        run_worker(index=index)
        return
    _celery_worker(settings, queues, device)


def _check_celery(settings: Any) -> None:
    try:
        from app.executors.celery import ExecutorConfigError, check_celery_settings
    except ImportError as exc:  # the `celery` extra is not installed
        typer.echo(f"graft: error: {exc}; install graft[celery]", err=True)
        raise typer.Exit(2) from exc
    try:
        check_celery_settings(settings)
    except ExecutorConfigError as exc:
        typer.echo(f"graft: error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _celery_worker(settings: Any, queues: str | None, device: str | None) -> None:
    try:
        from app.executors.celery import (
            ExecutorConfigError,
            parse_queues,
            run_celery_worker,
        )
    except ImportError as exc:  # the `celery` extra is not installed
        typer.echo(f"graft: error: {exc}; install graft[celery]", err=True)
        raise typer.Exit(2) from exc
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        typer.echo(f"graft: error: --device takes cpu, cuda or cuda:N, not {device!r}", err=True)
        raise typer.Exit(2)
    try:
        chosen = None if queues is None else parse_queues(queues)
        run_celery_worker(settings, queues=chosen, device=device)
    except ExecutorConfigError as exc:
        typer.echo(f"graft: error: {exc}", err=True)
        raise typer.Exit(2) from exc
