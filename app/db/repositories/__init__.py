"""Every query the service makes, one module per aggregate. Repositories flush; the caller's
unit of work commits.

``owner=None`` in a query means every owner: workers and admins; API callers pass theirs.
"""

from app.db.repositories.api_keys import ApiKeyRepository
from app.db.repositories.artifacts import ArtifactRepository
from app.db.repositories.checkpoints import CheckpointRepository, TensorRow
from app.db.repositories.events import JobEventRepository
from app.db.repositories.idempotency import IdempotencyRepository
from app.db.repositories.jobs import JobClaim, JobEnd, JobRepository, Lease
from app.db.repositories.pipelines import DeliveryRepository, PipelineRepository
from app.db.repositories.registrations import RegistrationRepository
from app.db.repositories.webhooks import WebhookRepository
from app.db.repositories.workers import WorkerRepository

__all__ = [
    "ApiKeyRepository",
    "ArtifactRepository",
    "CheckpointRepository",
    "DeliveryRepository",
    "IdempotencyRepository",
    "JobClaim",
    "JobEnd",
    "JobEventRepository",
    "JobRepository",
    "Lease",
    "PipelineRepository",
    "RegistrationRepository",
    "TensorRow",
    "WebhookRepository",
    "WorkerRepository",
]
