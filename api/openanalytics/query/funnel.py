"""`GET /v1/projects/{id}/funnel`: how many visitors went through ordered steps within a window.

A step is a pageview of a path (`path==/pricing`) or an event by name (`event_name==signup`).
ClickHouse's windowFunnel finds, per visitor, the furthest step reached in order with every
step inside the conversion window from the first; a visitor counts for each step up to it.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from openanalytics.auth.dependencies import StatsRead
from openanalytics.errors import BadRequest
from openanalytics.openapi import error_responses
from openanalytics.query.aggregate import RANGE_SQL
from openanalytics.query.common import QueryEcho, events_store, scope
from openanalytics.query.filters import Filters, where
from openanalytics.query.window import DateFrom, DateTo, Timezone

router = APIRouter(tags=["Goals"])

MAX_STEPS = 10
StepText = Annotated[str, StringConstraints(pattern=r"^(path|event_name)==.+$", max_length=520)]
_STEP = re.compile(r"^(?P<kind>path|event_name)==(?P<value>.{1,500})$", re.S)
STEP_SQL = {"path": "event_type = 'pageview' AND path = {{s{n}:String}}", "event_name": "event_name = {{s{n}:String}}"}


class Step(BaseModel):
    step: str
    visitors: int = Field(description="Visitors who reached this step in order.")
    conversion_rate: float = Field(description="Of the first step's visitors (0-1).")
    step_rate: float = Field(description="Of the previous step's visitors (0-1); 1 for the first.")


class Funnel(QueryEcho):
    window_seconds: int
    steps: list[Step]

    model_config = {"json_schema_extra": {"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65", "from": "2026-05-01", "to": "2026-05-12", "timezone": "UTC",
        "filters": [], "window_seconds": 86400,
        "steps": [{"step": "path==/pricing", "visitors": 300, "conversion_rate": 1.0, "step_rate": 1.0},
                  {"step": "event_name==signup", "visitors": 45, "conversion_rate": 0.15, "step_rate": 0.15}]}]}}


def parse_steps(texts: list[str]) -> list[tuple[str, str]]:
    if not 2 <= len(texts) <= MAX_STEPS:
        raise BadRequest(f"a funnel has 2 to {MAX_STEPS} steps", "invalid_funnel")
    steps = []
    for text in texts:
        match = _STEP.match(text)
        if match is None:
            raise BadRequest(f"step {text[:80]!r} is not path==<path> or event_name==<name>", "invalid_funnel")
        steps.append((match["kind"], match["value"]))
    return steps


@router.get(
    "/v1/projects/{project_id}/funnel",
    summary="Funnel: visitors through ordered steps",
    response_model=Funnel, response_model_by_alias=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_funnel(
    request: Request, access: StatsRead, date_from: DateFrom, date_to: DateTo,
    step: Annotated[list[StepText], Query(
        min_length=2, max_length=MAX_STEPS, examples=[["path==/pricing", "event_name==signup"]],
        description=f"2 to {MAX_STEPS}, in order: `path==<path>` (a pageview) or `event_name==<name>`.")],
    window: Annotated[int, Query(ge=1, le=30 * 86400, examples=[86400], description=(
        "Seconds from the first step to the last. Browser visitors are anonymous per day (their id changes "
        "at midnight UTC, by design), so their steps link within a day's visit; server-side events with a "
        "`user_id` link over the whole window."))] = 86400,
    timezone: Timezone = "UTC", filters: Filters = None,
) -> Funnel:
    steps = parse_steps(step)
    found = await scope(request, access.project, date_from, date_to, timezone, filters)
    reached = [0] * len(steps)
    if found.table is not None:
        conditions, params = where(found.filters, found.table, RANGE_SQL)
        tests = []
        for n, (kind, value) in enumerate(steps):
            tests.append(f"({STEP_SQL[kind].format(n=n)})")
            params[f"s{n}"] = value
        sql = (
            "SELECT level, count() FROM (SELECT visitor_id, "
            f"windowFunnel({{window:UInt64}})(toDateTime(timestamp), {', '.join(tests)}) AS level "
            f"FROM {found.table} WHERE {RANGE_SQL} AND {conditions} AND visitor_id != 0 AND ({' OR '.join(tests)}) "
            "GROUP BY visitor_id) WHERE level > 0 GROUP BY level"
        )
        store = events_store(request)
        for level, count in await store.run(store.rows, sql, {**found.window.params(), **params, "window": window}):
            for i in range(level):
                reached[i] += count
    results = []
    for i, (kind, value) in enumerate(steps):
        first, before = reached[0], reached[i - 1] if i else reached[0]
        results.append(Step(step=f"{kind}=={value}", visitors=reached[i],
                            conversion_rate=round(reached[i] / first, 4) if first else 0.0,
                            step_rate=round(reached[i] / before, 4) if before else 0.0))
    return Funnel(**found.echo(), window_seconds=window, steps=results)
