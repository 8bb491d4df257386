"""A job's parity (SPEC §3.2) and attestation (§3.3), through the local runner: a real
sandboxed conversion child, a migrated SQLite database and a blob store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.db.models import Job
from app.db.repositories import JobRepository
from app.db.session import Database
from app.engine.attest import PREDICATE_TYPE, STATEMENT_TYPE, key_id, open_attestation
from app.executors.local import JobRunner
from app.executors.runtime import JobRuntime
from app.sandbox.runner import Limits
from app.services.jobs.execution import JobSettings
from app.storage import FileBlobStore
from tests.executors.parity_models import tiny_mlp
from tests.executors.test_local import _register

TINY = ("tiny_mlp", "tests.executors.parity_models", "tiny_mlp")
TARGET = {"architecture": "tiny_mlp", "kwargs": {}}
REFERENCE = {"architecture": "tiny_mlp", "kwargs": {}}


@pytest.fixture
def setup(sqlite_database: Database, tmp_path: Path) -> tuple[Database, FileBlobStore, str]:
    store = FileBlobStore(tmp_path / "blobs")
    store.ensure()
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(tiny_mlp().state_dict(), path)
    return sqlite_database, store, _register(sqlite_database, store, path)


def _run(
    db: Database, store: FileBlobStore, signing_key: bytes | None = None, **fields: Any
) -> Job:
    with db.transaction() as session:
        job = Job(source_id=fields.pop("source"), target=TARGET, **fields)
        job_id = JobRepository(session).add(job).id
    settings = JobSettings(limits=Limits(), device="cpu", architectures=(TINY,),
                           signing_key=signing_key)  # fmt: skip
    runtime = JobRuntime(db, store, settings, lease_seconds=5.0, heartbeat_seconds=0.1,
                         poll_seconds=0.05)  # fmt: skip
    assert JobRunner(runtime).run_once()
    with db.transaction(write=False) as session:
        done = JobRepository(session).get(job_id)
        assert done is not None
        _ = done.artifacts
        return done


def _artifact(store: FileBlobStore, job: Job, name: str) -> Any:
    (artifact,) = [a for a in job.artifacts if a.name == name]
    return artifact, store.path(artifact.sha256).read_bytes()


def test_a_job_with_a_reference_passes_parity_and_is_attested(
    setup: tuple[Database, FileBlobStore, str],
) -> None:
    db, store, source = setup
    job = _run(db, store, source=source, reference=REFERENCE)
    assert (job.status, job.ok, job.error_type) == ("succeeded", True, None)
    assert {a.name for a in job.artifacts} == {
        "attestation", "manifest", "report", "report-text", "weights"
    }  # fmt: skip
    _, report_bytes = _artifact(store, job, "report")
    parity = json.loads(report_bytes)["verification"]["parity"]
    assert (parity["equal"], parity["first_divergence"], parity["reference"]) == (
        True, None, "arch:tiny_mlp"
    )  # fmt: skip
    weights, _ = _artifact(store, job, "weights")
    attestation, statement_bytes = _artifact(store, job, "attestation")
    assert (attestation.filename, attestation.media_type) == (
        f"{job.id}.safetensors.intoto.json", "application/vnd.in-toto+json"
    )  # fmt: skip
    statement = json.loads(statement_bytes)
    assert (statement["_type"], statement["predicateType"]) == (STATEMENT_TYPE, PREDICATE_TYPE)
    assert statement["subject"] == [
        {"name": f"{job.id}.safetensors", "digest": {"sha256": weights.sha256}}
    ]
    assert statement["predicate"]["verification"]["parity"]["equal"] is True
    assert statement["predicate"]["target"] == {
        "kind": "architecture", "architecture": "tiny_mlp", "kwargs": {}
    }  # fmt: skip


def test_a_signing_key_makes_the_attestation_a_dsse_envelope(
    setup: tuple[Database, FileBlobStore, str],
) -> None:
    db, store, source = setup
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    job = _run(db, store, signing_key=pem, source=source)
    assert job.status == "succeeded"
    weights, _ = _artifact(store, job, "weights")
    attestation, envelope_bytes = _artifact(store, job, "attestation")
    assert attestation.media_type == "application/vnd.dsse.envelope.v1+json"
    statement, signed_by = open_attestation(json.loads(envelope_bytes), public)
    assert signed_by == key_id(key.public_key())
    assert statement["subject"][0]["digest"]["sha256"] == weights.sha256


def test_a_parity_divergence_fails_the_job_as_parity_failed(
    setup: tuple[Database, FileBlobStore, str],
) -> None:
    db, store, source = setup
    # A square weight transposed: it loads, and computes something else.
    recipe = {"version": 1, "transform": [{"match": "0.weight", "op": "transpose"}]}
    job = _run(db, store, source=source, reference=REFERENCE, recipe=recipe)
    assert (job.status, job.ok, job.error_type) == ("failed", False, "parity-failed")
    assert job.error_message is not None
    assert job.error_message.startswith("parity refused the conversion: parity: 0 diverges ")
    assert "attestation" not in {a.name for a in job.artifacts}
    _, report_bytes = _artifact(store, job, "report")
    parity = json.loads(report_bytes)["verification"]["parity"]
    assert parity["equal"] is False
    assert (
        parity["first_divergence"]["target_module"],
        parity["first_divergence"]["source_module"],
    ) == ("0", "0")


def test_parity_warn_converts_and_says_so(setup: tuple[Database, FileBlobStore, str]) -> None:
    db, store, source = setup
    recipe = {"version": 1, "parity": "warn",
              "transform": [{"match": "0.weight", "op": "transpose"}]}  # fmt: skip
    job = _run(db, store, source=source, reference=REFERENCE, recipe=recipe)
    assert (job.status, job.ok) == ("succeeded", True)
    assert job.warnings is not None
    assert [w for w in job.warnings if w.startswith("parity: 0 diverges")] != []
