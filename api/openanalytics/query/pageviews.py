"""`GET /v1/projects/{id}/pageviews`: pageviews, visitors and events over a date range.

Dimensions come from an allow-list that maps each to a fixed SQL expression; every value
from the request is a bound parameter, so no input can change the shape of the SQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from openanalytics.auth.dependencies import StatsRead, load_project, stores_of
from openanalytics.errors import BadRequest
from openanalytics.openapi import error_responses
from openanalytics.provisioning.events_schema import database_name

router = APIRouter(tags=["Stats"])


class GroupBy(StrEnum):
    path = "path"
    day = "day"


DIMENSIONS: dict[GroupBy, str] = {GroupBy.path: "path", GroupBy.day: "toDate(timestamp)"}

METRICS_SQL = (
    "countIf(event_type = 'pageview') AS pageviews, "
    "uniqExactIf(visitor_id, event_type = 'pageview' AND visitor_id != 0) AS visitors, "
    "count() AS events"
)
RANGE_SQL = "timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}"


class Counts(BaseModel):
    pageviews: int = Field(description="Pageview events.")
    visitors: int = Field(description="Unique visitors among pageviews (exact).")
    events: int = Field(description="All tracked events (pageviews, custom events, identifies, conversions).")


class PageviewsRow(Counts):
    path: str | None = Field(default=None, description="Present when grouped by path.")
    day: date | None = Field(default=None, description="Present when grouped by day.")


class PageviewsResult(BaseModel):
    project_id: str
    date_from: date = Field(alias="from", serialization_alias="from")
    date_to: date = Field(alias="to", serialization_alias="to")
    timezone: str = "UTC"
    group_by: GroupBy | None = None
    totals: Counts
    results: list[PageviewsRow] = Field(description="One row per group; empty when not grouped.")

    model_config = {
        "populate_by_name": True,
        "json_schema_extra": {
            "examples": [
                {
                    "project_id": "prj_3f9a1c0b7d2e4a65",
                    "from": "2026-05-01",
                    "to": "2026-05-12",
                    "timezone": "UTC",
                    "group_by": "path",
                    "totals": {"pageviews": 1520, "visitors": 611, "events": 1874},
                    "results": [
                        {"path": "/", "pageviews": 900, "visitors": 480, "events": 1010},
                        {"path": "/pricing", "pageviews": 620, "visitors": 301, "events": 864},
                    ],
                }
            ]
        },
    }


def check_range(start: date, end: date, retention_days: int, today: date) -> None:
    if start > end:
        raise BadRequest("from must not be after to", "invalid_range")
    if end > today + timedelta(days=1):
        raise BadRequest("to must not be more than a day after today", "invalid_range")
    oldest = today - timedelta(days=retention_days)
    if start < oldest:
        raise BadRequest(
            f"from is beyond this project's retention of {retention_days} days (oldest: {oldest.isoformat()})",
            "range_beyond_retention",
        )


def bounds(start: date, end: date) -> dict[str, datetime]:
    return {
        "start": datetime.combine(start, time.min, UTC),
        "end": datetime.combine(end + timedelta(days=1), time.min, UTC),
    }


@router.get(
    "/v1/projects/{project_id}/pageviews",
    summary="Pageviews over a date range",
    description=(
        "Counts between `from` and `to` (inclusive dates, UTC), optionally grouped by `path` "
        "(top first) or `day` (every day of the range, zero-filled)."
    ),
    response_model=PageviewsResult,
    response_model_by_alias=True,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_pageviews(
    request: Request,
    access: StatsRead,
    date_from: Annotated[date, Query(alias="from", description="First day, YYYY-MM-DD.", examples=["2026-05-01"])],
    date_to: Annotated[date, Query(alias="to", description="Last day, YYYY-MM-DD.", examples=["2026-05-12"])],
    group_by: Annotated[GroupBy | None, Query(description="Group rows by this dimension.", examples=["path"])] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most rows when grouped by path.", examples=[10])] = 100,
) -> PageviewsResult:
    project = access.project
    check_range(date_from, date_to, project.retention_days, datetime.now(UTC).date())
    params = bounds(date_from, date_to)
    result = PageviewsResult(
        project_id=project.id, date_from=date_from, date_to=date_to, group_by=group_by,
        totals=Counts(pageviews=0, visitors=0, events=0), results=[],
    )
    if project.events_schema_version == 0:
        project = await load_project(request, project.id, fresh=True)  # the cached row may predate provisioning
    if project.events_schema_version == 0:
        # Not provisioned yet, so nothing can have been stored.
        return fill_days(result) if group_by is GroupBy.day else result
    store = stores_of(request).events
    table = f"{database_name(project.id)}.events"
    (totals,) = await store.run(store.rows, f"SELECT {METRICS_SQL} FROM {table} WHERE {RANGE_SQL}", params)
    result.totals = Counts(pageviews=totals[0], visitors=totals[1], events=totals[2])
    if group_by is not None:
        dimension = DIMENSIONS[group_by]
        sql = (
            f"SELECT {dimension} AS key, {METRICS_SQL} FROM {table} WHERE {RANGE_SQL} "
            "GROUP BY key ORDER BY pageviews DESC, events DESC, key LIMIT {limit:UInt32}"
        )
        rows = await store.run(store.rows, sql, {**params, "limit": limit if group_by is GroupBy.path else 100_000})
        result.results = [
            PageviewsRow(**{group_by.value: key}, pageviews=pv, visitors=uv, events=ev) for key, pv, uv, ev in rows
        ]
        if group_by is GroupBy.day:
            fill_days(result)
    return result


def fill_days(result: PageviewsResult) -> PageviewsResult:
    found = {row.day: row for row in result.results}
    days = (result.date_from + timedelta(days=n) for n in range((result.date_to - result.date_from).days + 1))
    result.results = [found.get(day) or PageviewsRow(day=day, pageviews=0, visitors=0, events=0) for day in days]
    return result
