"""The HTTP application: `/collect`, `/v1/...`, health, and the OpenAPI 3.1 spec."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openanalytics import __version__, errors, health, telemetry
from openanalytics.auth import endpoints as keys
from openanalytics.auth.gate import ApiGate
from openanalytics.auth.principals import Principals, listen_for_changes
from openanalytics.auth.ratelimit import RateLimiter
from openanalytics.cache import TTLCache
from openanalytics.ingest.client_ip import parse_networks
from openanalytics.ingest.geo import Geo
from openanalytics.ingest import collect, events, intake
from openanalytics.ingest.buffer import Buffer, Confirmation
from openanalytics.ingest.durability import RedisWatch
from openanalytics.ingest.schemas import EventIn
from openanalytics.openapi import build_openapi
from openanalytics.projects import endpoints as projects
from openanalytics.ingest import verify
from openanalytics.goals import endpoints as goals
from openanalytics.privacy import endpoints as privacy
from openanalytics.query import conversions, funnel, listing, pageviews, realtime, stats, usage
from openanalytics.tracker import endpoints as tracker
from openanalytics.runtime import Stores
from openanalytics.worker.runner import Worker

log = logging.getLogger(__name__)

DESCRIPTION = """\
Programmatic access to projects, events and analytics queries.

* `POST /collect` is public and silent: always `204 No Content`.
* Everything under `/v1` needs `Authorization: Bearer oa_live_...`; errors are
  `{"error": "<code>", "message": "<sentence>"}`.
"""


def create_app(
    stores: Stores, with_worker: bool = False, owns_stores: bool = False, rate_limits: bool = True
) -> FastAPI:
    """The API. With `with_worker` the same process also drains the stream (standalone);
    with `owns_stores` the stores are closed at shutdown, on the loop that used them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = asyncio.Event()
        caches = [app.state.principals.cache, app.state.project_cache, app.state.collector.sites]
        listener = asyncio.create_task(listen_for_changes(stores.redis, caches, stop), name="invalidation")
        watching = asyncio.create_task(app.state.redis_watch.run(stop), name="redis-watch")
        task = None
        if with_worker:
            worker = Worker(stores, watch=app.state.redis_watch)
            app.state.worker = worker
            await worker.provision()
            task = asyncio.create_task(worker.run(stop), name="worker")
        try:
            yield
        finally:
            try:
                await settle(app.state.intake)
                stop.set()
                await listener
                await watching
                if task is not None:
                    await task
                    await app.state.worker.drain()
            finally:
                if owns_stores:
                    await stores.close()

    app = FastAPI(
        title="OpenAnalytics API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        # Plain operation ids (list_projects, send_events) read well in Postman and generated SDKs.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.stores = stores
    settings = stores.settings
    app.state.principals = Principals(stores.db, settings.cache_ttl_seconds)
    app.state.project_cache = TTLCache(settings.cache_ttl_seconds)
    limiter = RateLimiter(stores.redis, settings.auth_failures_per_minute)
    app.state.geo = Geo(settings.effective_geoip_path)
    app.state.redis_watch = RedisWatch(stores.redis, settings.ingest_max_memory_share)
    app.state.buffer = Buffer(stores.redis, settings.stream_key, settings.ingest_max_queued, Confirmation(
        settings.events_wait_fsync, settings.events_wait_replicas, settings.events_wait_timeout_ms))
    app.state.collector = collect.Collector(stores, app.state.geo, watch=app.state.redis_watch)
    app.add_middleware(
        ApiGate,
        principals=app.state.principals,
        limiter=limiter if rate_limits else None,
        trusted=parse_networks(settings.trusted_proxies),
        max_body_bytes=settings.events_max_body_bytes,
        salts=app.state.collector.salts,
    )
    app.add_middleware(NoSniff)
    app.state.intake = intake.Intake(app.state.collector)
    app.add_middleware(intake.CollectEndpoint, intake=app.state.intake)  # outermost: the hot path
    telemetry.instrument_app(app)  # when on: server spans and latency by route around all of it
    errors.install(app)
    for module in (health, tracker, collect, events, verify, projects, keys, pageviews, stats, listing, realtime,
                   goals, conversions, funnel, privacy, usage):
        app.include_router(module.router)
    events_body = {"requestBody": events.request_body_spec(stores.settings.events_max_batch)}
    app.openapi = lambda: build_openapi(app, [EventIn], {("/v1/projects/{project_id}/events", "post"): events_body})
    return app


class NoSniff:
    """`X-Content-Type-Options: nosniff` on every answer of the app (a browser must not guess that a
    JSON error or an export is HTML). /collect's empty 204s are answered before this."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), _NOSNIFF]}
            await send(message)

        await self.app(scope, receive, send_nosniff)


_NOSNIFF = (b"x-content-type-options", b"nosniff")
SETTLE_SECONDS = 20  # within Kubernetes' default 30 s grace period, leaving time for the rest


async def settle(queue: intake.Intake) -> None:
    """Store what /collect answered but has not stored yet; a stop must go on even if that fails."""
    try:
        async with asyncio.timeout(SETTLE_SECONDS):
            await queue.settle()
    except Exception:
        log.exception("stopping: %d answered /collect requests could not be stored", queue.queued)


YOUNG_COLLECTION_EVERY = 20_000  # container objects allocated; Python's default is 700


def settle_heap() -> None:
    """Before serving. What startup made lives as long as the process: keep it out of the cyclic
    collector's sight, or every full collection walks it (with telemetry's libraries loaded, a quarter
    of the CPU). And collect young objects less often: a /collect hit allocates a few dozen, nearly all
    freed by reference counting at once, and a collection every 700 cost the server about 1.5 µs of
    CPU per hit (4% of its throughput; README, benchmarks)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, 20, 20)


def served(app: FastAPI):
    """What the server runs: /collect answered before FastAPI's own middleware stack too."""
    return intake.CollectEndpoint(app, app.state.intake)


def http_protocol(app: FastAPI) -> type | str:
    """The HTTP protocol the server runs: uvicorn's httptools one, answering plain /collect hits itself
    (without httptools, where it has no wheel, uvicorn's own choice and the app answers them all)."""
    try:
        from openanalytics.ingest.protocol import collect_protocol
    except ImportError:
        return "auto"
    return collect_protocol(app.state.intake) or "auto"
