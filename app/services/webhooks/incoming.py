"""Incoming MLflow registry webhooks: verified, matched against pipelines, acted on once.

MLflow signs each delivery (``mlflow/webhooks/delivery.py``): headers ``X-MLflow-Delivery-Id``,
``X-MLflow-Timestamp`` (Unix seconds) and ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
"{delivery_id}.{timestamp}.{body}")>``. A delivery is accepted only with a valid signature and
a timestamp within five minutes of now. Each pipeline whose trigger matches the event starts
one job, as the pipeline's owner, for the version the event names; the delivery id is stored
in the same transaction as the jobs, so a redelivery starts nothing new.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import MlflowDelivery, Pipeline
from app.db.repositories import DeliveryRepository, PipelineRepository
from app.errors import GraftError
from app.services.auth import UnauthorizedError
from app.services.errors import BadRequestError
from app.services.jobs.service import JobHooks, JobRequest, check_job, create_job
from app.services.sources.references import RegistryConfig, SourceRef
from app.services.webhooks.pipelines import PipelineSpec

__all__ = ["MAX_SKEW_SECONDS", "HookOutcome", "handle_delivery", "verify_signature"]

logger = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 300


@dataclass(frozen=True)
class HookOutcome:
    """What one delivery did: the jobs it started (or had started, for a redelivery)."""

    delivery_id: str
    event: str
    jobs: list[str]
    duplicate: bool


def verify_signature(
    *,
    secret: str | None,
    delivery_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
) -> None:
    """Check an MLflow delivery's signature and freshness.

    Raises:
        UnauthorizedError: no secret configured, a header missing, an old or future
            timestamp, or a signature that does not match.
    """
    if not secret:
        raise UnauthorizedError("MLflow webhooks are off: GRAFT_MLFLOW_WEBHOOK_SECRET is not set")
    if not delivery_id or not timestamp or not signature:
        raise UnauthorizedError(
            "X-MLflow-Delivery-Id, X-MLflow-Timestamp and X-MLflow-Signature are required"
        )
    # ASCII digits, at most 12 of them: str.isdigit() admits '²', which int() refuses, and
    # int() of thousands of digits is slow work for an anonymous caller.
    if not re.fullmatch(r"[0-9]{1,12}", timestamp) or abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        raise UnauthorizedError("X-MLflow-Timestamp is not within 5 minutes of the server's clock")
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest())
    # A header may carry several space-separated signatures (secret rotation).
    offered = [s.removeprefix("v1,") for s in signature.split() if s.startswith("v1,")]
    if not any(hmac.compare_digest(expected, s.encode()) for s in offered):
        raise UnauthorizedError("X-MLflow-Signature does not match the body")


def _event(payload: dict[str, Any]) -> tuple[str, str, str, str | None]:
    """``(event, model, version, alias)`` of a model-version event, or a 400."""
    entity, action = payload.get("entity"), payload.get("action")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise BadRequestError("the webhook body has no 'data' object")
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not isinstance(version, str | int):
        return f"{entity}.{action}", "", "", None
    alias = data.get("alias") if isinstance(data.get("alias"), str) else None
    return f"{entity}.{action}", name, str(version), alias


def _matches(pipeline: Pipeline, event: str, alias: str | None) -> bool:
    if pipeline.trigger_on == "model_version_created":
        return event == "model_version.created"
    wanted = pipeline.trigger_on.removeprefix("alias:")
    return event == "model_version_alias.created" and alias == wanted


def handle_delivery(
    session: Session,
    *,
    delivery_id: str,
    body: bytes,
    registry: RegistryConfig,
    max_attempts: int,
    hooks: JobHooks | None = None,
) -> HookOutcome:
    """Start one job per matching pipeline, once per delivery id.

    Args:
        session: the request's transaction (the jobs and the delivery commit together).
        delivery_id: ``X-MLflow-Delivery-Id`` (already verified).
        body: the signed JSON body.
        registry: the configured registry (the jobs' sources are ``models:/NAME/VERSION``).
        max_attempts: claims before a job whose worker keeps dying is failed.
        hooks: how jobs record their status events; each job gets its pipeline's callback.

    Returns:
        The jobs started, or for a delivery seen before, those it had started.

    Raises:
        BadRequestError: the body is not an MLflow event.
    """
    deliveries = DeliveryRepository(session)
    seen = deliveries.get(delivery_id)
    if seen is not None:
        return HookOutcome(delivery_id, seen.event, list(seen.jobs), duplicate=True)
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequestError("the webhook body is not JSON") from exc
    if not isinstance(payload, dict):
        raise BadRequestError("the webhook body is not a JSON object")
    event, model, version, alias = _event(payload)
    jobs: list[str] = []
    if model:
        for pipeline in PipelineRepository(session).triggered_by(model):
            if not _matches(pipeline, event, alias):
                continue
            try:
                with session.begin_nested():
                    jobs.append(
                        _start(session, pipeline, model, version, registry, max_attempts, hooks)
                    )
            except GraftError as exc:
                # One broken pipeline (its target checkpoint deleted…) must not block the rest.
                logger.warning("pipeline %s/%s: no job: %s", pipeline.owner, pipeline.name, exc)
            except Exception:
                # Nor may a bug, or a row stored before creation checked it: log it, go on.
                logger.exception(
                    "pipeline %s/%s: no job (internal error)", pipeline.owner, pipeline.name
                )
    try:
        with session.begin_nested():
            deliveries.add(MlflowDelivery(delivery_id=delivery_id, event=event[:64], jobs=jobs))
    except IntegrityError:
        # The same delivery, concurrently: the other request's jobs stand, ours roll back.
        session.rollback()
        seen = DeliveryRepository(session).get(delivery_id)
        return HookOutcome(delivery_id, event, list(seen.jobs) if seen else [], duplicate=True)
    logger.info("mlflow delivery %s (%s %s v%s): jobs %s", delivery_id, event, model, version, jobs)
    return HookOutcome(delivery_id, event, jobs, duplicate=False)


def _start(
    session: Session,
    pipeline: Pipeline,
    model: str,
    version: str,
    registry: RegistryConfig,
    max_attempts: int,
    hooks: JobHooks | None,
) -> str:
    spec = PipelineSpec.model_validate(pipeline.spec)
    if hooks is not None:  # the pipeline's own callback, signed with its owner's secret
        callback = spec.callback.model_dump() if spec.callback is not None else None
        hooks = dataclasses.replace(hooks, callback=callback)
    request = JobRequest(
        # Pinned to the version the event names, not an alias that may move before it runs.
        source=SourceRef(uri=f"models:/{model}/{version}"),
        target=spec.target,
        recipe=spec.recipe,
        output_format=spec.output.format,
        output_dtype=spec.output.dtype,
        dry_run=False,
        owner=pipeline.owner,
        checkpoint_owner=pipeline.owner,
        register=spec.output.registration,
        pipeline_id=pipeline.id,
    )
    # The stored spec was checked when the pipeline was saved: its regexes compiled then
    # (and are cached), so this is cheap under the lock.
    checked = check_job(request, registry=registry)
    job = create_job(session, checked, max_attempts=max_attempts, hooks=hooks)
    return job.id
