"""Registering a conversion's result as an MLflow model version, at most once per job.

The steps, each safe to repeat:

1. a version of ``name`` tagged ``graft.job_id = JOB`` already exists: it is the answer (the
   alias is set again, which is idempotent). A retried job never registers twice;
2. experiment ``graft`` is fetched or created; the job's run (tagged ``graft.job_id``) is found
   or created, so a retry reuses it rather than leaving an orphan run;
3. the weights (``model.safetensors``, or the shards and their index), ``report.json``,
   ``manifest.json``, the attestation (``model.safetensors.intoto.json``) and the files that
   make the folder an MLflow model (``MLmodel``, its loader under ``code/``, its requirements)
   are PUT under the run's ``graft/`` folder (a PUT overwrites: repeatable);
4. the registered model is created unless it exists, the version created from that folder with
   tags ``graft.job_id``, ``graft.source_sha256``, ``graft.report_sha256`` and the caller's
   tags, and the alias moved to it.

A crash between 4's version and its alias is repaired by the retry through step 1.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.registry.errors import InvalidReferenceError, RegistryError, RegistryNotFoundError
from app.registry.mlflow import MlflowClient, ModelVersion, validate_alias

__all__ = [
    "ARTIFACT_FOLDER",
    "RegisteredVersion",
    "VersionRequest",
    "find_job_version",
    "register_version",
]

logger = logging.getLogger(__name__)

ARTIFACT_FOLDER = "graft"
JOB_TAG = "graft.job_id"


@dataclass(frozen=True)
class RegisteredVersion:
    """The outcome of :func:`register_version`.

    Attributes:
        name: the registered model.
        version: the version number, as MLflow spells it (a string).
        run_id: the run holding the artifacts.
        created: False when a previous attempt of the same job had registered it.
    """

    name: str
    version: str
    run_id: str
    created: bool

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _quoted(value: str) -> str:
    # MLflow's filter grammar takes single-quoted strings; a quote inside is escaped by doubling
    # nothing reliably, so refuse it instead of building a filter that means something else.
    if "'" in value or "\\" in value:
        raise InvalidReferenceError(f"{value!r} cannot be used in a registry search")
    return f"'{value}'"


def find_job_version(client: MlflowClient, *, name: str, job_id: str) -> ModelVersion | None:
    """The version of ``name`` a previous attempt of ``job_id`` registered, if any."""
    search = f"name={_quoted(name)} and tags.`{JOB_TAG}` = {_quoted(job_id)}"
    body = client.call("GET", "model-versions/search", params={"filter": search, "max_results": 10})
    found = [ModelVersion.from_json(v) for v in body.get("model_versions", [])]
    found = [v for v in found if v.tags.get(JOB_TAG) == job_id]  # trust, but check
    return min(found, key=lambda v: int(v.version)) if found else None


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    try:
        body = client.call("GET", "experiments/get-by-name", params={"experiment_name": experiment})
        return str(body["experiment"]["experiment_id"])
    except RegistryNotFoundError:
        pass
    try:
        return str(
            client.call("POST", "experiments/create", json={"name": experiment})["experiment_id"]
        )
    except RegistryError as exc:
        # Another worker created it between the two calls.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    body = client.call("GET", "experiments/get-by-name", params={"experiment_name": experiment})
    return str(body["experiment"]["experiment_id"])


def _job_run(client: MlflowClient, experiment_id: str, job_id: str) -> tuple[str, str]:
    """``(run_id, artifact_uri)`` of the job's run, found by tag or created."""
    body = client.call(
        "POST",
        "runs/search",
        json={
            "experiment_ids": [experiment_id],
            "filter": f"tags.`{JOB_TAG}` = {_quoted(job_id)}",
            "max_results": 1,
        },
    )
    runs = body.get("runs", [])
    if runs:
        info = runs[0]["info"]
    else:
        info = client.call(
            "POST",
            "runs/create",
            json={
                "experiment_id": experiment_id,
                "run_name": f"graft-{job_id}",
                "start_time": int(time.time() * 1000),
                "tags": [{"key": JOB_TAG, "value": job_id}],
            },
        )["run"]["info"]
    return str(info["run_id"]), str(info["artifact_uri"])


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.call("POST", "registered-models/create", json={"name": name})
    except RegistryError as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


@dataclass(frozen=True)
class VersionRequest:
    """One job's result to register as a version of a registered model.

    Attributes:
        name: the registered model.
        job_id: the job; the idempotency key (tag ``graft.job_id``).
        weights: ``model.safetensors``, or the shards and their ``*.index.json``; uploaded
            under their own names.
        report: the report JSON; uploaded as ``report.json``.
        manifest: the manifest JSON; uploaded as ``manifest.json``.
        attestation: the in-toto statement or DSSE envelope (SPEC §3.3), uploaded under
            its own name next to the weights; None when there is none.
        source_sha256: the source checkpoint's digest (tag ``graft.source_sha256``).
        alias: moved to the version; ``latest`` and ``v<N>`` are refused.
        tags: more version tags; ``graft.*`` keys are Graft's and are refused here.
        experiment: where the run is logged (``GRAFT_MLFLOW_EXPERIMENT``).
        model_files: ``(artifact path, local file)`` pairs logged beside the weights
            (``MLmodel``, ``code/graft_pyfunc.py``…), see :mod:`app.services.mlflow_model`.
    """

    name: str
    job_id: str
    weights: Sequence[Path]
    report: Path
    manifest: Path
    source_sha256: str
    attestation: Path | None = None
    alias: str | None = None
    tags: Mapping[str, str] | None = None
    experiment: str = "graft"
    model_files: Sequence[tuple[str, Path]] = ()


def register_version(client: MlflowClient, request: VersionRequest) -> RegisteredVersion:
    """Log a job's result to MLflow and register it as a version of ``name``, once.

    Args:
        client: the registry.
        request: what to register, under which name, alias and tags.

    Returns:
        The version, with ``created`` False when a previous attempt had registered it.

    Raises:
        InvalidReferenceError: a reserved alias, a ``graft.*`` tag, no weights, names that
            collide with the report or manifest.
        RegistryUnavailableError: MLflow failed; the whole call is safe to repeat.
        RegistryError: MLflow refused a request.
    """
    name, job_id, alias = request.name, request.job_id, request.alias
    extra = _checked_inputs(alias, request.tags, request.weights)
    existing = find_job_version(client, name=name, job_id=job_id)
    if existing is not None:
        logger.info("job %s already registered %s; not registering again", job_id, existing.uri)
        if alias is not None:
            _set_alias(client, name, alias, existing.version)
        return RegisteredVersion(name, existing.version, existing.run_id, created=False)

    uploads = [(p.name, p) for p in request.weights] + [
        ("report.json", request.report),
        ("manifest.json", request.manifest),
    ]
    if request.attestation is not None:
        uploads.append((request.attestation.name, request.attestation))
    uploads += list(request.model_files)
    taken = [target for target, _ in uploads]
    if len(set(taken)) != len(taken):
        raise InvalidReferenceError(f"two artifacts would share a name: {sorted(taken)}")
    run_id, folder = _log_finished_run(client, request.experiment, job_id, uploads)
    _ensure_registered_model(client, name)
    version_tags = {
        **extra,
        JOB_TAG: job_id,
        "graft.source_sha256": request.source_sha256,
        "graft.report_sha256": _sha256(request.report),
    }
    version = _create_version(client, name, job_id, run_id, folder, version_tags)
    if alias is not None:
        _set_alias(client, name, alias, version.version)
    logger.info("job %s registered %s", job_id, version.uri)
    return RegisteredVersion(name, version.version, run_id, created=True)


def _checked_inputs(
    alias: str | None, tags: Mapping[str, str] | None, weights: Sequence[Path]
) -> dict[str, str]:
    """Refuse a reserved alias, ``graft.*`` tags and clashing file names; the extra tags."""
    if alias is not None:
        validate_alias(alias)
    extra = dict(tags or {})
    if any(key.startswith("graft.") for key in extra):
        raise InvalidReferenceError("tags starting with 'graft.' are set by Graft itself")
    names = [p.name for p in weights]
    if not names or len(set(names)) != len(names) or {"report.json", "manifest.json"} & set(names):
        raise InvalidReferenceError(f"weights must be distinct files besides the report: {names}")
    return extra


def _log_finished_run(
    client: MlflowClient, experiment: str, job_id: str, uploads: Sequence[tuple[str, Path]]
) -> tuple[str, str]:
    """Upload the files to the job's run and finish it; its id and the artifact folder."""
    experiment_id = _experiment_id(client, experiment)
    run_id, artifact_uri = _job_run(client, experiment_id, job_id)
    folder = f"{artifact_uri.rstrip('/')}/{ARTIFACT_FOLDER}"
    for target, path in uploads:
        client.upload_artifact(folder, target, path)
    client.call(
        "POST",
        "runs/update",
        json={"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)},
    )
    return run_id, folder


def _create_version(
    client: MlflowClient,
    name: str,
    job_id: str,
    run_id: str,
    folder: str,
    tags: Mapping[str, str],
) -> ModelVersion:
    body = client.call(
        "POST",
        "model-versions/create",
        json={
            "name": name,
            "source": folder,
            "run_id": run_id,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
            "description": f"Converted by Graft, job {job_id}",
        },
    )
    return ModelVersion.from_json(body.get("model_version", {}))


def _set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    client.call(
        "POST", "registered-models/alias", json={"name": name, "alias": alias, "version": version}
    )
