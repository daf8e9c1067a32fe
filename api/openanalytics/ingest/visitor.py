"""Cookieless visitor ids and sessions.

A visitor is a keyed hash of (the day's salt, project, User-Agent, Accept-Language,
anonymised IP). Salts live in Redis so every pod hashes alike; each expires after two days
(yesterday's is still there at midnight so visits do not split), then it is gone for good.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import UTC, datetime

import redis.asyncio as aioredis

from openanalytics.cache import TTLCache

SALT_TTL_SECONDS = 2 * 24 * 3600
SESSION_IDLE_SECONDS = 30 * 60


def anonymise_ip(ip: str) -> str:
    """IPv4: last octet zeroed; IPv6: last 80 bits zeroed. Unparseable input gives ''."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


class Salts:
    """The day's salt, read through a short local cache so pods agree again soon after a Redis loss."""

    def __init__(self, redis: aioredis.Redis, local_ttl_seconds: float = 10.0):
        self.redis = redis
        self._local: TTLCache[str, bytes] = TTLCache(local_ttl_seconds, max_items=4)

    async def for_day(self, day: str) -> bytes:
        hit, salt = self._local.get(day)
        if not hit:
            key = f"oa:salt:{day}"
            # First pod to ask creates it; everyone reads the same value.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, secrets.token_bytes(32), nx=True, ex=SALT_TTL_SECONDS)
                pipe.get(key)
                _, salt = await pipe.execute()
            self._local.put(day, salt)
        return salt


def visitor_hash(salt: bytes, project_id: str, user_agent: str, accept_language: str, anon_ip: str) -> int:
    material = "\x1f".join((project_id, user_agent, accept_language, anon_ip)).encode()
    digest = hashlib.blake2b(material, key=salt, digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def user_visitor_hash(project_id: str, user_id: str) -> int:
    """Server-side events name their user; the visitor is that user, stable across days."""
    digest = hashlib.blake2b(f"{project_id}\x1f{user_id}".encode(), digest_size=8, person=b"oa-user").digest()
    return int.from_bytes(digest, "big") or 1


def today(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%d")


async def session_for(redis: aioredis.Redis, project_id: str, visitor_id: int) -> int:
    """The visitor's current session id; a new one after 30 idle minutes."""
    key = f"oa:sess:{project_id}:{visitor_id}"
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(key, secrets.randbits(63) or 1, nx=True, ex=SESSION_IDLE_SECONDS)
        pipe.expire(key, SESSION_IDLE_SECONDS)
        pipe.get(key)
        _, _, value = await pipe.execute()
    return int(value)
