"""/v1/align (the recipe alignment writes, SPEC §2.2) and /v1/recipes (the built-in ones)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import InspectorDep, ReadPrincipal, ReadSession, SettingsDep, StoreDep
from app.api.errors import problem
from app.engine.target_spec import TargetSpec
from app.services import plans as plans_service
from app.services import recipes as recipes_service

router = APIRouter(tags=["align"])


class AlignCreate(BaseModel):
    """What to align: a source checkpoint, a target, and rules to apply first."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="id of the uploaded source checkpoint")
    target: TargetSpec
    recipe: dict[str, Any] | None = Field(
        default=None, description="rules applied first; alignment matches what they leave"
    )
    min_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="apply a match only at this confidence or above (default: the recipe's "
        "align_min_confidence, 0.9)",
    )


class AlignMatch(BaseModel):
    target: str
    sources: list[str]
    confidence: float
    why: str
    ops: list[str]
    applied: bool
    ambiguous: bool


class AlignCandidate(BaseModel):
    source: str
    confidence: float


class AlignUnresolved(BaseModel):
    target: str
    ambiguous: bool
    confidence: float
    why: str
    candidates: list[AlignCandidate]


class AlignRule(BaseModel):
    confidence: float = Field(description="the lowest confidence among the keys it carries")
    keys: int


class AlignPublic(BaseModel):
    recipe: dict[str, Any] = Field(description="the complete recipe; POST /v1/jobs applies it")
    matches: list[AlignMatch]
    unresolved: list[AlignUnresolved] = Field(description="target keys left unfed, with candidates")
    rules: dict[str, AlignRule] = Field(
        description="each aligned rule (rename[3]) and its confidence"
    )


class RecipeSummary(BaseModel):
    name: str
    version: int
    description: str
    use: str = Field(description='how a recipe field names it: "builtin:NAME"')


class RecipesPublic(BaseModel):
    data: list[RecipeSummary]
    count: int


class RecipePublic(RecipeSummary):
    recipe: dict[str, Any] = Field(description="the recipe document")


@router.post(
    "/v1/align",
    responses={
        422: problem("invalid recipe (names the rule), target or checkpoint reference"),
        413: problem("the alignment ran past the inspection time limit"),
    },
)
async def create_alignment(
    body: Annotated[AlignCreate, Body()],
    principal: ReadPrincipal,
    session: ReadSession,
    store: StoreDep,
    inspector: InspectorDep,
    settings: SettingsDep,
) -> AlignPublic:
    """The recipe that feeds the target from the source, each rule with its confidence and the
    unresolved keys with their candidates: from headers alone, in a sandboxed child."""
    source_files, target_files = plans_service.resolve_plan_inputs(
        session,
        source=body.source,
        target=body.target,
        recipe=body.recipe,
        owner=principal.scope_owner,
    )
    document = await plans_service.align_conversion(
        store,
        inspector,
        source_files=source_files,
        target=body.target,
        target_files=target_files,
        recipe=body.recipe,
        min_confidence=body.min_confidence,
        architectures=settings.architectures,
    )
    return AlignPublic.model_validate(document)


@router.get("/v1/recipes")
def list_recipes(_principal: ReadPrincipal) -> RecipesPublic:
    """The built-in recipes; a job or plan uses one with `"recipe": "builtin:NAME"`."""
    items = [RecipeSummary.model_validate(r) for r in recipes_service.list_recipes()]
    return RecipesPublic(data=items, count=len(items))


@router.get("/v1/recipes/{name}", responses={404: problem("no built-in recipe of that name")})
def get_recipe(name: str, _principal: ReadPrincipal) -> RecipePublic:
    """One built-in recipe, with the recipe document itself."""
    return RecipePublic.model_validate(recipes_service.get_recipe(name))
