"""Service configuration: one ``Settings`` read from ``GRAFT_*`` environment variables.

Only the service layers (api, services, worker, cli) read settings; the engine takes every
option as a parameter.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine.architectures import ArchitectureRef, parse_architectures
from app.engine.errors import InvalidTargetError

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Everything the HTTP service and its workers can be told from the environment."""

    model_config = SettingsConfigDict(env_prefix="GRAFT_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///data/graft.db",
        description="SQLAlchemy URL; a relative SQLite path is relative to the working directory.",
    )
    storage_dir: Path = Field(
        default=Path("data/blobs"),
        description="Content-addressed blobs; with S3 storage, only its tmp/ is used (local "
        "temp space for uploads and work folders).",
    )
    scratch_dir: Path | None = Field(
        default=None,
        description="With S3 storage, the one local folder for uploads in flight and job work "
        "folders (default storage_dir/tmp); every worker sweeps it of dead processes' entries "
        "when it starts (and each Celery pool process when it starts). The file store keeps "
        "its scratch in storage_dir/tmp: publishing a blob is a rename on that file system.",
    )
    storage_url: str = Field(
        default="",
        pattern=r"^((file|s3)://.*)?$",
        description="file:///path or s3://bucket/prefix; empty means the file store at "
        "storage_dir.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible server (MinIO, rclone serve s3); unset: AWS."
    )
    s3_region: str = Field(default="us-east-1", description="The SigV4 signing region.")
    s3_part_size: int = Field(
        default=16 * 1024**2, ge=5 * 1024**2, description="Multipart upload part size."
    )
    s3_parts_in_order: bool = Field(
        default=True,
        description="The S3 server takes multipart parts in order only (rclone serve s3); "
        "false (AWS, MinIO): a streamed job sends its header's part last, in one pass.",
    )
    s3_stream: bool = Field(
        default=False,
        description="Jobs on S3 storage that convert one safetensors file into one stream "
        "it: ranged GETs of the source to a multipart upload, no local copy larger than a "
        "part (for workers with little disk). Off (the default, faster today: see "
        "bench/s3_stream.py): every job downloads its inputs and uploads its output file.",
    )
    # The standard AWS names, unprefixed, so the credentials boto3 users already set apply.
    # Unset, boto3 looks further (shared profile, instance role).
    aws_access_key_id: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "aws_access_key_id")
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    )
    presigned_downloads: bool = Field(
        default=False,
        description="Weights downloads redirect (307) to a presigned URL when the store can "
        "make one (S3), so the bytes bypass the API.",
    )
    workers: int = Field(default=1, ge=0, description="Worker processes `graft serve` starts.")
    executor: Literal["local", "celery"] = Field(
        default="local",
        description="local: workers claim jobs from the database; celery: jobs are sent to "
        "Celery workers through broker_url (needs PostgreSQL, and S3 storage across hosts).",
    )
    broker_url: str = Field(
        default="",
        description="The Celery broker, e.g. amqp://guest:guest@127.0.0.1:5672// (RabbitMQ).",
    )
    queue_prefix: str = Field(
        default="graft",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Queues are <prefix>.gpu and <prefix>.cpu, the exchange <prefix>.jobs.",
    )
    task_time_limit_seconds: int = Field(
        default=6 * 3600,
        gt=0,
        description="Celery's hard task_time_limit: a job still running then is killed (and "
        "retried while attempts remain). Keep it under RabbitMQ's consumer_timeout.",
    )
    dispatch_sweep_seconds: float = Field(
        default=15.0,
        gt=0,
        description="With Celery, how often the API re-sends queued jobs whose send failed "
        "(broker down when they were created).",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto | cpu | cuda[:N]; auto means cuda when torch sees one.",
    )
    architectures: Annotated[tuple[ArchitectureRef, ...], NoDecode] = Field(
        default=(),
        description="More architecture targets, name=module:factory,... (the module must be "
        "importable by workers); entry points in the graft.architectures group register too. "
        "Parsed once, here, into (name, module, factory) triples.",
    )
    max_upload_bytes: int = Field(default=8 * 1024**3, gt=0, description="Upload size cap.")
    lease_seconds: float = Field(default=30.0, gt=0, description="How long a claim lasts.")
    heartbeat_seconds: float = Field(default=5.0, gt=0, description="Lease renewal period.")
    poll_seconds: float = Field(default=0.5, gt=0, description="Idle worker poll period.")
    max_attempts: int = Field(default=3, ge=1, description="Claims before a job is failed.")
    max_active_jobs_per_owner: int = Field(
        default=32,
        ge=1,
        description="Queued + running jobs one owner may have; beyond it POST /v1/jobs is 429.",
    )
    device_wait_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a job with device cuda waits for a GPU worker before it fails "
        "device-unavailable (it never runs elsewhere).",
    )
    inspect_timeout_seconds: float = Field(default=120.0, gt=0)
    inspectors: int = Field(default=2, ge=1, description="Pre-started inspection processes.")
    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness of the sandbox children that do the heavy work (conversions, "
        "inspections): the API and the workers' own processes, which hold the database's "
        "write lock, come first.",
    )
    busy_timeout_ms: int = Field(default=30_000, ge=0, description="SQLite busy timeout.")

    # The sandbox: resource limits of every process that reads an uploaded file's tensors
    # (inspection and conversion children). 0 means no limit. torch alone maps ~0.8 GiB of
    # address space on import, plus 64 MiB of malloc arena per thread; the default leaves room
    # for the largest tensor of a 70B model a few times over. A CUDA device needs unlimited
    # address space, so the conversion child drops that limit when it uses one.
    sandbox_address_space_bytes: int = Field(
        default=16 * 1024**3, ge=0, description="RLIMIT_AS of sandbox children."
    )
    sandbox_inspect_memory_bytes: int = Field(
        default=1024**3,
        ge=0,
        description="Address space one inspection may add (it reads headers, never data).",
    )
    sandbox_cpu_seconds: int = Field(
        default=3600, ge=0, description="RLIMIT_CPU of one conversion (inspection: its timeout)."
    )
    sandbox_file_bytes: int = Field(
        default=256 * 1024**3, ge=0, description="RLIMIT_FSIZE: largest file a conversion writes."
    )
    sandbox_open_files: int = Field(default=256, ge=0, description="RLIMIT_NOFILE of children.")

    # The model registry and other outgoing requests (SPEC §5.1, §6).
    mlflow_tracking_uri: str = Field(
        default="",
        description="The MLflow server for models:/ sources and output.register; empty: none.",
    )
    mlflow_token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the MLflow tracking server only."
    )
    mlflow_experiment: str = Field(
        default="graft", description="The MLflow experiment registered results are logged to."
    )
    outbound_allow: str = Field(
        default="",
        description="Hosts Graft may connect to (comma-separated; 'mlflow' is the tracking "
        "server, '*.example.com' a domain, '*' any public host), each with an optional ':port' "
        "or ':*'; a bare host admits ports 80 and 443 only.",
    )
    s3_source_allow: str = Field(
        default="",
        description="Comma-separated buckets s3:// sources may be read from (default: none).",
    )
    mlflow_webhook_secret: SecretStr | None = Field(
        default=None, description="The secret incoming MLflow webhooks are signed with."
    )
    auth: Literal["auto", "keys", "local"] = Field(
        default="auto",
        description="auto: keys required once any key was ever created; keys: always; local: "
        "never (loopback only). A server bound beyond loopback always requires keys.",
    )

    # Hostile requests.
    max_json_bytes: int = Field(
        default=4 * 1024**2,
        gt=0,
        description="Largest request body that is not an upload (JSON: jobs with skeletons).",
    )
    max_json_depth: int = Field(default=32, ge=4, description="Deepest nesting of a JSON body.")
    max_skeleton_tensors: int = Field(
        default=100_000, gt=0, description="Entries one skeleton target may hold."
    )
    max_uploads: int = Field(default=64, ge=1, description="Uploads received at once, in all.")
    max_uploads_per_owner: int = Field(
        default=16, ge=1, description="Uploads one owner may send at once."
    )
    upload_min_bytes_per_second: int = Field(
        default=16 * 1024,
        ge=0,
        description="Average upload rate required once the grace period is over (0: none).",
    )
    upload_rate_grace_seconds: float = Field(
        default=10.0, gt=0, description="How long an upload may run before its rate counts."
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time a client has to send a request's headers."
    )
    blob_claim_seconds: float = Field(
        default=120.0,
        ge=0,
        description="A blob published or re-claimed this recently is never collected: an "
        "upload or job may be about to commit a record for it.",
    )
    maintenance_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Period of `graft serve`'s reaper (lapsed leases, unreferenced blobs); 0: off.",
    )
    # The largest public checkpoints hold about 10^5 tensors; twice that leaves room and
    # keeps one upload's index (and its inspection) bounded.
    max_tensors: int = Field(default=200_000, gt=0, description="Tensors one upload may hold.")
    upload_idle_timeout_seconds: float = Field(
        default=60.0, gt=0, description="An upload that sends nothing for this long gets 408."
    )
    # Resumable uploads (tus 1.0, SPEC §5.3).
    max_resumable_uploads_per_owner: int = Field(
        default=32, ge=1, description="Unfinished resumable (tus) uploads one owner may hold."
    )
    resumable_upload_expiry_seconds: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="A resumable upload untouched this long is removed, with its bytes.",
    )
    max_ranges: int = Field(
        default=16, ge=1, description="More ranges than this in one Range header: 416."
    )
    link_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of signed download links (POST /v1/links); unset, a random one "
        "per API process, so links stop working when the service restarts.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="The port `graft serve` uses.")
    # Outgoing requests, webhooks, idempotency, live progress (SPEC §5.1, §6).
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Owner local's webhook signing secret (whsec_<base64>); POST "
        "/v1/webhooks/secret sets one per owner.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="The Fernet key stored secrets (webhook secrets) are encrypted with; unset, "
        "one is generated once as secret.key in the storage folder (mode 0600).",
    )
    webhook_max_age_seconds: float = Field(
        default=24 * 3600.0, gt=0, description="How long a webhook is retried before it fails."
    )
    webhook_backoff_seconds: float = Field(
        default=5.0, gt=0, description="First retry delay; doubled each attempt, with jitter."
    )
    webhook_max_backoff_seconds: float = Field(
        default=3600.0, gt=0, description="The longest delay between two attempts."
    )
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, description="One attempt's limit.")
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the delivery loop looks for due webhooks."
    )
    idempotency_ttl_seconds: float = Field(
        default=24 * 3600.0, gt=0, description="How long an Idempotency-Key is remembered."
    )
    progress_event_seconds: float = Field(
        default=0.5, gt=0, description="Least time between two stored progress events of a job."
    )
    events_poll_seconds: float = Field(
        default=0.25, gt=0, description="How often an SSE stream looks for new events."
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="A PEM private key (ECDSA P-256 or Ed25519), inline or its file's path: "
        "every job's attestation is signed (a DSSE envelope, SPEC §3.3).",
    )
    orphan_grace_seconds: float = Field(
        default=900.0,
        ge=0,
        description="Blobs no record references are collected at start once this old.",
    )

    @field_validator("architectures", mode="before")
    @classmethod
    def _parse_architectures(cls, value: object) -> object:
        # The one place the GRAFT_ARCHITECTURES string is parsed; a malformed one stops the start.
        if isinstance(value, str):
            try:
                return tuple(parse_architectures(value))
            except InvalidTargetError as exc:
                raise ValueError(str(exc)) from exc
        return value

    def signing_key_pem(self) -> bytes | None:
        """GRAFT_SIGNING_KEY as PEM bytes (read from its file when it is a path), or None.

        Raises:
            ValueError: a path that is no file.
        """
        if self.signing_key is None:
            return None
        value = self.signing_key.get_secret_value()
        if value.lstrip().startswith("-----BEGIN"):
            return value.encode()
        path = Path(value)
        if not path.is_file():
            raise ValueError("GRAFT_SIGNING_KEY is neither a PEM key nor a PEM file's path")
        return path.read_bytes()

    @model_validator(mode="after")
    def _signing_key_reads(self) -> Settings:
        # Refused at start: a key that cannot be read would fail every job's attestation.
        self.signing_key_pem()
        return self

    @model_validator(mode="after")
    def _outbound_allow_parses(self) -> Settings:
        # Refused at start, not at the first job: a typo in the allow list is a 500 otherwise.
        from app.net.outbound import OutboundPolicy

        OutboundPolicy.from_setting(
            self.outbound_allow, mlflow_tracking_uri=self.mlflow_tracking_uri or None
        )
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
