"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import DatabaseDep, StoreDep
from app.api.errors import problem_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or storage unreachable"}})
async def readyz(database: DatabaseDep, store: StoreDep) -> JSONResponse:
    """The database answers and the storage directory is writable."""
    checks: dict[str, str] = {}
    for name, probe in (("database", database.ping), ("storage", store.check)):
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {exc}"
    if any(v != "ok" for v in checks.values()):
        return problem_response(503, "not-ready", "a dependency is unreachable", checks=checks)
    return JSONResponse({"status": "ok", "checks": checks})
