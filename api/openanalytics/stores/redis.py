"""Hot state: Redis, or fakeredis in-process when no URL is configured (embedded mode).

Pooled connections must survive a Redis restart without failing a request later: redis-py 8
skips its check for connections the server closed while they sat in the pool when
"maintenance notifications" are on (its default, `auto`), so they are switched off (they are
a Redis Enterprise feature over RESP3, which we do not speak). A connection that died without
the server closing it (a vanished pod) is found by the health check before a command is sent
on it, and replaced there. Commands themselves are never retried: one that may have run must
not run twice (an XADD would queue an event twice).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

HEALTH_CHECK_SECONDS = 10  # a connection idle this long is pinged before its next command


class _ReconnectingHealthCheck:
    """A failed health check reconnects once instead of failing the command it precedes: that
    command has not been sent yet, so nothing can run twice."""

    async def check_health(self) -> None:
        try:
            await super().check_health()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self.disconnect()
            await self.connect()


def is_embedded(client: aioredis.Redis) -> bool:
    """Whether the client is the in-process fakeredis of the embedded mode (no persistence, no INFO)."""
    return type(client).__module__.startswith("fakeredis")


def make_redis(url: str | None, max_connections: int = 50, socket_timeout: float | None = None) -> aioredis.Redis:
    """A client whose pool waits for a free connection (up to 5 s) instead of failing at once.

    `socket_timeout`: how long a command may wait for its answer (longer than any blocking read the
    process makes), so a Redis that vanished without closing its connections cannot hang a request."""
    if url:
        tcp = {} if url.startswith("unix:") else {"socket_keepalive": True}
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5, socket_connect_timeout=5, socket_timeout=socket_timeout,
            health_check_interval=HEALTH_CHECK_SECONDS, **tcp,
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        base = pool.connection_class  # plain, TLS or unix socket, as the URL says
        pool.connection_class = type(f"Checked{base.__name__}", (_ReconnectingHealthCheck, base), {})
        return aioredis.Redis(connection_pool=pool)
    import fakeredis

    # One in-process server shared by the API and the worker of the standalone process.
    return fakeredis.FakeAsyncRedis(
        server=fakeredis.FakeServer(), connection_pool_class=aioredis.BlockingConnectionPool,
        max_connections=max_connections,
    )
