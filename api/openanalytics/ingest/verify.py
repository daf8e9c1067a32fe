"""`GET /v1/projects/{id}/verify`: what arrived at /collect recently, why anything was
ignored, and what reached ClickHouse — the strict counterpart of the silent /collect."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from openanalytics.auth.dependencies import StatsRead, load_project, stores_of
from openanalytics.ingest import arrivals
from openanalytics.openapi import error_responses
from openanalytics.provisioning.events_schema import database_name

router = APIRouter(tags=["Verify installation"])


class Arrival(BaseModel):
    received_at: datetime
    event_type: str
    event_name: str | None
    url: str
    outcome: str = Field(description="accepted, or why it was ignored: invalid, disallowed_domain, bot, "
                                     "rate_limited_ip, rate_limited_site, overloaded (the ingest queue was full)")
    event_id: str | None = Field(description="For accepted events.")
    stored: bool | None = Field(description="For accepted events: already in ClickHouse (false: still queued).")


class Verification(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65",
        "site_id": "site_8c1d2e3f4a5b6c7d",
        "arrivals": [{"received_at": "2026-11-26T15:02:11.120Z", "event_type": "pageview", "event_name": None,
                      "url": "https://example.com/", "outcome": "accepted",
                      "event_id": "4e8c6f69-0722-465a-aa93-4f45e4bd5cfe", "stored": True}],
        "ignored_today": {"bot": 3, "disallowed_domain": 1},
        "stored_last_hour": 42,
    }]})

    project_id: str
    site_id: str
    arrivals: list[Arrival] = Field(description="The last 100 arrivals of the last day, newest first.")
    ignored_today: dict[str, int] = Field(description="Ignored events today (UTC) by reason.")
    stored_last_hour: int = Field(description="Events of this project stored in ClickHouse in the last hour.")


@router.get(
    "/v1/projects/{project_id}/verify",
    summary="Verify installation",
    description="Recent /collect arrivals for this project's site (accepted or ignored, with the reason) "
    "and whether accepted ones reached ClickHouse. Unknown site ids and unreadable bodies cannot be "
    "attributed to a project and do not appear.",
    response_model=Verification,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def verify(request: Request, access: StatsRead) -> Verification:
    stores = stores_of(request)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    recent, drops = await arrivals.recent(stores.redis, access.project.id, day)
    # The list is trimmed by count; a quiet site's old arrivals are not shown.
    cutoff = (datetime.now(UTC) - timedelta(days=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    recent = [a for a in recent if a["received_at"] >= cutoff]
    ids = [a["event_id"] for a in recent if a["event_id"]]
    stored_ids: set[str] = set()
    stored_last_hour = 0
    project = access.project
    if project.events_schema_version == 0:
        project = await load_project(request, project.id, fresh=True)
    if project.events_schema_version > 0:
        table = f"{database_name(project.id)}.events"
        store = stores.events
        if ids:
            # Arrivals are at most a day old: bounding the time lets the sort key skip the rest.
            sql = (f"SELECT toString(event_id) FROM {table} WHERE timestamp >= now64(3) - INTERVAL 2 DAY "
                   "AND event_id IN {ids:Array(UUID)}")
            rows = await store.run(store.rows, sql, {"ids": ids})
            stored_ids = {r[0] for r in rows}
        ((stored_last_hour,),) = await store.run(
            store.rows, f"SELECT count() FROM {table} WHERE timestamp >= now64(3) - INTERVAL 1 DAY "
            "AND received_at >= now64(3) - INTERVAL 1 HOUR"
        )
    return Verification(
        project_id=project.id,
        site_id=project.site_id,
        arrivals=[Arrival(**a, stored=(a["event_id"] in stored_ids) if a["event_id"] else None) for a in recent],
        ignored_today=drops,
        stored_last_hour=stored_last_hour,
    )
