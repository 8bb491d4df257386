"""Checks made when a job or pipeline is created, and the MLflow webhook signature."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.net.outbound import OutboundRefusedError
from app.services.auth import UnauthorizedError
from app.services.errors import InvalidJobError
from app.services.sources.references import (
    RegisterSpec,
    RegistryConfig,
    SourceRef,
    check_register,
    check_source_ref,
)
from app.services.sources.s3 import S3SourceConfig
from app.services.webhooks.incoming import verify_signature

CONFIG = RegistryConfig(
    tracking_uri="http://127.0.0.1:5000",
    outbound_allow="mlflow,weights.example.com",
    s3=S3SourceConfig(
        store_bucket="store", store_prefix="graft", allowed_buckets=frozenset({"store", "models"})
    ),
)


@pytest.mark.parametrize(
    "uri",
    ["models:/m/1", "models:/m@prod", "https://weights.example.com/a.pt", "s3://store/other/x.pt",
     "s3://models/graft/x.pt", "runs:/0a1b/model", "runs:/0a1b/model/w.safetensors"],
)  # fmt: skip
def test_usable_references_pass(uri: str) -> None:
    check_source_ref(SourceRef(uri=uri), CONFIG)


@pytest.mark.parametrize(
    ("uri", "error", "match"),
    [
        ("models:/m/Staging", InvalidJobError, "stages are not supported"),
        ("runs:/0a1b/../x", InvalidJobError, "must stay inside"),
        ("runs://host/0a1b/model", InvalidJobError, "not a runs:/ URI on this server"),
        ("file:///etc/passwd", InvalidJobError, "use models:/"),
        ("https://evil.example.net/a.pt", OutboundRefusedError, "evil.example.net"),
        ("http://169.254.169.254/latest", OutboundRefusedError, "169.254.169.254"),
        ("s3://store/graft/blobs/ab/cd", OutboundRefusedError, "own blob store"),
        # Issue 23 item 5: a bucket the operator did not list.
        (
            "s3://corp-private/secret/model.safetensors",
            OutboundRefusedError,
            "'corp-private' is not in GRAFT_S3_SOURCE_ALLOW",
        ),
        ("s3://bucket", InvalidJobError, "naming one object"),
    ],
)
def test_unusable_references_are_refused(uri: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        check_source_ref(SourceRef(uri=uri), CONFIG)


def test_models_uri_needs_a_configured_registry() -> None:
    with pytest.raises(InvalidJobError, match="GRAFT_MLFLOW_TRACKING_URI"):
        check_source_ref(SourceRef(uri="models:/m/1"), RegistryConfig())
    with pytest.raises(InvalidJobError, match="a runs:/ source needs an MLflow registry"):
        check_source_ref(SourceRef(uri="runs:/0a1b/model"), RegistryConfig())
    with pytest.raises(OutboundRefusedError, match="add 'mlflow' to GRAFT_OUTBOUND_ALLOW"):
        check_source_ref(
            SourceRef(uri="models:/m/1"), RegistryConfig(tracking_uri="http://127.0.0.1:5000")
        )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "m", "alias": "latest"}, "reserved"),
        ({"name": "m", "alias": "v7"}, "reserved"),
        ({"name": "a/b"}, "no '/'"),
        ({"name": "m", "tags": {"graft.job_id": "x"}}, "Graft's own"),
    ],
)
def test_register_requests_that_cannot_work(spec: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidJobError, match=match):
        check_register(RegisterSpec.model_validate(spec), CONFIG, dry_run=False)
    with pytest.raises(InvalidJobError, match="dry run"):
        check_register(RegisterSpec(name="m"), CONFIG, dry_run=True)


def test_a_bad_allow_list_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="no MLflow tracking URI is set"):
        Settings(outbound_allow="mlflow")
    with pytest.raises(ValidationError, match="is not a host"):
        Settings(outbound_allow="https://x.example.com/")


def _sign(secret: str, delivery: str, stamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_signature_and_timestamp_window() -> None:
    body, now = b'{"entity": "model_version"}', 1_800_000_000.0
    ok = {"secret": "s", "delivery_id": "d", "timestamp": str(int(now)), "body": body}
    verify_signature(**ok, signature=_sign("s", "d", str(int(now)), body), now=now)
    verify_signature(**ok, signature=_sign("s", "d", str(int(now)), body), now=now + 299)
    verify_signature(**ok, signature="v1,AAAA " + _sign("s", "d", str(int(now)), body), now=now)
    bad = [
        ({**ok}, "v1,AAAA", now, "does not match"),
        ({**ok, "body": body + b" "}, _sign("s", "d", str(int(now)), body), now, "does not match"),
        ({**ok}, _sign("s", "d", str(int(now)), body), now + 301, "within 5 minutes"),
        ({**ok}, _sign("s", "d", str(int(now)), body), now - 301, "within 5 minutes"),
        ({**ok, "secret": None}, "v1,AAAA", now, "GRAFT_MLFLOW_WEBHOOK_SECRET"),
        ({**ok, "delivery_id": None}, "v1,AAAA", now, "are required"),
    ]
    for kwargs, signature, at, match in bad:
        with pytest.raises(UnauthorizedError, match=match):
            verify_signature(**kwargs, signature=signature, now=at)  # type: ignore[arg-type]
