"""`POST /v1/projects/{id}/events`: strict server-side ingest, answered 202 once queued.

The body is read only after the key was checked, with a size limit, and validated here
rather than by FastAPI, so errors name the failing event (`events[3].event_name: ...`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError

from openanalytics import telemetry
from openanalytics.auth.dependencies import EventsWrite, stores_of
from openanalytics.errors import ApiError, BadRequest, Unavailable
from openanalytics.ingest import buffer
from openanalytics.ingest.rows import event_row
from openanalytics.ingest.schemas import EventIn, EventsQueued, read_json
from openanalytics.ingest.visitor import user_visitor_hash
from openanalytics.openapi import error_responses

log = logging.getLogger(__name__)
router = APIRouter(tags=["Events"])

FUTURE_TOLERANCE_MS = 24 * 3600 * 1000


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    return bytes(body)


def _describe(error: dict[str, Any], prefix: str) -> str:
    location = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{location.lstrip('.') or 'body'}: {message}"


def parse_events(body: bytes, max_batch: int) -> list[EventIn]:
    try:
        data = read_json(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON", "malformed_json") from None
    if isinstance(data, dict):
        items, batch = [data], False
    elif isinstance(data, list) and 1 <= len(data) <= max_batch:
        items, batch = data, True
    else:
        raise BadRequest(f"send one event object or an array of 1 to {max_batch} event objects")
    events = []
    for index, item in enumerate(items):
        prefix = f"events[{index}]" if batch else ""
        if not isinstance(item, dict):
            raise BadRequest(f"{prefix or 'body'}: must be an object")
        try:
            events.append(EventIn.model_validate(item))
        except ValidationError as exc:
            raise BadRequest("; ".join(_describe(e, prefix) for e in exc.errors()[:5])) from None
    return events


def _count(body: bytes) -> int:
    """How many events a refused body held, for the metric (1 if it is not a JSON array)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 1
    return len(data) if isinstance(data, list) and data else 1


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


def request_body_spec(max_batch: int) -> dict[str, Any]:
    event = {"$ref": "#/components/schemas/EventIn"}
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [event, {"type": "array", "items": event, "minItems": 1, "maxItems": max_batch}]},
                "examples": {
                    "one": {"summary": "One event", "value": EventIn.model_config["json_schema_extra"]["examples"][0]},
                    "batch": {
                        "summary": "A batch",
                        "value": [
                            {"event_type": "pageview", "url": "https://example.com/pricing", "user_id": "u_7f3a"},
                            {"event_type": "event", "event_name": "signup", "user_id": "u_7f3a"},
                        ],
                    },
                },
            }
        },
    }


@router.post(
    "/v1/projects/{project_id}/events",
    status_code=202,
    summary="Send server-side events",
    description=(
        "Queues one event (a JSON object) or a batch (a JSON array of up to `OA_EVENTS_MAX_BATCH`, "
        "default 1,000). Validation is strict: one invalid event rejects the whole request with 400 "
        "and nothing is queued. A 202 means the events are in the ingest queue, which survives a restart "
        "of any process and of Redis (README: Durability and failures). 503 `queue_full` (with "
        "`Retry-After`): the queue is at its bound and nothing was queued; 503 `unavailable`: Redis is "
        "unreachable and nothing was queued; 503 `not_confirmed` (only with OA_EVENTS_WAIT_*): queued, "
        "but not confirmed on disk or replicas in time."
    ),
    response_model=EventsQueued,
    responses=error_responses(400, 401, 403, 404, 413, 429, 503),
)
async def send_events(request: Request, access: EventsWrite) -> EventsQueued:
    stores = stores_of(request)
    settings = stores.settings
    body = await read_limited(request, settings.events_max_body_bytes)
    now_ms = int(time.time() * 1000)
    try:
        events = parse_events(body, settings.events_max_batch)
        check_timestamps(events, access.project.retention_days, now_ms)
    except BadRequest:
        if telemetry.enabled():
            telemetry.SERVER_EVENTS.add(_count(body), {"outcome": "rejected"})
        raise
    rows = [event_row(access.project.id, event, now_ms, "server") for event in events]
    parent = telemetry.traceparent() if telemetry.enabled() else None
    for row in rows:
        if row["user_id"]:
            row["visitor_id"] = user_visitor_hash(access.project.id, row["user_id"])
        if parent:  # the flush span links back to this request
            row["tp"] = parent
    watch, queue = request.app.state.redis_watch, request.app.state.buffer
    try:
        if watch.memory_full:
            raise buffer.QueueFull("Redis is too full")
        if queue.confirmation.wanted and watch.facts is None:  # before the watch's first reading
            await watch.refresh()
        await queue.append(rows, watch.facts)
    except buffer.QueueFull:
        telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "overloaded"})
        raise Unavailable("The ingest queue is full (events are arriving faster than they are stored); nothing "
                          "was queued. Retry with backoff.", "queue_full", headers={"Retry-After": "30"}) from None
    except buffer.BufferUnavailable:
        telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "unavailable"})
        raise Unavailable("The ingest buffer is unreachable; nothing was queued. Retry with backoff.",
                          headers={"Retry-After": "5"}) from None
    except buffer.NotConfirmed as exc:
        telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "unconfirmed"})
        log.warning("server-side events queued but not confirmed: %s", exc)
        raise Unavailable("The events were queued, but Redis did not confirm them on disk or on its replicas in "
                          "time (OA_EVENTS_WAIT_*); they will most likely be stored, and sending them again may "
                          "store them twice.", "not_confirmed", headers={"Retry-After": "5"}) from None
    telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "accepted"})
    return EventsQueued(count=len(rows), event_ids=[row["event_id"] for row in rows])
