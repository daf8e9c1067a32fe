"""Per-key request budgets and per-IP failed-authentication budgets, counted in Redis.

One Lua script per request keeps the count atomic across API processes (no read-then-write
race). Windows are fixed, one minute long, starting with the first request of a window;
`reset` is the number of seconds until the window ends.

If Redis cannot be reached the budgets are not enforced (fail open): the query API stays
up without Redis, and keys are too long to guess anyway. The headers then report the full
budget, and /readyz says Redis is down.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WINDOW_MS = 60_000

# KEYS[1] the IP's failed-authentication counter, KEYS[2] the counter to spend (or none).
# ARGV[1] window ms, ARGV[2] the IP's failure allowance.
# Returns {blocked (0/1), count, ttl_ms} for the spent counter, or for the IP's when blocked.
_SCRIPT = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures >= tonumber(ARGV[2]) then
  return {1, failures, redis.call('PTTL', KEYS[1])}
end
local key = KEYS[2] or KEYS[1]
local count = redis.call('INCR', key)
local ttl = redis.call('PTTL', key)
if ttl < 0 then
  redis.call('PEXPIRE', key, ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {0, count, ttl}
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


def _ip_key(ip: str) -> str:
    # A hash, so no raw IP sits in Redis either.
    return "oa:rl:authfail:" + hashlib.sha256(ip.encode()).hexdigest()[:24]


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, auth_failures_per_minute: int):
        self.redis = redis
        self.failure_limit = auth_failures_per_minute
        self._script = redis.register_script(_SCRIPT)

    async def _run(self, keys: list[str], limit: int) -> Budget:
        try:
            blocked, count, ttl = await self._script(keys=keys, args=[WINDOW_MS, self.failure_limit])
        except (RedisError, OSError):
            log.warning("rate limits not enforced: Redis unreachable")
            return Budget(limit, limit, WINDOW_MS // 1000, True)
        reset = max(1, math.ceil(int(ttl) / 1000))
        if blocked:
            return Budget(self.failure_limit, 0, reset, False)
        return Budget(limit, max(0, limit - int(count)), reset, int(count) <= limit)

    async def spend(self, key_id: str, limit: int, ip: str) -> Budget:
        """One request of a valid key (refused outright while the IP is over its failure allowance)."""
        return await self._run([_ip_key(ip), f"oa:rl:key:{key_id}"], limit)

    async def fail(self, ip: str) -> Budget:
        """One failed authentication from this IP."""
        return await self._run([_ip_key(ip)], self.failure_limit)
