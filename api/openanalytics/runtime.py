"""The stores a process works with, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from openanalytics import migrations
from openanalytics.config import Settings
from openanalytics.stores.clickhouse import EventStore
from openanalytics.stores.redis import make_redis
from openanalytics.stores.sql import Database


REDIS_ANSWER_SECONDS = 10.0  # beyond the worker's blocking reads: then a command is given up


@dataclass
class Stores:
    settings: Settings
    db: Database
    redis: aioredis.Redis
    events: EventStore

    @classmethod
    def open(cls, settings: Settings) -> "Stores":
        if settings.database_url is None or settings.clickhouse_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            settings=settings,
            db=Database(settings.effective_database_url),
            redis=make_redis(settings.redis_url, settings.redis_max_connections,
                             socket_timeout=REDIS_ANSWER_SECONDS + settings.worker_block_ms / 1000),
            events=EventStore(settings.effective_clickhouse_url),
        )

    def migrate_control_plane(self) -> list[str]:
        """Schema to head, then the configured plans re-applied; returns the projects whose limits changed."""
        from openanalytics.projects.plans import configured_plans
        from openanalytics.projects.service import reapply_plans

        migrations.upgrade(self.db.engine)
        with self.db.session() as session:
            return reapply_plans(session, configured_plans(self.settings))

    async def close(self) -> None:
        await self.redis.aclose()
        self.events.close()
        self.db.dispose()
