"""Signed webhooks: the signature, the backoff, and the outbox delivered by the real loop to
a real receiver over a migrated database."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest

from app.db.base import utcnow
from app.db.models import Checkpoint, CheckpointFile, Job, JobStatus
from app.db.repositories import CheckpointRepository, JobRepository, WebhookRepository
from app.db.session import Database
from app.net.outbound import OutboundPolicy, OutboundRefusedError, guarded_async_client
from app.services.webhooks.delivery import DeliveryLoop
from app.services.webhooks.outbox import (
    DeliveryPolicy,
    backoff_seconds,
    check_callback,
    deliveries_for_job,
    enqueue_webhooks,
    new_secret,
    rotate_secret,
    sign,
)
from tests.webhook_receiver import verify, webhook_receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOOPBACK = OutboundPolicy.from_setting("127.0.0.1:*")


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example of the Standard Webhooks specification and its reference libraries.
    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_new_secrets_are_whsec_base64_of_32_bytes_and_differ() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and a != b
    import base64

    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = DeliveryPolicy(backoff_seconds=5, max_backoff_seconds=60)
    rng = random.Random(0)
    for attempt, base in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (12, 60)]:
        delays = [backoff_seconds(attempt, policy, rng=rng) for _ in range(200)]
        assert base * 0.5 <= min(delays) < base * 0.6
        assert base * 1.4 < max(delays) <= base * 1.5
    # A day of retries at the defaults: many attempts, none after ~24 h.
    default = DeliveryPolicy()
    elapsed, attempts = 0.0, 0
    while elapsed <= default.max_age_seconds:
        attempts += 1
        elapsed += backoff_seconds(attempts, default, rng=rng)
    assert 25 <= attempts <= 45


def _job(db: Database, callback: dict[str, object] | None, owner: str = "local") -> str:
    sha = uuid.uuid4().hex * 2
    with db.transaction() as session:
        checkpoint = Checkpoint(
            owner=owner, sha256=sha, filename="x.pth", size=1, format="torch-zip",
            entry=None, stripped_prefix=None, tensors=0, elements=0, bytes=0,
            files=[CheckpointFile(position=0, filename="x.pth", sha256=sha, size=1)],
        )  # fmt: skip
        CheckpointRepository(session).add(checkpoint, [])
        job = Job(
            owner=owner,
            source_id=checkpoint.id,
            target={"checkpoint": checkpoint.id},
            target_checkpoint_id=checkpoint.id,
            callback=callback,
        )
        return JobRepository(session).add(job).id


def _finish(db: Database, job_id: str, status: JobStatus) -> None:
    with db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.finished_at = status, utcnow()
        session.flush()
        enqueue_webhooks(session, job, {"id": job.id, "status": job.status})


def _deliver(
    db: Database, policy: DeliveryPolicy, rounds: int, done: Callable[[], bool] | None = None
) -> None:
    """``rounds`` delivery rounds; with ``done``, rounds until it is true (30 s at most)."""
    loop = DeliveryLoop(
        db, outbound=LOOPBACK, policy=policy, local_secret=SECRET, poll_seconds=0.01
    )

    async def run() -> None:
        async with guarded_async_client(LOOPBACK, timeout=5) as client:
            if done is None:
                for _ in range(rounds):
                    await loop.run_once(client)
                return
            deadline = time.monotonic() + 30
            while not done() and time.monotonic() < deadline:
                await loop.run_once(client)
                await asyncio.sleep(0.02)  # a poll: the retry is due after its backoff

    asyncio.run(run())


def test_a_terminal_status_is_delivered_signed_retried_and_listed(any_database: Database) -> None:
    db = any_database
    with webhook_receiver() as receiver:
        receiver.statuses = [503]  # the first attempt fails: retried with the same webhook-id
        job_id = _job(db, {"url": receiver.url, "events": ["succeeded", "failed"]})
        _finish(db, job_id, JobStatus.succeeded)
        fast = DeliveryPolicy(backoff_seconds=0.05, max_backoff_seconds=0.1)
        _deliver(db, fast, rounds=0, done=lambda: len(receiver.received) >= 2)
        got = receiver.wait(2)
    assert len(got) == 2
    assert [r.status for r in got] == [503, 204]
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    for r in got:
        assert verify(SECRET, r.headers, r.body)
        assert not verify(new_secret(), r.headers, r.body)
        assert r.json == {"type": "job.succeeded", "data": {"id": job_id, "status": "succeeded"}}
    with db.transaction(write=False) as session:
        (delivery,) = deliveries_for_job(session, job_id)
    assert delivery["id"] == got[0].headers["webhook-id"]
    assert delivery["state"] == "delivered"
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, 503), (2, 204)]


def test_unsubscribed_statuses_send_nothing_and_old_messages_give_up(
    sqlite_database: Database,
) -> None:
    db = sqlite_database
    quiet = _job(db, {"url": "http://127.0.0.1:9/hook", "events": ["failed"]})
    _finish(db, quiet, JobStatus.succeeded)
    doomed = _job(db, {"url": "http://127.0.0.1:9/hook", "events": ["cancelled"]})
    _finish(db, doomed, JobStatus.cancelled)
    with db.transaction() as session:  # queued a day ago: the next failure is the last
        delivery_row = WebhookRepository(session).get(_outbox_id(db, doomed))
        assert delivery_row is not None
        delivery_row.created_at = utcnow() - timedelta(hours=24)
    _deliver(db, DeliveryPolicy(), rounds=1)
    with db.transaction(write=False) as session:
        assert deliveries_for_job(session, quiet) == []
        (delivery,) = deliveries_for_job(session, doomed)
    assert delivery["state"] == "failed"
    assert delivery["attempts"][0]["status_code"] is None
    assert "ConnectError" in delivery["attempts"][0]["error"]


def _outbox_id(db: Database, job_id: str) -> str:
    with db.transaction(write=False) as session:
        (delivery,) = deliveries_for_job(session, job_id)
        return str(delivery["id"])


def test_each_owner_signs_with_their_own_secret(sqlite_database: Database) -> None:
    db = sqlite_database
    with db.transaction() as session:
        alice = rotate_secret(session, "alice")
    with webhook_receiver() as receiver:
        job_id = _job(db, {"url": receiver.url}, owner="alice")
        _finish(db, job_id, JobStatus.failed)
        _deliver(db, DeliveryPolicy(), rounds=1)
        (got,) = receiver.wait(1)
    assert verify(alice, got.headers, got.body)
    assert not verify(SECRET, got.headers, got.body)  # local's secret cannot forge alice's
    assert json.loads(got.body)["type"] == "job.failed"


def test_callbacks_are_checked_when_the_job_is_created(sqlite_database: Database) -> None:
    with sqlite_database.transaction() as session:
        with pytest.raises(OutboundRefusedError, match=r"'example\.com' is not in GRAFT_OUTBOUND"):
            check_callback(
                session, "https://example.com/h", "local", policy=LOOPBACK, local_secret=SECRET
            )
        with pytest.raises(OutboundRefusedError, match="no webhook signing secret"):
            check_callback(
                session, "http://127.0.0.1/h", "bob", policy=LOOPBACK, local_secret=SECRET
            )
        check_callback(session, "http://127.0.0.1/h", "local", policy=LOOPBACK, local_secret=SECRET)


def test_delivery_to_a_disallowed_address_never_connects(sqlite_database: Database) -> None:
    db = sqlite_database
    with webhook_receiver() as receiver:
        job_id = _job(db, {"url": receiver.url.replace("127.0.0.1", "localhost")})
        _finish(db, job_id, JobStatus.succeeded)
        _deliver(db, DeliveryPolicy(), rounds=1)
        assert receiver.received == []
    with db.transaction(write=False) as session:
        (delivery,) = deliveries_for_job(session, job_id)
    assert delivery["state"] == "pending"
    assert delivery["attempts"][0]["error"].startswith("outbound-refused:")
    assert OutboundRefusedError.type == "outbound-refused"


def test_a_jobs_callback_host_is_checked_before_the_write_transaction() -> None:
    # No session at all: the host is refused before the API opens its write transaction.
    from app.services.jobs.service import JobHooks, check_job_callback

    hooks = JobHooks(outbound=LOOPBACK, callback={"url": "https://example.com/h", "events": []})
    with pytest.raises(OutboundRefusedError, match=r"'example\.com' is not in GRAFT_OUTBOUND"):
        check_job_callback(hooks)
    allowed = check_job_callback(
        JobHooks(outbound=LOOPBACK, callback={"url": "http://127.0.0.1/h", "events": []})
    )
    assert allowed.host_checked
    assert check_job_callback(JobHooks(outbound=LOOPBACK)).callback is None
