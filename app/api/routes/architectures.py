"""/v1/architectures: what `{"architecture": name}` targets can name."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import InspectorDep, SettingsDep
from app.api.schemas import ArchitecturePublic, ArchitecturesPublic

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get("")
async def list_architectures(inspector: InspectorDep, settings: SettingsDep) -> ArchitecturesPublic:
    """Registered architectures, their kwargs with defaults and types (asked of an engine
    child process: built-ins, ``graft.architectures`` entry points, ``GRAFT_ARCHITECTURES``)."""
    items = await inspector.architectures(extra=settings.architectures)
    return ArchitecturesPublic(data=[ArchitecturePublic(**a) for a in items], count=len(items))
