"""`GET /v1/projects/{id}/events` and `/sessions`: paginated lists, newest first, with filters.

Stored events hold no raw IP or User-Agent (only what was derived from them), so neither can
appear here. Visitor and session ids are 64-bit and listed as strings: JavaScript numbers
would round them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from openanalytics.auth.dependencies import StatsRead
from openanalytics.ingest.schemas import EventType
from openanalytics.openapi import error_responses
from openanalytics.query.aggregate import RANGE_SQL, Aggregate, zero
from openanalytics.query.aggregate import values as metric_values  # `values` names rows below
from openanalytics.query.catalog import SESSION_DIMENSIONS
from openanalytics.query.common import Limit, Offset, QueryEcho, events_store, scope
from openanalytics.query.filters import Filter, Filters, where
from openanalytics.query.window import DateFrom, DateTo, Timezone
from openanalytics.stores.clickhouse import as_utc, money

router = APIRouter(tags=["Stats"])

EVENT_FIELDS = [
    "event_id", "event_type", "event_name", "timestamp", "received_at", "origin", "user_id", "visitor_id",
    "session_id", "url", "hostname", "path", "referrer", "referrer_source", "utm_source", "utm_medium",
    "utm_campaign", "utm_term", "utm_content", "country", "region", "city", "device", "browser",
    "browser_version", "os", "os_version", "screen_width", "language", "properties", "revenue", "currency",
]
SESSION_TOTALS = ["sessions", "visitors", "pageviews", "bounce_rate", "session_duration", "pages_per_session"]


class EventOut(BaseModel):
    event_id: str
    event_type: str
    event_name: str
    timestamp: datetime
    received_at: datetime
    origin: str = Field(description="collect (browser) or server")
    user_id: str
    visitor_id: str = Field(description="64-bit, as text; \"0\" when unknown")
    session_id: str = Field(description="64-bit, as text; \"0\" for events outside a browser session")
    url: str
    hostname: str
    path: str
    referrer: str
    source: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_term: str
    utm_content: str
    country: str
    region: str
    city: str
    device: str
    browser: str
    browser_version: str
    os: str
    os_version: str
    screen_width: int
    language: str
    properties: dict[str, str]
    revenue: str | None = Field(description="Decimal as text")
    currency: str


_ECHO = {"project_id": "prj_3f9a1c0b7d2e4a65", "from": "2026-05-01", "to": "2026-05-12", "timezone": "UTC", "filters": []}
_EVENT = {
    "event_id": "0b9e3f5c-1d2a-4c8e-9f00-6a7b8c9d0e1f", "event_type": "conversion", "event_name": "purchase",
    "timestamp": "2026-05-11T21:46:40Z", "received_at": "2026-05-11T21:46:41.120Z", "origin": "server",
    "user_id": "sha256_hash_of_user_id", "visitor_id": "4611686018427387905", "session_id": "0",
    "url": "https://example.com/thanks", "hostname": "example.com", "path": "/thanks", "referrer": "", "source": "",
    "utm_source": "", "utm_medium": "", "utm_campaign": "", "utm_term": "", "utm_content": "", "country": "",
    "region": "", "city": "", "device": "", "browser": "", "browser_version": "", "os": "", "os_version": "",
    "screen_width": 0, "language": "", "properties": {"plan": "pro"}, "revenue": "49.9900", "currency": "USD",
}


class EventPage(QueryEcho):
    results: list[EventOut]
    next_offset: int | None

    model_config = {"json_schema_extra": {"examples": [{**_ECHO, "results": [_EVENT], "next_offset": None}]}}


class SessionOut(BaseModel):
    session_id: str
    visitor_id: str
    started: datetime
    ended: datetime
    duration: float = Field(description="Seconds from the first to the last event")
    pageviews: int
    events: int
    entry_page: str
    exit_page: str
    source: str
    country: str
    device: str
    browser: str
    os: str


class SessionPage(QueryEcho):
    totals: dict[str, Any] = Field(description="Over every matching session, not just this page.")
    results: list[SessionOut]
    next_offset: int | None

    model_config = {"json_schema_extra": {"examples": [{
        **_ECHO,
        "totals": {"sessions": 702, "visitors": 611, "pageviews": 1520, "bounce_rate": 0.4231,
                   "session_duration": 94.3, "pages_per_session": 2.17},
        "results": [{"session_id": "5764607523034234881", "visitor_id": "2305843009213693953",
                     "started": "2026-05-12T09:58:01.250Z", "ended": "2026-05-12T10:01:13.020Z", "duration": 191.77,
                     "pageviews": 3, "events": 4, "entry_page": "/", "exit_page": "/pricing", "source": "Google",
                     "country": "NL", "device": "desktop", "browser": "Chrome", "os": "Mac OS X"}],
        "next_offset": 1}]}}


def _matching_sessions(filters: list[Filter], table: str) -> tuple[str, dict]:
    if not filters:
        return "", {}
    conditions, params = where(filters, table, RANGE_SQL)
    return f" AND session_id IN (SELECT session_id FROM {table} WHERE {RANGE_SQL} AND {conditions})", params


@router.get(
    "/v1/projects/{project_id}/events",
    summary="List stored events",
    description="Newest first. Filter by `event_type`, `event_name` and any `filter`.",
    response_model=EventPage, response_model_by_alias=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def list_events(
    request: Request, access: StatsRead, date_from: DateFrom, date_to: DateTo,
    event_type: Annotated[EventType | None, Query(description="Only this type.")] = None,
    event_name: Annotated[str | None, Query(max_length=200, description="Only events with this name.")] = None,
    timezone: Timezone = "UTC", filters: Filters = None, limit: Limit = 100, offset: Offset = 0,
) -> EventPage:
    found = await scope(request, access.project, date_from, date_to, timezone, filters)
    page = EventPage(**found.echo(), results=[], next_offset=None)
    if found.table is None:
        return page
    extra = [Filter("event_type", "==", event_type.value)] if event_type else []
    extra += [Filter("event_name", "==", event_name)] if event_name is not None else []
    conditions, params = where(found.filters + extra, found.table, RANGE_SQL)
    columns = ", ".join(f"toString({c})" if c in ("event_id", "visitor_id", "session_id") else c for c in EVENT_FIELDS)
    sql = (f"SELECT {columns} FROM {found.table} WHERE {RANGE_SQL} AND {conditions} "
           "ORDER BY timestamp DESC, event_id DESC LIMIT {limit:UInt32} OFFSET {offset:UInt32}")
    store = events_store(request)
    rows = await store.run(store.rows, sql, {**found.window.params(), **params, "limit": limit + 1, "offset": offset})
    page.results = [EventOut(**_event(row)) for row in rows[:limit]]
    page.next_offset = offset + limit if len(rows) > limit else None
    return page


def _event(row: tuple) -> dict[str, Any]:
    values = dict(zip(EVENT_FIELDS, row, strict=True))
    values["timestamp"], values["received_at"] = as_utc(values["timestamp"]), as_utc(values["received_at"])
    values["source"] = values.pop("referrer_source")
    revenue = values["revenue"]
    values["revenue"] = money(revenue) if revenue is not None else None
    return values


@router.get(
    "/v1/projects/{project_id}/sessions",
    summary="List sessions, with their totals",
    description=("Sessions with at least one event in the range that matches every `filter`, newest first. "
                 "A session's numbers cover all its events in the range."),
    response_model=SessionPage, response_model_by_alias=True,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def list_sessions(
    request: Request, access: StatsRead, date_from: DateFrom, date_to: DateTo,
    timezone: Timezone = "UTC", filters: Filters = None, limit: Limit = 100, offset: Offset = 0,
) -> SessionPage:
    found = await scope(request, access.project, date_from, date_to, timezone, filters)
    page = SessionPage(**found.echo(), totals=zero(SESSION_TOTALS), results=[], next_offset=None)
    if found.table is None:
        return page
    store = events_store(request)
    aggregate = Aggregate(found.table, found.window, found.filters, SESSION_TOTALS, sessions_only=True)
    totals = await store.run(store.rows, *aggregate.sql())
    if totals:  # each listed session counts all of its pageviews: so do the totals
        page.totals = metric_values(totals[0][1:], SESSION_TOTALS, whole_sessions=True)
    matching, params = _matching_sessions(found.filters, found.table)
    first = "argMinIf({0}, timestamp, event_type = 'pageview')"
    sql = (
        "SELECT toString(session_id), toString(any(visitor_id)), min(timestamp) AS started, max(timestamp), "
        "countIf(event_type = 'pageview'), count(), "
        f"{SESSION_DIMENSIONS['entry_page']}, {SESSION_DIMENSIONS['exit_page']}, "
        f"{first.format('referrer_source')}, any(country), any(device), any(browser), any(os) "
        f"FROM {found.table} WHERE {RANGE_SQL} AND session_id != 0{matching} "
        "GROUP BY session_id ORDER BY started DESC, session_id DESC LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
    )
    rows = await store.run(store.rows, sql, {**found.window.params(), **params, "limit": limit + 1, "offset": offset})
    names = ["session_id", "visitor_id", "started", "ended", "pageviews", "events", "entry_page", "exit_page",
             "source", "country", "device", "browser", "os"]
    for row in rows[:limit]:
        values = dict(zip(names, row, strict=True))
        values["started"], values["ended"] = as_utc(values["started"]), as_utc(values["ended"])
        values["duration"] = round((values["ended"] - values["started"]).total_seconds(), 3)
        page.results.append(SessionOut(**values))
    page.next_offset = offset + limit if len(rows) > limit else None
    return page
