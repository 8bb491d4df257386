"""One error root: every exception class the server defines derives from ``app.errors.GraftError``.

The client (``app.client``) keeps its own errors: it installs without the server. Control-flow
signals that must escape ``except Exception`` derive from ``BaseException`` only and are not
errors; they are not counted.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import app
from app.errors import GraftError, InternalError

# Modules that need an optional extra (celery, boto3, …) are skipped only if it is missing.
_OPTIONAL = ("celery", "kombu", "boto3", "botocore", "mlflow")


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(app.__path__, prefix="app."):
        if info.name == "app.client" or info.name.startswith("app.client."):
            continue
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in _OPTIONAL:
                continue
            raise
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, Exception):
                found[f"{name}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_class_under_app_derives_from_the_one_base() -> None:
    classes = _exception_classes()
    assert "app.engine.errors.UnsafeCheckpointError" in classes  # the walk saw the engine
    assert "app.services.errors.ConflictError" in classes  # … and the services
    assert sorted(n for n, c in classes.items() if not issubclass(c, GraftError)) == []


def test_each_class_says_its_type_status_and_exit_code() -> None:
    for name, cls in _exception_classes().items():
        assert issubclass(cls, GraftError)
        assert cls.type and cls.type == cls.type.lower(), name
        assert 400 <= cls.status < 600, name
        assert cls.exit_code in (1, 2), name


def test_prefixed_keeps_the_class_and_its_fields() -> None:
    from app.net.outbound import OutboundRefusedError

    error = OutboundRefusedError("'evil.example' is not allowed", url="https://evil.example/")
    prefixed = error.prefixed("source.uri", suffix=" (ask the operator)")
    assert type(prefixed) is OutboundRefusedError
    assert prefixed.message == "source.uri: 'evil.example' is not allowed (ask the operator)"
    assert str(prefixed) == prefixed.message
    assert prefixed.url == "https://evil.example/"
    assert error.message == "'evil.example' is not allowed"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("unsafe-checkpoint", "UnsafeCheckpointError"), ("disk-full", "DiskFullError"),
     ("no-such-type", "InternalError")],
)  # fmt: skip
def test_a_child_s_error_comes_back_as_its_class(kind: str, expected: str) -> None:
    import app.sandbox.runner  # noqa: F401  (defines DiskFullError)

    error = GraftError.from_payload({"type": kind, "message": "why"})
    assert type(error).__name__ == expected
    assert error.message == "why"
    assert isinstance(error, GraftError)
    if expected == "InternalError":
        assert isinstance(error, InternalError)


def test_a_child_s_recipe_error_keeps_its_rule_without_naming_it_twice() -> None:
    from app.engine.errors import InvalidRecipeError

    error = GraftError.from_payload(
        {"type": "invalid-recipe", "message": "rename[1]: bad pattern", "rule": "rename[1]"}
    )
    assert isinstance(error, InvalidRecipeError)
    assert error.message == "rename[1]: bad pattern"
    assert error.rule == "rename[1]"
    assert error.extra == {"rule": "rename[1]"}


def test_each_slug_has_one_root_class() -> None:
    by_type: dict[str, list[type[BaseException]]] = {}
    for cls in _exception_classes().values():
        assert issubclass(cls, GraftError)
        by_type.setdefault(cls.type, []).append(cls)
    for slug, classes in by_type.items():
        roots = [c for c in classes if not any(b.type == slug for b in c.__mro__[1:]
                                               if issubclass(b, GraftError))]  # fmt: skip
        assert len(roots) == 1, (slug, roots)
