"""`POST /collect`: the public browser endpoint. Always 204, empty, whatever happened.

A request becomes a `Hit`; each event in it goes through the steps of `Collector.steps`,
in order. A step may drop the event for a reason from `DropReason`; nothing about that
reaches the response, but for a known site the outcome is kept for Verify Installation.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from openanalytics.auth.ratelimit import RateLimiter, ip_tag
from openanalytics.cache import TTLCache
from openanalytics.ingest import arrivals, buffer
from openanalytics.ingest.client_ip import client_ip, parse_networks
from openanalytics.ingest.geo import Geo
from openanalytics.ingest.referrer import source_for
from openanalytics.ingest.rows import event_row
from openanalytics.ingest.schemas import EventIn, EventType
from openanalytics.ingest.useragent import parse_agent
from openanalytics.ingest.visitor import SESSION_IDLE, Salts, Sessions, anonymise_ip, day_of, visitor_hash
from openanalytics.projects.models import Project
from openanalytics.projects.service import site_lookup

log = logging.getLogger(__name__)
router = APIRouter(tags=["Collect"])

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "86400",
}
SITE_ID = re.compile(r"^site_[0-9a-f]{16}$")


class DropReason(StrEnum):
    too_large = "too_large"
    malformed = "malformed"
    invalid = "invalid"
    unknown_site = "unknown_site"
    disallowed_domain = "disallowed_domain"
    bot = "bot"
    rate_limited_ip = "rate_limited_ip"
    rate_limited_site = "rate_limited_site"


class Dropped(Exception):
    def __init__(self, reason: DropReason):
        self.reason = reason


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


@dataclass
class Hit:
    """One request to /collect, normalised."""

    ip: str
    user_agent: str
    accept_language: str
    received: datetime
    rows: list[dict[str, Any]] = field(default_factory=list)
    # per project: arrival entries and drop counts, for Verify Installation
    seen: dict[str, tuple[list[bytes], Counter]] = field(default_factory=dict)


@dataclass
class Event:
    """One event of a hit, as the steps fill it in."""

    item: dict[str, Any]
    body: CollectIn | None = None
    project: Project | None = None
    row: dict[str, Any] = field(default_factory=dict)


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


def parse_items(body: bytes, max_batch: int) -> list[dict[str, Any]]:
    """JSON (also when sent as text/plain by sendBeacon): one object or a small array."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Dropped(DropReason.malformed) from None
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > max_batch or not all(isinstance(item, dict) for item in items):
        raise Dropped(DropReason.malformed)
    return items


def domain_allowed(hostname: str, domains: list[str]) -> bool:
    if not domains:
        return True
    return any(hostname == d or hostname.endswith("." + d) for d in domains)


class Collector:
    def __init__(self, stores, geo: Geo, limiter: RateLimiter, clock: Callable[[], datetime] | None = None):
        self.stores = stores
        self.settings = stores.settings
        self.geo = geo
        self.limiter = limiter
        self.clock = clock or (lambda: datetime.now(UTC))
        self.sites: TTLCache[str, Project | None] = TTLCache(self.settings.cache_ttl_seconds)
        self.salts = Salts(stores.redis)
        self.sessions = Sessions(stores.redis)
        self.trusted_proxies = parse_networks(self.settings.trusted_proxies)
        self.steps = [
            self.find_project,
            self.validate,
            self.check_domain,
            self.drop_bots,
            self.check_rate_limits,
            self.put_location,
            self.put_user_agent,
            self.put_source,
            self.put_visitor_and_session,
        ]

    # -- steps, in order ------------------------------------------------------

    async def find_project(self, hit: Hit, event: Event) -> None:
        site_id = event.item.get("site_id")
        if not isinstance(site_id, str) or not SITE_ID.match(site_id):
            raise Dropped(DropReason.unknown_site)
        hit_, project = self.sites.get(site_id)
        if not hit_:
            project = await run_in_threadpool(site_lookup, self.stores.db, site_id)
            self.sites.put(site_id, project)
        if project is None:
            raise Dropped(DropReason.unknown_site)
        event.project = project

    async def validate(self, hit: Hit, event: Event) -> None:
        try:
            event.body = CollectIn.model_validate(event.item)
        except ValidationError:
            raise Dropped(DropReason.invalid) from None
        event.body.timestamp = None  # received time
        received_ms = int(hit.received.timestamp() * 1000)
        event.row = event_row(event.project.id, event.body, received_ms, "collect")
        for name in ("screen_width", "language"):
            if getattr(event.body, name) is not None:
                event.row[name] = getattr(event.body, name)

    async def check_domain(self, hit: Hit, event: Event) -> None:
        if not domain_allowed(event.row.get("hostname", ""), event.project.domains):
            raise Dropped(DropReason.disallowed_domain)

    async def drop_bots(self, hit: Hit, event: Event) -> None:
        if parse_agent(hit.user_agent).bot:
            raise Dropped(DropReason.bot)

    async def check_rate_limits(self, hit: Hit, event: Event) -> None:
        # One after the other, so the site's budget counts only what the IP's let through.
        project = event.project
        per_ip = f"oa:rl:collect:ip:{project.id}:{ip_tag(hit.ip)}"
        if not (await self.limiter.count(per_ip, project.collect_per_ip_per_minute)).allowed:
            raise Dropped(DropReason.rate_limited_ip)
        per_site = f"oa:rl:collect:site:{project.id}"
        if not (await self.limiter.count(per_site, project.collect_per_site_per_minute)).allowed:
            raise Dropped(DropReason.rate_limited_site)

    async def put_location(self, hit: Hit, event: Event) -> None:
        place = self.geo.lookup(hit.ip)  # the full IP, here only
        event.row.update(country=place.country, region=place.region, city=place.city)

    async def put_user_agent(self, hit: Hit, event: Event) -> None:
        agent = parse_agent(hit.user_agent)
        event.row.update(
            browser=agent.browser, browser_version=agent.browser_version,
            os=agent.os, os_version=agent.os_version, device=agent.device,
        )

    async def put_source(self, hit: Hit, event: Event) -> None:
        referrer, source = source_for(event.body.referrer, event.row.get("hostname", ""))
        event.row.update(referrer=referrer, referrer_source=source)

    async def put_visitor_and_session(self, hit: Hit, event: Event) -> None:
        anon = anonymise_ip(hit.ip)
        project_id = event.project.id

        async def visitor_on(day: datetime) -> int:
            salt = await self.salts.for_day(day_of(day))
            return visitor_hash(salt, project_id, hit.user_agent, hit.accept_language, anon)

        visitor = await visitor_on(hit.received)
        # Just after midnight, yesterday's visitor may still be mid-session: it continues.
        since_midnight = hit.received - hit.received.replace(hour=0, minute=0, second=0, microsecond=0)
        previous = await visitor_on(hit.received - timedelta(days=1)) if since_midnight <= SESSION_IDLE else None
        session, continued = await self.sessions.session_for(project_id, visitor, previous, hit.received)
        event.row["visitor_id"] = previous if continued else visitor
        event.row["session_id"] = session

    # -- the request ------------------------------------------------------------

    def _note(self, hit: Hit, event: Event, outcome: str) -> None:
        if event.project is None:
            return  # unknown site: nothing to attribute it to
        entries, drops = hit.seen.setdefault(event.project.id, ([], Counter()))
        event_id = event.row.get("event_id") if outcome == "accepted" else None
        entries.append(arrivals.entry(hit.received, event.item, outcome, event_id))
        if outcome != "accepted":
            drops[outcome] += 1

    async def handle(self, request: Request) -> None:
        body = await read_body(request, self.settings.collect_max_body_bytes)
        peer = request.client.host if request.client else ""
        hit = Hit(
            ip=client_ip(peer, ", ".join(request.headers.getlist("x-forwarded-for")) or None, self.trusted_proxies),
            user_agent=request.headers.get("user-agent", ""),
            accept_language=request.headers.get("accept-language", ""),
            received=self.clock(),
        )
        for item in parse_items(body, self.settings.collect_max_batch):
            event = Event(item)
            try:
                for step in self.steps:
                    await step(hit, event)
            except Dropped as dropped:
                self._note(hit, event, dropped.reason.value)
                continue
            hit.rows.append(event.row)
            self._note(hit, event, "accepted")
        day = day_of(hit.received)
        await buffer.append(
            self.stores.redis, self.settings.stream_key, hit.rows,
            lambda pipe: [arrivals.record(pipe, pid, day, e, d) for pid, (e, d) in hit.seen.items()],
        )


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
    except Dropped:
        pass  # nothing attributable to a site (too large, malformed)
    except Exception:  # the public endpoint never answers 5xx
        log.exception("collect failed")
    return Response(status_code=204, headers=CORS)


@router.options("/collect", include_in_schema=False)
async def collect_preflight() -> Response:
    return Response(status_code=204, headers=CORS)
