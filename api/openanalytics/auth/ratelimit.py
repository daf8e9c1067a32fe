"""Per-key request budgets and per-IP failed-authentication budgets, counted in Redis.

A Lua script keeps each count atomic across API processes (no read-then-write race).
Windows are fixed, one minute long, starting with the first request of a window; `reset`
is the number of seconds until the window ends.

Requests waiting on the same counter are counted together ("group commit"): while one
round trip to Redis is under way, the requests that arrive queue up, and the next round
trip adds them all with one INCRBY per counter, in one pipeline. Each request still gets
its own exact place in the count, so the 61st request of a 60-a-minute key is refused
whichever process serves it, at a fraction of the cost of one script call per request.

If Redis cannot be reached the budgets are not enforced (fail open): the query API stays
up without Redis, and keys are too long to guess anyway. The headers then report the full
budget, and /readyz says Redis is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

log = logging.getLogger(__name__)

WINDOW_MS = 60_000
# Generous: a busy event loop also delays the answer, and a false timeout lets requests through.
ROUND_TRIP_TIMEOUT = 2.0
_WARN_EVERY_SECONDS = 10.0

# KEYS[1] the counter, ARGV[1] window ms, ARGV[2] how many requests to add.
# Returns {count after adding, ttl_ms}.
_SCRIPT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True)
class Budget:
    limit: int
    remaining: int
    reset_seconds: int
    allowed: bool

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_seconds).encode()),
        ]


def budget_network(ip: str) -> str:
    """Whom a per-IP budget belongs to: the IPv4 address, or the IPv6 /64 (one subscriber's
    network; rotating addresses inside it must not buy a fresh budget)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 4:
        return str(addr)
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.ip_network(f"{addr}/64", strict=False).network_address)


def client_tag(ip: str, salt: bytes) -> str:
    """Names a client's per-IP budget in Redis: keyed with the day's salt, so the key says
    nothing about the IP once the salt is gone (a plain hash of an IPv4 address is easy to reverse).
    Not cached here: a cache would keep past days' salts (/collect keeps tags per client, clients.py)."""
    return hashlib.blake2b(budget_network(ip).encode(), key=salt, digest_size=12).hexdigest()


# counter -> [(limit, future), ...] in arrival order
Waiting = dict[str, list[tuple[int, asyncio.Future]]]


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, auth_failures_per_minute: int):
        self.redis = redis
        self.failure_limit = auth_failures_per_minute
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()
        self._waiting: Waiting = defaultdict(list)
        self._flusher: asyncio.Task | None = None
        self._warned_at = 0.0

    async def spend(self, key_id: str, limit: int) -> Budget:
        """One request of a valid key. (A valid key is never refused for its IP's failures:
        behind a shared proxy that would let one attacker lock everyone out.)"""
        return await self._queue(f"oa:rl:key:{key_id}", limit)

    async def fail(self, tag: str) -> Budget:
        """One failed authentication from the client `tag` (see client_tag) names."""
        return await self._queue(f"oa:rl:authfail:{tag}", self.failure_limit)

    async def _queue(self, counter: str, limit: int) -> Budget:
        future = asyncio.get_running_loop().create_future()
        self._waiting[counter].append((limit, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, defaultdict(list)
            try:
                # A stalled Redis must not stall the API: past the timeout, fail open.
                results = await asyncio.wait_for(self._count(batch), ROUND_TRIP_TIMEOUT)
                for waiters, (count, ttl) in zip(batch.values(), results):
                    self._settle_group(waiters, int(count), int(ttl))
            except (RedisError, OSError, TimeoutError):
                self._warn()
            except asyncio.CancelledError:
                self._release(self._waiting)
                raise
            except Exception:
                log.exception("rate limiter failed; not enforcing this round")
            finally:
                self._release(batch)  # whatever happened, nobody is left waiting

    @staticmethod
    def _release(batch: Waiting) -> None:
        for waiters in batch.values():
            for limit, future in waiters:
                _settle(future, Budget(limit, limit, WINDOW_MS // 1000, True))

    async def _count(self, batch: Waiting) -> list:
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for counter, waiters in batch.items():
                    # EVALSHA directly: redis-py's Script in a pipeline asks SCRIPT EXISTS every time.
                    pipe.evalsha(self._sha, 1, counter, WINDOW_MS, len(waiters))
                try:
                    return await pipe.execute()
                except NoScriptError:
                    if attempt == 2:
                        raise
                    await self.redis.script_load(_SCRIPT)  # a new or restarted Redis
        raise AssertionError("unreachable")

    @staticmethod
    def _settle_group(waiters: list[tuple[int, asyncio.Future]], count: int, ttl: int) -> None:
        reset = max(1, math.ceil(ttl / 1000))
        first = count - len(waiters) + 1  # each waiter's own place in the count
        for place, (limit, future) in enumerate(waiters, start=first):
            _settle(future, Budget(limit, max(0, limit - place), reset, place <= limit))

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self._warned_at > _WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("rate limits not enforced: Redis unreachable")


def _settle(future: asyncio.Future, budget: Budget) -> None:
    if not future.done():  # the request may have been cancelled meanwhile
        future.set_result(budget)
