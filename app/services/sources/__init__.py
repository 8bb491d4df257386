"""Sources: what a job converts, named by reference and fetched to local disk.

- :mod:`.references`: the ``source``/``register`` references a job names, checked up front.
- :mod:`.http`, :mod:`.s3`: fetching by URL and from S3-compatible object stores (MLflow
  versions go through the registry client, :mod:`app.registry.mlflow`).
- :mod:`.fetch`: :func:`fetch_source`, which fetches any reference and records the checkpoint.
"""

from app.services.sources.fetch import FetchedSource, fetch_source, registry_failure
from app.services.sources.http import fetch_url
from app.services.sources.references import (
    RegisterSpec,
    RegistryConfig,
    SourceRef,
    check_register,
    check_source_ref,
)
from app.services.sources.s3 import S3SourceConfig, fetch_s3, parse_s3_uri

__all__ = [
    "FetchedSource",
    "RegisterSpec",
    "RegistryConfig",
    "S3SourceConfig",
    "SourceRef",
    "check_register",
    "check_source_ref",
    "fetch_s3",
    "fetch_source",
    "fetch_url",
    "parse_s3_uri",
    "registry_failure",
]
