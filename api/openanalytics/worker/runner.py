"""The worker loop: provisioning catch-up, stream draining and privacy deletions, with backoff on failures."""

from __future__ import annotations

import asyncio
import logging
import time

from openanalytics.cache import TTLCache
from openanalytics.ingest.durability import RedisWatch
from openanalytics.privacy.deletion import Deleter
from openanalytics.projects.models import Project
from openanalytics.provisioning.events_schema import CURRENT_VERSION
from openanalytics.provisioning.projects import provision_pending, provision_project
from openanalytics import telemetry
from openanalytics.runtime import Stores
from openanalytics.worker.flush import Flusher

log = logging.getLogger(__name__)

PROVISION_EVERY_SECONDS = 1.0
PRIVACY_EVERY_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 4.0  # ingest flows again within a few seconds of a store's return


class Worker:
    def __init__(self, stores: Stores, consumer: str | None = None, watch: RedisWatch | None = None):
        """`watch`: the process's watch of Redis's durability, when another part of it runs one (standalone)."""
        self.stores = stores
        self.watch = watch
        self.flusher = Flusher(stores, consumer or stores.settings.worker_name, self.ensure_project)
        self.deleter = Deleter(stores)
        self._ready: TTLCache[str, bool] = TTLCache(10.0)
        self.failures = 0

    def _ensure_project_sync(self, project_id: str) -> bool:
        with self.stores.db.session() as session:
            project = session.get(Project, project_id)
        if project is None or not project.active:
            return False
        if project.events_schema_version < CURRENT_VERSION or project.events_ttl_days != project.retention_days:
            self.stores.events.call(provision_project, self.stores.db, self.stores.events, project)
        return True

    async def ensure_project(self, project_id: str) -> bool:
        hit, ready = self._ready.get(project_id)
        if not hit:
            ready = await asyncio.to_thread(self._ensure_project_sync, project_id)
            self._ready.put(project_id, ready)
        return bool(ready)

    async def provision(self) -> list[str]:
        return await asyncio.to_thread(provision_pending, self.stores.db, self.stores.events)

    @property
    def healthy(self) -> bool:
        """False while the loop is failing (shown by /readyz in standalone)."""
        return self.failures == 0

    async def drain(self) -> int:
        """Store everything on the stream now (shutdown, tests)."""
        await self.flusher.ensure_group()
        total = 0
        while moved := await self.flusher.run_once(block_ms=0):
            total += moved
        return total

    async def forget(self) -> list[str]:
        """Carry out every due privacy request now (tests, operations). Returns their ids."""
        done = []
        while request_id := await self.deleter.run_once():
            done.append(request_id)
        return done

    async def _read_stream_length(self) -> None:
        stream = self.stores.settings.stream_key
        try:
            telemetry.set_stream_length(stream, await self.stores.redis.xlen(stream))
        except Exception:  # Redis is down: the loop below says so
            pass

    async def run(self, stop: asyncio.Event) -> None:
        watching = None
        if self.watch is None:  # warns at start, and whenever Redis stops keeping what it queues
            settings = self.stores.settings
            watch = RedisWatch(self.stores.redis, settings.ingest_max_memory_share)
            watching = asyncio.create_task(watch.run(stop), name="redis-watch")
        try:
            await self._loop(stop)
        finally:
            if watching is not None:
                watching.cancel()

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        next_provision = next_privacy = 0.0
        group_ready = False
        next_reading = 0.0
        while not stop.is_set():
            if telemetry.enabled() and time.monotonic() >= next_reading:
                next_reading = time.monotonic() + 1.0
                await self._read_stream_length()  # on its own: it matters most while the rest fails
            try:
                if not group_ready:
                    await self.flusher.ensure_group()
                    group_ready = True
                if time.monotonic() >= next_provision:
                    await self.provision()
                    next_provision = time.monotonic() + PROVISION_EVERY_SECONDS
                await self.flusher.run_once(block_ms=self.stores.settings.worker_block_ms)
                if time.monotonic() >= next_privacy:
                    await self.deleter.run_once()
                    next_privacy = time.monotonic() + PRIVACY_EVERY_SECONDS

                backoff, self.failures = 0.5, 0
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("worker iteration failed; retrying in %.1fs", backoff)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                group_ready = False  # Redis may have restarted empty: recreate the group
