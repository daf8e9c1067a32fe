"""What the Redis holding the ingest queue can promise, watched by every API and worker process.

A `202` (and a stored `/collect` hit) is only as durable as that Redis: it must keep its data on
disk (AOF) and must never evict keys. `RedisWatch` reads this from `INFO` and `CONFIG GET`
every second, logs a clear warning at start (and whenever the answer changes), gives `/readyz`
its details, and says when Redis uses too much of its `maxmemory` for ingest to go on (past
`OA_INGEST_MAX_MEMORY_SHARE` server-side events are refused with 503 and /collect hits dropped
as `overloaded`, so Redis itself never runs out of memory).

The embedded mode's in-process Redis has none of this: its queue lives as long as the process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from openanalytics.stores.redis import is_embedded

log = logging.getLogger(__name__)

WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class RedisFacts:
    """What one reading of `INFO persistence memory server` (and `CONFIG GET appendfsync`) said."""

    version: tuple[int, ...]
    aof: bool
    appendfsync: str | None  # None where CONFIG is not allowed (managed Redis services)
    policy: str
    maxmemory: int
    used_memory: int

    @property
    def memory_share(self) -> float | None:
        return self.used_memory / self.maxmemory if self.maxmemory else None

    @property
    def has_waitaof(self) -> bool:
        return self.version >= (7, 2)

    def warnings(self) -> list[str]:
        """What keeps Redis from keeping a 202's promise, in words for the operator."""
        found = []
        if not self.aof:
            found.append("Redis has AOF off (appendonly no): a Redis restart loses every queued event; "
                         "set appendonly yes (README: Durability and failures)")
        elif self.appendfsync == "no":
            found.append("Redis runs appendfsync no: a machine crash can lose about 30 s of queued events; "
                         "use everysec or always")
        if self.policy != "noeviction":
            found.append(f"Redis evicts keys (maxmemory-policy {self.policy}): queued events and sessions can "
                         "be dropped under memory pressure; set maxmemory-policy noeviction")
        return found

    def details(self) -> dict[str, object]:
        return {"aof": self.aof, "appendfsync": self.appendfsync, "maxmemory_policy": self.policy,
                "maxmemory": self.maxmemory, "used_memory": self.used_memory,
                "memory_share": None if self.memory_share is None else round(self.memory_share, 4)}


async def read_facts(redis: aioredis.Redis) -> RedisFacts:
    async with redis.pipeline(transaction=False) as pipe:  # one section a call: Redis 6 takes no more
        for section in ("persistence", "memory", "server"):
            pipe.info(section)
        info = {name: value for section in await pipe.execute() for name, value in section.items()}
    try:
        appendfsync = (await redis.config_get("appendfsync")).get("appendfsync")
    except Exception:  # CONFIG renamed or refused, as on most managed services
        appendfsync = None
    if isinstance(appendfsync, bytes):
        appendfsync = appendfsync.decode()
    version = tuple(int(part) for part in str(info.get("redis_version", "0")).split(".")[:3] if part.isdigit())
    return RedisFacts(version=version, aof=bool(int(info.get("aof_enabled", 0))), appendfsync=appendfsync,
                      policy=str(info.get("maxmemory_policy", "")), maxmemory=int(info.get("maxmemory", 0)),
                      used_memory=int(info.get("used_memory", 0)))


class RedisWatch:
    """The latest facts about the queue's Redis (None until read, or while it is unreachable)."""

    def __init__(self, redis: aioredis.Redis, max_memory_share: float):
        self.redis = redis
        self.embedded = is_embedded(redis)
        self.max_memory_share = max_memory_share
        self.facts: RedisFacts | None = None
        self._warned: list[str] | None = None

    @property
    def memory_full(self) -> bool:
        """Redis uses more of its maxmemory than ingest may fill (see the module docstring)."""
        share = self.facts.memory_share if self.facts is not None else None
        return share is not None and share >= self.max_memory_share

    async def refresh(self) -> RedisFacts | None:
        if self.embedded:
            return None
        self.facts = await read_facts(self.redis)
        warnings = self.facts.warnings()
        if warnings != self._warned:
            for warning in warnings:
                log.warning("durability: %s", warning)
            if self._warned and not warnings:
                log.info("durability: Redis now keeps queued events on disk and never evicts them")
            self._warned = warnings
        return self.facts

    async def refresh_quietly(self) -> RedisFacts | None:
        """refresh(), with Redis unreachable answered by None (whoever needs the facts says so)."""
        try:
            return await self.refresh()
        except Exception:
            self.facts = None
            return None

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every second until `stop`; Redis being down is reported elsewhere (/readyz, the loops)."""
        if self.embedded:
            return
        while not stop.is_set():
            await self.refresh_quietly()
            try:
                await asyncio.wait_for(stop.wait(), WATCH_SECONDS)
            except TimeoutError:
                pass
