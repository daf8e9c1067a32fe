"""`GET /v1/projects/{id}/stats`, `/timeseries` and `/breakdown`: any metrics, totalled, over time,
or by a dimension, with filters."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from openanalytics.auth.dependencies import StatsRead
from openanalytics.openapi import error_responses
from openanalytics.query import catalog, path_sums, session_sums, visitor_sums
from openanalytics.query.aggregate import zero
from openanalytics.query.common import (
    Limit, MetricList, Offset, QueryEcho, bucket_keys, check_buckets, events_store, scope,
)
from openanalytics.query.filters import Filters
from openanalytics.query.window import DateFrom, DateTo, Timezone, previous_window

router = APIRouter(tags=["Stats"])

STATS_DEFAULT = catalog.METRICS
SERIES_DEFAULT = ["visitors", "pageviews"]
METRIC_VALUES = (
    "Metric values: counts are integers; `bounce_rate` is a share (0-1); `session_duration` is "
    "mean seconds; `pages_per_session` a mean; `revenue` maps each currency to a decimal string."
)
_EXAMPLE_METRICS = {"visitors": 611, "pageviews": 1520, "sessions": 702, "bounce_rate": 0.4231,
                    "session_duration": 94.3, "pages_per_session": 2.17, "events": 1874, "conversions": 14,
                    "revenue": {"EUR": "420.0000"}}
Compare = Annotated[Literal["previous_period"] | None, Query(
    description="Also compute the same metrics for the period of the same length just before "
                "(400 `range_beyond_retention` if the retention no longer keeps all of it).")]


class Period(BaseModel):
    date_from: Any = Field(alias="from", serialization_alias="from")
    date_to: Any = Field(alias="to", serialization_alias="to")
    results: dict[str, Any]

    model_config = {"populate_by_name": True}


class Stats(QueryEcho):
    results: dict[str, Any] = Field(description=METRIC_VALUES)
    comparison: Period | None = Field(default=None, description="With `compare=previous_period`.")

    model_config = {"json_schema_extra": {"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65", "from": "2026-05-01", "to": "2026-05-12", "timezone": "UTC",
        "filters": ["country==NL"], "results": _EXAMPLE_METRICS, "comparison": None}]}}


class Series(QueryEcho):
    interval: str
    metrics: list[str]
    results: list[dict[str, Any]] = Field(description="One row per bucket, zero-filled: `bucket` and the metrics.")

    model_config = {"json_schema_extra": {"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65", "from": "2026-05-01", "to": "2026-05-02", "timezone": "Europe/Amsterdam",
        "filters": [], "interval": "day", "metrics": ["visitors", "pageviews"],
        "results": [{"bucket": "2026-05-01", "visitors": 40, "pageviews": 95},
                    {"bucket": "2026-05-02", "visitors": 0, "pageviews": 0}]}]}}


class Breakdown(QueryEcho):
    dimension: str
    metrics: list[str]
    results: list[dict[str, Any]] = Field(description="One row per value of the dimension, the first metric's highest first.")
    next_offset: int | None = Field(description="Pass as `offset` for the next page; null on the last page.")

    model_config = {"json_schema_extra": {"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65", "from": "2026-05-01", "to": "2026-05-12", "timezone": "UTC",
        "filters": [], "dimension": "country", "metrics": ["visitors", "bounce_rate"],
        "results": [{"country": "NL", "visitors": 320, "bounce_rate": 0.41},
                    {"country": "DE", "visitors": 120, "bounce_rate": 0.5}], "next_offset": 2}]}}


async def _totals(request: Request, found, metrics: list[str], span) -> dict[str, Any]:
    if found.table is None:
        return zero(metrics)
    return await session_sums.window_totals(events_store(request), found, metrics, span)


@router.get(
    "/v1/projects/{project_id}/stats",
    summary="Totals of any metrics over a date range",
    description="All metrics unless `metrics` names some. " + METRIC_VALUES,
    response_model=Stats, response_model_by_alias=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_stats(
    request: Request, access: StatsRead, date_from: DateFrom, date_to: DateTo,
    timezone: Timezone = "UTC", metrics: MetricList = None, filters: Filters = None, compare: Compare = None,
) -> Stats:
    found = await scope(request, access.project, date_from, date_to, timezone, filters)
    wanted = catalog.metrics(metrics, STATS_DEFAULT)
    stats = Stats(**found.echo(), results=await _totals(request, found, wanted, found.window))
    if compare:
        before = previous_window(found.window, found.project.retention_days)
        stats.comparison = Period(date_from=before.first, date_to=before.last,
                                  results=await _totals(request, found, wanted, before))
    return stats


@router.get(
    "/v1/projects/{project_id}/timeseries",
    summary="Metrics per hour, day, week or month",
    description=("Every bucket of the range is listed, empty ones with zeros. Buckets are in `timezone`: "
                 "days and weeks (starting Monday) and months as dates, hours as local times with their UTC offset "
                 "(at most 31 days of hours). A session with events in two buckets counts in both. "
                 + METRIC_VALUES),
    response_model=Series, response_model_by_alias=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_timeseries(
    request: Request, access: StatsRead, date_from: DateFrom, date_to: DateTo,
    interval: Annotated[Literal["hour", "day", "week", "month"], Query(description="Bucket size.")] = "day",
    timezone: Timezone = "UTC", metrics: MetricList = None, filters: Filters = None,
) -> Series:
    found = await scope(request, access.project, date_from, date_to, timezone, filters)
    check_buckets(interval, found.window)
    wanted = catalog.metrics(metrics, SERIES_DEFAULT)
    by_bucket: dict[str, dict[str, Any]] = {}
    if found.table is not None:
        by_bucket = dict(await visitor_sums.bucketed(events_store(request), found, wanted, interval))
    results = [{"bucket": key, **(by_bucket.get(key) or zero(wanted))} for key in bucket_keys(interval, found.window)]
    return Series(**found.echo(), interval=interval, metrics=wanted, results=results)


@router.get(
    "/v1/projects/{project_id}/breakdown",
    summary="Metrics by one dimension",
    description=(f"Dimensions: {', '.join(catalog.DIMENSIONS)}. `entry_page` and `exit_page` are the first and "
                 "last pageview of each session. " + METRIC_VALUES),
    response_model=Breakdown, response_model_by_alias=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_breakdown(
    request: Request, access: StatsRead, date_from: DateFrom, date_to: DateTo,
    dimension: Annotated[str, Query(description=f"One of: {', '.join(catalog.DIMENSIONS)}.", examples=["country"])],
    timezone: Timezone = "UTC", metrics: MetricList = None, filters: Filters = None,
    limit: Limit = 100, offset: Offset = 0,
) -> Breakdown:
    catalog.dimension(dimension)
    found = await scope(request, access.project, date_from, date_to, timezone, filters)
    wanted = catalog.metrics(metrics, SERIES_DEFAULT)
    rows: list = []
    if found.table is not None:
        rows = await path_sums.grouped(events_store(request), found, wanted, dimension, limit + 1, offset)
    more = len(rows) > limit
    results = [{dimension: key, **values} for key, values in rows[:limit]]
    return Breakdown(**found.echo(), dimension=dimension, metrics=wanted, results=results,
                     next_offset=offset + limit if more else None)
