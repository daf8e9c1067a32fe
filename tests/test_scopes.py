"""Every route has a scope decision, and every /v1 route enforces it.

A new route fails here until it is added to ROUTES (with its scope) or PUBLIC.
"""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from openanalytics.app import create_app
from openanalytics.auth.keys import Scope
from tests.helpers import assert_error

PUBLIC = {("GET", "/oa.js"), ("HEAD", "/oa.js"), ("POST", "/collect"), ("GET", "/healthz"), ("GET", "/readyz")}

# (method, path) -> (scope, request kwargs that are valid apart from authorisation)
ROUTES = {
    ("GET", "/v1/projects"): (Scope.projects_read, {}),
    ("GET", "/v1/projects/{project_id}"): (Scope.projects_read, {}),
    ("POST", "/v1/projects/{project_id}/events"): (Scope.events_write, {"json": {"event_type": "pageview"}}),
    ("GET", "/v1/projects/{project_id}/pageviews"): (Scope.stats_read, {"params": {"from": "2026-11-01", "to": "2026-11-02"}}),
    ("GET", "/v1/projects/{project_id}/events"): (Scope.stats_read, {"params": {"from": "2026-11-01", "to": "2026-11-02"}}),
    ("GET", "/v1/projects/{project_id}/sessions"): (Scope.stats_read, {"params": {"from": "2026-11-01", "to": "2026-11-02"}}),
    ("GET", "/v1/projects/{project_id}/realtime"): (Scope.stats_read, {}),
    ("GET", "/v1/projects/{project_id}/conversions"): (Scope.stats_read, {"params": {"from": "2026-11-01", "to": "2026-11-02"}}),
    ("GET", "/v1/projects/{project_id}/funnel"): (
        Scope.stats_read, {"params": {"from": "2026-11-01", "to": "2026-11-02", "step": ["path==/", "path==/a"]}}),
    ("GET", "/v1/projects/{project_id}/goals"): (Scope.stats_read, {}),
    ("POST", "/v1/projects/{project_id}/goals"): (Scope.goals_manage, {"json": {"name": "g", "match": "any_conversion"}}),
    ("DELETE", "/v1/projects/{project_id}/goals/{goal_id}"): (Scope.goals_manage, {}),
    ("GET", "/v1/projects/{project_id}/privacy/user/{user_id:path}"): (Scope.privacy_export, {}),
    ("DELETE", "/v1/projects/{project_id}/privacy/user/{user_id:path}"): (Scope.privacy_delete, {}),
    ("GET", "/v1/projects/{project_id}/privacy/requests/{request_id}"): (Scope.privacy_delete, {}),
    ("GET", "/v1/projects/{project_id}/stats"): (Scope.stats_read, {"params": {"from": "2026-11-01", "to": "2026-11-02"}}),
    ("GET", "/v1/projects/{project_id}/timeseries"): (Scope.stats_read, {"params": {"from": "2026-11-01", "to": "2026-11-02"}}),
    ("GET", "/v1/projects/{project_id}/breakdown"): (
        Scope.stats_read, {"params": {"from": "2026-11-01", "to": "2026-11-02", "dimension": "path"}}),
    ("GET", "/v1/projects/{project_id}/verify"): (Scope.stats_read, {}),
    ("GET", "/v1/projects/{project_id}/usage"): (Scope.stats_read, {}),
    ("POST", "/v1/projects/{project_id}/keys"): (Scope.keys_manage, {"json": {"scopes": ["stats:read"]}}),
    ("GET", "/v1/projects/{project_id}/keys"): (Scope.keys_manage, {}),
    ("DELETE", "/v1/projects/{project_id}/keys/{key_id}"): (Scope.keys_manage, {}),
}


def declared_scope(route: APIRoute) -> Scope | None:
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        scope = getattr(dependant.call, "required_scope", None)
        if scope is not None:
            return scope
        pending.extend(dependant.dependencies)
    return None


def api_routes(routes) -> list[APIRoute]:
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):  # FastAPI wraps included routers
            found.extend(api_routes(route.original_router.routes))
    return found


def app_routes(stores) -> dict[tuple[str, str], APIRoute]:
    app = create_app(stores)
    routes = {(method, route.path): route for route in api_routes(app.routes) for method in route.methods}
    assert routes, "no routes found: has FastAPI changed how it keeps them?"
    return routes


async def test_every_route_has_a_scope_decision(stores):
    routes = app_routes(stores)
    assert set(routes) == set(ROUTES) | PUBLIC, "add new routes to ROUTES or PUBLIC"
    for key, route in routes.items():
        expected = ROUTES[key][0] if key in ROUTES else None
        assert declared_scope(route) == expected, key


@pytest.mark.parametrize("route", list(ROUTES), ids=[f"{m} {p}" for m, p in ROUTES])
async def test_scope_is_enforced(client, stores, make_tenant, route):
    from openanalytics.goals.models import Goal
    from openanalytics.privacy.models import PrivacyRequest

    method, path = route
    scope, kwargs = ROUTES[route]
    without = make_tenant(scopes=[s.value for s in Scope if s is not scope])
    only = make_tenant(scopes=[scope.value, "stats:read"] if scope is Scope.keys_manage else [scope.value])

    def url(tenant):
        goal_id = f"goal_{tenant.id[4:]}"
        with stores.db.session() as session:
            if session.get(Goal, goal_id) is None:
                session.add(Goal(id=goal_id, project_id=tenant.id, name="scope test", match="any_conversion", value=""))
            request_id = f"prq_{tenant.id[4:]}"
            if session.get(PrivacyRequest, request_id) is None:
                session.add(PrivacyRequest(id=request_id, project_id=tenant.id, user_hash=tenant.id * 2,
                                           status="completed", attempts=1))
        return path.replace(":path}", "}").format(project_id=tenant.id, key_id=tenant.key.key.id, goal_id=goal_id, user_id="u1",
                           request_id=request_id)

    refused = await client.request(method, url(without), headers=without.headers, **kwargs)
    body = assert_error(refused, 403, "insufficient_scope")
    assert scope.value in body["message"]
    allowed = await client.request(method, url(only), headers=only.headers, **kwargs)
    assert allowed.status_code < 300, (route, allowed.text)
