"""A succeeded job's result, registered back into MLflow as a new model version.

The job's published artifacts (weights, report, manifest) are linked from the blob store
into a work folder under the names MLflow will show (``model.safetensors`` or ``model.pt``,
``report.json``, ``manifest.json``) and handed to
:func:`app.registry.mlflow_publish.register_version`, which is idempotent on the job's id: a
job retried after a crash finds the version its earlier attempt registered.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from app.errors import InternalError
from app.net.outbound import OutboundRefusedError
from app.registry.errors import RegistryError
from app.registry.mlflow import MlflowClient
from app.registry.mlflow_publish import VersionRequest, register_version
from app.services.errors import InvalidJobError, ServiceError
from app.services.mlflow_model import ModelCard, write_mlflow_model
from app.services.sources.fetch import registry_failure
from app.services.sources.references import RegisterSpec, RegistryConfig
from app.storage import BlobStore

__all__ = ["register_result"]

logger = logging.getLogger(__name__)


def register_result(
    spec: RegisterSpec,
    *,
    job_id: str,
    artifacts: list[dict[str, Any]],
    source_sha256: str,
    store: BlobStore,
    work: Path,
    config: RegistryConfig,
) -> dict[str, str]:
    """Register a job's result in MLflow (once per job).

    Args:
        spec: the job's ``output.register``.
        job_id: the job; the version's ``graft.job_id`` tag.
        artifacts: the job's published artifact rows (``name``, ``filename``, ``sha256``…).
        source_sha256: the source's identity, tagged ``graft.source_sha256``.
        store: where the artifacts' blobs are.
        work: the job's work folder.
        config: the registry.

    Returns:
        ``{"uri": "models:/NAME/V", "version": "V"}``.

    Raises:
        GraftError: ``registry-unavailable`` (safe to retry), ``outbound-refused``,
            ``registry-error`` or ``invalid-job``.
    """
    by_name = {a["name"]: a for a in artifacts}
    if "weights" not in by_name:
        raise InternalError("the job produced no weights to register")
    folder = work / "register"
    folder.mkdir()
    suffix = Path(by_name["weights"]["filename"]).suffix or ".safetensors"
    paths = {"weights": f"model{suffix}", "report": "report.json", "manifest": "manifest.json"}
    if "attestation" in by_name:  # SPEC §3.3: logged next to the weights
        paths["attestation"] = f"model{suffix}.intoto.json"
    for name, filename in paths.items():
        store.link_into(by_name[name]["sha256"], folder / filename)
    # The MLmodel (and pyfunc loader) that make the version loadable by MLflow's clients.
    card = ModelCard(job_id, source_sha256, attestation=paths.get("attestation"))
    model_files = write_mlflow_model(work / "mlmodel", folder / paths["weights"], card)
    try:
        config.require_mlflow("output.register")
        with MlflowClient(
            config.tracking_uri, policy=config.policy(), token=config.token
        ) as client:
            done = register_version(
                client,
                VersionRequest(
                    name=spec.name,
                    job_id=job_id,
                    weights=[folder / paths["weights"]],
                    report=folder / paths["report"],
                    manifest=folder / paths["manifest"],
                    attestation=folder / paths["attestation"] if "attestation" in paths else None,
                    source_sha256=source_sha256,
                    alias=spec.alias,
                    tags=spec.tags,
                    experiment=config.experiment,
                    model_files=model_files,
                ),
            )
    except (OutboundRefusedError, RegistryError, ServiceError, InvalidJobError) as exc:
        raise registry_failure(exc, f"registering the result as {spec.name}") from exc
    logger.info("job %s: result is %s (new: %s)", job_id, done.uri, done.created)
    return {"uri": done.uri, "version": done.version}
