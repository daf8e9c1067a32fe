"""What arrived at /collect for a known site, accepted or not and why: the data behind
Verify Installation. Kept briefly in Redis (the last 100 per project, for a day), written
by the commit script (commit.py)."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

KEEP = 100
TTL_SECONDS = 24 * 3600


def arrivals_key(project_id: str) -> str:
    return f"oa:arrivals:{project_id}"


def drops_key(project_id: str, day: str) -> str:
    return f"oa:drops:{project_id}:{day}"


async def recent(redis: aioredis.Redis, project_id: str, day: str) -> tuple[list[dict], dict[str, int]]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lrange(arrivals_key(project_id), 0, KEEP - 1)
        pipe.hgetall(drops_key(project_id, day))
        items, drops = await pipe.execute()
    return [orjson.loads(i) for i in items], {k.decode(): int(v) for k, v in drops.items()}
