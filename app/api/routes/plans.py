"""/v1/plans, /v1/recipes/parse and /v1/recipes/validate: what the web app's form asks
before it submits."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import InspectorDep, ReadPrincipal, ReadSession, SettingsDep, StoreDep
from app.api.errors import problem
from app.api.schemas import CheckpointId, SourceName
from app.engine.target_spec import TargetSpec
from app.services import plans as service
from app.services.errors import InvalidJobError
from app.services.recipe_text import parse_recipe_text, pick_recipe

router = APIRouter(tags=["plans"])


class PlanCreate(BaseModel):
    """What to plan: the body of ``POST /v1/jobs`` without its output options."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(default=None, description="id of the uploaded source checkpoint")
    sources: dict[SourceName, CheckpointId] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="several uploaded checkpoints by name, in place of `source` (keys NAME:KEY)",
    )
    target: TargetSpec
    recipe: dict[str, Any] | None = Field(default=None, description="a version 1 recipe")
    recipe_text: str | None = Field(
        default=None, description="the recipe as YAML or JSON text, instead of `recipe`"
    )


class RecipeText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe_text: str = Field(description="a recipe as YAML or JSON text")


class RecipeParsed(BaseModel):
    recipe: dict[str, Any] | None = Field(
        description="the document the text holds, as written (null: empty, the defaults apply)"
    )


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
    groups: Annotated[bool, Query(description="add `groups`: the keys grouped")] = False,
) -> dict[str, Any]:
    """The dry-run report of a conversion, at once: header-only, in a sandboxed child with
    the inspection time limit. Never a job. With `?groups=true` it also carries `groups`, the
    keys grouped as `GET /v1/jobs/{id}/report?format=groups` groups a job's."""
    recipe = pick_recipe(body.recipe, body.recipe_text)
    if (body.source is None) == (body.sources is None):
        raise InvalidJobError("give `source` (one checkpoint) or `sources` (several by name)")
    named = None
    if body.sources is not None:
        named = service.resolve_named_sources(session, body.sources, owner=principal.scope_owner)
    source_files, target_files = service.resolve_plan_inputs(
        session,
        source=body.source or next(iter((body.sources or {}).values())),
        target=body.target,
        recipe=recipe,
        owner=principal.scope_owner,
    )
    report = await service.plan_conversion(
        store,
        inspector,
        source_files=[] if named else source_files,
        target=body.target,
        target_files=target_files,
        recipe=recipe,
        architectures=settings.architectures,
        named_files=named,
    )
    if groups:
        from app.engine.report import group_report  # the readers: only when asked

        report["groups"] = group_report(report)
    return report


@router.post("/v1/recipes/validate", responses={422: problem("invalid recipe (names the rule)")})
def validate_recipe(
    recipe: Annotated[dict[str, Any], Body(description="a version 1 recipe")],
    _principal: ReadPrincipal,
) -> RecipeValidated:
    """The recipe normalised (defaults filled in), or 422 `invalid-recipe` naming the rule."""
    from app.engine.recipe import load_recipe

    return RecipeValidated(recipe=load_recipe(recipe).model_dump(mode="json"))


@router.post("/v1/recipes/parse", responses={422: problem("not YAML or JSON, or not a mapping")})
def parse_recipe(body: Annotated[RecipeText, Body()], _principal: ReadPrincipal) -> RecipeParsed:
    """YAML or JSON text to the recipe document it holds, unvalidated (the form draws its
    rules from it, then asks `/v1/recipes/validate`)."""
    return RecipeParsed(recipe=parse_recipe_text(body.recipe_text))
