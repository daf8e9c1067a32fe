"""`POST /v1/projects/{id}/events`: strict server-side ingest, answered 202 once queued."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body, Request
from pydantic import Field

from openanalytics.auth.dependencies import EventsWrite, stores_of
from openanalytics.errors import BadRequest
from openanalytics.ingest import buffer
from openanalytics.ingest.rows import event_row
from openanalytics.ingest.schemas import EventIn, EventsQueued
from openanalytics.ingest.visitor import user_visitor_hash
from openanalytics.openapi import error_responses

router = APIRouter(tags=["Events"])

FUTURE_TOLERANCE_MS = 24 * 3600 * 1000


def check_timestamps(events: list[EventIn], retention_days: int, now_ms: int) -> None:
    oldest = now_ms - retention_days * 24 * 3600 * 1000
    for index, event in enumerate(events):
        if event.timestamp is None:
            continue
        where = f"events[{index}].timestamp" if len(events) > 1 else "timestamp"
        if event.timestamp < oldest:
            raise BadRequest(
                f"{where} is older than this project's retention of {retention_days} days", "timestamp_out_of_range"
            )
        if event.timestamp > now_ms + FUTURE_TOLERANCE_MS:
            raise BadRequest(f"{where} is more than a day in the future", "timestamp_out_of_range")


@router.post(
    "/v1/projects/{project_id}/events",
    status_code=202,
    summary="Send server-side events",
    description=(
        "Queues one event (a JSON object) or a batch (a JSON array of up to 1,000 objects). "
        "Validation is strict: any invalid event rejects the whole request with 400 and nothing is queued."
    ),
    response_model=EventsQueued,
    responses=error_responses(400, 401, 403, 404),
)
async def send_events(
    request: Request,
    access: EventsWrite,
    payload: Annotated[EventIn | Annotated[list[EventIn], Field(min_length=1, max_length=1000)], Body()],
) -> EventsQueued:
    events = payload if isinstance(payload, list) else [payload]
    stores = stores_of(request)
    if len(events) > stores.settings.events_max_batch:
        raise BadRequest(f"at most {stores.settings.events_max_batch} events per request")
    now_ms = int(time.time() * 1000)
    check_timestamps(events, access.project.retention_days, now_ms)
    rows = [event_row(access.project.id, event, now_ms, "server") for event in events]
    for row in rows:
        if row["user_id"]:
            row["visitor_id"] = user_visitor_hash(access.project.id, row["user_id"])
    await buffer.append(stores.redis, stores.settings.stream_key, rows)
    return EventsQueued(count=len(rows), event_ids=[row["event_id"] for row in rows])
