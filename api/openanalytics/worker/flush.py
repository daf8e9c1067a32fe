"""Draining the ingest stream into ClickHouse, exactly once.

The worker reads the stream through a consumer group in batches, inserts each project's
rows with one insert, and acknowledges only after ClickHouse accepted them. If it dies in
between, its pending list holds exactly the unacknowledged project groups of that one
batch. Recovery replays that list as one batch, either by the same worker on restart or,
after `worker_claim_idle_ms`, by another worker claiming one dead consumer's list at a
time. Either way the groups come back as they were, carry the same deduplication token
(derived from their message ids), and ClickHouse drops the repeat.

Rows ClickHouse keeps refusing, and rows that cannot be read, go to a dead-letter stream
(`<stream>:dead`) instead of blocking everything behind them.
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
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from redis.exceptions import ResponseError

from openanalytics import telemetry
from openanalytics.ingest.buffer import FIELD
from openanalytics.privacy.tombstones import forget_sessions, forgotten, tombstone_key
from openanalytics.provisioning.events_schema import EVENT_COLUMNS, database_name

log = logging.getLogger(__name__)

GROUP = "oa-workers"
COLUMNS = tuple(EVENT_COLUMNS)
# A pending list never holds more than one batch; read all of it whatever the batch size is now.
RECOVERY_COUNT = 1_000_000
# Deliveries after which rows ClickHouse refuses (not: cannot be reached) are dead-lettered.
MAX_DELIVERIES = 3
_DEFAULTS: dict[str, Any] = {
    name: (0 if kind.startswith(("UInt", "Int")) else {} if kind.startswith("Map") else None if kind.startswith("Nullable") else "")
    for name, kind in EVENT_COLUMNS.items()
}

Message = tuple[bytes, dict[bytes, bytes]]


_RECEIVED_AT = COLUMNS.index("received_at")


def _parents(messages: list[Message]) -> list[str]:
    """Traceparents of the sampled requests that queued these events."""
    found = []
    for _, fields in messages:
        raw = fields.get(FIELD, b"")
        if b'"tp"' in raw:
            try:
                found.append(orjson.loads(raw)["tp"])
            except Exception:  # not an object, no tp: _flush dead-letters what it cannot read
                continue
    return found


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


def _refused(exc: Exception) -> bool:
    """ClickHouse answered and said no (as opposed to: could not be reached)."""
    return isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError)


class Flusher:
    def __init__(self, stores, consumer: str, provisioner):
        self.stores = stores
        self.redis: aioredis.Redis = stores.redis
        self.stream = stores.settings.stream_key
        self.dead_stream = f"{self.stream}:dead"
        self.consumer = consumer
        self.batch_size = stores.settings.worker_batch_size
        self.claim_idle_ms = stores.settings.worker_claim_idle_ms
        self.provisioner = provisioner  # async callable: project_id -> bool (exists and ready)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, block_ms: int) -> list[Message]:
        # Own pending first (a restart after a crash), then a dead consumer's, then new ones.
        own = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=RECOVERY_COUNT)
        if own and own[0][1]:
            return own[0][1]
        claimed = await self._claim_from_dead_consumer()
        if claimed:
            return claimed
        # BLOCK 0 would wait forever, so 0 here means "do not block".
        new = await self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=self.batch_size, block=block_ms or None
        )
        return new[0][1] if new else []

    async def _claim_from_dead_consumer(self) -> list[Message]:
        for consumer in await self.redis.xinfo_consumers(self.stream, GROUP):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name == self.consumer or consumer["idle"] < self.claim_idle_ms:
                continue
            if consumer["pending"] == 0:
                await self.redis.xgroup_delconsumer(self.stream, GROUP, name)  # a worker long gone
                continue
            entries = await self.redis.xpending_range(
                self.stream, GROUP, min="-", max="+", count=RECOVERY_COUNT, consumername=name
            )
            ids = [entry["message_id"] for entry in entries]
            claimed = await self.redis.xclaim(self.stream, GROUP, self.consumer, self.claim_idle_ms, ids) if ids else []
            # Entries deleted from the stream meanwhile come back as (id, None): settle them.
            gone = [message_id for message_id, fields in claimed if fields is None]
            await self.ack(gone)
            live = [(message_id, fields) for message_id, fields in claimed if fields is not None]
            if live:
                log.warning("took over %d unacknowledged events from worker %s", len(live), name)
                return live
        return []

    async def run_once(self, block_ms: int = 0) -> int:
        """Read one batch and store it. Returns how many messages were settled."""
        messages = await self._read(block_ms)
        if not messages:
            return 0
        await self.flush(messages)
        return len(messages)

    async def flush(self, messages: list[Message]) -> None:
        if not telemetry.enabled():
            await self._flush(messages)
            return
        timer = telemetry.Timer()
        with telemetry.linked_span("ingest.flush", _parents(messages), **{"oa.batch.size": len(messages)}) as span:
            projects = await self._flush(messages)
            span.set_attribute("oa.batch.projects", projects)
        telemetry.FLUSH_DURATION.record(timer.seconds())

    async def _flush(self, messages: list[Message]) -> int:
        """Store one batch; returns how many projects it held."""
        rows: dict[str, list[tuple[bytes, dict[str, Any]]]] = defaultdict(list)
        unreadable: list[Message] = []
        settled: list[bytes] = []  # deleted from the stream meanwhile (privacy requests): nothing to store
        for message_id, fields in messages:
            if not fields:
                settled.append(message_id)
                continue
            try:
                row = orjson.loads(fields[FIELD])
                rows[row["project_id"]].append((message_id, row))
            except Exception:
                unreadable.append((message_id, fields))
        if unreadable:
            await self.dead_letter(unreadable, "unreadable row")
        key = await tombstone_key(self.stores.db) if rows else b""
        for project_id, found in rows.items():
            forget = await forgotten(self.redis, key, project_id)
            items: list[tuple[bytes, list[Any]]] = []
            noted: dict[str, dict[int, int]] = {}  # user's tag -> sessions of their dropped events, which the deletion takes whole
            for message_id, row in found:
                if forget.covers(row):
                    settled.append(message_id)  # its user asked for deletion meanwhile
                    session = int(row.get("session_id") or 0)
                    if session and session not in forget.sessions:
                        noted.setdefault(forget.tag(row["user_id"]), {})[session] = int(row.get("visitor_id") or 0)
                    continue
                if row.get("session_id") and forget.shares_visitor(row, noted):
                    # Its visitor's ages may count from a deleted event: not known (query/path_sums.py).
                    row["path_visitor_age"] = row["path_session_age"] = row["visitor_age"] = 0
                try:
                    items.append((message_id, to_columns(row)))
                except Exception:
                    await self.dead_letter([(message_id, {FIELD: orjson.dumps(row)})], "unreadable row")
            for tag, sessions in noted.items():
                await forget_sessions(self.redis, project_id, tag, sessions)
            ids = [message_id for message_id, _ in items]
            if items and await self.provisioner(project_id):
                # The token names every entry read, dropped ones too, so a replay after a crash
                # gets the same token even if a deletion request dropped more entries meanwhile.
                await self._insert(project_id, items, messages, [message_id for message_id, _ in found])
            elif items:
                log.warning("dropping %d events of unknown or inactive project %s", len(items), project_id)
            await self.ack(ids)
        if settled:
            await self.ack(settled)
        return len(rows)

    async def _insert(self, project_id: str, items: list[tuple[bytes, list[Any]]], messages: list[Message],
                      read_ids: list[bytes]) -> None:
        ids = [message_id for message_id, _ in items]
        store = self.stores.events
        try:
            await store.run(
                store.insert, database_name(project_id), "events", [row for _, row in items], COLUMNS,
                batch_token(project_id, read_ids),
            )
        except Exception as exc:
            telemetry.CLICKHOUSE_INSERT_ERRORS.add(1, {"refused": _refused(exc)})
            if not _refused(exc) or await self._deliveries(ids) < MAX_DELIVERIES:
                raise
            wanted = set(ids)
            await self.dead_letter([m for m in messages if m[0] in wanted], f"refused by ClickHouse: {exc}"[:500])
            return
        telemetry.FLUSH_SIZE.record(len(items))
        if telemetry.enabled():
            now = datetime.now(UTC)
            for _, columns in items:
                telemetry.INGEST_LAG.record((now - columns[_RECEIVED_AT]).total_seconds())

    async def _deliveries(self, ids: list[bytes]) -> int:
        entries = await self.redis.xpending_range(self.stream, GROUP, min=ids[0], max=ids[-1], count=RECOVERY_COUNT)
        wanted = set(ids)
        return max((e["times_delivered"] for e in entries if e["message_id"] in wanted), default=0)

    async def dead_letter(self, messages: list[Message], reason: str) -> None:
        log.error("moving %d events to %s: %s", len(messages), self.dead_stream, reason)
        async with self.redis.pipeline(transaction=True) as pipe:
            for message_id, fields in messages:
                pipe.xadd(self.dead_stream, {b"id": message_id, FIELD: fields.get(FIELD, b""), b"reason": reason})
            pipe.xack(self.stream, GROUP, *[m[0] for m in messages])
            pipe.xdel(self.stream, *[m[0] for m in messages])
            await pipe.execute()

    async def ack(self, message_ids: list[bytes]) -> None:
        if message_ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, *message_ids)
                pipe.xdel(self.stream, *message_ids)
                await pipe.execute()
