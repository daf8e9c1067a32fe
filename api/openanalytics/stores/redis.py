"""Hot state: Redis, or fakeredis in-process when no URL is configured (embedded mode)."""

from __future__ import annotations

import redis.asyncio as aioredis


def make_redis(url: str | None, max_connections: int = 50) -> aioredis.Redis:
    """A client whose pool waits for a free connection (up to 5 s) instead of failing at once."""
    if url:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        return aioredis.Redis(connection_pool=pool)
    import fakeredis

    # One in-process server shared by the API and the worker of the standalone process.
    return fakeredis.FakeAsyncRedis(
        server=fakeredis.FakeServer(), connection_pool_class=aioredis.BlockingConnectionPool,
        max_connections=max_connections,
    )
