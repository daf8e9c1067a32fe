"""Budgets: per key per minute from the plan, per IP for failed authentications, headers on every /v1 answer."""

from __future__ import annotations

import httpx
import pytest

from openanalytics.app import create_app
from openanalytics.runtime import Stores
from openanalytics.stores.redis import make_redis
from tests.helpers import CollectTransport, assert_error, counted

HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def budget(response) -> tuple[int, int, int]:
    return tuple(int(response.headers[name]) for name in HEADERS)


async def test_free_key_gets_60_a_minute_then_429(client, make_tenant):
    tenant = make_tenant(plan="free")
    for n in range(1, 61):
        response = await client.get("/v1/projects", headers=tenant.headers)
        assert response.status_code == 200
        limit, remaining, reset = budget(response)
        assert (limit, remaining) == (60, 60 - n) and 0 < reset <= 60
    refused = await client.get("/v1/projects", headers=tenant.headers)
    body = assert_error(refused, 429, "rate_limited")
    assert "retry" in body["message"]
    assert budget(refused)[:2] == (60, 0)
    assert 0 < int(refused.headers["retry-after"]) <= 60


async def test_budgets_follow_the_plan_and_overrides(client, stores):
    from tests.conftest import Tenant

    pro = Tenant(stores, plan="pro")
    assert budget(await client.get("/v1/projects", headers=pro.headers))[0] == 600
    with stores.db.session() as session:
        from openanalytics.projects.service import create_project
        from openanalytics.auth.keys import issue_key

        project = create_project(session, "big", "enterprise", overrides={"api_requests_per_minute": 25_000})
        secret = issue_key(session, project.id).secret
    response = await client.get("/v1/projects", headers={"Authorization": f"Bearer {secret}"})
    assert budget(response)[:2] == (25_000, 24_999)


async def test_each_key_has_its_own_budget(client, stores, make_tenant):
    from openanalytics.auth.keys import issue_key

    tenant = make_tenant(plan="free")
    with stores.db.session() as session:
        other = issue_key(session, tenant.id, "second").secret
    for _ in range(3):
        await client.get("/v1/projects", headers=tenant.headers)
    response = await client.get("/v1/projects", headers={"Authorization": f"Bearer {other}"})
    assert budget(response)[:2] == (60, 59)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/v1/projects/{id}", {}, 200),
        ("get", "/v1/projects/{id}/pageviews", {"params": {"from": "x", "to": "y"}}, 400),
        ("get", "/v1/projects/prj_0000000000000000", {}, 404),
        ("get", "/v1/no-such-route", {}, 404),
        ("delete", "/v1/projects", {}, 405),
        ("post", "/v1/projects/{id}/events", {"json": {"event_type": "pageview"}}, 202),
        ("get", "/v1/projects/{id}/keys", {}, 403),
    ],
)
async def test_headers_on_every_answer(client, tenant, method, path, kwargs, status):
    response = await getattr(client, method)(path.format(id=tenant.id), headers=tenant.headers, **kwargs)
    assert response.status_code == status, response.text
    limit, remaining, _ = budget(response)
    assert limit == 6000 and remaining < 6000


async def test_401_carries_the_failed_authentication_budget(client):
    response = await client.get("/v1/projects")
    assert_error(response, 401)
    assert budget(response)[:2] == (20, 19)


async def test_failed_authentications_lock_out_the_ip_not_valid_keys(stores, tenant):
    app = create_app(stores)

    def at(ip: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 1)), base_url="http://t")

    async with at("198.51.100.1") as attacker, at("198.51.100.2") as bystander:
        for _ in range(stores.settings.auth_failures_per_minute):
            assert (await attacker.get("/v1/projects", headers={"Authorization": "Bearer oa_live_guess"})).status_code == 401
        locked = await attacker.get("/v1/projects", headers={"Authorization": "Bearer oa_live_guess"})
        assert_error(locked, 429, "rate_limited")
        # A valid key is still served from there: behind a shared proxy, one attacker must not
        # lock everyone out (and a 238-bit key cannot be guessed anyway).
        assert (await attacker.get("/v1/projects", headers=tenant.headers)).status_code == 200
        assert (await bystander.get("/v1/projects", headers={"Authorization": "Bearer oa_live_guess"})).status_code == 401


async def test_public_endpoints_carry_no_budget(client):
    for path in ("/healthz", "/openapi.json"):
        assert "x-ratelimit-limit" not in (await client.get(path)).headers
    assert "x-ratelimit-limit" not in (await client.post("/collect", content=b"{}")).headers


async def test_without_redis_reads_work_writes_say_503_and_collect_stays_silent(stores, tenant, monkeypatch):
    from openanalytics.ingest import buffer, commit

    outcomes = counted(monkeypatch)
    monkeypatch.setattr(buffer, "RETRY_SECONDS", 0.2)  # both send again for a while first
    monkeypatch.setattr(commit, "RETRY_SECONDS", 0.2)
    dead = make_redis("redis://127.0.0.1:1/0")
    broken = Stores(settings=stores.settings, db=stores.db, redis=dead, events=stores.events)
    transport = CollectTransport(app=create_app(broken))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        read = await http.get(f"/v1/projects/{tenant.id}", headers=tenant.headers)
        assert read.status_code == 200 and budget(read)[:2] == (6000, 6000), "fail open: not counted"
        write = await http.post(f"/v1/projects/{tenant.id}/events", json={"event_type": "pageview"}, headers=tenant.headers)
        assert_error(write, 503, "unavailable")
        assert write.headers["retry-after"] == "5"
        hit = await http.post("/collect", json={"site_id": tenant.site_id, "url": "https://a.example/"})
        assert hit.status_code == 204 and hit.content == b""
    assert outcomes == {"failed": 1}
    await dead.aclose()


async def test_an_unexpected_failure_is_a_500_in_the_error_shape_with_headers(client, tenant, monkeypatch):
    def broken(project):
        raise RuntimeError("bug")

    monkeypatch.setattr("openanalytics.projects.endpoints.ProjectOut.of", broken)
    response = await client.get(f"/v1/projects/{tenant.id}", headers=tenant.headers)
    assert_error(response, 500, "internal_error")
    assert budget(response)[0] == 6000


async def test_a_second_forwarded_for_line_does_not_reset_the_lockout(stores):
    stores.settings.trusted_proxies = ["10.0.0.0/8"]
    app = create_app(stores)
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as proxy:
        codes = []
        for n in range(stores.settings.auth_failures_per_minute + 3):
            # The client forges a first line; the proxy appends its own with the real address.
            headers = [("Authorization", "Bearer oa_live_guess"), ("X-Forwarded-For", f"192.0.2.{n}"),
                       ("X-Forwarded-For", "198.51.100.9")]
            codes.append((await proxy.get("/v1/projects", headers=headers)).status_code)
    assert codes[-3:] == [429, 429, 429]


async def test_no_body_is_read_without_a_valid_key(client, tenant):
    response = await client.post(f"/v1/projects/{tenant.id}/keys", content=b"{not json" * 10,
                                 headers={"Content-Type": "application/json"})
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    big = await client.post(f"/v1/projects/{tenant.id}/keys", content=b"x" * (6 * 1024 * 1024),
                            headers={**tenant.headers, "Content-Type": "application/json"})
    assert_error(big, 413, "payload_too_large")
    assert budget(big)[0] == 6000


async def test_the_limiter_never_leaves_a_request_hanging(stores, tenant, monkeypatch):
    import asyncio

    from openanalytics.auth.ratelimit import RateLimiter

    async def broken(self, batch):
        raise ValueError("a bug")

    monkeypatch.setattr(RateLimiter, "_count", broken)
    app = create_app(stores)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        responses = await asyncio.wait_for(
            asyncio.gather(*(http.get("/v1/projects", headers=tenant.headers) for _ in range(5))), 5)
    assert [r.status_code for r in responses] == [200] * 5, "fail open, never hang"


async def test_concurrent_requests_get_exact_places_in_the_budget(client, make_tenant):
    import asyncio

    tenant = make_tenant(plan="free")
    responses = await asyncio.gather(*(client.get("/v1/projects", headers=tenant.headers) for _ in range(90)))
    assert sorted(r.status_code for r in responses) == [200] * 60 + [429] * 30
    assert sorted(int(r.headers["x-ratelimit-remaining"]) for r in responses if r.status_code == 200) == list(range(60))
