"""/v1/plans and /v1/recipes/validate: the web app's form asks these before it submits."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import InspectorDep, ReadPrincipal, ReadSession, SettingsDep, StoreDep
from app.api.errors import problem
from app.engine.target_spec import TargetSpec
from app.services import plans as service

router = APIRouter(tags=["plans"])


class PlanCreate(BaseModel):
    """What to plan: the body of ``POST /v1/jobs`` without its output options."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="id of the uploaded source checkpoint")
    target: TargetSpec
    recipe: dict[str, Any] | None = Field(default=None, description="a version 1 recipe")


class RecipeValidated(BaseModel):
    recipe: dict[str, Any] = Field(description="the recipe with every default filled in")


@router.post(
    "/v1/plans",
    responses={
        422: problem("invalid recipe (names the rule), target or checkpoint reference"),
        413: problem("the plan ran past the inspection time limit"),
    },
)
async def create_plan(
    body: Annotated[PlanCreate, Body()],
    principal: ReadPrincipal,
    session: ReadSession,
    store: StoreDep,
    inspector: InspectorDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """The dry-run report of a conversion, at once: header-only, in a sandboxed child with
    the inspection time limit. Never a job."""
    source_files, target_files = service.resolve_plan_inputs(
        session,
        source=body.source,
        target=body.target,
        recipe=body.recipe,
        owner=principal.scope_owner,
    )
    return await service.plan_conversion(
        store,
        inspector,
        source_files=source_files,
        target=body.target,
        target_files=target_files,
        recipe=body.recipe,
        architectures=settings.architectures,
    )


@router.post("/v1/recipes/validate", responses={422: problem("invalid recipe (names the rule)")})
def validate_recipe(
    recipe: Annotated[dict[str, Any], Body(description="a version 1 recipe")],
    _principal: ReadPrincipal,
) -> RecipeValidated:
    """The recipe normalised (defaults filled in), or 422 `invalid-recipe` naming the rule."""
    from app.engine.recipe import load_recipe

    return RecipeValidated(recipe=load_recipe(recipe).model_dump(mode="json"))
