"""Draining the ingest stream into ClickHouse, exactly once.

The worker reads the stream through a consumer group in batches, inserts each project's
rows with one insert, and acknowledges only after ClickHouse accepted them. If it dies in
between, the same messages come back (its own pending list on restart, or claimed from a
dead worker after `worker_claim_idle_ms`) and are inserted again with the same
deduplication token, derived from the message ids, so ClickHouse drops the repeat.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from openanalytics.ingest.buffer import FIELD
from openanalytics.provisioning.events_schema import EVENT_COLUMNS, database_name

log = logging.getLogger(__name__)

GROUP = "oa-workers"
COLUMNS = tuple(EVENT_COLUMNS)
_DEFAULTS: dict[str, Any] = {
    name: (0 if kind.startswith(("UInt", "Int")) else {} if kind.startswith("Map") else None if kind.startswith("Nullable") else "")
    for name, kind in EVENT_COLUMNS.items()
}


def _ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def to_columns(row: dict[str, Any]) -> list[Any]:
    values = []
    for name in COLUMNS:
        value = row.get(name, _DEFAULTS[name])
        if name in ("timestamp", "received_at"):
            value = _ms(value)
        elif name == "event_id":
            value = uuid.UUID(value)
        elif name == "revenue" and value is not None:
            value = Decimal(value)
        values.append(value)
    return values


def batch_token(project_id: str, message_ids: list[bytes]) -> str:
    digest = hashlib.sha256(project_id.encode())
    for message_id in message_ids:
        digest.update(b"," + message_id)
    return digest.hexdigest()


Message = tuple[bytes, dict[bytes, bytes]]


class Flusher:
    def __init__(self, stores, consumer: str, provisioner):
        self.stores = stores
        self.redis: aioredis.Redis = stores.redis
        self.stream = stores.settings.stream_key
        self.consumer = consumer
        self.batch_size = stores.settings.worker_batch_size
        self.provisioner = provisioner  # async callable: project_id -> bool (exists and ready)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, block_ms: int) -> list[Message]:
        # Own pending first (a restart after a crash), then messages idle at a dead
        # consumer, then new ones.
        own = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self.batch_size)
        messages = own[0][1] if own else []
        if messages:
            return messages
        claimed = await self.redis.xautoclaim(
            self.stream, GROUP, self.consumer, self.stores.settings.worker_claim_idle_ms, "0-0", count=self.batch_size
        )
        if claimed[1]:
            return claimed[1]
        # BLOCK 0 would wait forever, so 0 here means "do not block".
        new = await self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=self.batch_size, block=block_ms or None
        )
        return new[0][1] if new else []

    async def run_once(self, block_ms: int = 0) -> int:
        """Read one batch and store it. Returns how many messages were settled."""
        messages = await self._read(block_ms)
        if not messages:
            return 0
        await self.flush(messages)
        return len(messages)

    async def flush(self, messages: list[Message]) -> None:
        by_project: dict[str, list[tuple[bytes, dict[str, Any]]]] = defaultdict(list)
        unreadable: list[bytes] = []
        for message_id, fields in messages:
            try:
                row = orjson.loads(fields[FIELD])
                by_project[row["project_id"]].append((message_id, row))
            except (KeyError, TypeError, orjson.JSONDecodeError):
                unreadable.append(message_id)
        if unreadable:
            log.error("dropping %d unreadable stream messages", len(unreadable))
            await self.ack(unreadable)
        for project_id, items in by_project.items():
            ids = [message_id for message_id, _ in items]
            if await self.provisioner(project_id):
                rows = [to_columns(row) for _, row in items]
                token = batch_token(project_id, ids)
                await self.stores.events.run(
                    self.stores.events.insert, database_name(project_id), "events", rows, COLUMNS, token
                )
            else:
                log.warning("dropping %d events of unknown or inactive project %s", len(items), project_id)
            await self.ack(ids)

    async def ack(self, message_ids: list[bytes]) -> None:
        if message_ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, *message_ids)
                pipe.xdel(self.stream, *message_ids)
                await pipe.execute()
