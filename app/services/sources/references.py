"""Sources by reference and results registered back: the request models and their checks.

A job's source is an uploaded checkpoint's id, or a reference the worker fetches
(``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH``, ``https://…``).
Its output may be registered back into MLflow. Everything here runs when a job is created,
so a reference that can never work (a reserved alias, a host not allowed, no registry
configured) is refused with a 422 before anything is queued, and before any connection is
made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from app.config import Settings
from app.net.outbound import OutboundPolicy, OutboundRefusedError
from app.registry.errors import InvalidReferenceError
from app.registry.mlflow import parse_model_uri, parse_run_uri, validate_alias
from app.services.errors import InvalidJobError
from app.services.sources.s3 import S3SourceConfig, parse_s3_uri

__all__ = [
    "RegisterSpec",
    "RegistryConfig",
    "SourceRef",
    "check_register",
    "check_source_ref",
]


class SourceRef(BaseModel):
    """``"source": {"uri": …, "path": …}``: a checkpoint the worker fetches."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH, an https:// "
        "URL or s3://BUCKET/KEY",
    )
    path: str | None = Field(
        default=None,
        max_length=1024,
        description="the checkpoint among a model version's (or run path's) artifacts, when "
        "they hold several",
    )


class RegisterSpec(BaseModel):
    """``"output": {"register": …}``: log the result as a new MLflow model version."""

    model_config = ConfigDict(extra="forbid")

    registry: Literal["mlflow"] = "mlflow"
    name: str = Field(min_length=1, max_length=255, description="the registered model")
    alias: str | None = Field(default=None, description="moved to the new version")
    tags: dict[str, str] = Field(default_factory=dict, description="more version tags")


@dataclass(frozen=True)
class RegistryConfig:
    """Where sources by reference come from and results go (the service's settings).

    Attributes:
        tracking_uri: the MLflow server; empty when none is configured.
        token: its bearer token.
        experiment: the experiment results are logged to.
        outbound_allow: ``GRAFT_OUTBOUND_ALLOW``.
        max_bytes: the size cap of a fetched source (the upload cap).
        s3: how ``s3://`` sources are read (the blob store's S3 settings).
    """

    tracking_uri: str = ""
    token: str | None = None
    experiment: str = "graft"
    outbound_allow: str = ""
    max_bytes: int = 8 * 1024**3
    s3: S3SourceConfig = field(default_factory=S3SourceConfig)

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryConfig:
        store = urlsplit(settings.storage_url)
        secret = settings.aws_secret_access_key
        s3 = S3SourceConfig(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            store_bucket=store.netloc if store.scheme == "s3" else None,
            store_prefix=unquote(store.path).strip("/"),
            allowed_buckets=frozenset(
                b.strip() for b in settings.s3_source_allow.split(",") if b.strip()
            ),
        )
        return cls(
            tracking_uri=settings.mlflow_tracking_uri,
            token=settings.mlflow_token.get_secret_value() if settings.mlflow_token else None,
            experiment=settings.mlflow_experiment,
            outbound_allow=settings.outbound_allow,
            max_bytes=settings.max_upload_bytes,
            s3=s3,
        )

    def policy(self) -> OutboundPolicy:
        """The outbound allow list (``mlflow`` standing for the tracking server's host)."""
        return OutboundPolicy.from_setting(
            self.outbound_allow, mlflow_tracking_uri=self.tracking_uri or None
        )

    def require_mlflow(self, what: str) -> None:
        """Refuse a job that needs MLflow when none is configured, or not allowed."""
        if not self.tracking_uri:
            raise InvalidJobError(
                f"{what} needs an MLflow registry: set GRAFT_MLFLOW_TRACKING_URI on the server"
            )
        try:
            self.policy().check_url(self.tracking_uri)
        except OutboundRefusedError as exc:
            raise exc.prefixed(
                "the MLflow tracking server is not allowed",
                suffix=" (add 'mlflow' to GRAFT_OUTBOUND_ALLOW)",
            ) from exc


def check_source_ref(ref: SourceRef, config: RegistryConfig) -> None:
    """Refuse, before anything is queued or connected, a reference that cannot work.

    Raises:
        InvalidJobError: a malformed ``models:/`` or ``runs:/`` URI, an unsupported scheme, no
            registry.
        OutboundRefusedError: a host the allow list does not admit.
    """
    uri = ref.uri
    if uri.startswith(("models:", "runs:")):
        scheme = uri.partition(":")[0]
        try:
            parse_model_uri(uri) if scheme == "models" else parse_run_uri(uri)
        except InvalidReferenceError as exc:
            raise exc.prefixed("source.uri") from exc
        config.require_mlflow(f"a {scheme}:/ source")
        return
    if ref.path is not None:
        raise InvalidJobError("source.path applies to models:/ and runs:/ sources only")
    if uri.startswith("s3://"):
        try:
            parse_s3_uri(uri, config.s3)
        except InvalidReferenceError as exc:
            raise exc.prefixed("source.uri") from exc
        except PermissionError as exc:
            raise OutboundRefusedError(f"source.uri: {exc}", url=uri) from exc
        return
    if not uri.startswith(("https://", "http://")):
        raise InvalidJobError(
            f"source.uri {uri[:100]!r}: use models:/NAME/VERSION, models:/NAME@ALIAS, "
            "runs:/RUN_ID/PATH, https:// or s3://"
        )
    try:
        config.policy().check_url(uri)
    except OutboundRefusedError as exc:
        raise exc.prefixed("source.uri") from exc


def check_register(spec: RegisterSpec, config: RegistryConfig, *, dry_run: bool) -> None:
    """Refuse an ``output.register`` that cannot work.

    Raises:
        InvalidJobError: a reserved or unusable alias, a ``graft.*`` tag, a dry run, no registry.
        OutboundRefusedError: the tracking server is not allowed.
    """
    if dry_run:
        raise InvalidJobError("output.register: a dry run produces no weights to register")
    if "/" in spec.name or "@" in spec.name or spec.name != spec.name.strip():
        raise InvalidJobError(f"output.register.name {spec.name!r}: no '/', '@' or outer spaces")
    if spec.alias is not None:
        try:
            validate_alias(spec.alias)
        except InvalidReferenceError as exc:
            raise exc.prefixed("output.register.alias") from exc
    reserved = sorted(k for k in spec.tags if k.startswith("graft."))
    if reserved:
        raise InvalidJobError(f"output.register.tags: {reserved} — 'graft.*' tags are Graft's own")
    config.require_mlflow("output.register")
