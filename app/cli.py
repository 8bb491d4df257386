"""The ``graft`` command. The only place that prints: the engine returns data, this renders it.

Heavy imports (torch, the engine) happen inside commands so ``graft --help`` stays fast.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli_parity import parity_spec
from app.cli_recipe import recipe_cli
from app.cli_verify import SignKeyOpt, attest, register
from app.engine.options import WriteOptions

__all__ = ["cli", "main"]

cli = typer.Typer(
    name="graft",
    help="Transplant pretrained PyTorch weights into a different architecture.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from app import __version__

        typer.echo(f"graft {__version__}")
        raise typer.Exit()


def _hide_flag_types() -> None:
    """Show no ``<bool>`` label beside flags (``--json``, ``--verify/--no-verify``, ``--help``):
    a flag takes no value, so the label only misleads. Typer labels every option's type and
    offers no switch for flags, hence this one override of its help rendering."""
    from typer.core import TyperOption

    show = getattr(TyperOption, "display_type_rich", None)
    if show is None or getattr(show, "_graft", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else show(self, ctx)

    display_type_rich._graft = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()
register(cli)


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Transplant pretrained PyTorch weights into a different architecture."""


SourceArg = Annotated[
    list[Path],
    typer.Argument(help="Checkpoint file, sharded-set directory or index.json (or its files)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of the grouped view.")]
EntryOpt = Annotated[str, typer.Option("--entry", help="Weights entry: auto or a dotted path.")]


def _source_arg(paths: list[Path]) -> Path | list[Path]:
    return paths[0] if len(paths) == 1 else paths


_SIZE_UNITS = {
    "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


def parse_size(text: str) -> int:
    """``5GB`` (decimal, as Hugging Face writes it), ``500MiB`` (binary) or plain bytes."""
    number = text.strip()
    digits = len(number) - len(number.lstrip("0123456789."))
    value, unit = number[:digits], number[digits:].strip().upper()
    if not value or unit not in _SIZE_UNITS:
        raise typer.BadParameter(f"{text!r} is not a size: write e.g. 5GB, 500MiB or 1000000")
    size = int(float(value) * _SIZE_UNITS[unit])
    if size <= 0:
        raise typer.BadParameter("a size must be positive")
    return size


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def render_inspect(summary: dict[str, Any]) -> str:
    """The grouped human view of ``graft inspect``."""
    from app.engine.keys import group_tensors

    totals = summary["totals"]
    lines = [
        f"source    {', '.join(Path(p).name for p in summary['paths'][:3])}"
        f"{' …' if len(summary['paths']) > 3 else ''}  ({summary['format']})",
        f"entry     {summary['entry'] or '(root: flat state dict)'}"
        + (f"   candidates: {', '.join(summary['candidates'])}" if summary["candidates"] else ""),
        f"prefix    stripped: {summary['stripped_prefix'] or '-'}"
        + (
            f"   shared by every key: {summary['common_prefix']}"
            + (" (Lightning)" if summary["lightning"] else "")
            if summary["common_prefix"]
            else ""
        ),
    ]
    if summary["ignored"]:
        ignored = ", ".join(f"{k} ({v})" for k, v in summary["ignored"].items())
        lines.append(f"ignored   {ignored}")
    params, buffers = totals["parameters"], totals["buffers"]
    lines.append(
        f"tensors   {totals['tensors']}  elements {_human_count(totals['elements'])}  "
        f"bytes {_human_bytes(totals['bytes'])}  "
        f"(parameters {params['tensors']} / {_human_count(params['elements'])}, "
        f"buffers {buffers['tensors']} / {_human_count(buffers['elements'])})"
    )
    dtypes = ", ".join(f"{d} {v['tensors']}" for d, v in totals["by_dtype"].items())
    lines += [f"dtypes    {dtypes}", ""]
    # Keys are grouped within each (shape, dtype, kind), so every line states one shape;
    # columns are as wide as their widest cell, so long grouped keys never push them out.
    rows = group_tensors(summary["tensors"])
    width = max((len(r["pattern"]) for r in rows), default=3)
    shape_width = max((len(str(r["shape"])) for r in rows), default=5)
    count_width = max((len(str(len(r["keys"]))) for r in rows), default=1)
    lines.append(
        f"{'key':<{width}}  {'n':>{count_width}}  {'shape':<{shape_width}}  {'dtype':<9}  kind"
    )
    for r in rows:
        lines.append(
            f"{r['pattern']:<{width}}  {len(r['keys']):>{count_width}}  "
            f"{r['shape']!s:<{shape_width}}  {r['dtype']:<9}  {r['kind']}"
        )
    return "\n".join(lines)


@cli.command()
def inspect(source: SourceArg, json_: JsonOpt = False, entry: EntryOpt = "auto") -> None:
    """Show formats, entry, keys, shapes, dtypes, parameters vs buffers and totals."""
    from app.engine.readers import inspect_source

    summary = inspect_source(_source_arg(source), entry=entry)
    typer.echo(json.dumps(summary, indent=2) if json_ else render_inspect(summary))


RecipeOpt = Annotated[
    Path | None, typer.Option("-r", "--recipe", help="Recipe file (YAML or JSON).")
]
TargetKwargsOpt = Annotated[
    str | None, typer.Option("--target-kwargs", help="JSON kwargs for an arch: target.")
]
TargetArg = Annotated[
    str, typer.Argument(help="Template checkpoint, .json skeleton, or arch:NAME.")
]


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    from app.engine.errors import InvalidTargetError

    try:
        parsed = json.loads(text) if text is not None else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidTargetError(f"{option} must be a JSON object")
    return parsed


def _target_spec(spec: str, kwargs: str | None) -> tuple[Any, list[Path]]:
    """The TARGET argument as a target spec, and a checkpoint target's files."""
    from app.engine.errors import InvalidTargetError
    from app.engine.target_spec import parse_target_spec, read_skeleton

    if spec.startswith("arch:"):
        parsed = _json_object(kwargs, f"--target-kwargs for {spec}")
        return parse_target_spec({"architecture": spec.removeprefix("arch:"), "kwargs": parsed}), []
    if kwargs is not None:
        raise InvalidTargetError("--target-kwargs applies only to arch: targets")
    if spec.endswith(".json") and not spec.endswith(".index.json"):
        return parse_target_spec({"skeleton": read_skeleton(spec)}), []
    return parse_target_spec({"checkpoint": spec}), [Path(spec)]


class _Progress:
    """A rich progress bar on a terminal; nothing when stderr is piped."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self._bar = Progress(transient=True)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task("plan", total=1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(self, stage: str, fraction: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=stage, completed=fraction)


def _run(
    source: list[Path],
    target: str,
    recipe: Path | None,
    *,
    output: Path | None,
    report_path: Path | None,
    json_: bool,
    target_kwargs: str | None,
    dry_run: bool,
    options: WriteOptions,
    source_architecture: Any = None,
) -> Any:
    from app.config import get_settings
    from app.engine.recipe import load_recipe
    from app.engine.report import render_text
    from app.services.conversion import ConversionRequest, PathSink, run_conversion

    parsed = load_recipe(recipe)
    spec, files = _target_spec(target, target_kwargs)
    request = ConversionRequest(
        source=source,
        target=spec,
        target_files=files,
        recipe=parsed,
        options=options,
        dry_run=dry_run,
        source_architecture=source_architecture,
        architectures=get_settings().architectures,
    )
    with _Progress() as progress:
        # In this process: the CLI reads the user's own files, with the restricted reader.
        result = run_conversion(
            request, PathSink(output, report_path), limits=None, progress=progress
        )
    text = json.dumps(result.report, indent=2) + "\n" if json_ else render_text(result.report)
    typer.echo(text, nl=False)
    for warning in result.report["warnings"]:
        if warning.startswith(("nothing_loaded", "low_coverage")):
            typer.echo(f"graft: WARNING: {warning}", err=True)
    for warning in result.report["warnings"]:
        if warning.startswith("unmatched"):
            typer.echo(f"graft: WARNING: {warning}", err=True)
    if not result.ok:
        for error in result.report.get("errors", []):
            typer.echo(f"graft: refused: {error}", err=True)
        typer.echo("graft: refused by the recipe's policy (see errors above)", err=True)
        raise typer.Exit(1)
    return result


@cli.command()
def plan(
    source: Annotated[Path, typer.Argument(help="Source checkpoint or sharded set.")],
    target: TargetArg,
    recipe: RecipeOpt = None,
    json_: JsonOpt = False,
    target_kwargs: TargetKwargsOpt = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report here.")
    ] = None,
) -> None:
    """Dry run: the report of what convert would do, from headers alone."""
    _run(
        [source],
        target,
        recipe,
        output=None,
        report_path=report,
        json_=json_,
        target_kwargs=target_kwargs,
        dry_run=True,
        options=WriteOptions(),
    )


@cli.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Source checkpoint or sharded set.")],
    target: TargetArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the weights.")],
    recipe: RecipeOpt = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the JSON report here.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="safetensors or torch.")] = "safetensors",
    json_: JsonOpt = False,
    target_kwargs: TargetKwargsOpt = None,
    max_shard_size: Annotated[
        str | None,
        typer.Option(
            "--max-shard-size",
            help="Write Hugging Face shards of at most this size (e.g. 5GB, 500MiB) into "
            "the folder -o.",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Digest every tensor and re-read the output to compare (default). "
            "--no-verify takes no digests and no source identity: the fastest copy.",
        ),
    ] = True,
    sha256: Annotated[
        bool,
        typer.Option(
            "--sha256",
            help="Identify the source by its sha256 (one more pass, on one core) instead of "
            "its BLAKE3 (b3sum), the default.",
        ),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option("--device", help="auto, cpu, cuda or cuda:N (default: GRAFT_DEVICE, auto)."),
    ] = None,
    source_arch: Annotated[
        str | None,
        typer.Option(
            "--source-arch",
            help="The architecture the source belongs to: with an arch: target and a "
            "rename-only recipe, both models run and must agree.",
        ),
    ] = None,
    source_kwargs: Annotated[
        str | None, typer.Option("--source-kwargs", help="JSON kwargs for --source-arch.")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Parity: the source's model, arch:NAME or MODULE:FACTORY; both models run "
            "and the first module that diverges is named.",
        ),
    ] = None,
    reference_kwargs: Annotated[
        str | None, typer.Option("--reference-kwargs", help="JSON kwargs for --reference.")
    ] = None,
    target_module: Annotated[
        str | None,
        typer.Option(
            "--target-module",
            help="Parity: the target's model for skeleton and template targets "
            "(arch:NAME or MODULE:FACTORY).",
        ),
    ] = None,
    target_module_kwargs: Annotated[
        str | None,
        typer.Option("--target-module-kwargs", help="JSON kwargs for --target-module."),
    ] = None,
    inputs: Annotated[
        str | None,
        typer.Option(
            "--inputs",
            help='Parity inputs, JSON or a JSON file: [{"shape": [2, 16], "dtype": "int64", '
            '"high": 30522}]; default: derived from the first layer.',
        ),
    ] = None,
    sign_key: SignKeyOpt = None,
) -> None:
    """Convert SOURCE into TARGET's layout, verify it, and report every tensor."""
    from app.config import get_settings
    from app.engine.target_spec import parse_target_spec

    if fmt not in ("safetensors", "torch"):
        raise typer.BadParameter("--format is safetensors or torch")
    settings = get_settings()
    from app.engine.devices import check_device

    # Before any work: a missing GPU (--device or GRAFT_DEVICE) is bad input, exit 2.
    check_device(device or settings.device)
    source_architecture = None
    if source_arch is not None:
        kwargs = _json_object(source_kwargs, "--source-kwargs")
        source_architecture = parse_target_spec({"architecture": source_arch, "kwargs": kwargs})
    elif source_kwargs is not None:
        raise typer.BadParameter("--source-kwargs needs --source-arch")
    options = WriteOptions(
        format=fmt,  # type: ignore[arg-type]
        device=device or settings.device,
        max_shard_size=parse_size(max_shard_size) if max_shard_size else None,
        verify=verify,
        # The cheapest honest identity: BLAKE3 runs on every core from the page cache the
        # copy just filled; --no-verify promises no pass over the data at all.
        source_digest="sha256" if sha256 else ("blake3" if verify else "none"),
        parity=parity_spec(
            reference, reference_kwargs, target_module, target_module_kwargs, inputs,
            architectures=settings.architectures,
        ),
    )  # fmt: skip
    result = _run(
        [source],
        target,
        recipe,
        output=output,
        report_path=report,
        json_=json_,
        target_kwargs=target_kwargs,
        dry_run=False,
        options=options,
        source_architecture=source_architecture,
    )
    if result.weights is not None:
        attest(result.weights, result.report, recipe, sign_key)


@cli.command()
def skeleton(
    factory: Annotated[
        str, typer.Argument(help="MODULE:FACTORY, an importable nn.Module factory.")
    ],
    kwargs: Annotated[str, typer.Option("--kwargs", help="JSON kwargs for the factory.")] = "{}",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here, not stdout.")
    ] = None,
) -> None:
    """Describe an importable nn.Module as a graft.skeleton/v1 (built on the meta device)."""
    import importlib

    import torch

    from app.engine.errors import InvalidTargetError
    from app.engine.target import skeleton_from_module

    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise InvalidTargetError(
            f"{factory!r}: write MODULE:FACTORY, e.g. torchvision.models:resnet18"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
        params = json.loads(kwargs)
    except (ImportError, AttributeError) as exc:
        raise InvalidTargetError(f"cannot import {factory}: {exc}") from None
    except ValueError:
        raise InvalidTargetError("--kwargs must be a JSON object") from None
    with torch.device("meta"):
        model = fn(**params)
    text = json.dumps(skeleton_from_module(model), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


@cli.command()
def architectures(json_: JsonOpt = False) -> None:
    """List the architectures arch:NAME targets can name, with their kwargs."""
    from app.config import get_settings
    from app.engine.architectures import describe_architectures

    listed = describe_architectures(get_settings().architectures)
    if json_:
        typer.echo(json.dumps(listed, indent=2))
        return
    for arch in listed:
        if not arch.get("available", True):
            typer.echo(f"{arch['name']}  ({arch['origin']}: {arch['ref']})  UNAVAILABLE")
            typer.echo(f"    {arch['error']}")
            continue
        kwargs = ", ".join(
            f"{name}={json.dumps(info['default'])}" if not info["required"] else name
            for name, info in arch["kwargs"].items()
        )
        typer.echo(f"{arch['name']}  ({arch['origin']}: {arch['ref']})")
        typer.echo(f"    kwargs: {kwargs or '-'}")
        if arch["description"]:
            typer.echo(f"    {arch['description']}")


def main() -> None:
    """Console-script entry point: known errors become one line on stderr and an exit code."""
    from app.engine.errors import GraftError

    try:
        cli()
    except GraftError as exc:
        typer.echo(f"graft: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        typer.echo(f"graft: error: {exc.strerror}: {exc.filename}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


@cli.command()
def submit(
    source: Annotated[
        str,
        typer.Argument(
            help="A checkpoint file, a sharded set's folder, or a models:/, "
            "https:// or s3:// URI the server fetches."
        ),
    ],
    target: TargetArg,
    recipe: RecipeOpt = None,
    server: Annotated[
        str, typer.Option("--server", envvar="GRAFT_SERVER", help="The Graft server's URL.")
    ] = "http://127.0.0.1:8000",
    key: Annotated[
        str | None, typer.Option("--key", envvar="GRAFT_API_KEY", help="An API key.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write the weights (.pt/.pth: torch)."),
    ] = None,
    register: Annotated[
        str | None,
        typer.Option("--register", help="mlflow:NAME[@ALIAS]: register the result in MLflow."),
    ] = None,
    target_kwargs: TargetKwargsOpt = None,
) -> None:
    """Run the conversion on a Graft server: uploads only what it lacks, shows live progress,
    downloads the weights plus OUT's stem + .report.json and .manifest.json."""
    from app.client import GraftClient
    from app.client.submit import submit as run_submit

    kwargs = _json_object(target_kwargs, f"--target-kwargs for {target}") if target_kwargs else None
    with GraftClient(server, api_key=key) as client, _Progress() as progress:
        result = run_submit(
            client, source, target, recipe=recipe, target_kwargs=kwargs, output=output,
            register=register, progress=progress,
        )  # fmt: skip
    job = result.job or {}
    if job:
        typer.echo(f"job {job['id']}: {job['status']}")
    for path in result.files:
        typer.echo(f"wrote {path}")
    if result.exit_code:
        typer.echo(f"graft: error: {result.message}", err=True)
        raise typer.Exit(result.exit_code)


# --- service commands (serve, worker) ---


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default: GRAFT_PORT, else 8000).")
    ] = None,
) -> None:
    """Run the HTTP API with GRAFT_WORKERS embedded worker processes (migrates on start)."""
    import logging
    import signal

    from app.api.main import create_app
    from app.api.server import run
    from app.config import get_settings
    from app.services.bootstrap import bind_host, prepare
    from app.services.warmth import clear_marks, markers_dir
    from app.worker.pool import WorkerPool

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    if settings.executor == "celery":
        _check_celery(settings)
    prepare(settings)
    clear_marks(markers_dir(settings.storage_dir))
    # local mode: loopback only, and it says so; beyond loopback: keys, always.
    host, auth = bind_host(settings, host)
    settings = settings.model_copy(update={"auth": auth})
    # With Celery the workers are `graft worker --executor celery` processes elsewhere.
    embedded = settings.workers if settings.executor == "local" else 0
    pool = WorkerPool(embedded)
    pool.start()
    # uvicorn re-raises the signal that stopped it once it has shut down; a handler of our
    # own makes that a no-op so the workers below are stopped (and release their jobs).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        run(
            create_app(settings, embedded_workers=embedded),
            host=host,
            port=port if port is not None else settings.port,
            header_timeout=settings.header_timeout_seconds,
        )
    finally:
        pool.stop()


@cli.command()
def worker(
    index: Annotated[
        int,
        typer.Option(
            "--index",
            min=0,
            help="This worker's number on the host: with several GPUs and GRAFT_DEVICE=auto "
            "or cuda, worker i uses GPU i % count.",
        ),
    ] = 0,
    executor: Annotated[
        str | None,
        typer.Option(
            help="local (claim jobs from the database) or celery; default GRAFT_EXECUTOR."
        ),
    ] = None,
    queues: Annotated[
        str, typer.Option(help="celery: the queues to consume, gpu and/or cpu.")
    ] = "gpu,cpu",
    device: Annotated[
        str | None,
        typer.Option(help="celery: cpu, cuda or cuda:N (pins one GPU); default GRAFT_DEVICE."),
    ] = None,
) -> None:
    """Run one more worker process against the configured database and storage."""
    import logging

    from app.config import get_settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    chosen = executor or settings.executor
    if chosen not in ("local", "celery"):
        typer.echo(f"graft: error: --executor takes local or celery, not {chosen!r}", err=True)
        raise typer.Exit(2)
    if chosen == "local":
        from app.worker.main import run_worker

        run_worker(index=index)
        return
    _celery_worker(settings, queues, device)


def _check_celery(settings: Any) -> None:
    try:
        from app.executors.celery_worker import ExecutorConfigError, check_celery_settings
    except ImportError as exc:  # the `celery` extra is not installed
        typer.echo(f"graft: error: {exc}; install graft[celery]", err=True)
        raise typer.Exit(2) from exc
    try:
        check_celery_settings(settings)
    except ExecutorConfigError as exc:
        typer.echo(f"graft: error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _celery_worker(settings: Any, queues: str, device: str | None) -> None:
    try:
        from app.executors.celery_worker import (
            ExecutorConfigError,
            parse_queues,
            run_celery_worker,
        )
    except ImportError as exc:  # the `celery` extra is not installed
        typer.echo(f"graft: error: {exc}; install graft[celery]", err=True)
        raise typer.Exit(2) from exc
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        typer.echo(f"graft: error: --device takes cpu, cuda or cuda:N, not {device!r}", err=True)
        raise typer.Exit(2)
    try:
        run_celery_worker(settings, queues=parse_queues(queues), device=device)
    except ExecutorConfigError as exc:
        typer.echo(f"graft: error: {exc}", err=True)
        raise typer.Exit(2) from exc


# --- API keys (graft keys create|list|revoke) ---

keys_cli = typer.Typer(
    help="API keys: once one exists, every request needs `Authorization: Bearer <key>`.",
    no_args_is_help=True,
)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(recipe_cli, name="recipe")


def _keys_database() -> Any:
    from app.config import get_settings
    from app.db.migrate import upgrade
    from app.db.session import Database

    settings = get_settings()
    database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    upgrade(database)
    return database


@keys_cli.command("create")
def keys_create(
    owner: Annotated[
        str, typer.Option(help="Who the key's checkpoints and jobs belong to.")
    ] = "local",
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="read, write or admin (repeatable; default read+write)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A note to recognise the key by.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create a key and print it. It is stored hashed and cannot be shown again."""
    from app.services.auth import create_key

    database = _keys_database()
    try:
        with database.transaction() as session:
            key, token = create_key(
                session, owner=owner, scopes=scope or ["read", "write"], name=name
            )
            scopes: list[str] = list(key.scopes)
            info = {"id": key.id, "owner": key.owner, "scopes": scopes, "token": token}
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        database.dispose()
    if json_:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"key {key.id} for owner {key.owner!r}, scopes {','.join(scopes)}")
    typer.echo(token)
    typer.echo("Store it now: only its hash is kept, it cannot be shown again.", err=True)


@keys_cli.command("list")
def keys_list(json_: JsonOpt = False) -> None:
    """Every key: id, owner, scopes, created, revoked (never the secret)."""
    from app.services.auth import list_keys

    database = _keys_database()
    try:
        with database.transaction(write=False) as session:
            rows: list[dict[str, Any]] = [
                {
                    "id": k.id,
                    "owner": k.owner,
                    "name": k.name,
                    "scopes": k.scopes,
                    "created_at": k.created_at.isoformat(),
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for k in list_keys(session)
            ]
    finally:
        database.dispose()
    if json_:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        typer.echo(
            f"{row['id']}  {row['owner']:<16} {','.join(row['scopes']):<16} "
            f"{row['created_at']}  {state}" + (f"  ({row['name']})" if row["name"] else "")
        )


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (or token).")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from app.services.auth import revoke_key

    database = _keys_database()
    try:
        with database.transaction() as session:
            revoked = revoke_key(session, key_id)
    finally:
        database.dispose()
    if not revoked:
        typer.echo(f"graft: error: no active key {key_id!r}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {key_id}")
