"""Cookieless visitor ids and sessions.

A visitor is a keyed hash of (the day's salt, project, User-Agent, Accept-Language,
anonymised IP). Salts live in Redis so every pod hashes alike, and each expires two days
after it was made: yesterday's is still there after midnight, so a visit that crosses
midnight keeps its visitor and session; older ones are gone for good.

A session ends after 30 minutes without events. Sessions keep their last-seen time (from
the injectable clock, not Redis expiry), so the idle rule is exact and testable; they are
kept by the commit script (commit.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import datetime, timedelta
from functools import lru_cache

import redis.asyncio as aioredis

from openanalytics.cache import TTLCache

SALT_TTL_SECONDS = 2 * 24 * 3600
SESSION_IDLE = timedelta(minutes=30)


@lru_cache(maxsize=50_000)
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


def day_of(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


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
    return int.from_bytes(digest, "big") >> 1 or 1  # 63 bits: fits every integer type on the way


def user_visitor_hash(project_id: str, user_id: str) -> int:
    """Server-side events name their user; the visitor is that user, stable across days."""
    digest = hashlib.blake2b(f"{project_id}\x1f{user_id}".encode(), digest_size=8, person=b"oa-user").digest()
    return int.from_bytes(digest, "big") >> 1 or 1
