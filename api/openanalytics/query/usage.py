"""`GET /v1/projects/{id}/usage`: tracked events per calendar month (UTC, by arrival time).

Counted in ClickHouse as events are stored (the `usage` table, see events_schema.py), so it
is exact (a retried insert is not counted twice) and stays what was tracked after a privacy
deletion or the retention's expiry; every tracked event type counts. Events that arrived
before that table existed are counted from the events still stored.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from openanalytics.auth.dependencies import StatsRead, load_project, stores_of
from openanalytics.openapi import error_responses
from openanalytics.provisioning.events_schema import USAGE_VERSION, database_name

router = APIRouter(tags=["Usage"])


class MonthUsage(BaseModel):
    month: str = Field(examples=["2026-11"])
    events: int
    by_type: dict[str, int] = Field(description="pageview, event, identify, conversion")


class Usage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65",
        "monthly_quota": 1000000,
        "months": [{"month": "2026-11", "events": 1874,
                    "by_type": {"pageview": 1520, "event": 300, "identify": 40, "conversion": 14}}],
    }]})

    project_id: str
    monthly_quota: int = Field(description="The plan's tracked events per month (with overrides). Reported, "
                                           "not enforced: events over it are still accepted and stored.")
    months: list[MonthUsage] = Field(description="Newest first; months without events are listed with 0.")


def usage_sql(db: str, counted: bool = True) -> str:
    """(month, event type, events) from {since:Date} on; `counted`: the database has the usage table."""
    stored = (f"SELECT toStartOfMonth(received_at) AS month, event_type, count() AS n FROM {db}.events "
              "WHERE received_at >= {since:Date}")
    if not counted:  # not migrated yet: what is stored is all there is
        return f"SELECT formatDateTime(month, '%Y-%m'), event_type, n FROM ({stored} GROUP BY month, event_type)"
    return (
        "SELECT formatDateTime(month, '%Y-%m') AS m, event_type, sum(n) FROM ("
        f"SELECT month, event_type, sum(events) AS n FROM {db}.usage WHERE month >= {{since:Date}} "
        f"GROUP BY month, event_type UNION ALL {stored} AND received_at < (SELECT max(at) FROM {db}.usage_since) "
        "GROUP BY month, event_type) GROUP BY m, event_type"
    )


def _months_back(today: date, count: int) -> list[str]:
    months, year, month = [], today.year, today.month
    for _ in range(count):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months


@router.get(
    "/v1/projects/{project_id}/usage",
    summary="Monthly usage",
    response_model=Usage,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_usage(
    request: Request,
    access: StatsRead,
    months: Annotated[int, Query(ge=1, le=24, description="How many months, this one included.", examples=[3])] = 3,
) -> Usage:
    wanted = _months_back(datetime.now(UTC).date(), months)
    counts: dict[str, dict[str, int]] = {m: {} for m in wanted}
    project = access.project
    if project.events_schema_version == 0:
        project = await load_project(request, project.id, fresh=True)
    if project.events_schema_version > 0:
        store = stores_of(request).events
        sql = usage_sql(database_name(project.id), project.events_schema_version >= USAGE_VERSION)
        since = date.fromisoformat(wanted[-1] + "-01")
        for month, event_type, n in await store.run(store.rows, sql, {"since": since}):
            if month in counts:
                counts[month][event_type] = n
    return Usage(
        project_id=project.id,
        monthly_quota=project.monthly_events,
        months=[MonthUsage(month=m, events=sum(c.values()), by_type=c) for m, c in counts.items()],
    )
