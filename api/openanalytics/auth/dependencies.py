"""Scope checks as FastAPI dependencies, on the principal the gate resolved.

Each endpoint names its scope in its signature (`StatsRead`, `EventsWrite`, ...). The order
of checks never confirms that another tenant's project exists: a missing or wrong key is
401, a project other than the key's own is 404, and only then a missing scope is 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from openanalytics.auth.keys import Scope
from openanalytics.auth.principals import Principal
from openanalytics.cache import TTLCache
from openanalytics.errors import Forbidden, NotFound, Unauthorized
from openanalytics.projects.models import Project
from openanalytics.runtime import Stores

# Documents the scheme in OpenAPI; the gate has already read the header.
bearer = HTTPBearer(auto_error=False, description="An `oa_live_` API key.")


ProjectId = Annotated[str, Path(description="The project's id.", examples=["prj_3f9a1c0b7d2e4a65"])]


@dataclass(frozen=True)
class ProjectAccess:
    principal: Principal
    project: Project


def stores_of(request: Request) -> Stores:
    return request.app.state.stores


async def authenticate(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthorized("Send a valid, unrevoked API key as 'Authorization: Bearer oa_live_...'.")
    return principal


def _load_project(stores: Stores, project_id: str) -> Project | None:
    with stores.db.session() as session:
        project = session.get(Project, project_id)
        return project if project is not None and project.active else None


async def load_project(request: Request, project_id: str, fresh: bool = False) -> Project:
    cache: TTLCache[str, Project | None] = request.app.state.project_cache
    hit, project = (False, None) if fresh else cache.get(project_id)
    if not hit:
        generation = cache.generation
        project = await run_in_threadpool(_load_project, stores_of(request), project_id)
        cache.put(project_id, project, generation)
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
        request: Request, project_id: ProjectId, principal: Annotated[Principal, Depends(authenticate)]
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
KeysManage = Annotated[ProjectAccess, Depends(project_with(Scope.keys_manage))]
GoalsManage = Annotated[ProjectAccess, Depends(project_with(Scope.goals_manage))]
PrivacyExport = Annotated[ProjectAccess, Depends(project_with(Scope.privacy_export))]
PrivacyDelete = Annotated[ProjectAccess, Depends(project_with(Scope.privacy_delete))]
