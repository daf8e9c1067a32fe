"""`GET /v1/projects/{id}/pageviews`: pageviews, visitors and events over a date range, totalled
and optionally grouped by any dimension or time bucket (the seed's example query)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from openanalytics.auth.dependencies import StatsRead
from openanalytics.openapi import error_responses
from openanalytics.query import catalog, path_sums, session_sums
from openanalytics.query.aggregate import zero
from openanalytics.query.common import Limit, Offset, QueryEcho, bucket_keys, check_buckets, events_store, scope
from openanalytics.query.filters import Filters
from openanalytics.query.window import DateFrom, DateTo, Timezone

router = APIRouter(tags=["Stats"])

METRICS = ["pageviews", "visitors", "events"]
GROUPS = [*catalog.DIMENSIONS, *catalog.BUCKETS]


class Counts(BaseModel):
    pageviews: int = Field(description="Pageview events.")
    visitors: int = Field(description="Unique visitors among the matching events (exact).")
    events: int = Field(description="All tracked events (pageviews, custom events, identifies, conversions).")


class PageviewsResult(QueryEcho):
    group_by: str | None = None
    totals: Counts
    results: list[dict[str, Any]] = Field(
        description="One row per group: the group's value under its name (`path`, `day`, ...) and the counts. "
                    "Time buckets list every bucket of the range (zero-filled, in order); other groups the most "
                    "pageviews first. Empty when not grouped.")
    next_offset: int | None = Field(default=None, description="Pass as `offset` for the next page; null on the last.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "project_id": "prj_3f9a1c0b7d2e4a65",
                    "from": "2026-05-01",
                    "to": "2026-05-12",
                    "timezone": "UTC",
                    "filters": [],
                    "group_by": "path",
                    "totals": {"pageviews": 1520, "visitors": 611, "events": 1874},
                    "results": [
                        {"path": "/", "pageviews": 900, "visitors": 480, "events": 1010},
                        {"path": "/pricing", "pageviews": 620, "visitors": 301, "events": 864},
                    ],
                    "next_offset": None,
                }
            ]
        },
    }


@router.get(
    "/v1/projects/{project_id}/pageviews",
    summary="Pageviews over a date range",
    description=(
        "Counts between `from` and `to` (inclusive dates in `timezone`), optionally grouped by a dimension "
        f"({', '.join(catalog.DIMENSIONS)}) or a time bucket (hour, day, week, month)."
    ),
    response_model=PageviewsResult,
    response_model_by_alias=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_pageviews(
    request: Request,
    access: StatsRead,
    date_from: DateFrom,
    date_to: DateTo,
    group_by: Annotated[str | None, Query(description=f"One of: {', '.join(GROUPS)}.", examples=["path"])] = None,
    timezone: Timezone = "UTC",
    filters: Filters = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PageviewsResult:
    if group_by is not None:
        catalog.dimension(group_by, buckets=True)
    found = await scope(request, access.project, date_from, date_to, timezone, filters)
    check_buckets(group_by, found.window)
    result = PageviewsResult(**found.echo(), group_by=group_by, totals=Counts(**zero(METRICS)), results=[])
    store = events_store(request)
    rows: list = []
    if found.table is not None:
        result.totals = Counts(**await session_sums.window_totals(store, found, METRICS, found.window))
        if group_by is not None:
            bucketed = group_by in catalog.BUCKETS
            rows = await path_sums.grouped(store, found, METRICS, group_by, None if bucketed else limit + 1,
                                           0 if bucketed else offset)
    if group_by in catalog.BUCKETS:
        found_buckets = dict(rows)
        result.results = [{group_by: key, **(found_buckets.get(key) or zero(METRICS))}
                          for key in bucket_keys(group_by, found.window)]
    elif group_by is not None:
        result.results = [{group_by: key, **counts} for key, counts in rows[:limit]]
        result.next_offset = offset + limit if len(rows) > limit else None
    return result
