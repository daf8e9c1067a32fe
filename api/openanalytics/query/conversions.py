"""`GET /v1/projects/{id}/conversions`: each goal's converting visitors, conversions, rate and revenue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from openanalytics.auth.dependencies import StatsRead, stores_of
from openanalytics.goals.endpoints import GoalOut, project_goals
from openanalytics.goals.models import Goal
from openanalytics.openapi import error_responses
from openanalytics.query.aggregate import RANGE_SQL, REVENUE, values
from openanalytics.query.common import QueryEcho, events_store, scope
from openanalytics.query.filters import Filters, where
from openanalytics.query.window import DateFrom, DateTo, Timezone

router = APIRouter(tags=["Goals"])

# Each goal kind is fixed SQL; the goal's value is a bound parameter.
MATCH_SQL = {
    "event_name": "event_name = {{g{n}:String}}",
    "event_type": "event_type = {{g{n}:String}}",
    "path": "event_type = 'pageview' AND path = {{g{n}:String}}",
    "any_conversion": "event_type = 'conversion'",
}


def goal_condition(goal: Goal, n: int) -> tuple[str, dict[str, str]]:
    return f"({MATCH_SQL[goal.match].format(n=n)})", ({f"g{n}": goal.value} if goal.match != "any_conversion" else {})


class GoalResult(BaseModel):
    goal: GoalOut
    visitors: int = Field(description="Unique visitors with a matching event.")
    conversions: int = Field(description="Matching events.")
    conversion_rate: float = Field(description="Those visitors over all visitors in the range (0-1).")
    revenue: dict[str, str] = Field(description="Per currency, decimal text.")


class Conversions(QueryEcho):
    visitors: int = Field(description="All visitors in the range (with the filters).")
    goals: list[GoalResult]

    model_config = {"json_schema_extra": {"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65", "from": "2026-05-01", "to": "2026-05-12", "timezone": "UTC",
        "filters": [], "visitors": 611,
        "goals": [{"goal": {"id": "goal_5e0c2a9b1f3d4e76", "name": "Purchases", "match": "any_conversion", "value": "",
                            "created_at": "2026-05-01T08:00:00Z"},
                   "visitors": 14, "conversions": 15, "conversion_rate": 0.0229, "revenue": {"EUR": "735.0000"}}]}]}}


@router.get(
    "/v1/projects/{project_id}/conversions",
    summary="Goal conversions",
    description="Every goal of the project over the range. For conversions by source or event name, use "
                "`breakdown` with `metrics=conversions,revenue`.",
    response_model=Conversions, response_model_by_alias=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_conversions(
    request: Request, access: StatsRead, date_from: DateFrom, date_to: DateTo,
    timezone: Timezone = "UTC", filters: Filters = None,
) -> Conversions:
    found = await scope(request, access.project, date_from, date_to, timezone, filters)

    def read() -> list[Goal]:
        with stores_of(request).db.session() as session:
            goals = project_goals(session, access.project.id)
            session.expunge_all()
            return goals

    goals = await run_in_threadpool(read)
    rows: list[Any] = [0] + [0, 0, ([], [])] * len(goals)
    if found.table is not None:
        conditions, params = where(found.filters, found.table, RANGE_SQL)
        columns = ["uniqExactIf(visitor_id, visitor_id != 0)"]
        for n, goal in enumerate(goals):
            test, bound = goal_condition(goal, n)
            params.update(bound)
            columns += [f"uniqExactIf(visitor_id, visitor_id != 0 AND {test})", f"countIf({test})",
                        f"sumMapIf({REVENUE}, revenue IS NOT NULL AND {test})"]
        sql = f"SELECT {', '.join(columns)} FROM {found.table} WHERE {RANGE_SQL} AND {conditions}"
        store = events_store(request)
        rows = list((await store.run(store.rows, sql, {**found.window.params(), **params}))[0])
    total = rows[0]
    results = []
    for n, goal in enumerate(goals):
        visitors, conversions, revenue = rows[1 + 3 * n: 4 + 3 * n]
        money = values((0,) * 8 + (revenue,), ["revenue"])["revenue"]
        results.append(GoalResult(goal=GoalOut.model_validate(goal), visitors=visitors, conversions=conversions,
                                  conversion_rate=round(visitors / total, 4) if total else 0.0, revenue=money))
    return Conversions(**found.echo(), visitors=total, goals=results)
