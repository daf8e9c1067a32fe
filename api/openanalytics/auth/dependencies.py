"""Bearer authentication and scope checks, as FastAPI dependencies.

Each endpoint names its scope in its signature (`StatsRead`, `EventsWrite`, ...). The order
of checks never confirms that another tenant's project exists: a missing or wrong key is
401, a project other than the key's own is 404, and only then a missing scope is 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from openanalytics.auth.keys import Scope, find_active_key, hash_secret, touch_key
from openanalytics.cache import TTLCache
from openanalytics.errors import Forbidden, NotFound, Unauthorized
from openanalytics.projects.models import Project
from openanalytics.runtime import Stores
from openanalytics.stores.sql import utcnow

bearer = HTTPBearer(auto_error=False, description="An `oa_live_` API key.")

_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    key_id: str
    project_id: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class ProjectAccess:
    principal: Principal
    project: Project


def stores_of(request: Request) -> Stores:
    return request.app.state.stores


def _load_principal(stores: Stores, secret: str) -> Principal | None:
    with stores.db.session() as session:
        key = find_active_key(session, secret)
        if key is None:
            return None
        project = session.get(Project, key.project_id)
        if project is None or not project.active:
            return None
        if key.last_used_at is None or utcnow() - key.last_used_at > _TOUCH_EVERY:
            touch_key(session, key.id)
        return Principal(key.id, key.project_id, frozenset(key.scopes))


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Send an API key as 'Authorization: Bearer oa_live_...'.")
    stores = stores_of(request)
    cache: TTLCache[str, Principal | None] = request.app.state.key_cache
    digest = hash_secret(credentials.credentials)
    hit, principal = cache.get(digest)
    if not hit:
        principal = await run_in_threadpool(_load_principal, stores, credentials.credentials)
        cache.put(digest, principal)
    if principal is None:
        raise Unauthorized("The API key is invalid or revoked.")
    request.state.principal = principal
    return principal


def _load_project(stores: Stores, project_id: str) -> Project | None:
    with stores.db.session() as session:
        project = session.get(Project, project_id)
        return project if project is not None and project.active else None


async def load_project(request: Request, project_id: str, fresh: bool = False) -> Project:
    cache: TTLCache[str, Project | None] = request.app.state.project_cache
    hit, project = (False, None) if fresh else cache.get(project_id)
    if not hit:
        project = await run_in_threadpool(_load_project, stores_of(request), project_id)
        cache.put(project_id, project)
    if project is None:
        raise NotFound("No such project.", "project_not_found")
    return project


def _check_scope(principal: Principal, scope: Scope) -> None:
    if scope.value not in principal.scopes:
        raise Forbidden(f"This API key lacks the '{scope.value}' scope.")


def key_with(scope: Scope):
    """A dependency: any valid key holding `scope` (for routes outside one project)."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        _check_scope(principal, scope)
        return principal

    dependency.required_scope = scope  # read by the scope-coverage test
    return dependency


def project_with(scope: Scope):
    """A dependency: the path's project, reachable by this key only if it is its own, with `scope`."""

    async def dependency(
        request: Request, project_id: str, principal: Annotated[Principal, Depends(authenticate)]
    ) -> ProjectAccess:
        if project_id != principal.project_id:
            raise NotFound("No such project.", "project_not_found")
        project = await load_project(request, project_id)
        _check_scope(principal, scope)
        return ProjectAccess(principal, project)

    dependency.required_scope = scope
    return dependency


ProjectsRead = Annotated[Principal, Depends(key_with(Scope.projects_read))]
ProjectRead = Annotated[ProjectAccess, Depends(project_with(Scope.projects_read))]
StatsRead = Annotated[ProjectAccess, Depends(project_with(Scope.stats_read))]
EventsWrite = Annotated[ProjectAccess, Depends(project_with(Scope.events_write))]
