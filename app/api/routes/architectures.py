"""/v1/architectures: what `{"architecture": name}` targets can name."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import InspectorDep
from app.api.schemas import ArchitecturePublic, ArchitecturesPublic

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get("")
async def list_architectures(inspector: InspectorDep) -> ArchitecturesPublic:
    """Registered architectures and their kwargs (asked of an engine child process)."""
    items = await inspector.architectures()
    return ArchitecturesPublic(data=[ArchitecturePublic(**a) for a in items], count=len(items))
