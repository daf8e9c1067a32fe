"""The /collect intake: requests read and answered at once, then stored in batches.

Nothing about a hit reaches its response, so the response goes first: the server's HTTP
protocol (protocol.py), or for hits it leaves to the ASGI app `CollectEndpoint`, reads a
request, queues it here and answers `204`. The processor task takes what queued up,
up to `MAX_BATCH` requests (waiting `LINGER_SECONDS` for company unless `BATCH_TARGET` are
waiting), looks up the batch's sites and salts together, runs each request through the
collector's steps, and stores the batch in one Redis script call (commit.py). One call is
in flight at a time, overlapping the preparing of the next batch, so hits reach Redis in
the order they arrived.

Past `HIGH_WATER` queued requests, answers wait for the processor's next batch
(backpressure); past `MAX_HELD_BYTES` of bodies held, new hits are dropped, so memory
stays bounded whatever Redis does.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from openanalytics import telemetry
from openanalytics.ingest.collect import (
    CORS, Collector, DropReason, Dropped, Site, parse_items, salt_days, site_ids,
)

log = logging.getLogger(__name__)

MAX_HELD_BYTES = 32 * 2**20  # request bodies read but not yet stored (queued, being prepared or stored),
# per process; past it new requests are dropped: memory stays bounded whatever Redis does
HELD_OVERHEAD = 512  # bytes counted per request beyond its body (headers, bookkeeping)
HIGH_WATER = 500  # past this many queued requests, a request is answered once the processor takes a batch
MAX_BATCH = 1_000  # requests per batch
LINGER_SECONDS = 0.002  # a batch waits this long for company: fewer, fuller Redis calls...
BATCH_TARGET = 200  # ...unless it has this many requests already
SLICE = 16  # requests prepared between yields to the event loop
FAILURE_LOG_EVERY = 10.0

Pending = tuple[bytes, str, dict[str, str], datetime, str | None]  # body, peer, headers, received, trace


class Intake:
    def __init__(self, collector: Collector):
        self.collector = collector
        self._queued: deque[Pending] = deque()
        self._held = 0  # bytes, see MAX_HELD_BYTES
        self._room: asyncio.Future | None = None  # resolved when the processor takes a batch
        self._processor: asyncio.Task | None = None
        self._logged_at: dict[str, float] = {}
        telemetry.watch_collect_intake(self)

    def submit(self, body: bytes, peer: str, headers: dict[str, str], parent: str | None = None) -> bool:
        """Queue one request for the processor; False if too much is held already (the request is dropped).

        `parent`: the request's sampled trace, which the flush span will link to."""
        size = len(body) + HELD_OVERHEAD
        if self._held + size > MAX_HELD_BYTES:
            self.log_failure(f"collect queue full ({MAX_HELD_BYTES // 2**20} MiB held): dropping new hits; "
                             "is Redis slow or down?", "overloaded")
            return False
        self._held += size
        self._queued.append((body, peer, headers, self.collector.clock(), parent))
        if self._processor is None:
            self._start()
        return True

    def _start(self) -> None:
        # A fresh context: the batch serves many requests, not the one that happened to start it.
        self._processor = asyncio.get_running_loop().create_task(self._process(), context=contextvars.Context())

    @property
    def queued(self) -> int:
        """Requests waiting for the processor."""
        return len(self._queued)

    @property
    def held(self) -> int:
        """Bytes of requests answered but not yet stored (see MAX_HELD_BYTES)."""
        return self._held

    async def room(self) -> None:
        """Backpressure: past the high-water mark, wait until the processor takes a batch."""
        if len(self._queued) < HIGH_WATER:
            return
        if self._room is None or self._room.done():
            self._room = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._room)  # one waiter going away must not cancel it for the others

    async def settle(self) -> None:
        """Wait until every queued request is stored (or dropped)."""
        while self._processor is not None or self._queued:
            if self._processor is None:
                self._start()  # the last one was cancelled with requests left
            await asyncio.shield(self._processor)

    async def _process(self) -> None:
        """Batches while requests queue up. A batch's Redis call overlaps the preparing of the next one
        (one call in flight at a time, so hits reach Redis in the order they arrived)."""
        storing: asyncio.Future | None = None
        try:
            while self._queued or storing is not None:
                if storing is not None and storing.done():
                    storing = None
                if not self._queued:
                    if storing is not None:  # until it is stored or more requests come
                        await asyncio.wait([storing], timeout=LINGER_SECONDS)
                    continue
                if len(self._queued) < BATCH_TARGET:
                    await asyncio.sleep(LINGER_SECONDS)
                batch = [self._queued.popleft() for _ in range(min(MAX_BATCH, len(self._queued)))]
                if self._room is not None and not self._room.done():
                    self._room.set_result(None)
                try:
                    fields, others = await self.prepare_batch(batch)
                except Exception:  # a bug: the batch is lost, but its bytes must not stay held
                    self.log_failure()
                    fields, others = [], ["failed"] * len(batch)
                if storing is not None:
                    await storing
                held = sum(len(body) + HELD_OVERHEAD for body, *_ in batch)
                storing = asyncio.ensure_future(self.store(fields, others, held))
        except asyncio.CancelledError:
            log.error("collect processor cancelled with %d requests queued: they are lost", len(self._queued))
            raise
        finally:
            self._processor = None

    async def prepare_batch(self, batch: list[Pending]) -> tuple[list[list], list[str]]:
        """The commit script's fields for a batch of requests, and the outcomes of what is not stored.

        The batch's sites and salts are looked up first, together; then each request runs the steps."""
        parsed, others = [], []
        for body, peer, headers, moment, parent in batch:
            received = int(moment.timestamp() * 1000)
            try:
                items = parse_items(body, self.collector.settings.collect_max_batch)
            except Dropped as dropped:
                if dropped.sample is None:
                    others.append(dropped.reason.value)  # nothing attributable to a site (not JSON)
                else:  # e.g. too many events: one record for the site its first event names
                    parsed.append(([dropped.sample], peer, headers, received, parent, dropped.reason))
            else:
                parsed.append((items, peer, headers, received, parent, None))
        try:
            sites = await self._sites_of(item for items, *_ in parsed for item in items)
            salts = await self._salts_of(received for _, _, _, received, _, _ in parsed)
        except Exception:
            self.log_failure("collect failed: no site or salt")
            return [], others + ["failed"] * sum(len(items) for items, *_ in parsed)
        fields = []
        for n, (items, peer, headers, received, parent, ignored) in enumerate(parsed, 1):
            if n % SLICE == 0:
                await asyncio.sleep(0)  # the loop answers requests meanwhile
            try:
                prepared, unattributed = self.collector.prepare(items, peer, headers, received, parent, sites, salts,
                                                                ignored)
            except Exception:
                self.log_failure()
                others += ["failed"] * len(items)
            else:
                fields += prepared
                others += unattributed
        return fields, others

    async def _sites_of(self, items: Iterable[dict[str, Any]]) -> dict[str, Site | None]:
        sites: dict[str, Site | None] = {}
        missing = []
        for site_id in site_ids(items):
            found, site, fresh = self.collector.sites.peek(site_id)
            if found and fresh:
                sites[site_id] = site
            else:
                missing.append(site_id)
        if missing:  # concurrently, each shared with any lookup of it already running
            sites.update(zip(missing, await asyncio.gather(*(self.collector.site(site_id) for site_id in missing))))
        return sites

    async def _salts_of(self, moments: Iterable[int]) -> dict[str, bytes]:
        """The salts of the days of `moments` (epoch ms), and of the day before where a session may go on from it."""
        days = sorted({day for moment in moments for day in salt_days(moment)})
        return dict(zip(days, await asyncio.gather(*(self.collector.salts.for_day(day) for day in days)), strict=True))

    async def store(self, fields: list[list], others: list[str], held: int = 0) -> None:
        """Commit a prepared batch and count every outcome; never raises."""
        outcomes = others
        try:
            if fields:  # sent again through a Redis restart, for a while (commit.py)
                outcomes = await self.collector.committer.commit(fields) + others
        except Exception:
            self.log_failure()
            outcomes = ["failed"] * len(fields) + others
        finally:
            self._held -= held
        if telemetry.enabled():
            telemetry.count_collect(outcomes)

    def take(self, body: bytes | None, peer: str, headers: list[tuple[bytes, bytes]], parent: str | None = None) -> bool:
        """Queue a request read whole (`body` None: it went past the size limit) with its raw headers;
        never raises. False if it was dropped here, and then its outcome is counted."""
        try:
            wanted = _wanted_headers(headers)
            declared = wanted.get("content-length")
            limit = self.collector.settings.collect_max_body_bytes
            if body is None or declared is not None and not (declared.isascii() and declared.isdigit()
                                                             and int(declared) <= limit):
                raise Dropped(DropReason.too_large)
            if self.submit(body, peer, wanted, parent):
                return True
            outcome = DropReason.overloaded.value
        except Dropped as dropped:
            outcome = dropped.reason.value  # nothing attributable to a site
        except Exception:  # the public endpoint never answers 5xx
            self.log_failure()
            outcome = "failed"
        self.count_dropped(outcome)
        return False

    @staticmethod
    def count_dropped(outcome: str) -> None:
        if telemetry.enabled():
            telemetry.count_collect([outcome])

    def log_failure(self, why: str = "collect failed", kind: str = "failed") -> None:
        """Log a failure (with the exception being handled, if any), at most once in a while per kind."""
        now = time.monotonic()
        if now - self._logged_at.get(kind, -FAILURE_LOG_EVERY) > FAILURE_LOG_EVERY:  # no flood in an outage
            self._logged_at[kind] = now
            log.error("%s (more like it in the next %ds are not logged)", why, int(FAILURE_LOG_EVERY),
                      exc_info=sys.exc_info()[0] is not None)


class CollectEndpoint:
    """`POST /collect` and its preflight, answered below FastAPI: the hottest path pays for no routing,
    no request objects and no dependency solving. Everything else goes on to the app."""

    def __init__(self, app: ASGIApp, intake: Intake):
        self.app = app
        self.intake = intake
        self.limit = intake.collector.settings.collect_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/collect" or scope["method"] not in ("POST", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            sampled = scope.get(SAMPLED)  # decided already where the server's protocol passed the hit on
            if sampled if sampled is not None else telemetry.collect_sampled():
                timer = telemetry.Timer()
                with telemetry.collect_span(**{"http.request.method": "POST", "http.route": "/collect",
                                               "http.response.status_code": 204}):
                    await self._receive(scope, receive, telemetry.traceparent())
                telemetry.COLLECT_DURATION.record(timer.seconds())
            else:
                await self._receive(scope, receive)
        headers = _ANSWER_HEADERS if scope["method"] == "POST" else _PREFLIGHT_HEADERS
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _receive(self, scope: Scope, receive: Receive, parent: str | None = None) -> None:
        """Read the request and queue it; never raises. Its outcomes are counted when it is stored."""
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and not (declared.isdigit() and int(declared) <= self.limit):
            self.intake.count_dropped(DropReason.too_large.value)  # refused before a byte of it is read
            return
        try:
            body = await _read_body(receive, self.limit)
        except Dropped as dropped:  # nothing attributable to a site (too large, the client went away)
            self.intake.count_dropped(dropped.reason.value)
            return
        except Exception:  # the public endpoint never answers 5xx
            self.intake.log_failure()
            self.intake.count_dropped("failed")
            return
        peer = scope["client"][0] if scope.get("client") else ""
        if self.intake.take(body, peer, scope["headers"], parent):
            await self.intake.room()


SAMPLED = "oa.collect_sampled"  # scope key: protocol.py's decision to trace a hit it passes on to the app
_WANTED = {b"user-agent", b"accept-language", b"content-length", b"x-forwarded-for"}
_PREFLIGHT_HEADERS = [(k.lower().encode(), v.encode()) for k, v in CORS.items()]
# A browser reads only Allow-Origin on the answer itself; the rest matter to the preflight.
_ANSWER_HEADERS = [(b"access-control-allow-origin", CORS["Access-Control-Allow-Origin"].encode())]


def answer_headers() -> list[tuple[bytes, bytes]]:
    """The headers of the answer to a hit (protocol.py writes it too)."""
    return _ANSWER_HEADERS


def _wanted_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        if name in _WANTED:
            key = name.decode()
            text = value.decode("latin-1")
            # Repeated X-Forwarded-For lines are one list, as HTTP defines.
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request's body, read whole (a declared length past `limit` is refused before it is read)."""
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise Dropped(DropReason.malformed)  # the client went away
        more = message.get("more_body", False)
        if not more and not body:  # the whole body in one message, as nearly always: no copy
            chunk = message.get("body", b"")
            if len(chunk) > limit:
                raise Dropped(DropReason.too_large)
            return chunk
        body += message.get("body", b"")
        if len(body) > limit:
            raise Dropped(DropReason.too_large)
    return bytes(body)
