"""Registered architectures: named model factories a conversion can target by name.

Four sources, later ones overriding earlier ones of the same name (with a warning):

1. torchvision's and timm's classification factories, when those libraries are installed,
   under the names they use (timm wins a name both have; torchvision's stays reachable as
   ``torchvision/NAME``);
2. the reference architectures of this project (``app.zoo``: ``graft_resnet``,
   ``graft_mobilenet``, ``graft_vit``, ``graft_bert``), registered by Graft's own distribution
   through the entry-point group below, like any plug-in (the engine never imports the zoo);
3. Python entry points in the group ``graft.architectures`` (``name = module:factory``): a team
   installs its model package and its models become targets;
4. explicit ``(name, module, factory)`` triples (the service's ``GRAFT_ARCHITECTURES``, parsed
   once at start by :func:`parse_architectures`), passed in as ``extra``: the engine reads no
   settings.

Clients only ever name an architecture and pass JSON kwargs; they never send code. Kwargs are
checked against the factory's signature (names, and the JSON types its annotations allow)
before it runs. A model may declare ``example_input(batch)`` and ``example_output_shape(batch)``
so a conversion into it can be proven by a forward pass (``app.engine.verify``), and
``hf_config(kwargs)`` (a class method) so a folder output carries its transformers ``config.json``,
and ``adaptations`` (its stem, classifier and position embedding, :mod:`app.engine.adaptations`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from app.engine.errors import InvalidTargetError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from app.engine.adaptations import Adaptations

__all__ = [
    "ENTRY_POINT_GROUP",
    "Architecture",
    "ArchitectureRef",
    "BoundArchitecture",
    "KwargInfo",
    "Unavailable",
    "bind_architecture",
    "describe_architectures",
    "get_architecture",
    "load_registry",
    "parse_architectures",
]

logger = logging.getLogger(__name__)

# One architecture named by configuration: (name, module, factory attribute).
ArchitectureRef = tuple[str, str, str]

ENTRY_POINT_GROUP = "graft.architectures"
# The distribution whose entry points are the built-in zoo (origin ``builtin``).
OWN_DISTRIBUTION = "graft"
Origin = Literal["torchvision", "timm", "builtin", "entry-point", "setting"]
ExampleFn = Callable[["nn.Module", int], tuple[Any, tuple[int, ...]]]

# Kwargs a client may never pass to a library factory: they download or read files.
_LIBRARY_REFUSED = frozenset(
    {"weights", "pretrained", "progress", "checkpoint_path", "pretrained_cfg",
     "pretrained_cfg_overlay", "cache_dir"}
)  # fmt: skip
_JSON_TYPES: dict[type, tuple[type, ...]] = {
    int: (int,), float: (int, float), bool: (bool,), str: (str,), list: (list,),
    tuple: (list,), dict: (dict,),
}  # fmt: skip


@dataclass(frozen=True)
class KwargInfo:
    """One keyword a factory takes: name, type as written, default, whether required."""

    name: str
    type_name: str | None
    default: Any
    required: bool
    accepts: tuple[type, ...] | None = None  # JSON value types allowed; None: not checked

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type_name, "default": self.default, "required": self.required}


@dataclass(frozen=True)
class Architecture:
    """A named model factory.

    Attributes:
        name: what targets call it (``arch:NAME``, ``{"architecture": NAME}``).
        factory: builds the ``nn.Module`` from keyword arguments.
        origin: where it was registered from.
        ref: ``module:factory`` (or the library's name for it), for listings and messages.
        description: the factory's first docstring line.
        fixed: kwargs always passed (a library factory's model name).
        example: for factories whose models do not declare ``example_input`` themselves:
            ``(model, batch) -> (input, output shape)``.
    """

    name: str
    factory: Callable[..., Any]
    origin: Origin
    ref: str
    description: str | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    example: ExampleFn | None = None
    open_kwargs: tuple[KwargInfo, ...] = ()  # advertised kwargs of a ``**kwargs`` factory

    @functools.cached_property
    def _signature(self) -> tuple[list[KwargInfo], bool]:
        return _introspect(self.factory, skip=set(self.fixed))

    def kwargs(self) -> list[KwargInfo]:
        """The keywords clients may pass, from the factory's signature."""
        infos, open_ = self._signature
        known = {k.name for k in infos}
        extra = [k for k in self.open_kwargs if k.name not in known] if open_ else []
        return [k for k in infos if k.name not in _LIBRARY_REFUSED] + extra

    def describe(self) -> dict[str, Any]:
        """``{name, kwargs: {name: {type, default, required}}, description, origin, ref}``."""
        return {
            "name": self.name,
            "kwargs": {k.name: k.as_json() for k in self.kwargs()},
            "description": self.description,
            "origin": self.origin,
            "ref": self.ref,
            "available": True,
            "error": None,
        }

    def bind(self, kwargs: Mapping[str, Any] | None = None) -> BoundArchitecture:
        """Check ``kwargs`` against the signature; the result builds the model.

        Raises:
            InvalidTargetError: an unknown, refused or missing kwarg, or a value of the wrong
                JSON type; the message names the architecture and the kwarg.
        """
        given = dict(kwargs or {})
        infos, open_ = self._signature
        by_name = {k.name: k for k in infos}
        for key, value in given.items():
            if not isinstance(key, str) or key in self.fixed or key in _LIBRARY_REFUSED:
                raise InvalidTargetError(
                    f"architecture {self.name!r}: kwarg {key!r} cannot be set by a target"
                )
            info = by_name.get(key)
            if info is None and not open_:
                raise InvalidTargetError(
                    f"architecture {self.name!r} has no kwarg {key!r}; it takes "
                    f"{', '.join(by_name) or 'none'}"
                )
            if info is not None and not _accepts(info, value):
                raise InvalidTargetError(
                    f"architecture {self.name!r}: kwarg {key!r} must be {info.type_name}, "
                    f"got {value!r}"
                )
        missing = [k.name for k in infos if k.required and k.name not in given]
        if missing:
            raise InvalidTargetError(
                f"architecture {self.name!r} needs kwarg(s) {', '.join(missing)}"
            )
        return BoundArchitecture(self, given)


@dataclass(frozen=True)
class Unavailable:
    """A registered architecture that cannot be used: its import failed.

    Listed with its reason instead of taking the whole registry down (a broken torchvision,
    a plug-in with a missing dependency).
    """

    name: str
    origin: Origin
    ref: str
    reason: str

    def describe(self) -> dict[str, Any]:
        """The listing's form: no kwargs, ``available: false`` and the one-line ``error``."""
        return {"name": self.name, "kwargs": {}, "description": None, "origin": self.origin,
                "ref": self.ref, "available": False, "error": self.reason}  # fmt: skip


@dataclass(frozen=True)
class BoundArchitecture:
    """An architecture with checked kwargs: builds its model on any device."""

    architecture: Architecture
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.architecture.name

    def build(self, device: str | torch.device = "meta") -> nn.Module:
        """Instantiate the model with its parameters and buffers on ``device``.

        The meta device (the default) allocates nothing: planning a huge model is free.

        Raises:
            InvalidTargetError: the factory refused the kwargs, or did not return a module.
        """
        import torch
        from torch import nn

        arch = self.architecture
        try:
            with torch.device(device):
                model = arch.factory(**arch.fixed, **self.kwargs)
        except (TypeError, ValueError, AssertionError, NotImplementedError, RuntimeError) as exc:
            raise InvalidTargetError(
                f"architecture {arch.name!r} with kwargs {self.kwargs} cannot be built on "
                f"{device}: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(model, nn.Module):
            raise InvalidTargetError(
                f"architecture {arch.name!r} ({arch.ref}) returned {type(model).__name__}, "
                "not a torch.nn.Module"
            )
        return model

    def hf_config(self) -> dict[str, Any] | None:
        """The transformers ``config.json`` the factory declares through ``hf_config(kwargs)``
        (a class method beside the model's constructor), or ``None`` when it declares none.

        Raises:
            InvalidTargetError: the hook returned something other than a dict with ``model_type``.
        """
        hook = getattr(self.architecture.factory, "hf_config", None)
        if not callable(hook):
            return None
        config = hook({**self.architecture.fixed, **self.kwargs})
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            raise InvalidTargetError(f"architecture {self.name!r}: hf_config gave no model_type")
        return config

    def adaptations(self, model: nn.Module | None = None) -> Adaptations | None:
        """The stem, classifier and position embedding the factory declares (or ``model``'s
        timm ``pretrained_cfg``), see :mod:`app.engine.adaptations`."""
        from app.engine.adaptations import read_adaptations

        kwargs = {**self.architecture.fixed, **self.kwargs}
        return read_adaptations(self.architecture.factory, kwargs, model)

    def example(self, model: nn.Module, batch: int = 2) -> tuple[Any, tuple[int, ...]] | None:
        """The model's declared example input and the output shape it must produce.

        ``None`` when the architecture declares none (the forward check is then skipped and
        the report says so).
        """
        example_input = getattr(model, "example_input", None)
        output_shape = getattr(model, "example_output_shape", None)
        if callable(example_input) and callable(output_shape):
            return example_input(batch), tuple(output_shape(batch))
        if self.architecture.example is not None:
            return self.architecture.example(model, batch)
        return None


def parse_architectures(spec: str | None) -> list[ArchitectureRef]:
    """Parse ``name=module:factory,...`` (``GRAFT_ARCHITECTURES``) into (name, module, attr).

    Called once, where the settings are read; the engine's other functions take the result.

    Raises:
        InvalidTargetError: an item is not of that form.
    """
    items: list[ArchitectureRef] = []
    for raw in (spec or "").split(","):
        item = raw.strip()
        if not item:
            continue
        name, eq, ref = item.partition("=")
        module, colon, attr = ref.strip().partition(":")
        if not eq or not colon or not name.strip() or not module or not attr:
            raise InvalidTargetError(
                f"architecture setting {item!r}: write name=module:factory, "
                "e.g. mynet=mypackage.models:build_mynet"
            )
        items.append((name.strip(), module, attr))
    return items


def load_registry(extra: Sequence[ArchitectureRef] = ()) -> dict[str, Architecture]:
    """Every usable registered architecture, by name.

    Args:
        extra: (name, module, factory) triples registered last (the service's
            ``GRAFT_ARCHITECTURES``, see :func:`parse_architectures`).
    """
    return _scan(extra)[0]


def _scan(
    extra: Sequence[ArchitectureRef],
) -> tuple[dict[str, Architecture], dict[str, Unavailable]]:
    """The usable architectures and, by name, those whose import failed."""
    registry: dict[str, Architecture] = {}
    broken: dict[str, Unavailable] = {}

    def add(arch: Architecture | Unavailable) -> None:
        previous = registry.get(arch.name) or broken.get(arch.name)
        if previous is not None and previous.origin != arch.origin:
            logger.warning(
                "architecture %r from %s (%s) replaces the one from %s (%s)",
                arch.name, arch.origin, arch.ref, previous.origin, previous.ref,
            )  # fmt: skip
        registry.pop(arch.name, None)
        broken.pop(arch.name, None)
        if isinstance(arch, Unavailable):
            broken[arch.name] = arch
        else:
            registry[arch.name] = arch

    library, library_broken = _library_architectures()
    for item in (*library, *library_broken, *_entry_point_architectures()):
        add(item)
    for name, module, attr in extra:
        ref = f"{module}:{attr}"
        try:
            factory = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # a broken plug-in is listed as unavailable, not raised
            add(Unavailable(name, "setting", ref, _reason(exc)))
            continue
        add(_architecture(name, factory, "setting", ref))
    return registry, broken


def get_architecture(name: str, *, extra: Sequence[ArchitectureRef] = ()) -> Architecture:
    """One architecture by name.

    Raises:
        InvalidTargetError: no architecture has that name (the message lists close ones).
    """
    registry, broken = _scan(extra)
    arch = registry.get(name)
    if arch is None and name in broken:
        raise InvalidTargetError(
            f"architecture {name!r} ({broken[name].ref}) is unavailable: {broken[name].reason}"
        )
    if arch is None:
        import difflib

        close = difflib.get_close_matches(name, list(registry), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InvalidTargetError(
            f"unknown architecture {name!r}{hint} (`graft architectures` lists them)"
        )
    return arch


def bind_architecture(
    name: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    extra: Sequence[ArchitectureRef] = (),
) -> BoundArchitecture:
    """Look ``name`` up and check ``kwargs`` against it (see :meth:`Architecture.bind`)."""
    return get_architecture(name, extra=extra).bind(kwargs)


def describe_architectures(extra: Sequence[ArchitectureRef] = ()) -> list[dict[str, Any]]:
    """Every architecture as JSON, sorted by name (what ``GET /v1/architectures`` serves).

    Those whose import failed are listed too, with ``available: false`` and the reason.
    """
    registry, broken = _scan(extra)
    listed: dict[str, Architecture | Unavailable] = {**registry, **broken}
    return [listed[name].describe() for name in sorted(listed)]


# Registration helpers ------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else 'import failed'}"


def _first_line(obj: Any) -> str | None:
    doc = inspect.getdoc(obj)
    return doc.strip().splitlines()[0] if doc else None


def _architecture(name: str, factory: Any, origin: Origin, ref: str) -> Architecture:
    if not callable(factory):
        raise InvalidTargetError(f"architecture {name!r} = {ref} is not callable")
    return Architecture(name, factory, origin, ref, _first_line(factory))


def _entry_point_architectures() -> list[Architecture | Unavailable]:
    """The ``graft.architectures`` entry points: Graft's own zoo first (origin ``builtin``),
    then every other installed distribution's, which may override a built-in name. One whose
    import fails is ``Unavailable``, with the reason."""
    found: list[tuple[bool, Architecture | Unavailable]] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        own = ep.dist is not None and ep.dist.name == OWN_DISTRIBUTION
        origin: Origin = "builtin" if own else "entry-point"
        try:
            factory = ep.load()
        except Exception as exc:  # a broken plug-in must not take the registry down
            logger.warning("entry point %s = %s cannot be loaded: %s", ep.name, ep.value, exc)
            found.append((not own, Unavailable(ep.name, origin, ep.value, _reason(exc))))
            continue
        found.append((not own, _architecture(ep.name, factory, origin, ep.value)))
    return [arch for _, arch in sorted(found, key=lambda item: item[0])]


_IMAGE_KWARGS = (
    KwargInfo("num_classes", "int", 1000, False, (int,)),
    KwargInfo("in_chans", "int", 3, False, (int,)),
)


def _import_library(name: str, broken: list[Unavailable]) -> Any:
    """``import name``: ``None`` when it is not installed; when its import fails, ``None`` and
    an ``Unavailable`` entry saying why (a torchvision built for another torch, say)."""
    library = name.partition(".")[0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == library:
            return None  # not installed: nothing to list
        broken.append(Unavailable(library, _LIBRARY_ORIGIN[name], name, _reason(exc)))
    except Exception as exc:
        broken.append(Unavailable(library, _LIBRARY_ORIGIN[name], name, _reason(exc)))
    return None


_LIBRARY_ORIGIN: dict[str, Origin] = {"torchvision.models": "torchvision", "timm": "timm"}


@functools.cache
def _library_architectures() -> tuple[tuple[Architecture, ...], tuple[Unavailable, ...]]:
    """torchvision's and timm's classification models, when installed (an optional extra)."""
    found: dict[str, Architecture] = {}
    broken: list[Unavailable] = []
    tvm = _import_library("torchvision.models", broken)
    if tvm is not None:
        for name in tvm.list_models(module=tvm):
            found[name] = Architecture(
                name,
                tvm.get_model_builder(name),
                "torchvision",
                f"torchvision.models:{name}",
                f"torchvision classification model {name}",
                example=_torchvision_example,
                open_kwargs=_IMAGE_KWARGS[:1],
            )
    timm = _import_library("timm", broken)
    if timm is not None:
        for name in timm.list_models():
            if name in found:
                tv = found.pop(name)
                found[f"torchvision/{name}"] = Architecture(
                    f"torchvision/{name}", tv.factory, tv.origin, tv.ref, tv.description,
                    example=tv.example, open_kwargs=tv.open_kwargs,
                )  # fmt: skip
            found[name] = Architecture(
                name,
                timm.create_model,
                "timm",
                f"timm:create_model({name!r})",
                f"timm model {name}",
                fixed={"model_name": name},
                example=_timm_example,
                open_kwargs=_IMAGE_KWARGS,
            )
    return tuple(found.values()), tuple(broken)


def _torchvision_example(model: nn.Module, batch: int) -> tuple[Any, tuple[int, ...]]:
    from app.engine.examples import example_image

    head = [m for m in model.modules() if type(m).__name__ == "Linear"][-1]
    return example_image(batch, 3, 224), (batch, int(getattr(head, "out_features", 0)))


def _timm_example(model: nn.Module, batch: int) -> tuple[Any, tuple[int, ...]]:
    from app.engine.examples import example_image

    cfg = getattr(model, "pretrained_cfg", None) or {}
    _, height, _ = cfg.get("input_size", (3, 224, 224))
    classes = int(getattr(model, "num_classes", 0))
    width = classes or int(getattr(model, "num_features", 0))
    chans = _first_conv_in_chans(model)
    return example_image(batch, chans, int(height)), (batch, width)


def _first_conv_in_chans(model: nn.Module) -> int:
    for module in model.modules():
        chans = getattr(module, "in_channels", None)
        if isinstance(chans, int):
            return chans
    return 3


# Signature introspection ---------------------------------------------------------------------


def _introspect(factory: Callable[..., Any], *, skip: set[str]) -> tuple[list[KwargInfo], bool]:
    """Keyword parameters of ``factory`` (its ``__init__`` for a class), and whether it takes
    ``**kwargs``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return [], True
    target: Any = factory
    if isinstance(factory, type):
        target = target.__init__
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: report them as written, check nothing
        hints = {}
    infos: list[KwargInfo] = []
    open_ = False
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            open_ = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY) or param.name in skip:
            continue
        hint = hints.get(param.name, param.annotation)
        required = param.default is param.empty
        infos.append(
            KwargInfo(
                param.name,
                _type_name(hint),
                None if required else _jsonable(param.default),
                required,
                _json_types(hint),
            )
        )
    return infos, open_


def _type_name(hint: Any) -> str | None:
    if hint is inspect.Parameter.empty:
        return None
    if isinstance(hint, str):
        return hint
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _json_types(hint: Any) -> tuple[type, ...] | None:
    """The JSON value types a hint allows, or ``None`` when it cannot be said."""
    if hint is inspect.Parameter.empty or isinstance(hint, str):
        return None
    if hint is None or hint is type(None):
        return (type(None),)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        allowed: list[type] = []
        for arg in typing.get_args(hint):
            sub = _json_types(arg)
            if sub is None:
                return None
            allowed += sub
        return tuple(allowed)
    if origin is Literal:
        return tuple({type(a) for a in typing.get_args(hint)})
    base = origin or hint
    return _JSON_TYPES.get(base) if isinstance(base, type) else None


def _accepts(info: KwargInfo, value: Any) -> bool:
    if info.accepts is None:
        return True
    if isinstance(value, bool):  # bool is an int in Python, never in a schema
        return bool in info.accepts
    return isinstance(value, info.accepts)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
