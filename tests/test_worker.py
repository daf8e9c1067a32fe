"""The worker: one insert per project per batch, ack after insert, exactly once across crashes."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from openanalytics.worker.flush import GROUP
from openanalytics.worker.runner import Worker
from tests.helpers import stored_rows, stream_length


class Crash(BaseException):
    """Stands in for the process dying: nothing after it runs."""


async def send(client, tenant, n: int) -> None:
    events = [{"event_type": "pageview", "url": f"https://a.example/{i}"} for i in range(n)]
    response = await client.post(f"/v1/projects/{tenant.id}/events", json=events, headers=tenant.headers)
    assert response.status_code == 202


async def pending(stores) -> int:
    return (await stores.redis.xpending(stores.settings.stream_key, GROUP))["pending"]


async def crash_between_insert_and_ack(stores, worker: Worker, monkeypatch) -> None:
    async def die(message_ids):
        raise Crash()

    monkeypatch.setattr(worker.flusher, "ack", die)
    with pytest.raises(Crash):
        await worker.drain()


async def test_restarted_worker_does_not_duplicate(client, stores, make_tenant, monkeypatch):
    first, second = make_tenant(), make_tenant()
    await send(client, first, 7)
    await send(client, second, 5)
    crashed = Worker(stores, consumer="worker-a")
    await crash_between_insert_and_ack(stores, crashed, monkeypatch)
    # The crash left rows in ClickHouse and the messages unacknowledged.
    assert len(await stored_rows(stores, first.id)) == 7
    assert await pending(stores) == 12

    restarted = Worker(stores, consumer="worker-a")  # same pod name: reads its own pending list
    assert await restarted.drain() == 12
    assert len(await stored_rows(stores, first.id)) == 7
    assert len(await stored_rows(stores, second.id)) == 5
    assert await pending(stores) == 0 and await stream_length(stores) == 0


async def test_other_worker_claims_a_dead_workers_batch_without_duplicates(client, stores, tenant, monkeypatch):
    await send(client, tenant, 9)
    await crash_between_insert_and_ack(stores, Worker(stores, consumer="worker-dead"), monkeypatch)
    survivor = Worker(stores, consumer="worker-b")
    assert await survivor.drain() == 0, "not claimed before the idle time"
    await asyncio.sleep(stores.settings.worker_claim_idle_ms / 1000 + 0.2)
    assert await survivor.drain() == 9
    assert len(await stored_rows(stores, tenant.id)) == 9
    assert await pending(stores) == 0


async def test_new_events_after_a_crash_are_not_mistaken_for_repeats(client, stores, tenant, monkeypatch):
    await send(client, tenant, 3)
    await crash_between_insert_and_ack(stores, Worker(stores, consumer="w"), monkeypatch)
    await send(client, tenant, 3)  # identical content, new messages
    assert await Worker(stores, consumer="w").drain() == 6
    assert len(await stored_rows(stores, tenant.id)) == 6


async def test_failed_insert_is_retried_not_lost(client, stores, tenant, worker, monkeypatch):
    await send(client, tenant, 4)
    real_insert = stores.events.insert
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("clickhouse unavailable")
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(stores.events, "insert", flaky)
    with pytest.raises(ConnectionError):
        await worker.drain()
    assert await pending(stores) == 4
    assert await worker.drain() == 4
    assert len(await stored_rows(stores, tenant.id)) == 4


async def test_events_of_a_deactivated_project_are_dropped_and_acked(client, stores, tenant, worker):
    from openanalytics.projects.models import Project

    await send(client, tenant, 2)
    with stores.db.session() as session:
        session.get(Project, tenant.id).active = False
    assert await worker.drain() == 2
    assert await pending(stores) == 0


async def test_unreadable_messages_do_not_block_the_stream(client, stores, tenant, worker):
    await stores.redis.xadd(stores.settings.stream_key, {b"e": b"{broken"})
    await send(client, tenant, 1)
    assert await worker.drain() == 2
    assert len(await stored_rows(stores, tenant.id)) == 1


async def test_run_loop_provisions_new_projects_and_stops_cleanly(client, stores, make_tenant):
    worker = Worker(stores, consumer="loop")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    tenant = make_tenant()
    await send(client, tenant, 2)
    for _ in range(100):
        if len(await stored_rows(stores, tenant.id)) == 2:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(await stored_rows(stores, tenant.id)) == 2


async def test_two_dead_workers_batches_are_claimed_without_duplicates(client, stores, make_tenant, monkeypatch):
    tenant = make_tenant()
    await send(client, tenant, 3)
    await crash_between_insert_and_ack(stores, Worker(stores, consumer="dead-1"), monkeypatch)
    await send(client, tenant, 3)
    await crash_between_insert_and_ack(stores, Worker(stores, consumer="dead-2"), monkeypatch)
    assert len(await stored_rows(stores, tenant.id)) == 6 and await pending(stores) == 6
    await asyncio.sleep(stores.settings.worker_claim_idle_ms / 1000 + 0.2)
    assert await Worker(stores, consumer="survivor").drain() == 6
    assert len(await stored_rows(stores, tenant.id)) == 6
    consumers = {c["name"] for c in await stores.redis.xinfo_consumers(stores.settings.stream_key, GROUP)}
    assert consumers == {b"survivor"}, "dead consumers are removed once settled"


async def test_a_row_that_cannot_be_stored_is_dead_lettered_not_blocking(client, stores, tenant, worker):
    poison = {"project_id": tenant.id, "event_id": "not-a-uuid", "event_type": "pageview", "timestamp": 10**15,
              "received_at": 0}
    await stores.redis.xadd(stores.settings.stream_key, {b"e": orjson.dumps(poison)})
    await send(client, tenant, 2)
    assert await worker.drain() == 3
    assert len(await stored_rows(stores, tenant.id)) == 2
    dead = await stores.redis.xrange(stores.settings.stream_key + ":dead")
    assert len(dead) == 1 and orjson.loads(dead[0][1][b"e"]) == poison


async def test_rows_clickhouse_keeps_refusing_are_dead_lettered_after_retries(client, stores, tenant, worker, monkeypatch):
    from clickhouse_connect.driver.exceptions import DatabaseError

    from openanalytics.worker.flush import MAX_DELIVERIES

    await send(client, tenant, 2)

    def refuse(*args, **kwargs):
        raise DatabaseError("Code: 252. Too many parts")

    monkeypatch.setattr(stores.events, "insert", refuse)
    for _ in range(MAX_DELIVERIES - 1):
        with pytest.raises(DatabaseError):
            await worker.drain()
    assert await pending(stores) == 2, "retried, not dropped, while deliveries are few"
    assert await worker.drain() == 2
    assert await pending(stores) == 0
    assert len(await stores.redis.xrange(stores.settings.stream_key + ":dead")) == 2


async def test_unreachable_clickhouse_is_retried_forever(client, stores, tenant, worker, monkeypatch):
    from clickhouse_connect.driver.exceptions import OperationalError

    await send(client, tenant, 1)

    def unreachable(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(stores.events, "insert", unreachable)
    for _ in range(5):
        with pytest.raises(OperationalError):
            await worker.drain()
    assert await pending(stores) == 1
    assert await stores.redis.xlen(stores.settings.stream_key + ":dead") == 0


async def test_loop_survives_redis_being_down_at_start(stores):
    from openanalytics.runtime import Stores
    from openanalytics.stores.redis import make_redis

    dead = make_redis("redis://127.0.0.1:1/0")
    broken = Stores(settings=stores.settings, db=stores.db, redis=dead, events=stores.events)
    worker = Worker(broken, consumer="patient")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(1.0)
    assert not task.done(), "the loop must keep retrying"
    assert worker.failures > 0 and not worker.healthy
    stop.set()
    await asyncio.wait_for(task, 5)
    await dead.aclose()


def test_flush_links_skip_entries_that_are_not_objects():
    from openanalytics.ingest.buffer import FIELD
    from openanalytics.worker.flush import _parents

    messages = [(b"1-0", {FIELD: b'["tp"]'}), (b"2-0", {FIELD: b'"tp"'}), (b"3-0", {FIELD: b'{"tp": "00-ab-cd-01"}'}),
                (b"4-0", {FIELD: b'{"tp"'}), (b"5-0", {})]
    assert _parents(messages) == ["00-ab-cd-01"]
