"""Throughput of authenticated GET and POST with the rate-limit check on and off, in one run.

Both apps share the same stores and run in this process (ASGI, no sockets), so the
numbers are the app's own cost; the check's share would be smaller behind real HTTP.
Rounds alternate between off and on and the median round counts, to even out noise.

    python benchmarks/api_ratelimit.py [--requests 3000] [--rounds 5] [--concurrency 32]

Needs Redis on 127.0.0.1:6379 for the "redis" rows (database 13 is flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import redis

from openanalytics import migrations
from openanalytics.app import create_app
from openanalytics.auth.keys import issue_key
from openanalytics.config import Settings
from openanalytics.projects.service import create_project
from openanalytics.runtime import Stores
from openanalytics.stores.clickhouse import EventStore
from openanalytics.stores.redis import make_redis
from openanalytics.stores.sql import Database

REDIS_URL = "redis://127.0.0.1:6379/13"


async def run_round(client: httpx.AsyncClient, method: str, url: str, headers: dict, body, total: int, concurrency: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.request(method, url, headers=headers, json=body)
            if response.status_code >= 300:
                raise RuntimeError(f"{response.status_code} {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def measure(kind: str, args, workdir: Path, events: EventStore) -> list[tuple]:
    db = Database(f"sqlite:///{workdir / f'{kind}.sqlite3'}")
    migrations.upgrade(db.engine)
    if kind == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()
    hot = make_redis(REDIS_URL if kind == "redis" else None)
    stores = Stores(settings=Settings(data_dir=workdir, cache_ttl_seconds=60), db=db, redis=hot, events=events)
    with db.session() as session:
        project = create_project(session, "bench", "enterprise", overrides={"api_requests_per_minute": 10**9})
        secret = issue_key(session, project.id).secret
    headers = {"Authorization": f"Bearer {secret}"}
    cases = [
        ("GET /v1/projects/{id}", "GET", f"/v1/projects/{project.id}", None),
        ("POST /v1/projects/{id}/events", "POST", f"/v1/projects/{project.id}/events", {"event_type": "pageview", "url": "https://a.example/"}),
    ]
    clients = {}
    for label, limits in (("off", False), ("on", True)):
        transport = httpx.ASGITransport(app=create_app(stores, rate_limits=limits), client=("198.51.100.1", 1))
        clients[label] = httpx.AsyncClient(transport=transport, base_url="http://bench")
    rows = []
    for name, method, url, body in cases:
        rates = {"off": [], "on": []}
        for label in ("off", "on"):  # warm-up
            await run_round(clients[label], method, url, headers, body, 200, args.concurrency)
        for _ in range(args.rounds):
            for label in ("off", "on"):
                rates[label].append(await run_round(clients[label], method, url, headers, body, args.requests, args.concurrency))
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        rows.append((name, kind, off, on, 1 - on / off))
        await hot.delete(stores.settings.stream_key)
    for client in clients.values():
        await client.aclose()
    await hot.aclose()
    db.dispose()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stores", default="redis,embedded", help="comma-separated: redis, embedded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        events = EventStore(f"chdb://{workdir / 'clickhouse'}")
        rows = []
        for kind in args.stores.split(","):
            rows += await measure(kind, args, workdir, events)
        events.close()
    print(f"{args.requests} requests x {args.rounds} rounds, {args.concurrency} concurrent, median round\n")
    print("| endpoint | hot store | check off (req/s) | check on (req/s) | cost of the check |")
    print("|---|---|---:|---:|---:|")
    for name, kind, off, on, cost in rows:
        print(f"| `{name}` | {kind} | {off:,.0f} | {on:,.0f} | {cost:.1%} |")


if __name__ == "__main__":
    asyncio.run(main())
