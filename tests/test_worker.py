"""The worker: one insert per project per batch, ack after insert, exactly once across crashes."""

from __future__ import annotations

import asyncio

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
