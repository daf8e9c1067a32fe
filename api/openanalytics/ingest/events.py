"""`POST /v1/projects/{id}/events`: strict server-side ingest, answered 202 once queued.

The body is read only after the key was checked, with a size limit, and validated here
rather than by FastAPI, so errors name the failing event (`events[3].event_name: ...`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request, Response
from pydantic import ValidationError

from openanalytics import telemetry
from openanalytics.auth.dependencies import EventsWrite, stores_of
from openanalytics.errors import ApiError, BadRequest, Conflict, Unavailable
from openanalytics.ingest import buffer
from openanalytics.ingest.rows import derived_event_id, event_row
from openanalytics.ingest.schemas import EventIn, EventsQueued, read_json
from openanalytics.ingest.visitor import user_visitor_hash
from openanalytics.openapi import error_responses

log = logging.getLogger(__name__)
router = APIRouter(tags=["Events"])

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$",
    description="Any 1 to 255 printable ASCII characters, new for each new request (a UUID, say). The same "
                "key sent again within a day, with the same events, is answered as the first time and queues "
                "nothing twice.", examples=["5f0c7a52-8b1e-4c39-9d2f-0a6e3b1c4d5e"])]

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
        "but not confirmed on disk or replicas in time. With an `Idempotency-Key` header (1 to 255 "
        "printable ASCII characters, kept a day per project) a request sent again is answered as the "
        "first (`Idempotent-Replayed: true`, the same event ids) and queues nothing twice; the same key "
        "with other events is a 409 `idempotency_key_reused`."
    ),
    response_model=EventsQueued,
    responses=error_responses(400, 401, 403, 404, 409, 413, 429, 503),
)
async def send_events(request: Request, response: Response, access: EventsWrite,
                      sent_key: IdempotencyKey = None) -> EventsQueued:
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
    key, key_ms = idempotency_key(sent_key, access.project.id)
    rows = [event_row(access.project.id, event, now_ms, "server") for event in events]
    parent = telemetry.traceparent() if telemetry.enabled() else None
    for index, row in enumerate(rows):
        if sent_key is not None:  # the same ids whenever the request is sent again with its key
            row["event_id"] = derived_event_id(f"{key}\x1f{index}")
        if row["user_id"]:
            row["visitor_id"] = user_visitor_hash(access.project.id, row["user_id"])
        if parent:  # the flush span links back to this request
            row["tp"] = parent
    watch, queue = request.app.state.redis_watch, request.app.state.buffer
    try:
        if watch.memory_full:
            raise buffer.QueueFull("Redis is too full")
        if queue.confirmation.wanted and watch.facts is None:  # before the watch's first reading
            await watch.refresh_quietly()
        queued = await queue.append(rows, key, fingerprint(events), key_ms, watch.facts)
    except buffer.QueueFull:
        telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "overloaded"})
        raise Unavailable("The ingest queue is full (events are arriving faster than they are stored); nothing "
                          "was queued. Retry with backoff.", "queue_full", headers={"Retry-After": "30"}) from None
    except buffer.KeyReused:
        telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "rejected"})
        raise Conflict("This Idempotency-Key was sent before with other events; nothing was queued. Use a new key "
                       "for new events.", "idempotency_key_reused") from None
    except buffer.CannotConfirm as exc:
        telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "unavailable"})
        log.error("server-side events refused: OA_EVENTS_WAIT_* cannot be confirmed: %s", exc)
        raise Unavailable(f"Nothing was queued: this server is set to confirm events on disk or on replicas, "
                          f"which Redis cannot do now ({exc}).", headers={"Retry-After": "5"}) from None
    except buffer.BufferUnavailable:
        telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "unavailable"})
        raise Unavailable("The ingest queue is unreachable; nothing was queued, unless Redis went away while taking "
                          "the events. Send them again with the same Idempotency-Key header to have them stored "
                          "once whatever happened.", headers={"Retry-After": "5"}) from None
    except buffer.NotConfirmed as exc:
        telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "unconfirmed"})
        log.warning("server-side events queued but not confirmed: %s", exc)
        raise Unavailable("The events were queued, but Redis did not confirm them on disk or on its replicas in "
                          "time (OA_EVENTS_WAIT_*); they will most likely be stored. Send them again with the same "
                          "Idempotency-Key header to wait for the confirmation again (they are not queued twice); "
                          "without one, sending them again may store them twice.", "not_confirmed",
                          headers={"Retry-After": "5"}) from None
    telemetry.SERVER_EVENTS.add(len(rows), {"outcome": "accepted" if queued else "replayed"})
    response.headers["Idempotent-Replayed"] = "false" if queued else "true"
    return EventsQueued(count=len(rows), event_ids=[row["event_id"] for row in rows])


def idempotency_key(sent: str | None, project_id: str) -> tuple[str, int]:
    """The Redis key that makes this request's append happen once, and how long it is kept: the client's
    Idempotency-Key (hashed: it may be anything), or a key of the request's own."""
    if sent is None:
        return f"oa:append:{secrets.token_hex(16)}", buffer.OWN_KEY_MS
    digest = hashlib.blake2b(sent.encode(), digest_size=16).hexdigest()
    return f"oa:idem:{project_id}:{digest}", buffer.CLIENT_KEY_MS


def fingerprint(events: list[EventIn]) -> str:
    """What a request asked for, whatever its JSON's spacing or key order: a key sent again must come
    with the same events."""
    canonical = orjson.dumps([event.model_dump(mode="json", exclude_none=True) for event in events],
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()
