"""Making a declared tenant (an AnalyticsProject's spec) real in the stores, idempotently.

The operator is a thin Kubernetes adapter over these functions: it reads the object, calls
`apply`, keeps each named key's secret in a Secret, and reports what came back. Running any
function twice with the same input changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from openanalytics.auth.keys import DEFAULT_SCOPES, find_active_key, issue_key, parse_scopes
from openanalytics.auth.models import ApiKey
from openanalytics.projects.models import Project
from openanalytics.projects.plans import Plan
from openanalytics.projects.service import apply_plan, normalise_domain
from openanalytics.provisioning.events_schema import database_name
from openanalytics.provisioning.projects import provision_project
from openanalytics.stores.clickhouse import EventStore
from openanalytics.stores.sql import Database, utcnow

LIMITS = {  # spec.limits field -> the project's limit
    "apiRequestsPerMinute": "api_requests_per_minute",
    "retentionDays": "retention_days",
    "collectPerIpPerMinute": "collect_per_ip_per_minute",
    "collectPerSitePerMinute": "collect_per_site_per_minute",
    "monthlyEvents": "monthly_events",
}
KEY_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
MANAGED = "k8s:"  # key names in the control plane: "k8s:<spec name>", so hand-made keys are never touched


class InvalidSpec(ValueError):
    """A spec the CRD schema should have refused: reported on the object, never retried blindly."""


@dataclass(frozen=True)
class KeySpec:
    name: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class TenantSpec:
    display_name: str
    plan: str
    domains: tuple[str, ...] = ()
    overrides: dict[str, int] = field(default_factory=dict)
    keys: tuple[KeySpec, ...] = ()
    deletion_policy: str = "Keep"

    @classmethod
    def parse(cls, name: str, spec: dict) -> TenantSpec:
        try:
            plan = Plan(spec.get("plan", "free")).value
        except ValueError:
            raise InvalidSpec(f"unknown plan {spec.get('plan')!r}") from None
        try:
            domains = tuple(sorted({normalise_domain(d) for d in spec.get("domains") or []}))
        except (ValueError, AttributeError) as exc:
            raise InvalidSpec(f"bad domain: {exc}") from None
        overrides = {}
        for field_name, value in (spec.get("limits") or {}).items():
            if field_name not in LIMITS:
                raise InvalidSpec(f"unknown limit {field_name!r}; known: {', '.join(LIMITS)}")
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidSpec(f"limit {field_name} must be a positive integer")
            overrides[LIMITS[field_name]] = value
        keys, seen = [], set()
        for item in spec.get("apiKeys") or []:
            key_name = item.get("name", "")
            if not KEY_NAME.match(key_name) or key_name in seen:
                raise InvalidSpec(f"bad or repeated key name {key_name!r}")
            seen.add(key_name)
            try:
                scopes = parse_scopes(item.get("scopes") or [s.value for s in DEFAULT_SCOPES])
            except ValueError as exc:
                raise InvalidSpec(str(exc)) from None
            keys.append(KeySpec(key_name, tuple(scopes)))
        policy = spec.get("deletionPolicy", "Keep")
        if policy not in ("Keep", "Delete"):
            raise InvalidSpec(f"deletionPolicy must be Keep or Delete, not {policy!r}")
        display = (spec.get("displayName") or name).strip()[:200] or name
        return cls(display, plan, domains, overrides, tuple(keys), policy)


@dataclass(frozen=True)
class Provisioned:
    project_id: str
    site_id: str
    database: str
    limits: dict[str, int]


def project_id_for(uid: str) -> str:
    """The project of a Kubernetes object, derived from its uid: stable even if status is lost."""
    return "prj_" + hashlib.sha256(uid.encode()).hexdigest()[:16]


def apply(db: Database, store: EventStore, project_id: str, spec: TenantSpec) -> Provisioned:
    """Create or update the project, its limits and its ClickHouse database (and TTL)."""
    with db.session() as session:
        project = session.get(Project, project_id)
        if project is not None and not project.active:
            # Retired by the object's deletion; a late drift check must not bring it back.
            raise InvalidSpec(f"project {project_id} was retired")
        if project is None:
            project = Project(id=project_id, site_id="site_" + hashlib.sha256(project_id.encode()).hexdigest()[:16],
                              events_schema_version=0, events_ttl_days=0)
            session.add(project)
        project.name, project.domains, project.active = spec.display_name, list(spec.domains), True
        if project.plan != spec.plan or (project.overrides or {}) != spec.overrides:
            apply_plan(project, spec.plan, spec.overrides)
        session.flush()
        session.expunge(project)
    store.call(provision_project, db, store, project)
    limits = {name: getattr(project, name) for name in LIMITS.values()}
    return Provisioned(project.id, project.site_id, database_name(project.id), limits)


def key_valid(db: Database, project_id: str, key: KeySpec, secret: str | None) -> bool:
    """Whether `secret` (from the key's Secret) is a live key of this project with these scopes."""
    if not secret:
        return False
    with db.session() as session:
        found = find_active_key(session, secret)
        return (found is not None and found.project_id == project_id and found.name == MANAGED + key.name
                and tuple(sorted(found.scopes)) == key.scopes)


def issue(db: Database, project_id: str, key: KeySpec, retire_others_after: timedelta | None = None) -> str:
    """A new secret for the named key. Its older secrets stop working now, or after the grace period."""
    with db.session() as session:
        ends = utcnow() + (retire_others_after or timedelta(0))
        for old in _named(session, project_id, key.name):
            if old.revoked_at is None or old.revoked_at > ends:
                old.revoked_at = ends
        return issue_key(session, project_id, MANAGED + key.name, list(key.scopes)).secret


def retire_unlisted(db: Database, project_id: str, keep: set[str]) -> list[str]:
    """Revoke managed keys whose names left the spec. Returns those names."""
    gone = []
    with db.session() as session:
        for key in session.scalars(select(ApiKey).where(ApiKey.project_id == project_id, ApiKey.revoked_at.is_(None))):
            if key.name.startswith(MANAGED) and key.name[len(MANAGED):] not in keep:
                key.revoked_at = utcnow()
                gone.append(key.name[len(MANAGED):])
    return gone


def retire(db: Database, store: EventStore, project_id: str, policy: str) -> None:
    """The object is going: revoke every key, deactivate the project, drop its data if asked."""
    with db.session() as session:
        now = utcnow()
        for key in session.scalars(select(ApiKey).where(ApiKey.project_id == project_id)):
            if key.revoked_at is None or key.revoked_at > now:
                key.revoked_at = now
        project = session.get(Project, project_id)
        if project is not None:
            project.active = False
            if policy == "Delete":
                project.events_schema_version, project.events_ttl_days = 0, 0
    if policy == "Delete":
        store.call(store.command, f"DROP DATABASE IF EXISTS {database_name(project_id)}")


def database_exists(store: EventStore, project_id: str) -> bool:
    rows = store.call(store.rows, "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'events'",
                      {"db": database_name(project_id)})
    return rows[0][0] == 1


def repair_database(db: Database, store: EventStore, project_id: str) -> bool:
    """Recreate the project's database if someone dropped it by hand. Returns whether it had to."""
    if database_exists(store, project_id):
        return False
    with db.session() as session:
        project = session.get(Project, project_id)
        if project is None or not project.active:
            return False
        project.events_schema_version, project.events_ttl_days = 0, 0
        session.flush()
        session.expunge(project)
    store.call(provision_project, db, store, project)
    return True


def _named(session, project_id: str, name: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.project_id == project_id, ApiKey.name == MANAGED + name)))

