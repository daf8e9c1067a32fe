"""What arrived at /collect for a known site, accepted or not and why: the data behind
Verify Installation. Kept briefly in Redis (the last 100 per project, for a day)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

KEEP = 100
TTL_SECONDS = 24 * 3600


def arrivals_key(project_id: str) -> str:
    return f"oa:arrivals:{project_id}"


def drops_key(project_id: str, day: str) -> str:
    return f"oa:drops:{project_id}:{day}"


def entry(received: datetime, item: dict[str, Any], outcome: str, event_id: str | None = None) -> bytes:
    url = item.get("url") if isinstance(item.get("url"), str) else ""
    return orjson.dumps({
        "received_at": received.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event_type": item.get("event_type") if isinstance(item.get("event_type"), str) else "pageview",
        "event_name": item.get("event_name") if isinstance(item.get("event_name"), str) else None,
        "url": url[:500],
        "outcome": outcome,
        "event_id": event_id,
    })


def record(pipe, project_id: str, day: str, entries: list[bytes], drops: dict[str, int]) -> None:
    """Queue the writes on `pipe` (the same transaction that queues the events)."""
    if entries:
        key = arrivals_key(project_id)
        pipe.lpush(key, *entries)
        pipe.ltrim(key, 0, KEEP - 1)
        pipe.expire(key, TTL_SECONDS)
    for reason, count in drops.items():
        pipe.hincrby(drops_key(project_id, day), reason, count)
    if drops:
        pipe.expire(drops_key(project_id, day), 2 * TTL_SECONDS)


async def recent(redis: aioredis.Redis, project_id: str, day: str) -> tuple[list[dict], dict[str, int]]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lrange(arrivals_key(project_id), 0, KEEP - 1)
        pipe.hgetall(drops_key(project_id, day))
        items, drops = await pipe.execute()
    return [orjson.loads(i) for i in items], {k.decode(): int(v) for k, v in drops.items()}
