"""Control-plane migrations on SQLite and PostgreSQL; per-project ClickHouse schema and TTL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from openanalytics import migrations
from openanalytics.projects.models import Project
from openanalytics.projects.service import apply_plan
from openanalytics.provisioning.events_schema import CURRENT_VERSION, database_name, migrate_project, ttl_days
from openanalytics.provisioning.projects import provision_pending
from openanalytics.stores.sql import Database


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.server_stores)])
def test_control_plane_migrations_up_down_up(tmp_path, store, request):
    url = f"sqlite:///{tmp_path / 'cp.sqlite3'}" if store == "sqlite" else request.getfixturevalue("postgres_url")
    db = Database(url)
    migrations.upgrade(db.engine)
    migrations.downgrade(db.engine, "base")
    assert set(sa.inspect(db.engine).get_table_names()) <= {"alembic_version"}
    migrations.upgrade(db.engine)
    assert {"projects", "api_keys"} <= set(sa.inspect(db.engine).get_table_names())
    db.dispose()


async def test_project_database_migrations_are_idempotent(stores, tenant):
    events = stores.events
    for _ in range(2):
        assert events.call(migrate_project, events, tenant.id, 90) == CURRENT_VERSION
    db = database_name(tenant.id)
    versions = events.call(events.rows, f"SELECT version FROM {db}.schema_versions ORDER BY version")
    assert versions == [(v,) for v in range(1, CURRENT_VERSION + 1)]
    engine = events.call(events.rows, "SELECT engine, partition_key, sorting_key FROM system.tables "
                                      "WHERE database = {db:String} AND name = 'events'", {"db": db})
    assert engine == [("MergeTree", "toYYYYMM(timestamp)", "toDate(timestamp), visitor_id, timestamp, event_id")]
    assert events.call(ttl_days, events, tenant.id) == 90


async def test_a_new_database_gets_at_once_what_the_migrations_make(stores, make_tenant, monkeypatch):
    from openanalytics.provisioning import events_schema

    events = stores.events
    fresh, migrated = make_tenant(), make_tenant()  # Tenant provisions its project: start both from nothing
    for tenant in (fresh, migrated):
        events.call(events.command, f"DROP DATABASE IF EXISTS {database_name(tenant.id)}")
    statements = []
    command = events.command
    monkeypatch.setattr(events, "command", lambda sql, *a, **k: (statements.append(sql), command(sql, *a, **k))[1])
    assert events.call(migrate_project, events, fresh.id, 45) == CURRENT_VERSION
    assert not [s for s in statements if s.startswith("ALTER")] and len(statements) <= 8, statements
    monkeypatch.setattr(events_schema, "_has_events_table", lambda store, db: True)  # the long way
    assert events.call(migrate_project, events, migrated.id, 45) == CURRENT_VERSION
    monkeypatch.undo()

    def schema(project_id: str) -> dict:
        db = database_name(project_id)
        tables = events.call(events.rows, "SELECT name, create_table_query FROM system.tables "
                                          "WHERE database = {db:String} ORDER BY name", {"db": db})
        versions = events.call(events.rows, f"SELECT version FROM {db}.schema_versions ORDER BY version")
        return {"tables": {name: query.replace(db, "DB") for name, query in tables}, "versions": versions}

    assert schema(fresh.id) == schema(migrated.id)
    assert set(schema(fresh.id)["tables"]) == {"events", "schema_versions", "usage", "usage_counter", "usage_since"}
    assert events.call(ttl_days, events, fresh.id) == 45


async def test_a_version_1_database_gets_the_read_fast_codecs_and_keeps_its_rows(stores, tenant, monkeypatch):
    from openanalytics.provisioning import events_schema

    events, db = stores.events, database_name(tenant.id)
    events.call(events.command, f"DROP DATABASE IF EXISTS {db}")
    monkeypatch.setattr(events_schema, "MIGRATIONS", events_schema.MIGRATIONS[:1])
    events.call(migrate_project, events, tenant.id, 90)
    events.call(events.command, f"INSERT INTO {db}.events (event_id, event_type, timestamp, visitor_id) "
                                "VALUES (generateUUIDv4(), 'pageview', now64(3), 7)")
    monkeypatch.undo()
    assert events.call(migrate_project, events, tenant.id, 90) == CURRENT_VERSION
    codecs = dict(events.call(events.rows, "SELECT name, compression_codec FROM system.columns "
                                           "WHERE database = {db:String} AND table = 'events'", {"db": db}))
    assert codecs["timestamp"] == codecs["visitor_id"] == "CODEC(Delta(8), LZ4)"
    assert codecs["session_id"] == codecs["path"] == codecs["revenue"] == "CODEC(LZ4)"
    assert codecs["city"] == "", "columns the queries rarely read keep the default"
    assert events.call(events.rows, f"SELECT visitor_id FROM {db}.events") == [(7,)]
    assert events.call(ttl_days, events, tenant.id) == 90


async def test_usage_is_counted_as_stored_and_survives_deletion_after_the_upgrade(stores, tenant, monkeypatch):
    """Events received before the usage counter starts (a minute after the upgrade, so it exists before
    they are stored) are counted from what is stored; from then on each insert is counted once (a
    retried insert too) and stays counted after its events are deleted."""
    import time as clock
    from datetime import UTC, datetime

    from openanalytics.provisioning import events_schema
    from openanalytics.query.usage import usage_sql
    from openanalytics.worker.flush import COLUMNS, to_columns

    events, db = stores.events, database_name(tenant.id)
    events.call(events.command, f"DROP DATABASE IF EXISTS {db}")
    monkeypatch.setattr(events_schema, "MIGRATIONS", events_schema.MIGRATIONS[:2])
    events.call(migrate_project, events, tenant.id, 90)

    def insert(n: int, event_type: str, token: str, later_s: int = 0) -> None:
        now = int(clock.time() * 1000) + later_s * 1000
        rows = [to_columns({"event_id": f"00000000-0000-4000-8000-{i:012d}", "event_type": event_type,
                            "timestamp": now, "received_at": now}) for i in range(n)]
        events.call(events.insert, db, "events", rows, COLUMNS, token=token)

    def usage() -> dict:
        since = datetime.now(UTC).date().replace(day=1)
        return {t: n for _, t, n in events.call(events.rows, usage_sql(db), {"since": since})}

    insert(2, "pageview", "before0001")
    monkeypatch.undo()
    events.call(migrate_project, events, tenant.id, 90)
    insert(1, "identify", "inflight01")  # received before the counter starts, stored after the upgrade
    later = events_schema.USAGE_MARGIN_SECONDS + 5
    insert(3, "event", "after00001", later)
    insert(3, "event", "after00001", later)  # the worker's retry of the same batch
    assert events.call(events.rows, f"SELECT count() FROM {db}.events") == [(6,)]
    assert usage() == {"pageview": 2, "identify": 1, "event": 3}, "each once"
    events.call(events.command, f"ALTER TABLE {db}.events DELETE WHERE 1 SETTINGS mutations_sync = 1")
    assert events.call(events.rows, f"SELECT count() FROM {db}.events") == [(0,)]
    assert usage() == {"event": 3}, "counted since the counter started: stays; before: counted as stored"

    # A crash between the moment and the view: the next run sets a new moment, then makes the view.
    events.call(events.command, f"DROP VIEW {db}.usage_counter")
    events.call(events.command, f"DELETE FROM {db}.schema_versions WHERE version = 3")
    events.call(migrate_project, events, tenant.id, 90)
    (since,) = events.call(events.rows, f"SELECT max(at) FROM {db}.usage_since")[0]
    assert since.timestamp() > clock.time() + events_schema.USAGE_MARGIN_SECONDS - 5, "the latest moment counts"
    assert events.call(events.rows, f"SELECT count() FROM {db}.usage_since") == [(2,)]
    events.call(events_schema._start_counting_usage, events, db)  # a second worker, once the view exists
    assert events.call(events.rows, f"SELECT count() FROM {db}.usage_since") == [(2,)]


async def test_plan_change_moves_the_ttl(stores, make_tenant):
    tenant = make_tenant(plan="free")
    assert tenant.id in provision_pending(stores.db, stores.events)
    assert stores.events.call(ttl_days, stores.events, tenant.id) == 90
    assert tenant.id not in provision_pending(stores.db, stores.events), "nothing left to do"
    with stores.db.session() as session:
        apply_plan(session.get(Project, tenant.id), "pro", None)
    assert tenant.id in provision_pending(stores.db, stores.events)
    assert stores.events.call(ttl_days, stores.events, tenant.id) == 365
    with stores.db.session() as session:
        project = session.get(Project, tenant.id)
        assert (project.events_schema_version, project.events_ttl_days) == (CURRENT_VERSION, 365)


def test_project_ids_are_checked_before_they_name_a_database():
    import pytest

    for bad in ("prj_1; DROP DATABASE x", "../etc", "prj_ABCDEF0123456789", ""):
        with pytest.raises(ValueError):
            database_name(bad)
