"""The API's background loops, started and stopped together by :func:`background_loops`.

- maintenance: reaps lapsed leases, collects unreferenced blobs and expires abandoned
  resumable uploads every period;
- the webhook outbox's sender (:class:`DeliveryLoop`);
- with Celery, a sweep that sends again the jobs whose send failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread

from app.api.app_context import AppContext
from app.api.deps import local_webhook_secret
from app.services.jobs.dispatch import Dispatcher, redispatch_unsent
from app.services.jobs.maintenance import reap_leases
from app.services.webhooks.delivery import DeliveryLoop
from app.services.webhooks.outbox import DeliveryPolicy

__all__ = ["background_loops"]

logger = logging.getLogger(__name__)


@asynccontextmanager
async def background_loops(context: AppContext) -> AsyncIterator[None]:
    """Run every background loop while the block runs; cancel and await them after.

    Args:
        context: the application's parts.
    """
    loops: list[Coroutine[Any, Any, None]] = [_delivery_loop(context).run()]
    if context.settings.maintenance_seconds > 0:
        loops.append(_maintain(context, context.settings.maintenance_seconds))
    if context.dispatcher is not None:
        loops.append(_sweep_unsent(context, context.dispatcher))
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _maintain(context: AppContext, period: float) -> None:
    """Reap lapsed leases and collect unreferenced blobs every ``period`` seconds, so neither
    waits for a worker to poll or for the next start."""
    while True:
        await asyncio.sleep(period)
        try:
            await to_thread.run_sync(
                lambda: reap_leases(
                    context.database, device_wait_seconds=context.settings.device_wait_seconds
                )
            )
            await to_thread.run_sync(context.blob_collector.collect)
            await to_thread.run_sync(context.resumable.expire)
        except Exception:  # a locked database or a store hiccup: try again next tick
            logger.exception("maintenance pass failed; retrying next period")


async def _sweep_unsent(context: AppContext, dispatcher: Dispatcher) -> None:
    """Send again the jobs whose send failed (the broker was down), once it is back."""
    age = context.settings.dispatch_sweep_seconds
    while True:
        await asyncio.sleep(age)
        try:
            sent = await to_thread.run_sync(
                lambda: redispatch_unsent(context.database, dispatcher, age=age)
            )
        except Exception:
            logger.exception("re-sending unsent jobs failed; retrying")
            continue
        if sent:
            logger.info("re-sent %d job(s) to the broker", sent)


def _delivery_loop(context: AppContext) -> DeliveryLoop:
    """The webhook outbox's sender: one asyncio task in the API process (``graft serve``)."""
    settings = context.settings
    return DeliveryLoop(
        context.database,
        outbound=context.outbound,
        policy=DeliveryPolicy(
            max_age_seconds=settings.webhook_max_age_seconds,
            backoff_seconds=settings.webhook_backoff_seconds,
            max_backoff_seconds=settings.webhook_max_backoff_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
        ),
        local_secret=local_webhook_secret(settings),
        poll_seconds=settings.webhook_poll_seconds,
    )
