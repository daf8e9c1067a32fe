"""The three data-subject endpoints: export one user's events, request their deletion, poll it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from openanalytics import telemetry
from openanalytics.auth.dependencies import PrivacyDelete, PrivacyExport, load_project, stores_of
from openanalytics.errors import Conflict, NotFound
from openanalytics.ids import id_pattern, new_id
from openanalytics.openapi import error_responses
from openanalytics.privacy import failures
from openanalytics.privacy.models import PrivacyRequest, user_hash
from openanalytics.privacy.tombstones import tombstone_key
from openanalytics.text import StoredText
from openanalytics.provisioning.events_schema import database_name
from openanalytics.stores.clickhouse import as_utc, money

router = APIRouter(tags=["Privacy"])

EXPORT_DAYS = 90
EXPORT_MAX_EVENTS = 10_000
_USER_ID = {"min_length": 1, "max_length": 256, "examples": ["sha256_hash_of_user_id"],
            "description": ("The user id your events carry, percent-encoded as one path segment (RFC 3986): "
                            "`/` as `%2F`, `+` as `%2B`, `=` as `%3D`, `%` as `%25`, a space as `%20`, other "
                            "characters as their UTF-8 bytes (`encodeURIComponent` in JavaScript, "
                            "`urllib.parse.quote(user_id, safe='')` in Python); an id that is `.` or `..` as `%2E` or "
                            "`%2E%2E` (URL normalisation would remove it). Every id ingest accepts works.")}
# An export stores nothing, so it takes any id; a deletion request is stored (no NUL in PostgreSQL).
UserId = Annotated[str, Path(**_USER_ID)]
StoredUserId = Annotated[str, StoredText, Path(**_USER_ID)]
RequestId = Annotated[str, Path(pattern=id_pattern("prq"), description="From the deletion request.", examples=["prq_5e0c2a9b1f3d4e76"])]
# What an export may show of an event: no IP, no User-Agent (neither is stored), no property
# values, no full URL (its query string may carry anything), nothing else about other people.
EXPORT_COLUMNS = [
    "toString(event_id)", "event_type", "event_name", "timestamp", "received_at", "origin", "hostname", "path",
    "referrer_source", "country", "region", "city", "device", "browser", "os", "arraySort(mapKeys(properties))",
    "revenue", "currency",
]


class ExportedEvent(BaseModel):
    event_id: str
    event_type: str
    event_name: str
    timestamp: datetime
    received_at: datetime
    origin: str
    hostname: str
    path: str
    source: str
    country: str
    region: str
    city: str
    device: str
    browser: str
    os: str
    property_keys: list[str] = Field(description="Names only; values are never exported.")
    revenue: str | None
    currency: str


class UserExport(BaseModel):
    project_id: str
    user_id: str
    generated_at: datetime
    since: datetime = Field(description=f"Events from the last {EXPORT_DAYS} days are included.")
    event_count: int
    truncated: bool = Field(description=f"True when older events exist or there were more than {EXPORT_MAX_EVENTS}.")
    events: list[ExportedEvent] = Field(description="Newest first.")

    model_config = {"json_schema_extra": {"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65", "user_id": "sha256_hash_of_user_id",
        "generated_at": "2026-05-12T10:00:00Z", "since": "2026-02-11T10:00:00Z", "event_count": 1, "truncated": False,
        "events": [{"event_id": "0b9e3f5c-1d2a-4c8e-9f00-6a7b8c9d0e1f", "event_type": "conversion",
                    "event_name": "purchase", "timestamp": "2026-05-11T21:46:40Z", "received_at": "2026-05-11T21:46:41Z",
                    "origin": "server", "hostname": "example.com", "path": "/thanks", "source": "", "country": "",
                    "region": "", "city": "", "device": "", "browser": "", "os": "", "property_keys": ["plan"],
                    "revenue": "49.9900", "currency": "USD"}]}]}}


class RequestStatus(BaseModel):
    request_id: str
    project_id: str
    kind: str = "delete"
    status: str = Field(description="queued, running, completed or failed")
    poll_url: str
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    events_deleted: int | None = Field(default=None, description="Stored events removed (when completed).")
    queued_events_deleted: int | None = Field(default=None, description="Events removed from the ingest stream.")
    attempts: int = Field(default=0, description="Attempts so far; a failed one is retried with backoff.")
    next_attempt_at: datetime | None = Field(default=None, description="When a failed attempt is retried.")
    error: str | None = Field(default=None, description=(
        "The last failure's code: events_store_unreachable, events_store_error, hot_state_unreachable, "
        "control_plane_unreachable, events_still_queued, batches_in_flight, rows_still_present, interrupted, "
        "missing_user_id or internal_error. Null once completed."))
    error_message: str | None = Field(default=None, description="The same in a sentence (nothing personal in it).")

    model_config = {"json_schema_extra": {"examples": [{
        "request_id": "prq_5e0c2a9b1f3d4e76", "project_id": "prj_3f9a1c0b7d2e4a65", "kind": "delete",
        "status": "completed", "poll_url": "/v1/projects/prj_3f9a1c0b7d2e4a65/privacy/requests/prq_5e0c2a9b1f3d4e76",
        "created_at": "2026-05-12T10:00:00Z", "started_at": "2026-05-12T10:00:01Z",
        "completed_at": "2026-05-12T10:00:04Z", "events_deleted": 182, "queued_events_deleted": 0, "attempts": 1,
        "next_attempt_at": None, "error": None, "error_message": None}]}}

    @classmethod
    def of(cls, row: PrivacyRequest) -> RequestStatus:
        return cls(
            request_id=row.id, project_id=row.project_id, kind=row.kind, status=row.status,
            poll_url=f"/v1/projects/{row.project_id}/privacy/requests/{row.id}", created_at=row.created_at,
            started_at=row.started_at, completed_at=row.completed_at, events_deleted=row.events_deleted,
            queued_events_deleted=row.queued_events_deleted, attempts=row.attempts,
            next_attempt_at=row.next_attempt_at, error=failures.known(row.error),
            error_message=failures.sentence(failures.known(row.error), final=row.status == "failed"),
        )


@router.get(
    "/v1/projects/{project_id}/privacy/user/{user_id:path}",
    summary="Export one user's events (sanitized)",
    description=(f"The last {EXPORT_DAYS} days, at most {EXPORT_MAX_EVENTS:,} events, newest first, with "
                 "`truncated: true` when either limit cut something off. Read-only."),
    response_model=UserExport,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def export_user(request: Request, access: PrivacyExport, user_id: UserId) -> UserExport:
    now = datetime.now(UTC)
    since = now - timedelta(days=EXPORT_DAYS)
    export = UserExport(project_id=access.project.id, user_id=user_id, generated_at=now, since=since,
                        event_count=0, truncated=False, events=[])
    project = await load_project(request, access.project.id, fresh=access.project.events_schema_version == 0)
    if project.events_schema_version == 0:
        return export
    store, table = stores_of(request).events, f"{database_name(project.id)}.events"
    params = {"user": user_id, "since": since, "limit": EXPORT_MAX_EVENTS + 1}
    rows = await store.run(store.rows, (
        f"SELECT {', '.join(EXPORT_COLUMNS)} FROM {table} WHERE user_id = {{user:String}} "
        "AND timestamp >= {since:DateTime64(3, 'UTC')} ORDER BY timestamp DESC, event_id LIMIT {limit:UInt32}"), params)
    ((older,),) = await store.run(store.rows, (
        f"SELECT count() FROM {table} WHERE user_id = {{user:String}} AND timestamp < {{since:DateTime64(3, 'UTC')}}"),
        params)
    names = ["event_id", "event_type", "event_name", "timestamp", "received_at", "origin", "hostname", "path",
             "source", "country", "region", "city", "device", "browser", "os", "property_keys", "revenue", "currency"]
    for row in rows[:EXPORT_MAX_EVENTS]:
        event = dict(zip(names, row, strict=True))
        event["timestamp"], event["received_at"] = as_utc(event["timestamp"]), as_utc(event["received_at"])
        event["revenue"] = money(event["revenue"]) if event["revenue"] is not None else None
        export.events.append(ExportedEvent(**event))
    export.event_count = len(export.events)
    export.truncated = len(rows) > EXPORT_MAX_EVENTS or older > 0
    telemetry.PRIVACY_REQUESTS.add(1, {"kind": "export", "status": "completed"})
    return export


@router.delete(
    "/v1/projects/{project_id}/privacy/user/{user_id:path}",
    status_code=202,
    summary="Request deletion of one user's data",
    description=("Nothing is deleted inline: the request is queued and the worker deletes the user's stored events, "
                 "their events still waiting in the ingest stream, and their realtime and session state, then checks "
                 "nothing is left. Events received up to the request count, and every event of a browser visit one of "
                 "them belongs to, whenever received (its anonymous start too). Asking again while a request for the "
                 "user is queued or running returns that request."),
    response_model=RequestStatus,
    responses=error_responses(400, 401, 403, 404, 409, 429),
)
async def request_deletion(request: Request, access: PrivacyDelete, user_id: StoredUserId) -> JSONResponse:
    project_id = access.project.id
    hashed = user_hash(await tombstone_key(stores_of(request).db), project_id, user_id)

    def open_request(session) -> PrivacyRequest | None:
        return session.scalar(select(PrivacyRequest).where(
            PrivacyRequest.project_id == project_id, PrivacyRequest.user_hash == hashed,
            PrivacyRequest.status.in_(("queued", "running"))))

    def record() -> RequestStatus:
        db = stores_of(request).db
        try:
            with db.session() as session:
                pending = open_request(session)
                if pending is None:
                    pending = PrivacyRequest(id=new_id("prq"), project_id=project_id, kind="delete", user_hash=hashed,
                                             user_id=user_id, status="queued", attempts=0, created_at=datetime.now(UTC))
                    session.add(pending)
                    session.flush()
                    telemetry.PRIVACY_REQUESTS.add(1, {"kind": "delete", "status": "queued"})
                return RequestStatus.of(pending)
        except IntegrityError:  # a concurrent identical request won the race: answer with it
            with db.session() as session:
                winner = open_request(session)
                if winner is None:  # and already ended: ask again
                    raise Conflict("A deletion request for this user just ended; send the request again.",
                                   "request_conflict") from None
                return RequestStatus.of(winner)

    status = await run_in_threadpool(record)
    return JSONResponse(status.model_dump(mode="json"), status_code=202, headers={"Location": status.poll_url})


@router.get(
    "/v1/projects/{project_id}/privacy/requests/{request_id}",
    summary="A deletion request's status",
    response_model=RequestStatus,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def request_status(request: Request, access: PrivacyDelete, request_id: RequestId) -> RequestStatus:
    def read() -> RequestStatus | None:
        with stores_of(request).db.session() as session:
            row = session.get(PrivacyRequest, request_id)
            return RequestStatus.of(row) if row is not None and row.project_id == access.project.id else None

    found = await run_in_threadpool(read)
    if found is None:
        raise NotFound("No such privacy request.", "request_not_found")
    return found
