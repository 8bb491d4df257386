"""Webhooks, both ways.

- :mod:`.outbox`: signed completion webhooks written to a durable outbox with the job's status.
- :mod:`.delivery`: :class:`DeliveryLoop`, which sends due outbox rows beside the API.
- :mod:`.incoming`: MLflow registry webhooks, verified and matched against pipelines.
- :mod:`.pipelines`: the stored automations those incoming events start jobs from.

Only the outgoing side is re-exported here: the incoming side builds on job creation, which
itself uses the outbox (import :mod:`.incoming` and :mod:`.pipelines` by their full path).
"""

from app.services.webhooks.delivery import DeliveryLoop
from app.services.webhooks.outbox import (
    WEBHOOK_EVENTS,
    Callback,
    DeliveryPolicy,
    backoff_seconds,
    check_callback,
    deliveries_for_job,
    enqueue_webhooks,
    new_secret,
    owner_secret,
    rotate_secret,
    sign,
    webhook_headers,
)

__all__ = [
    "WEBHOOK_EVENTS",
    "Callback",
    "DeliveryLoop",
    "DeliveryPolicy",
    "backoff_seconds",
    "check_callback",
    "deliveries_for_job",
    "enqueue_webhooks",
    "new_secret",
    "owner_secret",
    "rotate_secret",
    "sign",
    "webhook_headers",
]
