"""Control-plane migrations on SQLite and PostgreSQL; per-project ClickHouse schema and TTL."""

from __future__ import annotations

import sqlalchemy as sa

from openanalytics import migrations
from openanalytics.projects.models import Project
from openanalytics.projects.service import apply_plan
from openanalytics.provisioning.events_schema import CURRENT_VERSION, database_name, migrate_project, ttl_days
from openanalytics.provisioning.projects import provision_pending
from openanalytics.stores.sql import Database


def test_control_plane_migrations_up_down_up(tmp_path, postgres_url):
    for url in (f"sqlite:///{tmp_path / 'cp.sqlite3'}", postgres_url):
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
