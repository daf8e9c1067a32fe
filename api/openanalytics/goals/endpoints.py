"""Creating, listing and deleting a project's goals."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from openanalytics.auth.dependencies import GoalsManage, StatsRead, stores_of
from openanalytics.errors import BadRequest, Conflict, NotFound
from openanalytics.goals.models import Goal
from openanalytics.ids import id_pattern, new_id
from openanalytics.ingest.schemas import EventType
from openanalytics.openapi import error_responses
from openanalytics.text import StoredText

router = APIRouter(tags=["Goals"])
MAX_GOALS = 100
GoalId = Annotated[str, Path(pattern=id_pattern("goal"), description="The goal's id.", examples=["goal_5e0c2a9b1f3d4e76"])]


class Match(StrEnum):
    event_name = "event_name"
    event_type = "event_type"
    path = "path"  # a pageview of this path
    any_conversion = "any_conversion"


class GoalIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "Signups", "match": "event_name", "value": "signup"},
        {"name": "Saw pricing", "match": "path", "value": "/pricing"},
        {"name": "Any purchase", "match": "any_conversion"},
    ]})

    name: Annotated[str, StoredText] = Field(min_length=1, max_length=200)
    match: Match = Field(description="event_name, event_type, path (a pageview of it) or any_conversion.")
    value: Annotated[str, StoredText] = Field(default="", max_length=500, description="What to match; empty for any_conversion.")

    @model_validator(mode="after")
    def _value_fits(self) -> GoalIn:
        if self.match is Match.any_conversion:
            if self.value:
                raise ValueError("any_conversion takes no value")
        elif not self.value:
            raise ValueError(f"{self.match.value} needs a value")
        if self.match is Match.event_type and self.value not in EventType.__members__:
            raise ValueError(f"value must be an event type: {', '.join(EventType.__members__)}")
        if self.match is Match.path and not self.value.startswith("/"):
            raise ValueError("a path starts with /")
        return self


class GoalOut(GoalIn):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "goal_5e0c2a9b1f3d4e76", "name": "Signups", "match": "event_name", "value": "signup",
        "created_at": "2026-05-12T10:00:00Z"}]})

    id: str
    created_at: datetime


class GoalList(BaseModel):
    goals: list[GoalOut]

    model_config = {"json_schema_extra": {"examples": [{"goals": [GoalOut.model_config["json_schema_extra"]["examples"][0]]}]}}


def project_goals(session, project_id: str) -> list[Goal]:
    return list(session.scalars(select(Goal).where(Goal.project_id == project_id).order_by(Goal.created_at, Goal.id)))


@router.post(
    "/v1/projects/{project_id}/goals", status_code=201, summary="Create a goal", response_model=GoalOut,
    responses=error_responses(400, 401, 403, 404, 409, 429),
)
async def create_goal(request: Request, access: GoalsManage, body: GoalIn) -> GoalOut:
    def create() -> GoalOut:
        with stores_of(request).db.session() as session:
            count = session.scalar(select(func.count()).select_from(Goal).where(Goal.project_id == access.project.id))
            if count >= MAX_GOALS:
                raise BadRequest(f"a project has at most {MAX_GOALS} goals", "too_many_goals")
            goal = Goal(id=new_id("goal"), project_id=access.project.id, name=body.name, match=body.match.value,
                        value=body.value)
            session.add(goal)
            try:
                session.flush()
            except IntegrityError:
                raise Conflict(f"This project already has a goal named {body.name!r}.", "goal_exists") from None
            return GoalOut.model_validate(goal)

    return await run_in_threadpool(create)


@router.get(
    "/v1/projects/{project_id}/goals", summary="List goals", response_model=GoalList,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def list_goals(request: Request, access: StatsRead) -> GoalList:
    def read() -> GoalList:
        with stores_of(request).db.session() as session:
            return GoalList(goals=[GoalOut.model_validate(g) for g in project_goals(session, access.project.id)])

    return await run_in_threadpool(read)


@router.delete(
    "/v1/projects/{project_id}/goals/{goal_id}", status_code=204, summary="Delete a goal",
    description="Stored events are untouched; the goal just stops being reported.",
    response_class=Response, responses={204: {"description": "Deleted."}, **error_responses(400, 401, 403, 404, 429)},
)
async def delete_goal(request: Request, access: GoalsManage, goal_id: GoalId) -> Response:
    def delete() -> bool:
        with stores_of(request).db.session() as session:
            goal = session.get(Goal, goal_id)
            if goal is None or goal.project_id != access.project.id:
                return False
            session.delete(goal)
            return True

    if not await run_in_threadpool(delete):
        raise NotFound("No such goal.", "goal_not_found")
    return Response(status_code=204)
