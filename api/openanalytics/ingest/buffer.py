"""The ingest buffer: a bounded Redis Stream of rows waiting for the worker.

A request's events are appended by one script, all or none, and only while the stream holds
fewer than `OA_INGEST_MAX_QUEUED` events (entries leave it when the worker has stored them), so
a long ClickHouse outage fills the queue up to its bound, not Redis up to its memory.

Every append carries a key the script sets with the events: the client's `Idempotency-Key`
(kept a day), or one of its own (kept two minutes). A call whose answer was lost (Redis went
away after taking it) is sent again under the same key and answered from the first, so a
request's events are never queued twice; a client that sends a request again with the same
`Idempotency-Key` gets the first answer.

Where the operator asks for more than "Redis has it" (`OA_EVENTS_WAIT_FSYNC`,
`OA_EVENTS_WAIT_REPLICAS`), the append is followed on the same connection by `WAITAOF` (Redis
7.2+) and `WAIT`, and only a confirmed append is answered 202.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openanalytics.ingest.durability import RedisFacts

FIELD = b"e"
CLIENT_KEY_MS = 24 * 3600 * 1000  # an Idempotency-Key is honoured this long
OWN_KEY_MS = 120_000  # a request's own key: long enough for its calls to be sent again
RETRY_SECONDS = 5.0  # a call that could not reach Redis, or whose answer was lost, is sent again this long

# KEYS[1]: the stream; KEYS[2]: the request's key. ARGV[1]: most events the stream may hold; ARGV[2]: the
# request's mark ("fingerprint:call"); ARGV[3]: the key's lifetime (ms); ARGV[4..]: the rows. Answers
# "queued", "full", or for a key seen before, the mark it was set with (nothing queued again; the key's
# lifetime renewed, a write that a WAIT after it confirms together with the first request's events).
_APPEND = """
local seen = redis.call('GET', KEYS[2])
if seen then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return seen
end
local rows = #ARGV - 3
if redis.call('XLEN', KEYS[1]) + rows > tonumber(ARGV[1]) then return 'full' end
for n = 4, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[n]) end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 'queued'
"""


class BufferUnavailable(Exception):
    """Redis could not be reached (or did not answer) for the whole retry time: nothing was queued,
    unless the first call was taken and every answer since was lost."""


class QueueFull(Exception):
    """The stream holds as many events as it may (or Redis as much memory); nothing was queued."""


class CannotConfirm(Exception):
    """The confirmation asked for is impossible on this Redis as it runs now; nothing was queued."""


class NotConfirmed(Exception):
    """The events were queued, but Redis did not confirm them on disk or on replicas in time."""


class KeyReused(Exception):
    """An Idempotency-Key seen before came with other events; nothing was queued."""


@dataclass(frozen=True)
class Confirmation:
    """What a 202 waits for beyond Redis having the events."""

    fsync: bool = False
    replicas: int = 0
    timeout_ms: int = 2000

    @property
    def wanted(self) -> bool:
        return self.fsync or self.replicas > 0

    def commands(self, facts: RedisFacts | None) -> list[tuple[Any, ...]]:
        """The commands confirming the last write on this connection. Raises CannotConfirm when this
        Redis cannot confirm what is asked (checked before anything is queued)."""
        if not self.wanted:
            return []
        if facts is None:
            raise CannotConfirm("Redis's persistence settings are not known (is it reachable?)")
        found = []
        if self.fsync:
            if not facts.aof:
                raise CannotConfirm("Redis keeps no append-only file (appendonly no)")
            if facts.has_waitaof:
                found.append(("WAITAOF", 1, 0, self.timeout_ms))
            elif facts.appendfsync != "always":
                raise CannotConfirm("before Redis 7.2 a write is on disk before its answer only with appendfsync always")
        if self.replicas:
            found.append(("WAIT", self.replicas, self.timeout_ms))
        return found

    def confirmed(self, command: tuple[Any, ...], reply: Any) -> bool:
        if command[0] == "WAITAOF":  # [local fsynced, replicas fsynced]
            return int(reply[0]) >= 1
        return int(reply) >= self.replicas


class Buffer:
    def __init__(self, redis: aioredis.Redis, stream: str, max_queued: int, confirmation: Confirmation = Confirmation()):
        self.redis = redis
        self.stream = stream
        self.max_queued = max_queued
        self.confirmation = confirmation
        self._append = redis.register_script(_APPEND)

    async def append(self, rows: list[dict[str, Any]], key: str, fingerprint: str, key_ms: int = OWN_KEY_MS,
                     facts: RedisFacts | None = None) -> bool:
        """Queue `rows` under `key`, all or none, and confirm them as configured. True if this request queued
        them, False if an earlier request with the same key had (nothing queued again). Raises QueueFull,
        KeyReused, CannotConfirm or BufferUnavailable (nothing queued), or NotConfirmed (queued, not confirmed)."""
        waits = self.confirmation.commands(facts)
        mark = f"{fingerprint}:{secrets.token_hex(8)}"  # the call's own part tells our resend from a request's
        args = [self.max_queued, mark, key_ms, *map(orjson.dumps, rows)]
        replies = await self._send(key, args, waits)
        answer = replies[0].decode() if isinstance(replies[0], bytes) else str(replies[0])
        if answer == "full":
            raise QueueFull(f"the ingest queue holds {self.max_queued} events")
        if answer not in ("queued", mark) and answer.split(":", 1)[0] != fingerprint:
            raise KeyReused("this Idempotency-Key came with other events before")
        for command, reply in zip(waits, replies[1:], strict=True):
            if isinstance(reply, Exception):
                raise NotConfirmed(f"{command[0]} failed: {reply}")
            if not self.confirmation.confirmed(command, reply):
                raise NotConfirmed(f"{command[0]} timed out after {self.confirmation.timeout_ms} ms")
        return answer in ("queued", mark)

    async def _send(self, key: str, args: list[Any], waits: list[tuple[Any, ...]]) -> list[Any]:
        """The script and the confirmations on one connection (a WAIT confirms that connection's writes),
        sent again under the same key while Redis cannot be reached or its answer is lost."""
        deadline, delay = time.monotonic() + RETRY_SECONDS, 0.05
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    await self._append(keys=[self.stream, key], args=args, client=pipe)
                    for command in waits:
                        pipe.execute_command(*command)
                    replies = await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise BufferUnavailable(str(exc)) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except RedisError as exc:
                raise BufferUnavailable(str(exc)) from exc
            if isinstance(replies[0], Exception):  # refused by Redis (out of memory, say): nothing ran
                raise BufferUnavailable(str(replies[0]))
            return replies
