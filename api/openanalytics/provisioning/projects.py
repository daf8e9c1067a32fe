"""Bring every active project's events database up to date with the control plane.

The CLI writes projects into the control plane only (it cannot open an embedded ClickHouse
that a running process holds); the process that owns the events store calls
`provision_pending` promptly and on start, so a new project is ready within a second.
"""

from __future__ import annotations

import logging

from openanalytics.projects.models import Project
from openanalytics.projects.service import projects_needing_provisioning
from openanalytics.provisioning.events_schema import CURRENT_VERSION, migrate_project
from openanalytics.stores.clickhouse import EventStore
from openanalytics.stores.sql import Database

log = logging.getLogger(__name__)


def provision_project(db: Database, store: EventStore, project: Project) -> None:
    """Synchronous; runs on the store's thread."""
    version = migrate_project(store, project.id, project.retention_days)
    with db.session() as session:
        row = session.get(Project, project.id)
        if row is not None:
            row.events_schema_version = version
            row.events_ttl_days = project.retention_days


def provision_pending(db: Database, store: EventStore) -> list[str]:
    """Provision projects whose schema or TTL is behind. Returns their ids."""
    with db.session() as session:
        pending = projects_needing_provisioning(session, CURRENT_VERSION)
    done = []
    for project in pending:
        try:
            store.call(provision_project, db, store, project)
            done.append(project.id)
            log.info("provisioned events database", extra={"project_id": project.id})
        except Exception:
            log.exception("provisioning failed", extra={"project_id": project.id})
    return done
