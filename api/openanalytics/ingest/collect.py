"""`POST /collect`: the public browser endpoint. Always 204, empty, whatever happened.

Requests are answered first and stored a moment later, in batches (intake.py). There each
request becomes a `Hit`, and each event in it goes through the steps of `Collector.steps`
in order; a step may drop the event for a reason from `DropReason`. The last steps, the
per-IP and per-site budgets, the session and storing, run in Redis in one script call for
a whole batch (commit.py). For a known site every outcome is kept for Verify Installation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from openanalytics.auth.ratelimit import WINDOW_MS
from openanalytics.cache import TTLCache
from openanalytics.ingest import commit
from openanalytics.ingest.client_ip import parse_networks
from openanalytics.ingest.clients import Client, Clients
from openanalytics.ingest.durability import RedisWatch
from openanalytics.ingest.geo import Geo
from openanalytics.ingest.referrer import source_for
from openanalytics.ingest.rows import UTM_FIELDS, event_row, new_event_id, url_parts
from openanalytics.ingest.schemas import EventIn, EventType, read_json
from openanalytics.ingest.urls import has_control, is_absolute_http
from openanalytics.ingest.useragent import parse_agent
from openanalytics.ingest.visitor import SESSION_IDLE, Salts, day_of
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
MAX_URL = 2048
MAX_SCREEN_WIDTH = 65535
MAX_LANGUAGE = 35
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)  # forked workers must not share session ids
SITE_LOOKUPS_PER_SECOND = 200  # per process: site ids not in the cache, looked up in the database
SESSION_IDLE_MS = int(SESSION_IDLE.total_seconds() * 1000)
DAY_MS = 86_400_000


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
    # this process holds as much unstored /collect data as it may (intake.py), or the ingest queue is full
    overloaded = "overloaded"


class Dropped(Exception):
    def __init__(self, reason: DropReason, sample: dict[str, Any] | None = None):
        self.reason = reason
        self.sample = sample  # an item of a request dropped whole, naming its site for Verify


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

    @field_validator("referrer")
    @classmethod
    def _no_control(cls, value):
        if value is not None and has_control(value):
            raise ValueError("a referrer has no control characters")
        return value

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
    referrer: str | None = Field(default=None, max_length=MAX_URL)
    screen_width: int | None = Field(default=None, ge=0, le=MAX_SCREEN_WIDTH)
    language: str | None = Field(default=None, max_length=MAX_LANGUAGE)


_PLAIN_PAGEVIEW = frozenset(("site_id", "url", "referrer", "screen_width", "language", "event_type"))


def plain_pageview_row(item: dict[str, Any], project_id: str, received_ms: int) -> dict[str, Any] | None:
    """The row of the tracker's pageview, or None for any other shape, which CollectIn validates.

    Nearly every hit is this shape, and CollectIn costs more than the rest of its steps: so its
    plain values are checked here, giving the row CollectIn would (tests/test_collect.py holds
    the two to the same answers). The site id was checked when its site was looked up."""
    if not _PLAIN_PAGEVIEW.issuperset(item) or item.get("event_type", "pageview") != "pageview":
        return None
    url, referrer = item.get("url"), item.get("referrer")
    width, language = item.get("screen_width"), item.get("language")
    if not ((url is None or type(url) is str and len(url) <= MAX_URL and is_absolute_http(url))
            and (referrer is None or type(referrer) is str and len(referrer) <= MAX_URL and not has_control(referrer))
            and (width is None or type(width) is int and 0 <= width <= MAX_SCREEN_WIDTH)
            and (language is None or type(language) is str and len(language) <= MAX_LANGUAGE)):
        return None
    row = {
        "project_id": project_id, "event_id": new_event_id(), "event_type": "pageview", "event_name": "",
        "received_at": received_ms, "origin": "collect", "user_id": "", "properties": {},
    }
    if url is not None:
        row.update(url_parts(url))
    if width is not None:
        row["screen_width"] = width
    if language is not None:
        row["language"] = language
    return row


def model_row(item: dict[str, Any], project_id: str, received_ms: int) -> tuple[dict[str, Any], str | None]:
    """The row of any event CollectIn takes, and its referrer."""
    try:
        body = CollectIn.model_validate(item)
    except ValidationError:
        raise Dropped(DropReason.invalid) from None
    row = event_row(project_id, body, received_ms, "collect")
    del row["timestamp"]  # not the browser's clock: the commit script sets its arrival
    if body.screen_width is not None:
        row["screen_width"] = body.screen_width
    if body.language is not None:
        row["language"] = body.language
    return row, body.referrer


class Hit:
    """One request to /collect, normalised."""

    __slots__ = ("client", "received_ms", "day", "received_iso")

    def __init__(self, client: Client, received_ms: int):
        self.client = client
        self.received_ms = received_ms
        second, self.day = _second_and_day(self.received_ms // 1000)
        self.received_iso = f"{second}.{self.received_ms % 1000:03d}Z"


@lru_cache(maxsize=4)
def _second_and_day(epoch_second: int) -> tuple[str, str]:
    """Formatting dates is slow; hits within one second share it."""
    moment = datetime.fromtimestamp(epoch_second, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S"), day_of(moment)


@dataclass(frozen=True, slots=True)
class Site:
    """What /collect needs of a project, detached from the database session."""

    project_id: str
    domains: tuple[str, ...]
    per_ip_per_minute: int
    per_site_per_minute: int

    @classmethod
    def of(cls, project: Project | None) -> Site | None:
        if project is None:
            return None
        return cls(project.id, tuple(project.domains or ()), project.collect_per_ip_per_minute,
                   project.collect_per_site_per_minute)


class Event:
    """One event of a hit, as the steps fill it in."""

    __slots__ = ("item", "site", "referrer", "row", "visitors", "source", "acquired")

    def __init__(self, item: dict[str, Any], site: Site | None):
        self.item = item
        self.site = site
        self.referrer: str | None = None  # as validated
        self.row: dict[str, Any] = {}
        self.visitors: tuple[int, int | None] = (0, None)
        # Where this hit came from: the source's name, and the referrer, source and UTM fields as
        # JSON members for the row; the commit script gives every event its session's first.
        self.source = ""
        self.acquired = ""


def parse_items(body: bytes, max_batch: int) -> list[dict[str, Any]]:
    """JSON (also when sent as text/plain by sendBeacon): one object or a small array."""
    try:
        data = read_json(body)
    except orjson.JSONDecodeError:
        raise Dropped(DropReason.malformed) from None
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > max_batch or not all(isinstance(item, dict) for item in items):
        raise Dropped(DropReason.malformed, next((item for item in items if isinstance(item, dict)), None))
    return items


def domain_allowed(hostname: str, domains: tuple[str, ...]) -> bool:
    if not domains:
        return True
    return any(hostname == d or hostname.endswith("." + d) for d in domains)


def _fresh_session() -> int:
    """A new session's id, used when the visitor has none going (an id, not a secret)."""
    return _random.getrandbits(62) or 1


def _seen(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def site_ids(items: Iterable[dict[str, Any]]) -> set[str]:
    """The valid site ids the items name."""
    named = {site_id for item in items if type(site_id := item.get("site_id")) is str}
    return {site_id for site_id in named if SITE_ID.fullmatch(site_id)}  # match's $ allows a final newline


class Collector:
    def __init__(self, stores, geo: Geo, clock: Callable[[], datetime] | None = None,
                 watch: RedisWatch | None = None):
        self.stores = stores
        self.settings = stores.settings
        self.geo = geo
        self.clock = clock or (lambda: datetime.now(UTC))
        self.sites: TTLCache[str, Site | None] = TTLCache(self.settings.cache_ttl_seconds)
        self._lookups = TokenBucket(SITE_LOOKUPS_PER_SECOND)
        self._looking: dict[str, asyncio.Future] = {}  # site id -> its one lookup in flight
        self.salts = Salts(stores.redis)
        self.committer = commit.Committer(stores.redis, self.settings.stream_key, WINDOW_MS, SESSION_IDLE_MS,
                                          self.settings.ingest_max_queued,
                                          (lambda: watch.memory_full) if watch is not None else (lambda: False))
        self.clients = Clients(parse_networks(self.settings.trusted_proxies), salts_end)
        # The sites and salts of a batch are looked up before the steps run (intake.py); the budgets,
        # the session and storing happen last, in Redis, for the whole batch (commit.py).
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

    # -- lookups before the steps -----------------------------------------------

    async def site(self, site_id: str) -> Site | None:
        """The cached site; past its lifetime it keeps answering while one refresh runs."""
        found, site, fresh = self.sites.peek(site_id)
        if found and fresh:
            return site
        if site_id not in self._looking and self._lookups.take():
            # Random site ids must not turn into a flood of database queries: a bucket bounds them.
            self._looking[site_id] = task = asyncio.ensure_future(self._lookup(site_id))
            task.add_done_callback(_seen)  # a failed refresh nobody awaits is not an unhandled error
        pending = self._looking.get(site_id)
        if found or pending is None:
            return site
        return await asyncio.shield(pending)  # every request for it shares the one lookup

    async def _lookup(self, site_id: str) -> Site | None:
        try:
            generation = self.sites.generation
            site = Site.of(await run_in_threadpool(site_lookup, self.stores.db, site_id))
            self.sites.put(site_id, site, generation)
            return site
        finally:
            del self._looking[site_id]

    # -- steps, in order ------------------------------------------------------

    def find_project(self, hit: Hit, event: Event) -> None:
        if event.site is None:
            raise Dropped(DropReason.unknown_site)

    def validate(self, hit: Hit, event: Event) -> None:
        row = plain_pageview_row(event.item, event.site.project_id, hit.received_ms)
        if row is not None:
            event.row, event.referrer = row, event.item.get("referrer")
        else:
            event.row, event.referrer = model_row(event.item, event.site.project_id, hit.received_ms)

    def check_domain(self, hit: Hit, event: Event) -> None:
        if not domain_allowed(event.row.get("hostname", ""), event.site.domains):
            raise Dropped(DropReason.disallowed_domain)

    def drop_bots(self, hit: Hit, event: Event) -> None:
        if parse_agent(hit.client.user_agent).bot:
            raise Dropped(DropReason.bot)

    def put_location(self, hit: Hit, event: Event) -> None:
        place = self.geo.lookup(hit.client.ip)  # the full IP, here only
        event.row.update(country=place.country, region=place.region, city=place.city)

    def put_user_agent(self, hit: Hit, event: Event) -> None:
        agent = parse_agent(hit.client.user_agent)
        event.row.update(
            browser=agent.browser, browser_version=agent.browser_version,
            os=agent.os, os_version=agent.os_version, device=agent.device,
        )

    def put_source(self, hit: Hit, event: Event) -> None:
        """Where the hit came from; the session's first hit decides for all of its events (commit.py)."""
        row = event.row
        referrer, source = source_for(event.referrer, row.get("hostname", ""))
        acquired = {"referrer": referrer, "referrer_source": source} if source else {}
        for name in UTM_FIELDS:
            if name in row:
                acquired[name] = row.pop(name)
        if acquired:
            event.source = source.replace("\n", " ")  # the script keeps it on a line of its own
            event.acquired = "," + orjson.dumps(acquired)[1:-1].decode()

    def put_visitor(self, hit: Hit, event: Event) -> None:
        event.visitors = hit.client.visitors_in(event.site.project_id)

    # -- the request ------------------------------------------------------------

    def script_fields(self, hit: Hit, event: Event, reason: str | None) -> list:
        """The hit as the commit script takes it (see commit.py)."""
        item = event.item
        url = item.get("url")
        event_type, event_name = item.get("event_type"), item.get("event_name")
        arrival = orjson.dumps({
            "received_at": hit.received_iso,
            "event_type": event_type if isinstance(event_type, str) else "pageview",
            "event_name": event_name if isinstance(event_name, str) else None,
            "url": url[:500] if isinstance(url, str) else "",
        })[:-1].decode()
        site = event.site
        if reason is not None:
            return commit.dropped(site.project_id, hit.client.budget_tag, site.per_ip_per_minute, arrival, reason,
                                  hit.received_ms, hit.day)
        return commit.accepted(
            site.project_id, hit.client.budget_tag, site.per_ip_per_minute, site.per_site_per_minute, *event.visitors,
            _fresh_session(), orjson.dumps(event.row)[:-1].decode(), arrival, event.row["event_id"],
            hit.received_ms, hit.day, event.row["event_type"], event.row.get("path", ""), event.source, event.acquired,
        )

    def prepare(self, items: list[dict[str, Any]], peer: str, headers: dict[str, str], received_ms: int,
                parent: str | None, sites: dict[str, Site | None], salts: dict[str, bytes],
                ignored: DropReason | None = None) -> tuple[list[list], list[str]]:
        """Run the steps over every event of one request: the commit script's fields for the events of
        known sites, and the outcomes of the others. `sites` holds the valid site ids of the batch.
        `ignored`: the request was ignored whole for that reason; its `items` are one sample, recorded
        for its site."""
        found = [sites.get(site_id) if type(site_id := item.get("site_id")) is str else None for item in items]
        if not any(found):
            return [], [(ignored or DropReason.unknown_site).value] * len(items)  # nothing to attribute to a site
        days = salt_days(received_ms)
        client = self.clients.of(salts[days[0]], salts[days[1]] if len(days) > 1 else None, peer, headers,
                                 received_ms)
        hit = Hit(client, received_ms)
        fields, unattributed = [], []
        for item, site in zip(items, found, strict=True):
            event = Event(item, site)
            try:
                if ignored is not None:
                    raise Dropped(ignored)
                for step in self.steps:
                    step(hit, event)
            except Dropped as dropped:
                if event.site is not None:  # else nothing to attribute it to
                    fields.append(self.script_fields(hit, event, dropped.reason.value))
                else:
                    unattributed.append(dropped.reason.value)
                continue
            if parent:  # the flush span links back to this request
                event.row["tp"] = parent
            fields.append(self.script_fields(hit, event, None))
        return fields, unattributed


def salt_days(ms: int) -> list[str]:
    """The UTC day of epoch millisecond `ms`, and the day before within a session's idle time after midnight."""
    today = _second_and_day(ms // 1000)[1]
    if ms % DAY_MS > SESSION_IDLE_MS:
        return [today]
    return [today, _second_and_day(ms // 1000 - 86_400)[1]]


def salts_end(ms: int) -> int:
    """When the salts salt_days(ms) names stop being a hit's (epoch ms): at midnight, or once the
    day before's stops counting."""
    start, into = ms - ms % DAY_MS, ms % DAY_MS
    return start + (SESSION_IDLE_MS if into <= SESSION_IDLE_MS else DAY_MS)


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


