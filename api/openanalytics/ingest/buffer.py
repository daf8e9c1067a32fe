"""The ingest buffer: a bounded Redis Stream of rows waiting for the worker.

A request's events are appended by one script, all or none, and only while the stream holds
fewer than `OA_INGEST_MAX_QUEUED` events (entries leave it when the worker has stored them), so
a long ClickHouse outage fills the queue up to its bound, not Redis up to its memory.

Where the operator asks for more than "Redis has it" (`OA_EVENTS_WAIT_FSYNC`,
`OA_EVENTS_WAIT_REPLICAS`), the append is followed on the same connection by `WAITAOF` (Redis
7.2+) or `WAIT`, and only a confirmed append is answered 202.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from openanalytics.ingest.durability import RedisFacts

FIELD = b"e"

# KEYS[1]: the stream; ARGV[1]: most events it may hold; ARGV[2..]: the rows. Returns how many were
# appended: all, or 0 when they do not fit.
_APPEND = """
local rows = #ARGV - 1
if redis.call('XLEN', KEYS[1]) + rows > tonumber(ARGV[1]) then return 0 end
for n = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[n]) end
return rows
"""


class BufferUnavailable(Exception):
    """The stream cannot be written; nothing was queued."""


class QueueFull(Exception):
    """The stream holds as many events as it may (or Redis as much memory); nothing was queued."""


class NotConfirmed(Exception):
    """The events were queued, but Redis did not confirm them on disk or on replicas in time."""


@dataclass(frozen=True)
class Confirmation:
    """What a 202 waits for beyond Redis having the events."""

    fsync: bool = False
    replicas: int = 0
    timeout_ms: int = 1000

    @property
    def wanted(self) -> bool:
        return self.fsync or self.replicas > 0

    def command(self, facts: RedisFacts | None) -> tuple[Any, ...] | None:
        """The command confirming the last write on this connection; None if nothing is to be waited
        for. Raises NotConfirmed when this Redis cannot confirm what is asked."""
        if not self.wanted:
            return None
        if facts is None:
            raise NotConfirmed("Redis's persistence settings are not known yet")
        if facts.has_waitaof:
            return ("WAITAOF", 1 if self.fsync else 0, self.replicas, self.timeout_ms)
        if self.fsync and not (facts.aof and facts.appendfsync == "always"):
            raise NotConfirmed("this Redis cannot confirm a write on disk (before 7.2 that needs appendfsync always)")
        return ("WAIT", self.replicas, self.timeout_ms) if self.replicas else None

    def confirmed(self, reply: Any) -> bool:
        if isinstance(reply, list):  # WAITAOF: [local fsynced, replicas fsynced]
            return int(reply[0]) >= (1 if self.fsync else 0) and int(reply[1]) >= self.replicas
        return int(reply) >= self.replicas


class Buffer:
    def __init__(self, redis: aioredis.Redis, stream: str, max_queued: int, confirmation: Confirmation = Confirmation()):
        self.redis = redis
        self.stream = stream
        self.max_queued = max_queued
        self.confirmation = confirmation
        self._append = redis.register_script(_APPEND)

    async def append(self, rows: list[dict[str, Any]], facts: RedisFacts | None = None) -> None:
        """Queue `rows`, all or none. Raises QueueFull or BufferUnavailable (nothing queued) or
        NotConfirmed (queued, not confirmed). `facts`: the Redis's, for the confirmation."""
        if not rows:
            return
        wait = self.confirmation.command(facts)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:  # one connection: WAIT follows the write
                await self._append(keys=[self.stream], args=[self.max_queued, *map(orjson.dumps, rows)], client=pipe)
                if wait is not None:
                    pipe.execute_command(*wait)
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise BufferUnavailable(str(exc)) from exc
        if isinstance(replies[0], Exception):
            raise BufferUnavailable(str(replies[0]))
        if not replies[0]:
            raise QueueFull(f"the ingest queue holds {self.max_queued} events")
        if wait is not None:
            if isinstance(replies[1], Exception):
                raise NotConfirmed(f"{wait[0]} failed: {replies[1]}")
            if not self.confirmation.confirmed(replies[1]):
                raise NotConfirmed(f"{wait[0]} timed out after {self.confirmation.timeout_ms} ms")
