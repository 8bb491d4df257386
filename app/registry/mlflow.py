"""An MLflow registry client over its REST API, with httpx only (no ``mlflow`` dependency).

Reading: ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` are resolved with
``model-versions/get`` or ``registered-models/alias``, the artifacts located with
``model-versions/get-download-uri`` and listed and downloaded through the tracking server's
artifact proxy (``mlflow-artifacts:``) or an http(s) artifact URI. ``runs:/RUN_ID/PATH`` (a
source of its own, or the location of a version registered from a run) is resolved with
``runs/get`` to the run's ``artifact_uri`` joined with ``PATH``. Any other artifact URI
(``file:``, ``s3:``, ``dbfs:``…) is refused: Graft reads nothing the server merely points at.

Writing (:mod:`app.registry.mlflow_publish`) uses the same client.

Every request goes through the outbound guard; the bearer token is sent to the tracking
server's own origin only, never to an artifact host elsewhere.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from app.net.outbound import OutboundPolicy, OutboundRefusedError, Resolver, guarded_client
from app.registry.artifacts import ArtifactFile, pick_checkpoint
from app.registry.download import MAX_REDIRECTS, DownloadedFile, stream_to_file
from app.registry.errors import (
    InvalidReferenceError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
    SourceTooLargeError,
)

__all__ = [
    "FetchedModel",
    "MlflowClient",
    "ModelRef",
    "ModelVersion",
    "RunRef",
    "parse_model_uri",
    "parse_run_uri",
    "validate_alias",
]

logger = logging.getLogger(__name__)

_API = "api/2.0/mlflow"
_ARTIFACTS_API = "api/2.0/mlflow-artifacts/artifacts"
_ARTIFACTS_MARK = "/mlflow-artifacts/artifacts"
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
_MAX_LISTED = 10_000  # files in one version's listing: more is a hostile or broken registry
_MAX_DEPTH = 16


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: exactly one of ``version`` and ``alias`` is set."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return (
            f"models:/{self.name}/{self.version}"
            if self.version
            else f"models:/{self.name}@{self.alias}"
        )


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version, as the registry describes it."""

    name: str
    version: str
    source: str
    run_id: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(
            name=str(data.get("name", "")),
            version=str(data.get("version", "")),
            source=str(data.get("source", "")),
            run_id=str(data.get("run_id", "")),
            status=str(data.get("status", "")),
            tags={str(t["key"]): str(t.get("value", "")) for t in data.get("tags", [])},
            aliases=tuple(str(a) for a in data.get("aliases", [])),
        )


@dataclass(frozen=True)
class FetchedModel:
    """A model version's checkpoint on local disk.

    Attributes:
        version: the version that was resolved (aliases move: this is the one fetched).
        files: the checkpoint's files (one, or a sharded set's index then shards), each under
            ``dest_dir`` by its artifact name.
    """

    version: ModelVersion
    files: list[DownloadedFile]


@dataclass(frozen=True)
class RunRef:
    """A parsed ``runs:/RUN_ID[/PATH]`` URI (``path`` empty: the run's artifact root)."""

    run_id: str
    path: str = ""

    @property
    def uri(self) -> str:
        return f"runs:/{self.run_id}/{self.path}" if self.path else f"runs:/{self.run_id}"


def parse_run_uri(uri: str) -> RunRef:
    """Parse ``runs:/RUN_ID/PATH`` (as ``mlflow.register_model`` and ``log_artifact`` name
    a run's artifacts).

    Raises:
        InvalidReferenceError: another form: a host (``runs://profile@databricks/…``), no run
            id, a ``..`` or ``.`` component.
    """
    usage = "use runs:/RUN_ID/PATH"
    if not uri.startswith("runs:/") or uri.startswith("runs://"):
        raise InvalidReferenceError(f"{uri!r} is not a runs:/ URI on this server; {usage}")
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    parts = [p for p in path.split("/") if p]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
        raise InvalidReferenceError(f"{uri!r} names no run id; {usage}")
    if any(p in (".", "..") for p in parts) or any(c in path for c in "?#\\"):
        raise InvalidReferenceError(f"{uri!r}: the path must stay inside the run's artifacts")
    return RunRef(run_id=run_id, path="/".join(parts))


def validate_alias(alias: str) -> str:
    """Refuse aliases MLflow reserves or that cannot appear in ``models:/NAME@ALIAS``.

    Args:
        alias: the alias a job wants to set.

    Returns:
        The alias, unchanged.

    Raises:
        InvalidReferenceError: ``latest`` or ``v<N>`` (any case), empty, too long, or holding
            ``/`` or ``@``.
    """
    if _RESERVED_ALIAS.match(alias):
        raise InvalidReferenceError(
            f"alias {alias!r} is reserved by MLflow ('latest' and 'v<N>' always mean the newest "
            "and the N-th version); choose another alias"
        )
    if not alias or len(alias) > 255 or any(c in alias for c in "/@") or alias != alias.strip():
        raise InvalidReferenceError(
            f"alias {alias!r} is not usable: 1 to 255 characters, no '/', '@' or outer spaces"
        )
    return alias


def parse_model_uri(uri: str) -> ModelRef:
    """Parse ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.

    Raises:
        InvalidReferenceError: another form (stages, logged-model ids, paths), with the forms
            that work.
    """
    usage = "use models:/NAME/VERSION or models:/NAME@ALIAS"
    if not uri.startswith("models:/"):
        raise InvalidReferenceError(f"{uri!r} is not a models:/ URI; {usage}")
    rest = uri.removeprefix("models:/").removeprefix("/")
    if "@" in rest and "/" not in rest.rsplit("@", 1)[1]:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in name:
            return ModelRef(name=name, alias=alias)
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return ModelRef(name=name, version=str(int(version)))
        if name and version:
            raise InvalidReferenceError(
                f"{uri!r}: {version!r} is not a version number (stages are not supported); {usage}"
            )
    raise InvalidReferenceError(f"{uri!r} is not a model version reference; {usage}")


def _error_from(response: httpx.Response, what: str) -> RegistryError:
    try:
        body = response.json()
        message = str(body.get("message", "")) or response.text[:200]
        code = str(body.get("error_code", ""))
    except ValueError:
        message, code = response.text[:200], ""
    status = response.status_code
    if status >= 500 or status == 429:
        return RegistryUnavailableError(f"{what}: MLflow answered {status}: {message}")
    if status == 404 or code == "RESOURCE_DOES_NOT_EXIST":
        return RegistryNotFoundError(f"{what}: {message or 'not found'}")
    if status in (401, 403):
        return RegistryError(f"{what}: MLflow refused the credentials ({status}): {message}")
    return RegistryError(f"{what}: MLflow answered {status}: {message}", error_code=code)


class MlflowClient:
    """A client for one MLflow tracking server.

    Args:
        tracking_uri: ``https://host[:port][/prefix]`` (``http`` only to a host listed exactly).
        policy: the outbound allow list; the tracking server's host must be on it.
        token: bearer token (``GRAFT_MLFLOW_TOKEN``), sent to the tracking server only.
        timeout: connect and read timeout, seconds.
        resolver: DNS override, for tests.

    Raises:
        OutboundRefusedError: the tracking server is not allowed, before any connection.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        policy: OutboundPolicy,
        token: str | None = None,
        timeout: float = 30.0,
        resolver: Resolver | None = None,
    ) -> None:
        policy.check_url(tracking_uri)
        self.tracking_uri = tracking_uri.rstrip("/")
        self._origin = httpx.URL(self.tracking_uri)
        self._token = token
        self._http = guarded_client(
            policy, resolver=resolver, timeout=timeout, max_redirects=MAX_REDIRECTS
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MlflowClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- plumbing -------------------------------------------------------------------------

    def _headers_for(self, url: str) -> dict[str, str]:
        target = httpx.URL(url)
        same_origin = (target.scheme, target.host, target.port) == (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        )
        return {"Authorization": f"Bearer {self._token}"} if self._token and same_origin else {}

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, headers=self._headers_for(url), **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(f"{what}: cannot reach MLflow at {url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from(response, what)
        return response

    def call(
        self,
        method: str,
        endpoint: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One REST call, e.g. ``call("GET", "model-versions/get", params=...)``.

        Returns:
            The decoded JSON body.

        Raises:
            RegistryUnavailableError: connection failure, timeout, 5xx or 429 (retryable).
            RegistryNotFoundError: 404 or ``RESOURCE_DOES_NOT_EXIST``.
            RegistryError: other refusals, quoting MLflow's message (and ``error_code``).
        """
        url = f"{self.tracking_uri}/{_API}/{endpoint}"
        response = self._send(method, url, f"MLflow {endpoint}", params=params, json=json)
        try:
            body = response.json()
        except ValueError as exc:
            raise RegistryUnavailableError(f"MLflow {endpoint}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise RegistryUnavailableError(f"MLflow {endpoint}: the answer is not a JSON object")
        return body

    def artifact_url(self, artifact_uri: str) -> str:
        """The http(s) URL of an artifact URI (the artifact proxy's download/upload URL).

        Args:
            artifact_uri: ``mlflow-artifacts:/path``, ``mlflow-artifacts://host:port/path``,
                or an http(s) URL.

        Raises:
            OutboundRefusedError: any other scheme (``file:``, ``s3:``…).
        """
        url = httpx.URL(artifact_uri)
        if url.scheme == "mlflow-artifacts":
            path = url.path.lstrip("/")
            if url.host:
                # An artifact server elsewhere: reached with the tracking server's scheme.
                port = f":{url.port}" if url.port else ""
                return f"{self._origin.scheme}://{url.host}{port}/{_ARTIFACTS_API}/{path}"
            return f"{self.tracking_uri}/{_ARTIFACTS_API}/{path}"
        if url.scheme in ("http", "https"):
            return str(url)
        raise OutboundRefusedError(
            f"artifact URI {artifact_uri!r} is refused: only mlflow-artifacts: and http(s) "
            "artifact locations are followed",
            url=artifact_uri,
        )

    # ---- model versions --------------------------------------------------------------------

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        """``model-versions/get``."""
        body = self.call("GET", "model-versions/get", params={"name": name, "version": version})
        return ModelVersion.from_json(body.get("model_version", {}))

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        """``registered-models/alias``."""
        body = self.call("GET", "registered-models/alias", params={"name": name, "alias": alias})
        return ModelVersion.from_json(body.get("model_version", {}))

    def resolve(self, uri: str) -> ModelVersion:
        """The version a ``models:/`` URI names now (an alias may move between calls).

        Raises:
            InvalidReferenceError: a malformed URI.
            RegistryNotFoundError: no such model, version or alias.
        """
        ref = parse_model_uri(uri)
        if ref.version is not None:
            return self.get_model_version(ref.name, ref.version)
        return self.get_model_version_by_alias(ref.name, ref.alias or "")

    def get_download_uri(self, name: str, version: str) -> str:
        """``model-versions/get-download-uri``: where the version's artifacts are."""
        body = self.call(
            "GET", "model-versions/get-download-uri", params={"name": name, "version": version}
        )
        uri = body.get("artifact_uri")
        if not isinstance(uri, str) or not uri:
            raise RegistryError(f"MLflow gave no download URI for {name} version {version}")
        return uri

    # ---- artifacts -------------------------------------------------------------------------

    def _list_dir(self, base: str, root: str, sub: str) -> Iterator[tuple[str, bool, int | None]]:
        params = {"path": posixpath.join(root, sub) if sub else root}
        response = self._send("GET", base, "MLflow artifact listing", params=params)
        try:
            entries = response.json().get("files", [])
        except (ValueError, AttributeError) as exc:
            raise RegistryUnavailableError("MLflow artifact listing: not a JSON object") from exc
        for entry in entries:
            # The proxy answers names relative to the folder listed; some servers answer
            # paths from the root: keep the last component either way.
            name = posixpath.basename(str(entry.get("path", "")).rstrip("/"))
            if not name or name in (".", ".."):
                continue
            size = entry.get("file_size")
            yield name, bool(entry.get("is_dir")), int(size) if size is not None else None

    def list_artifacts(self, artifact_uri: str) -> list[ArtifactFile]:
        """Every file under an artifact URI, recursively, paths relative to it.

        An http(s) URI outside the artifact proxy API is taken as a single file.

        Raises:
            OutboundRefusedError: an artifact URI scheme that is not followed.
            RegistryError: the listing is too large or deep, or MLflow failed.
        """
        url = self.artifact_url(artifact_uri)
        if _ARTIFACTS_MARK not in url:
            return [ArtifactFile(path=posixpath.basename(httpx.URL(url).path) or "artifact")]
        head, root = url.split(_ARTIFACTS_MARK, 1)
        base = head + _ARTIFACTS_MARK
        root = root.strip("/")
        files: list[ArtifactFile] = []
        pending = [("", 0)]
        while pending:
            sub, depth = pending.pop()
            for name, is_dir, size in self._list_dir(base, root, sub):
                path = posixpath.join(sub, name) if sub else name
                if is_dir:
                    if depth + 1 > _MAX_DEPTH:
                        raise RegistryError(f"artifact folders nest deeper than {_MAX_DEPTH}")
                    pending.append((path, depth + 1))
                else:
                    files.append(ArtifactFile(path=path, size=size))
                if len(files) > _MAX_LISTED:
                    raise RegistryError(f"the version lists more than {_MAX_LISTED} artifacts")
        return sorted(files, key=lambda f: f.path)

    def download_artifact(
        self, artifact_uri: str, relpath: str, dest: Path, *, max_bytes: int
    ) -> DownloadedFile:
        """Download one file under an artifact URI (``relpath`` empty: the URI is the file)."""
        url = self.artifact_url(artifact_uri)
        if relpath:
            url = f"{url.rstrip('/')}/{quote(relpath)}"
        return stream_to_file(
            self._http,
            url,
            dest,
            max_bytes=max_bytes,
            unavailable=RegistryUnavailableError,
            headers=self._headers_for(url),
        )

    def upload_artifact(self, artifact_uri: str, relpath: str, source: Path) -> None:
        """PUT a local file under an artifact URI, streamed.

        Raises:
            OutboundRefusedError: the artifact URI is not the artifact proxy.
            RegistryUnavailableError, RegistryError: as for :meth:`call`.
        """
        url = self.artifact_url(artifact_uri)
        if _ARTIFACTS_MARK not in url:
            raise OutboundRefusedError(
                f"cannot upload to {artifact_uri!r}: uploads go through the artifact proxy "
                "(mlflow server --artifacts-destination)",
                url=artifact_uri,
            )
        url = f"{url.rstrip('/')}/{quote(relpath)}"
        with source.open("rb") as body:
            self._send("PUT", url, f"MLflow artifact upload {relpath}", content=_chunks(body))

    def run_artifact_uri(self, ref: RunRef) -> str:
        """``runs/get``: where a run's artifacts (under ``ref.path``) are.

        Raises:
            RegistryNotFoundError: no such run.
            InvalidReferenceError: the run's own artifact location is a ``runs:/`` URI.
        """
        body = self.call("GET", "runs/get", params={"run_id": ref.run_id})
        root = body.get("run", {}).get("info", {}).get("artifact_uri")
        if not isinstance(root, str) or not root:
            raise RegistryError(f"MLflow gave no artifact location for run {ref.run_id}")
        if root.startswith("runs:"):
            raise InvalidReferenceError(f"run {ref.run_id}'s artifact location is {root!r}")
        return f"{root.rstrip('/')}/{ref.path}" if ref.path else root

    def artifact_location(self, uri: str) -> str:
        """An artifact URI with a ``runs:/`` URI (a version registered from a run with
        ``source="runs:/…"``) resolved to the run's artifact location; others unchanged."""
        return self.run_artifact_uri(parse_run_uri(uri)) if uri.startswith("runs:") else uri

    def fetch_model(
        self, uri: str, dest_dir: Path, *, max_bytes: int, path: str | None = None
    ) -> FetchedModel:
        """Resolve a ``models:/`` URI and download its one checkpoint into ``dest_dir``.

        Args:
            uri: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.
            dest_dir: an existing, empty folder; files land there by their artifact names.
            max_bytes: the cap on the checkpoint's total size.
            path: names the checkpoint when the version holds several.

        Returns:
            The resolved version and the downloaded files (index first for a sharded set).

        Raises:
            InvalidReferenceError: a malformed URI, no checkpoint or several.
            RegistryNotFoundError: no such model, version, alias or path.
            OutboundRefusedError: a ``file:`` (or other) artifact location, a host not allowed.
            SourceTooLargeError: over ``max_bytes``.
            RegistryUnavailableError: MLflow failed; retryable.
        """
        version = self.resolve(uri)
        location = self.artifact_location(self.get_download_uri(version.name, version.version))
        files = self._fetch_checkpoint(uri, location, dest_dir, max_bytes=max_bytes, path=path)
        logger.info("fetched %s (version %s): %s", uri, version.version, [f.name for f in files])
        return FetchedModel(version=version, files=files)

    def fetch_run(
        self, uri: str, dest_dir: Path, *, max_bytes: int, path: str | None = None
    ) -> list[DownloadedFile]:
        """Resolve a ``runs:/RUN_ID/PATH`` URI and download its one checkpoint.

        ``PATH`` may name a folder (the checkpoint among its files, ``path`` choosing when
        there are several) or the weights file itself. Arguments and errors are
        :meth:`fetch_model`'s.
        """
        ref = parse_run_uri(uri)
        location = self.run_artifact_uri(ref)
        if ref.path and not self._listable(location):
            # The URI names a file: list its folder and take that file.
            parent = posixpath.dirname(ref.path)
            location = self.run_artifact_uri(RunRef(ref.run_id, parent))
            path = posixpath.basename(ref.path)
        files = self._fetch_checkpoint(uri, location, dest_dir, max_bytes=max_bytes, path=path)
        logger.info("fetched %s: %s", uri, [f.name for f in files])
        return files

    def _listable(self, artifact_uri: str) -> bool:
        """Whether an artifact URI is a folder holding something (a file lists as nothing)."""
        url = self.artifact_url(artifact_uri)
        return _ARTIFACTS_MARK not in url or bool(self.list_artifacts(artifact_uri))

    def _fetch_checkpoint(
        self, uri: str, location: str, dest_dir: Path, *, max_bytes: int, path: str | None
    ) -> list[DownloadedFile]:
        """Download the one checkpoint under an artifact location (see :meth:`fetch_model`)."""
        chosen = pick_checkpoint(self.list_artifacts(location), path=path)
        names = [f.name for f in chosen]
        if len(set(names)) != len(names):
            raise InvalidReferenceError(f"the checkpoint's files share names: {names}")
        listed = sum(f.size or 0 for f in chosen)
        if listed > max_bytes:
            raise SourceTooLargeError(
                f"{uri} holds {listed} bytes of weights, over the {max_bytes}-byte cap"
            )
        single = _ARTIFACTS_MARK not in self.artifact_url(location)
        files: list[DownloadedFile] = []
        for f in chosen:
            budget = max_bytes - sum(d.size for d in files)
            relpath = "" if single else f.path
            files.append(
                self.download_artifact(location, relpath, dest_dir / f.name, max_bytes=budget)
            )
        return files


def _chunks(body: Any, size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := body.read(size):
        yield chunk
