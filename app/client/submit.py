"""``graft submit``: a conversion on a Graft server, from local files or a registry URI.

Uploads only what the server lacks, queues the job with an idempotency key, follows its
events, then downloads the weights, the report and the manifest. The exit code is
``graft convert``'s: 0 converted, 1 refused by the recipe's policy (the report is still
written), 2 bad input (or any other failure), with a one-line reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.client.errors import GraftAPIError, GraftClientError
from app.client.folders import named_sources, recipe_for_server, unpack_folder
from app.client.http import GraftClient
from app.engine.options import format_for_path

__all__ = ["SubmitOutput", "SubmitResult", "parse_register", "submit"]

_URI = re.compile(r"^(models:/|runs:/|https?://|s3://)")
_REGISTER = re.compile(r"^mlflow:([^@\s]+)(?:@([^@\s]+))?$")


@dataclass
class SubmitResult:
    """How a submission ended.

    Attributes:
        exit_code: 0, 1 or 2 (as ``graft convert``).
        job: the finished job, when one was created.
        files: what was written locally.
        message: a one-line reason when the exit code is not 0.
    """

    exit_code: int
    job: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)
    message: str | None = None


@dataclass(frozen=True)
class SubmitOutput:
    """Where and how the weights come back.

    Attributes:
        path: the file, or the folder a folder output is unpacked into (None: named after
            the job, here).
        format: ``safetensors``, ``torch`` or ``dcp`` (a folder); None: from ``path``'s name.
        folder: a model folder (``config.json`` beside the weights where the target
            declares one), published zipped and unpacked into ``path``.
    """

    path: Path | None = None
    format: str | None = None
    folder: bool = False


def parse_register(value: str) -> dict[str, Any]:
    """``mlflow:NAME[@ALIAS]`` as the job's ``output.register``.

    Raises:
        ValueError: another form.
    """
    match = _REGISTER.match(value)
    if match is None:
        raise ValueError(f"--register takes mlflow:NAME or mlflow:NAME@ALIAS, not {value!r}")
    register: dict[str, Any] = {"registry": "mlflow", "name": match.group(1)}
    if match.group(2):
        register["alias"] = match.group(2)
    return register


def _read_recipe(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    recipe = yaml.safe_load(path.read_text())
    if not isinstance(recipe, dict):
        raise GraftClientError(f"{path}: a recipe is a mapping (JSON or YAML)")
    return recipe


def _target(client: GraftClient, target: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    if target.startswith("arch:"):
        return {"architecture": target.removeprefix("arch:"), "kwargs": kwargs or {}}
    if kwargs is not None:
        raise GraftClientError("--target-kwargs applies only to arch: targets")
    path = Path(target)
    if path.suffix == ".json" and not path.name.endswith(".index.json"):
        return {"skeleton": json.loads(path.read_text())}
    return {"checkpoint": client.upload(path)["id"]}


def _source(client: GraftClient, source: str) -> str | dict[str, Any]:
    if _URI.match(source):
        return {"uri": source}
    return str(client.upload(Path(source))["id"])


def submit(
    client: GraftClient,
    source: str | list[str],
    target: str,
    *,
    recipe: Path | None = None,
    target_kwargs: dict[str, Any] | None = None,
    output: Path | SubmitOutput | None = None,
    register: str | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> SubmitResult:
    """Run one conversion on the server and fetch its results.

    Args:
        client: the server.
        source: a file, a sharded set's folder, or a ``models:/``, ``runs:/``, ``https://``
            or ``s3://`` URI; or a list: one such, or several sources as ``NAME=PATH`` (none:
            the recipe's ``sources``, relative to the recipe file).
        target: a checkpoint file, a ``.json`` skeleton, or ``arch:NAME``.
        recipe: a recipe file (JSON or YAML).
        target_kwargs: an ``arch:`` target's kwargs.
        output: where the weights go (``.pt``/``.pth``/``.bin``: torch format); the report and
            manifest go beside it as ``<stem>.report.json`` and ``<stem>.manifest.json``.
            Default: ``<job id>.safetensors`` here. A :class:`SubmitOutput` also says the
            format (``dcp``: a folder) or asks for a model folder.
        register: ``mlflow:NAME[@ALIAS]``: register the result as a new model version.
        progress: called with (stage, fraction) as the job's progress events arrive.

    Returns:
        The exit code, the job, the files written.
    """
    try:
        client.check_server()  # before hashing a file that may take a while
        # The name says the format, as for ``graft convert``.
        asked = output if isinstance(output, SubmitOutput) else SubmitOutput(output)
        output = asked.path
        out_format = asked.format or (format_for_path(output) if output else None)
        options: dict[str, Any] = {"format": out_format or "safetensors"}
        if asked.folder:
            options["folder"] = True
        if register is not None:
            options["register"] = parse_register(register)
        body_recipe = _read_recipe(recipe)
        args = [source] if isinstance(source, str) else list(source)
        named = named_sources(args, body_recipe, recipe)
        spec = _target(client, target, target_kwargs)
        sources = {n: str(client.upload(Path(p))["id"]) for n, p in (named or {}).items()}
        created = client.create_job(
            None if named else _source(client, args[0]),
            spec,
            recipe=recipe_for_server(body_recipe, named),
            output=options,
            sources=sources or None,
        )
        job = created
        for event in client.events(created["id"]):
            if event.event == "progress" and progress is not None:
                progress(str(event.data.get("stage")), float(event.data.get("progress") or 0.0))
            elif event.event == "status":
                job = event.data
        return _fetch(client, job, output)
    except (GraftClientError, ValueError, OSError, yaml.YAMLError) as exc:
        return SubmitResult(2, message=_one_line(exc))


def _fetch(client: GraftClient, job: dict[str, Any], output: Path | None) -> SubmitResult:
    zipped = job["output"].get("folder") or job["output"]["format"] == "dcp"
    suffix = "safetensors" if job["output"]["format"] == "safetensors" else "pt"
    weights = output or Path(job["id"] if zipped else f"{job['id']}.{suffix}")
    report = weights.with_name(weights.stem + ".report.json")
    manifest = weights.with_name(weights.stem + ".manifest.json")
    error = job.get("error") or {}
    if job["status"] == "succeeded":
        if zipped:  # a folder: published as one zip, unpacked into -o
            archive = client.download(
                job["id"], "weights", weights.with_name(weights.name + ".zip")
            )
            unpack_folder(archive, weights)
        else:
            client.download(job["id"], "weights", weights)
        files = [
            weights,
            client.download(job["id"], "report", report),
            client.download(job["id"], "manifest", manifest),
        ]
        return SubmitResult(0, job, files)
    if job["status"] == "failed" and error.get("type") == "conversion-refused":
        files = [
            client.download(job["id"], "report", report),
            client.download(job["id"], "manifest", manifest),
        ]
        return SubmitResult(1, job, files, f"refused by the recipe's policy; see {report}")
    if job["status"] == "cancelled":
        return SubmitResult(2, job, message=f"job {job['id']} was cancelled")
    return SubmitResult(
        2, job, message=f"job {job['id']} failed: {error.get('type')}: {error.get('message')}"
    )


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, GraftAPIError):
        text = f"{exc.type}: {exc.detail}"
    elif isinstance(exc, OSError) and exc.filename:
        text = f"{exc.strerror or exc}: {exc.filename}"
    else:
        text = str(exc)
    return " ".join(text.split())
