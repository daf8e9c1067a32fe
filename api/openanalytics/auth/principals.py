"""Who is calling: API keys resolved to principals through a short cache.

The cache lives `OA_CACHE_TTL_SECONDS` in each process, and is emptied at once in every
process when a key is revoked (a message on a Redis channel), so revocation takes effect
everywhere well within a second; the short lifetime covers the case where Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from openanalytics.auth.keys import find_active_key, hash_secret, looks_like_key, touch_key
from openanalytics.cache import TTLCache
from openanalytics.projects.models import Project
from openanalytics.stores.sql import Database, utcnow

log = logging.getLogger(__name__)

CHANNEL = "oa:auth:invalidate"
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    key_id: str
    project_id: str
    scopes: frozenset[str]
    requests_per_minute: int
    plan: str


def _load(db: Database, secret: str) -> Principal | None:
    with db.session() as session:
        key = find_active_key(session, secret)
        if key is None:
            return None
        project = session.get(Project, key.project_id)
        if project is None or not project.active:
            return None
        if key.last_used_at is None or utcnow() - key.last_used_at > _TOUCH_EVERY:
            touch_key(session, key.id)
        return Principal(key.id, key.project_id, frozenset(key.scopes), project.api_requests_per_minute, project.plan)


class Principals:
    def __init__(self, db: Database, ttl_seconds: float):
        self.db = db
        self.cache: TTLCache[str, Principal | None] = TTLCache(ttl_seconds)

    async def resolve(self, secret: str | None) -> Principal | None:
        if not secret or not looks_like_key(secret):
            return None
        digest = hash_secret(secret)
        hit, principal = self.cache.get(digest)
        if not hit:
            generation = self.cache.generation
            principal = await run_in_threadpool(_load, self.db, secret)
            self.cache.put(digest, principal, generation)
        return principal


async def announce_change(redis: aioredis.Redis) -> None:
    """Tell every API process to forget cached keys and projects (best effort)."""
    try:
        await redis.publish(CHANNEL, b"*")
    except Exception:
        log.warning("could not announce a key change; caches expire on their own within a second")


async def listen_for_changes(redis: aioredis.Redis, caches: list[TTLCache], stop: asyncio.Event) -> None:
    """Empty `caches` whenever a change is announced; reconnects with backoff."""
    backoff = 0.5
    while not stop.is_set():
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                for cache in caches:  # whatever was announced while we were not listening
                    cache.clear()
                backoff = 0.5
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None:
                        for cache in caches:
                            cache.clear()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("invalidation listener reconnecting", exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 10)
