"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import DatabaseDep, DispatcherDep, StoreDep
from app.api.errors import problem_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or storage unreachable"}})
async def readyz(database: DatabaseDep, store: StoreDep, dispatcher: DispatcherDep) -> JSONResponse:
    """The database answers, the storage is writable and (with Celery) the broker answers."""
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
    if any(v != "ok" for v in checks.values()):
        return problem_response(503, "not-ready", "a dependency is unreachable", checks=checks)
    return JSONResponse({"status": "ok", "checks": checks})
