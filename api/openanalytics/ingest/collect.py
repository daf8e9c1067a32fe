"""`POST /collect`: the public browser endpoint. Always 204, empty, whatever happened.

The request becomes rows through an ordered list of steps; any step may drop an event
for a reason from `DropReason`, and nothing about that reaches the response.
"""

from __future__ import annotations

import logging
import re
import time
from enum import StrEnum
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from openanalytics.cache import TTLCache
from openanalytics.ingest import buffer
from openanalytics.ingest.client_ip import client_ip, parse_networks
from openanalytics.ingest.rows import event_row
from openanalytics.ingest.schemas import EventIn, EventType
from openanalytics.ingest.visitor import Salts, anonymise_ip, session_for, today, visitor_hash
from openanalytics.projects.service import site_lookup

log = logging.getLogger(__name__)
router = APIRouter(tags=["Collect"])

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "86400",
}


class DropReason(StrEnum):
    too_large = "too_large"
    malformed = "malformed"
    invalid = "invalid"
    unknown_site = "unknown_site"
    disallowed_domain = "disallowed_domain"


SITE_ID = re.compile(r"^site_[0-9a-f]{16}$")


class CollectIn(EventIn):
    """What the tracker sends: the event model plus what a browser knows.

    A browser's clock is not to be trusted: the time of a hit is the time it arrives.
    """

    model_config = ConfigDict(extra="ignore")

    site_id: str = Field(pattern=SITE_ID.pattern)
    timestamp: Any = Field(default=None, exclude=True)
    event_type: EventType = EventType.pageview
    referrer: str | None = Field(default=None, max_length=2048)
    screen_width: int | None = Field(default=None, ge=0, le=65535)
    language: str | None = Field(default=None, max_length=35)


class Dropped(Exception):
    def __init__(self, reason: DropReason):
        self.reason = reason


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Dropped(DropReason.too_large)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Dropped(DropReason.too_large)
    return bytes(body)


def parse_events(body: bytes, max_batch: int) -> list[dict[str, Any]]:
    """JSON (also when sent as text/plain by sendBeacon): one object or a small array."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Dropped(DropReason.malformed) from None
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > max_batch or not all(isinstance(item, dict) for item in items):
        raise Dropped(DropReason.malformed)
    return items


def validate(item: dict[str, Any]) -> CollectIn:
    try:
        return CollectIn.model_validate(item)
    except ValidationError:
        raise Dropped(DropReason.invalid) from None


def domain_allowed(hostname: str, domains: list[str]) -> bool:
    if not domains:
        return True
    return any(hostname == d or hostname.endswith("." + d) for d in domains)


class Collector:
    def __init__(self, app_state):
        self.state = app_state
        settings = app_state.stores.settings
        self.sites: TTLCache[str, Any] = TTLCache(settings.cache_ttl_seconds)
        self.salts = Salts(app_state.stores.redis)
        self.trusted_proxies = parse_networks(settings.trusted_proxies)

    async def project_for_site(self, site_id: str):
        hit, project = self.sites.get(site_id)
        if not hit:
            project = await run_in_threadpool(site_lookup, self.state.stores.db, site_id)
            self.sites.put(site_id, project)
        if project is None:
            raise Dropped(DropReason.unknown_site)
        return project

    async def rows_for(self, request: Request, item: dict[str, Any], received_ms: int) -> dict[str, Any]:
        event = validate(item)
        event.timestamp = None  # received time
        project = await self.project_for_site(event.site_id)
        row = event_row(project.id, event, received_ms, "collect")
        if not domain_allowed(row.get("hostname", ""), project.domains):
            raise Dropped(DropReason.disallowed_domain)
        peer = request.client.host if request.client else ""
        ip = client_ip(peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)
        salt = await self.salts.for_day(today())
        row["visitor_id"] = visitor_hash(
            salt,
            project.id,
            request.headers.get("user-agent", ""),
            request.headers.get("accept-language", ""),
            anonymise_ip(ip),
        )
        row["session_id"] = await session_for(self.state.stores.redis, project.id, row["visitor_id"])
        if event.referrer:
            row["referrer"] = event.referrer
        if event.screen_width is not None:
            row["screen_width"] = event.screen_width
        if event.language:
            row["language"] = event.language
        return row

    async def handle(self, request: Request) -> None:
        settings = self.state.stores.settings
        body = await read_body(request, settings.collect_max_body_bytes)
        received_ms = int(time.time() * 1000)
        rows = []
        for item in parse_events(body, settings.collect_max_batch):
            try:
                rows.append(await self.rows_for(request, item, received_ms))
            except Dropped as dropped:
                log.debug("collect drop: %s", dropped.reason.value)
        await buffer.append(self.state.stores.redis, settings.stream_key, rows)


@router.post(
    "/collect",
    status_code=204,
    summary="Collect browser events (public)",
    description=(
        "Called by the `oa.js` tracker. Takes a JSON object or array (also as `text/plain`). "
        "Always answers 204 with an empty body, whether or not the event was accepted."
    ),
    response_class=Response,
    responses={204: {"description": "Received (accepted or silently ignored)."}},
)
async def collect(request: Request) -> Response:
    try:
        await request.app.state.collector.handle(request)
    except Dropped as dropped:
        log.debug("collect drop: %s", dropped.reason.value)
    except Exception:  # the public endpoint never answers 5xx
        log.exception("collect failed")
    return Response(status_code=204, headers=CORS)


@router.options("/collect", include_in_schema=False)
async def collect_preflight() -> Response:
    return Response(status_code=204, headers=CORS)
