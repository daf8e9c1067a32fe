"""Liveness and readiness."""

from __future__ import annotations

import httpx

from openanalytics.app import create_app
from openanalytics.runtime import Stores
from openanalytics.stores.redis import is_embedded, make_redis


async def test_ready_when_all_three_stores_answer(client, stores):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["checks"] == {"database": "ok", "redis": "ok", "clickhouse": "ok"}
    if is_embedded(stores.redis):
        assert body["warnings"] == [] and body["ingest"] is None, "the embedded queue has no Redis settings"
    else:  # the tests' Redis keeps nothing on disk: said so (test_durability.py has the rest)
        assert body["ingest"]["aof"] is False and body["warnings"][0].startswith("Redis has AOF off")


async def test_degraded_but_ready_when_redis_is_unreachable(stores):
    dead = make_redis("redis://127.0.0.1:1/0")
    broken = Stores(settings=stores.settings, db=stores.db, redis=dead, events=stores.events)
    transport = httpx.ASGITransport(app=create_app(broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/readyz")
    assert response.status_code == 200, "queries still work without Redis"
    body = response.json()
    assert body["status"] == "degraded" and body["checks"]["redis"].startswith("error")
    assert body["checks"]["database"] == "ok" and body["checks"]["clickhouse"] == "ok"
    await dead.aclose()


async def test_not_ready_when_the_control_plane_is_unreachable(stores):
    from openanalytics.stores.sql import Database

    dead = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    broken = Stores(settings=stores.settings, db=dead, redis=stores.redis, events=stores.events)
    transport = httpx.ASGITransport(app=create_app(broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["database"].startswith("error")
