"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.app_context import app_context
from app.api.deps import DatabaseDep, DispatcherDep, SettingsDep, StoreDep
from app.api.errors import problem_response
from app.services.warmth import markers_dir, warm_workers

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "database, storage or broker unreachable, or no worker warm"}},
)
async def readyz(
    request: Request,
    database: DatabaseDep,
    store: StoreDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
) -> JSONResponse:
    """The database answers, the storage is writable, with Celery the broker answers, and,
    with embedded workers, at least one of them is warm (torch imported, fork server ready)."""
    checks: dict[str, str] = {}
    probes = [("database", database.ping), ("storage", store.check)]
    ping = getattr(dispatcher, "ping", None)
    if ping is not None:
        probes.append(("broker", ping))
    for name, probe in probes:
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {exc}"
    if app_context(request).embedded_workers:
        warm = warm_workers(markers_dir(settings.storage_dir))
        checks["workers"] = f"ok: {warm} warm" if warm else "warming up"
    if any(not v.startswith("ok") for v in checks.values()):
        return problem_response(503, "not-ready", "a dependency is unreachable", checks=checks)
    return JSONResponse({"status": "ok", "checks": checks})
