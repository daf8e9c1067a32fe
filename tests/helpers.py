"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio

import httpx

from openanalytics import telemetry
from openanalytics.ingest.commit import Committer
from openanalytics.provisioning.events_schema import database_name
from openanalytics.runtime import Stores


class CollectTransport(httpx.ASGITransport):
    """The app in-process, as a test wants /collect: answered, then its hits stored before the
    response is handed back (the app answers /collect first and stores it a moment later)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.url.path == "/collect":
            await self.app.state.intake.settle()
        return response


class HeldRedis:
    """Stands in for a Redis that is slow to answer the commit script, until released."""

    def __init__(self, monkeypatch):
        self.release = asyncio.Event()
        self.calls = 0
        original = Committer._call

        async def held(committer, argv):
            self.calls += 1
            await self.release.wait()
            return await original(committer, argv)

        monkeypatch.setattr(Committer, "_call", held)


def counted(monkeypatch) -> dict[str, int]:
    """/collect's outcome counts, with telemetry's counting switched on."""
    monkeypatch.setattr(telemetry, "enabled", lambda: True)
    monkeypatch.setattr(telemetry, "collect_outcomes", {})
    return telemetry.collect_outcomes


async def stored_rows(stores: Stores, project_id: str, columns: str = "*") -> list[tuple]:
    """Rows in the project's events table (empty when it has never been provisioned)."""
    exists = await stores.events.run(
        stores.events.rows,
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'events'",
        {"db": database_name(project_id)},
    )
    if exists[0][0] == 0:
        return []
    return await stores.events.run(stores.events.rows, f"SELECT {columns} FROM {database_name(project_id)}.events")


async def store_events(stores: Stores, project_id: str, events: list[dict]) -> None:
    """Provision the project's events database and insert `events` (stream-shaped rows) as the worker would."""
    import uuid

    from openanalytics.projects.models import Project
    from openanalytics.provisioning.projects import provision_project
    from openanalytics.worker.flush import COLUMNS, to_columns

    with stores.db.session() as session:
        project = session.get(Project, project_id)
        session.expunge(project)
    await stores.events.run(provision_project, stores.db, stores.events, project)
    await stores.events.run(stores.events.insert, database_name(project_id), "events",
                            [to_columns(e) for e in events], COLUMNS, token=uuid.uuid4().hex)


def one_visit(start_ms: int, **more) -> list[dict]:
    """Stored rows of two pageviews on "/" a minute apart, of visitor 2's session 21, with no places or
    ages, as events stored before a schema added them; `more`: column -> value by the event's index."""
    return [{"event_id": f"00000000-0000-4000-8000-00000000000{n}", "event_type": "pageview",
             "timestamp": start_ms + n * 60_000, "received_at": start_ms + n * 60_000, "origin": "collect",
             "visitor_id": 2, "session_id": 21, "path": "/", **{name: value(n) for name, value in more.items()}}
            for n in range(2)]


async def query_plan(stores: Stores, statement: str, params: dict) -> str:
    """ClickHouse's EXPLAIN of a statement: which tables and projections it reads."""
    return "\n".join(line for (line,) in await stores.events.run(stores.events.rows, "EXPLAIN " + statement, params))


async def stream_length(stores: Stores) -> int:
    return await stores.redis.xlen(stores.settings.stream_key)


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code, body
    return body


def aggregate_spy(monkeypatch, *modules) -> list:
    """Replaces Aggregate in `modules` by one that notes the window of each query it runs: where a
    query grouped events instead of summing (query/session_sums.py, query/path_sums.py)."""
    from openanalytics.query.aggregate import Aggregate

    calls = []

    class Spy(Aggregate):
        async def run(self, store, limit=None, offset=0):
            calls.append(self.window)
            return await super().run(store, limit, offset)

    for module in modules:
        monkeypatch.setattr(module, "Aggregate", Spy)
    return calls


def server_store_urls(request) -> dict[str, str]:
    """OA_DATABASE_URL, OA_REDIS_URL and OA_CLICKHOUSE_URL of the server stores, for a process a test starts.

    Taken from the session's fixtures only when called, so a test's embedded variant that skips
    first (`-m "not server_stores"`) starts no server.
    """
    return {"OA_DATABASE_URL": request.getfixturevalue("postgres_url"),
            "OA_REDIS_URL": request.getfixturevalue("redis_url"),
            "OA_CLICKHOUSE_URL": request.getfixturevalue("clickhouse_url")}
