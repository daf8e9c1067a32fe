"""Creating, reading and listing projects."""

from __future__ import annotations

import re
from dataclasses import asdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from openanalytics.ids import new_id
from openanalytics.projects.models import Project
from openanalytics.projects.plans import Limits, Plan, configured_plans, effective_limits

_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def normalise_domain(domain: str) -> str:
    value = domain.strip().lower().rstrip(".")
    if len(value) > 253 or not _DOMAIN.match(value):
        raise ValueError(f"not a valid domain name: {domain!r}")
    return value


def apply_plan(
    project: Project, plan: Plan | str, overrides: dict[str, int] | None, plans: dict[Plan, Limits] | None = None
) -> bool:
    """Set the plan, overrides and effective limits; True if anything changed."""
    limits = asdict(effective_limits(plan, overrides, plans))
    wanted = {"plan": Plan(plan).value, "overrides": dict(overrides or {}), **limits}
    changed = {name: value for name, value in wanted.items() if getattr(project, name, None) != value}
    for name, value in changed.items():
        setattr(project, name, value)
    return bool(changed)


def reapply_plans(session: Session, plans: dict[Plan, Limits] | None = None) -> list[str]:
    """Recompute every project's limits from the configured plans; returns the ids that changed.

    A changed retention then reaches the project's ClickHouse TTL through provisioning.
    """
    plans = plans or configured_plans()
    changed = []
    for project in session.scalars(select(Project).order_by(Project.id)):
        if apply_plan(project, project.plan, project.overrides, plans):
            changed.append(project.id)
    session.flush()
    return changed


def create_project(
    session: Session,
    name: str,
    plan: Plan | str = Plan.free,
    domains: list[str] | None = None,
    overrides: dict[str, int] | None = None,
) -> Project:
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("a project name is 1 to 200 characters")
    project = Project(
        id=new_id("prj"),
        name=name,
        site_id=new_id("site"),
        domains=sorted({normalise_domain(d) for d in domains or []}),
        active=True,
        events_schema_version=0,
        events_ttl_days=0,
    )
    apply_plan(project, plan, overrides)
    session.add(project)
    session.flush()
    return project


def get_project(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def list_projects(session: Session, include_inactive: bool = False) -> list[Project]:
    query = select(Project).order_by(Project.created_at, Project.id)
    if not include_inactive:
        query = query.where(Project.active.is_(True))
    return list(session.scalars(query))


def projects_needing_provisioning(session: Session, schema_version: int) -> list[Project]:
    query = select(Project).where(
        Project.active.is_(True),
        (Project.events_schema_version < schema_version) | (Project.events_ttl_days != Project.retention_days),
    )
    return list(session.scalars(query))


def site_lookup(db, site_id: str) -> Project | None:
    """The active project owning a public site id (for /collect)."""
    with db.session() as session:
        return session.scalar(select(Project).where(Project.site_id == site_id, Project.active.is_(True)))
