"""`POST /collect`: the public browser endpoint. Always 204, empty, whatever happened.

A request becomes a `Hit`; each event in it goes through the steps of `Collector.steps`,
in order. A step may drop the event for a reason from `DropReason`. The last steps, the
per-IP and per-site budgets, the session and storing, run in Redis for a whole batch of
hits at once (commit.py). Nothing about any of it reaches the response, but for a known
site every outcome is kept for Verify Installation.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from openanalytics.auth.ratelimit import WINDOW_MS, client_tag
from openanalytics.cache import TTLCache
from openanalytics.ingest.commit import Committer, pack
from openanalytics.ingest.client_ip import client_ip, parse_networks
from openanalytics.ingest.geo import Geo
from openanalytics.ingest.referrer import source_for
from openanalytics.ingest.rows import event_row
from openanalytics.ingest.schemas import EventIn, EventType
from openanalytics.ingest.useragent import parse_agent
from openanalytics.ingest.visitor import SESSION_IDLE, Salts, anonymise_ip, day_of, visitor_hash
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
MAX_USER_AGENT = 512  # longer ones are cut before parsing and hashing (no browser sends more)
MAX_URL = 2048
_FAILURE_LOG_EVERY = 10.0
SITE_LOOKUPS_PER_SECOND = 200  # per process: site ids not in the cache, looked up in the database


class TokenBucket:
    """At most `rate` takes per second, in bursts of up to `rate`."""

    def __init__(self, rate: float):
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


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

    @field_validator("url", "referrer", mode="before")
    @classmethod
    def _cut(cls, value):
        # Browsers make long URLs; keep the event, cut the URL.
        return value[:MAX_URL] if isinstance(value, str) else value

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.upper() if isinstance(value, str) else value

    @field_validator("revenue", mode="before")
    @classmethod
    def _round(cls, value):
        # 0.1 + 0.2 in a browser is 0.30000000000000004.
        return round(value, 4) if isinstance(value, float) else value
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
    visitors: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # per project
    budget_tag: str | None = None  # names the client's per-IP budget in Redis

    def __post_init__(self) -> None:
        self.received_ms = int(self.received.timestamp() * 1000)
        second, self.day = _second_and_day(self.received_ms // 1000)
        self.received_iso = f"{second}.{self.received_ms % 1000:03d}Z"


@lru_cache(maxsize=4)
def _second_and_day(epoch_second: int) -> tuple[str, str]:
    """Formatting dates is slow; hits within one second share it."""
    moment = datetime.fromtimestamp(epoch_second, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S"), day_of(moment)


@dataclass
class Event:
    """One event of a hit, as the steps fill it in."""

    item: dict[str, Any]
    body: CollectIn | None = None
    project: Project | None = None
    row: dict[str, Any] = field(default_factory=dict)
    visitors: tuple[int, int | None] = (0, None)


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
    def __init__(self, stores, geo: Geo, clock: Callable[[], datetime] | None = None):
        self.stores = stores
        self.settings = stores.settings
        self.geo = geo
        self.clock = clock or (lambda: datetime.now(UTC))
        self.sites: TTLCache[str, Project | None] = TTLCache(self.settings.cache_ttl_seconds)
        self._lookups = TokenBucket(SITE_LOOKUPS_PER_SECOND)
        self.salts = Salts(stores.redis)
        self.committer = Committer(stores.redis, self.settings.stream_key, WINDOW_MS, int(SESSION_IDLE.total_seconds() * 1000))
        self.trusted_proxies = parse_networks(self.settings.trusted_proxies)
        # Budgets, the session and storing happen last, in Redis, for a batch of hits (commit.py).
        self.steps = [
            self.find_project,
            self.validate,
            self.check_domain,
            self.drop_bots,
            self.put_location,
            self.put_user_agent,
            self.put_source,
            self.put_visitor,
        ]

    # -- steps, in order ------------------------------------------------------

    async def find_project(self, hit: Hit, event: Event) -> None:
        site_id = event.item.get("site_id")
        if not isinstance(site_id, str) or not SITE_ID.match(site_id):
            raise Dropped(DropReason.unknown_site)
        found, project = self.sites.get(site_id)
        if not found:
            if not self._lookups.take():
                # Random site ids must not turn into a flood of database queries.
                raise Dropped(DropReason.unknown_site)
            generation = self.sites.generation
            project = await run_in_threadpool(site_lookup, self.stores.db, site_id)
            self.sites.put(site_id, project, generation)
        if project is None:
            raise Dropped(DropReason.unknown_site)
        event.project = project

    async def validate(self, hit: Hit, event: Event) -> None:
        try:
            event.body = CollectIn.model_validate(event.item)
        except ValidationError:
            raise Dropped(DropReason.invalid) from None
        event.body.timestamp = None  # received time
        event.row = event_row(event.project.id, event.body, hit.received_ms, "collect")
        for name in ("screen_width", "language"):
            if getattr(event.body, name) is not None:
                event.row[name] = getattr(event.body, name)

    async def check_domain(self, hit: Hit, event: Event) -> None:
        if not domain_allowed(event.row.get("hostname", ""), event.project.domains):
            raise Dropped(DropReason.disallowed_domain)

    async def drop_bots(self, hit: Hit, event: Event) -> None:
        if parse_agent(hit.user_agent).bot:
            raise Dropped(DropReason.bot)

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

    async def put_visitor(self, hit: Hit, event: Event) -> None:
        """Today's visitor and, just after midnight, yesterday's (its session may continue)."""
        project_id = event.project.id
        if project_id not in hit.visitors:
            anon = anonymise_ip(hit.ip)

            async def visitor_on(day: str) -> int:
                salt = await self.salts.for_day(day)
                return visitor_hash(salt, project_id, hit.user_agent, hit.accept_language, anon)

            since_midnight_ms = hit.received_ms % 86_400_000
            previous = None
            if since_midnight_ms <= SESSION_IDLE.total_seconds() * 1000:
                previous = await visitor_on(day_of(hit.received - timedelta(days=1)))
            hit.visitors[project_id] = (await visitor_on(hit.day), previous)
            if hit.budget_tag is None:
                hit.budget_tag = client_tag(hit.ip, await self.salts.for_day(hit.day))
        event.visitors = hit.visitors[project_id]

    # -- the request ------------------------------------------------------------

    def script_fields(self, hit: Hit, event: Event, reason: str | None) -> bytes:
        """The hit as the commit script takes it (see commit.py)."""
        item = event.item
        url = item.get("url") if isinstance(item.get("url"), str) else ""
        arrival = orjson.dumps({
            "received_at": hit.received_iso,
            "event_type": item.get("event_type") if isinstance(item.get("event_type"), str) else "pageview",
            "event_name": item.get("event_name") if isinstance(item.get("event_name"), str) else None,
            "url": url[:500],
        })[:-1]
        project = event.project
        day = hit.day
        if reason is not None:
            return pack("D", project.id, "", 0, 0, "", "", "", "", arrival, "", reason, hit.received_ms, day)
        row = orjson.dumps(event.row)[:-1]
        visitor, previous = event.visitors
        return pack(
            "E", project.id, hit.budget_tag, project.collect_per_ip_per_minute, project.collect_per_site_per_minute,
            visitor, previous or "", secrets.randbits(62) or 1, row, arrival, event.row["event_id"], "",
            hit.received_ms, day,
        )

    async def handle(self, body: bytes, peer: str, headers: dict[str, str]) -> list[str]:
        """Run the steps over every event of one request and store what passes. Returns the outcomes."""
        received = self.clock()
        hit = Hit(
            ip=client_ip(peer, headers.get("x-forwarded-for"), self.trusted_proxies),
            user_agent=headers.get("user-agent", "")[:MAX_USER_AGENT],
            accept_language=headers.get("accept-language", ""),
            received=received,
        )
        fields = []
        for item in parse_items(body, self.settings.collect_max_batch):
            event = Event(item)
            try:
                for step in self.steps:
                    await step(hit, event)
            except Dropped as dropped:
                if event.project is not None:  # else nothing to attribute it to
                    fields.append(self.script_fields(hit, event, dropped.reason.value))
                continue
            fields.append(self.script_fields(hit, event, None))
        return await self.committer.commit(fields) if fields else []


class CollectEndpoint:
    """`POST /collect` and its preflight, answered below FastAPI: the hottest path pays for no routing,
    no request objects and no dependency solving. Everything else goes on to the app."""

    def __init__(self, app: ASGIApp, collector: Collector):
        self.app = app
        self.collector = collector
        self.limit = collector.settings.collect_max_body_bytes
        self._logged_at = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/collect" or scope["method"] not in ("POST", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            try:
                headers = _wanted_headers(scope)
                body = await _read_body(receive, headers.get("content-length"), self.limit)
                peer = scope["client"][0] if scope.get("client") else ""
                await self.collector.handle(body, peer, headers)
            except Dropped:
                pass  # nothing attributable to a site (too large, malformed)
            except Exception:  # the public endpoint never answers 5xx
                now = time.monotonic()
                if now - self._logged_at > _FAILURE_LOG_EVERY:  # an outage must not flood the log
                    self._logged_at = now
                    log.exception("collect failed (further failures in the next %ds are not logged)",
                                  int(_FAILURE_LOG_EVERY))
        await send({"type": "http.response.start", "status": 204, "headers": _CORS_HEADERS})
        await send({"type": "http.response.body", "body": b""})


_WANTED = {b"user-agent", b"accept-language", b"content-length", b"x-forwarded-for"}
_CORS_HEADERS = [(k.lower().encode(), v.encode()) for k, v in CORS.items()]


def _wanted_headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            key = name.decode()
            text = value.decode("latin-1")
            # Repeated X-Forwarded-For lines are one list, as HTTP defines.
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Dropped(DropReason.too_large)
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise Dropped(DropReason.malformed)  # the client went away
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise Dropped(DropReason.too_large)
    return bytes(body)


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
    """Documents the endpoint; CollectEndpoint answers it before FastAPI routes anything."""
    raise AssertionError("answered by CollectEndpoint")


