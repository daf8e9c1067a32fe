"""What a 202 can promise, on real stores: Redis's persistence as the API sees and reports it, its
memory as a bound on ingest, confirmation on disk or replicas, and /readyz telling the truth about
every store. Each test starts the servers it stops or reconfigures (tests/support/servers.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis as sync_redis

from openanalytics import migrations
from openanalytics.app import create_app
from openanalytics.config import Settings
from openanalytics.runtime import Stores
from openanalytics.stores.clickhouse import EventStore
from openanalytics.stores.redis import make_redis
from openanalytics.stores.sql import Database
from openanalytics.worker.runner import Worker
from tests.conftest import BROWSER, Tenant
from tests.helpers import CollectTransport, assert_error, counted
from tests.support import clickhouse_http
from tests.support.servers import start_postgres, start_redis

pytestmark = pytest.mark.server_stores


class ClickHouse:
    """The ClickHouse HTTP test server on a data folder of its own, to stop and start again."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.url, self.proc = clickhouse_http.start(self.folder)

    def stop(self) -> None:
        clickhouse_http.stop(self.proc)

    def start(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.url, self.proc = clickhouse_http.start(self.folder, port=port)  # the same URL as before


@pytest.fixture
def clickhouse(tmp_path) -> Iterator[ClickHouse]:
    server = ClickHouse(tmp_path / "clickhouse")
    yield server
    if server.proc.poll() is None:
        server.stop()


def stores_on(tmp_path, postgres_url: str, redis_url: str, clickhouse_url: str, **settings) -> Stores:
    db = Database(postgres_url)
    migrations.upgrade(db.engine)
    sync_redis.Redis.from_url(redis_url).flushdb()
    return Stores(settings=Settings(data_dir=tmp_path, redis_url=redis_url, **settings), db=db,
                  redis=make_redis(redis_url), events=EventStore(clickhouse_url))


@pytest.fixture
async def client_of():
    """A function making an in-process client of an app on the given stores (closed at the end)."""
    opened: list[tuple[httpx.AsyncClient, Stores]] = []

    async def make(stores: Stores) -> httpx.AsyncClient:
        app = create_app(stores)
        http = httpx.AsyncClient(transport=CollectTransport(app=app, client=("203.0.113.7", 51000)),
                                 base_url="http://testserver", headers={"User-Agent": BROWSER})
        opened.append((http, stores))
        return http

    yield make
    for http, stores in opened:
        await http.aclose()
        await stores.redis.aclose()
        stores.events.close()
        stores.db.dispose()


async def readyz(http: httpx.AsyncClient) -> tuple[int, dict]:
    response = await http.get("/readyz")
    return response.status_code, response.json()


async def test_readyz_tells_the_truth_about_each_store_and_about_redis_durability(
        tmp_path, postgres_url, clickhouse, client_of):
    """Only the control plane takes a pod out of service: without ClickHouse events still queue, without
    Redis queries still work; each store's state is in `checks`."""
    with start_redis(tmp_path / "redis", aof=True) as redis_server:
        http = await client_of(stores_on(tmp_path, postgres_url, redis_server.url(), clickhouse.url))
        status, body = await readyz(http)
        assert status == 200 and body["status"] == "ok" and body["warnings"] == [], body
        assert body["ingest"] | {"used_memory": 0} == {
            "queued_events": 0, "max_queued_events": 1_000_000, "aof": True, "appendfsync": "everysec",
            "maxmemory_policy": "noeviction", "maxmemory": 0, "used_memory": 0, "memory_share": None}

        clickhouse.stop()  # clickhouse-connect's ping answers False here rather than raising
        status, body = await readyz(http)
        assert status == 200 and body["status"] == "degraded", "in service: events still queue"
        assert body["checks"]["clickhouse"].startswith("error:") and body["checks"]["redis"] == "ok", body
        clickhouse.start()
        assert (await readyz(http))[0] == 200

        redis_server.stop()
        status, body = await readyz(http)
        assert status == 200 and body["status"] == "degraded" and body["ingest"] is None, body
        assert body["checks"]["redis"].startswith("error:")
        redis_server.start()
        assert (await readyz(http))[1]["status"] == "ok", "the pool's dead connections are replaced"

        with start_postgres(tmp_path / "postgres") as postgres:
            http = await client_of(stores_on(tmp_path, postgres.admin_url, redis_server.url(1), clickhouse.url))
            assert (await readyz(http))[0] == 200
            postgres.stop()
            status, body = await readyz(http)
            assert status == 503 and body["status"] == "unavailable"
            assert body["checks"]["database"].startswith("error:") and body["checks"]["clickhouse"] == "ok"


async def test_readyz_and_the_log_warn_when_redis_would_lose_or_evict_queued_events(
        tmp_path, postgres_url, clickhouse_url, client_of, caplog):
    with start_redis(tmp_path / "redis", aof=False, args=["--maxmemory-policy", "allkeys-lru"]) as redis_server:
        stores = stores_on(tmp_path, postgres_url, redis_server.url(), clickhouse_url)
        http = await client_of(stores)
        status, body = await readyz(http)
        assert status == 200 and body["status"] == "ok"
        assert body["warnings"] == [
            "Redis has AOF off (appendonly no): a Redis restart loses every queued event; set appendonly yes "
            "(README: Durability and failures)",
            "Redis evicts keys (maxmemory-policy allkeys-lru): queued events and sessions can be dropped under "
            "memory pressure; set maxmemory-policy noeviction"]
        assert caplog.text.count("durability: Redis has AOF off") == 1, "logged once, not on every reading"
        await (await http.get("/readyz")).aread()
        assert caplog.text.count("durability: Redis has AOF off") == 1

        caplog.clear()  # a worker says so at its start too (its own loop, which runs other tests' deletions
        stop = asyncio.Event()  # in the shared control plane, left out)
        worker = Worker(stores, consumer="w")
        worker._loop = lambda stop: stop.wait()
        running = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.5)
        stop.set()
        await running
        assert "durability: Redis evicts keys (maxmemory-policy allkeys-lru)" in caplog.text


async def test_past_its_share_of_redis_memory_ingest_stops_and_goes_on_when_memory_is_free(
        tmp_path, postgres_url, clickhouse_url, client_of, monkeypatch):
    outcomes = counted(monkeypatch)
    with start_redis(tmp_path / "redis", aof=True, args=["--maxmemory", "64mb"]) as redis_server:
        stores = stores_on(tmp_path, postgres_url, redis_server.url(), clickhouse_url, ingest_max_memory_share=0.02)
        http = await client_of(stores)
        tenant = Tenant(stores)
        watch = http._transport.app.state.redis_watch
        await stores.redis.set("ballast", b"x" * 2_000_000)  # about 3% of maxmemory in use now
        await watch.refresh()
        assert watch.memory_full
        events = [{"event_type": "event", "event_name": "x"}]
        refused = await http.post(f"/v1/projects/{tenant.id}/events", json=events, headers=tenant.headers)
        assert_error(refused, 503, "queue_full")
        assert (await http.post("/collect", json={"site_id": tenant.site_id, "url": "https://example.com/"})
                ).status_code == 204
        assert outcomes == {"overloaded": 1}
        assert await stores.redis.xlen(stores.settings.stream_key) == 0
        body = (await readyz(http))[1]
        assert body["status"] == "ok" and body["warnings"][-1].startswith("the ingest queue is full")

        await stores.redis.config_set("maxmemory", "1gb")  # room again
        await watch.refresh()
        assert not watch.memory_full
        assert (await http.post(f"/v1/projects/{tenant.id}/events", json=events, headers=tenant.headers)
                ).status_code == 202
        assert await stores.redis.xlen(stores.settings.stream_key) == 1


async def test_with_a_replica_to_wait_for_a_202_means_the_replica_has_the_events(
        tmp_path, postgres_url, clickhouse_url, client_of):
    with start_redis(tmp_path / "primary", aof=True) as primary, \
            start_redis(tmp_path / "replica", aof=True, args=["--replicaof", "127.0.0.1", str(primary.port)]) as replica:
        replica_client = sync_redis.Redis.from_url(replica.url())
        stores = stores_on(tmp_path, postgres_url, primary.url(), clickhouse_url,
                           events_wait_replicas=1, events_wait_timeout_ms=3000)  # ample on a busy machine
        http = await client_of(stores)
        tenant = Tenant(stores)
        url, events = f"/v1/projects/{tenant.id}/events", [{"event_type": "event", "event_name": "x"}] * 3
        deadline = time.monotonic() + 20
        while replica_client.info("replication").get("master_link_status") != "up":  # until it has synced
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.1)
        assert (await http.post(url, json=events, headers=tenant.headers)).status_code == 202
        assert replica_client.xlen(stores.settings.stream_key) == 3, "on the replica before the answer"

        replica.kill()
        refused = await http.post(url, json=events, headers=tenant.headers)
        body = assert_error(refused, 503, "not_confirmed")
        assert "sending them again may store them twice" in body["message"]


async def test_waiting_for_the_disk_needs_appendfsync_always_before_redis_7_2(
        tmp_path, postgres_url, clickhouse_url, client_of):
    events = [{"event_type": "event", "event_name": "x"}]
    with start_redis(tmp_path / "everysec", aof=True) as everysec:
        stores = stores_on(tmp_path, postgres_url, everysec.url(), clickhouse_url, events_wait_fsync=True)
        http = await client_of(stores)
        tenant = Tenant(stores)
        facts = await http._transport.app.state.redis_watch.refresh()
        if facts.has_waitaof:
            pytest.skip("this Redis confirms with WAITAOF whatever its appendfsync")
        refused = assert_error(await http.post(f"/v1/projects/{tenant.id}/events", json=events,
                                               headers=tenant.headers), 503, "unavailable")
        assert refused["message"].startswith("Nothing was queued") and "appendfsync always" in refused["message"]
        assert await stores.redis.xlen(stores.settings.stream_key) == 0
    with start_redis(tmp_path / "no-aof", aof=False) as no_aof:
        stores = stores_on(tmp_path, postgres_url, no_aof.url(), clickhouse_url, events_wait_fsync=True)
        http = await client_of(stores)
        tenant = Tenant(stores)
        refused = assert_error(await http.post(f"/v1/projects/{tenant.id}/events", json=events,
                                               headers=tenant.headers), 503, "unavailable")
        assert "appendonly no" in refused["message"] and await stores.redis.xlen(stores.settings.stream_key) == 0
    with start_redis(tmp_path / "always", aof=True, args=["--appendfsync", "always"]) as always:
        stores = stores_on(tmp_path, postgres_url, always.url(), clickhouse_url, events_wait_fsync=True)
        http = await client_of(stores)
        tenant = Tenant(stores)
        assert (await http.post(f"/v1/projects/{tenant.id}/events", json=events, headers=tenant.headers)
                ).status_code == 202



async def test_a_unix_socket_url_reaches_redis(tmp_path):
    """unix:// URLs take no TCP options (keepalive): the pool's connection class for them must work."""
    socket = tmp_path / "redis.sock"
    with start_redis(tmp_path / "redis", aof=True, args=["--unixsocket", str(socket), "--unixsocketperm", "700"]):
        client = make_redis(f"unix://{socket}?db=3", socket_timeout=5)
        try:
            from openanalytics.ingest.buffer import Buffer

            assert await Buffer(client, "oa:events", 10).append([{"project_id": "p"}], "oa:append:k", "f")
            assert await client.xlen("oa:events") == 1
        finally:
            await client.aclose()
