"""Hot state: Redis, or fakeredis in-process when no URL is configured (embedded mode)."""

from __future__ import annotations

import redis.asyncio as aioredis


def make_redis(url: str | None) -> aioredis.Redis:
    if url:
        return aioredis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    import fakeredis

    # One in-process server shared by the API and the worker of the standalone process.
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
