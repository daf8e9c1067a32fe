"""Real processes on real stores, through failures: the fault suite (tests/fault_suite.py), and every kind
of request through every process after a Redis restart."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import httpx
import pytest

from tests import fault_suite
from tests.support.stack import Stack

pytestmark = [pytest.mark.server_stores, pytest.mark.timeout(600)]


def test_the_fault_suite_keeps_every_promise(tmp_path):
    """Every acknowledged event stored exactly once through each fault; /collect loses only what a killed
    process held; ingest flows again within 10 s of each store's return; a deletion running when ClickHouse
    stops for 30 s completes after it returns. (The other outages are 10 s here, to keep CI short; the
    README's table is of `python -m tests.fault_suite`, 30 s each.)"""
    with Stack(tmp_path / "stack") as stack:
        outcomes = fault_suite.Suite(stack, outage=10, deletion_outage=30).run()
    print("\n" + fault_suite.HEADER)
    for outcome in outcomes:
        print(fault_suite.row(outcome))
    assert [o.fault for o in outcomes if not o.kept] == [], [fault_suite.row(o) + " " + o.note for o in outcomes]
    assert all(o.acknowledged > 100 and o.hits_answered > 50 for o in outcomes), "the load ran"
    assert outcomes[-1].note.startswith("deletion running when ClickHouse stopped, completed")


def every_request(api: str, tenant: fault_suite.Tenant, admin: dict, n: int) -> list[tuple[str, int]]:
    """One request of every class the API serves, and what each answered."""
    project, headers = tenant.project_id, tenant.headers
    admin_headers = {"Authorization": f"Bearer {admin['secret']}"}
    answers = []
    with httpx.Client(base_url=api, timeout=10, headers={"User-Agent": fault_suite.BROWSER}) as http:
        def note(what: str, response: httpx.Response) -> httpx.Response:
            answers.append((what, response.status_code))
            return response

        note("collect", http.post("/collect", json={"site_id": tenant.site_id, "url": f"https://shop.example/r/{n}"}))
        note("events", http.post(f"/v1/projects/{project}/events", headers=headers,
                                 json=[{"event_type": "identify", "user_id": f"user/{n}"}]))
        stats = note("stats", http.get(f"/v1/projects/{project}/stats", headers=headers,
                                      params={"from": time.strftime("%Y-%m-%d"), "to": time.strftime("%Y-%m-%d")}))
        answers.append(("budget counted", 200 if int(stats.headers.get("x-ratelimit-remaining", -1))
                        < int(stats.headers.get("x-ratelimit-limit", 0)) else 599))
        note("realtime", http.get(f"/v1/projects/{project}/realtime", headers=headers))
        note("verify", http.get(f"/v1/projects/{project}/verify", headers=headers))
        key = note("key create", http.post(f"/v1/projects/{project}/keys", headers=admin_headers,
                                           json={"scopes": ["projects:read"]})).json()
        note("key revoke", http.delete(f"/v1/projects/{project}/keys/{key['id']}", headers=admin_headers))
        note("export", http.get(f"/v1/projects/{project}/privacy/user/{quote(f'user/{n}', safe='')}",
                                headers=headers))
        note("deletion", http.delete(f"/v1/projects/{project}/privacy/user/{quote(f'user/{n}', safe='')}",
                                     headers=headers))
        note("readyz", http.get("/readyz"))
    return answers


def burst(api: str, tenant: fault_suite.Tenant, size: int = 24) -> list[tuple[str, int]]:
    """Requests at once, so the process holds (and after a restart, reuses) many pooled connections."""
    async def run() -> list[tuple[str, int]]:
        async with httpx.AsyncClient(base_url=api, timeout=10, headers=tenant.headers) as http:
            sent = [http.post(f"/v1/projects/{tenant.project_id}/events", json={"event_type": "event",
                                                                               "event_name": "burst"})
                    for _ in range(size)]
            sent += [http.get(f"/v1/projects/{tenant.project_id}") for _ in range(size)]
            answers = await asyncio.gather(*sent)
        return [(response.request.method, response.status_code if response.status_code >= 300 else
                 200 if int(response.headers["x-ratelimit-remaining"]) < int(response.headers["x-ratelimit-limit"])
                 else 599)  # a budget not counted: the limiter failed open
                for response in answers]

    return asyncio.run(run())


def test_after_a_redis_restart_no_request_of_any_kind_fails_in_any_process(tmp_path):
    """Pooled connections to the Redis that went away are replaced before use: no request fails after the
    restart (a 503, a dropped hit, or a budget not counted), in either API process or the worker."""
    with Stack(tmp_path / "stack", apis=2, workers=1) as stack:
        suite = fault_suite.Suite(stack, outage=0)
        tenant = suite.tenant("after a restart")
        admin = stack.cli("keys", "create", "--project", tenant.project_id, "--scope", "keys:manage",
                          "--scope", "projects:read")
        for n, api in enumerate(stack.apis):  # every process holds pooled connections now
            answers = every_request(api.base, tenant, admin, n) + burst(api.base, tenant)
            assert [answer for answer in answers if answer[1] >= 300] == []
        assert stack.wait_drained(30)

        for n, restart in enumerate((stack.redis.stop, stack.redis.kill)):  # graceful, then kill -9
            restart()
            stack.redis.start()
            time.sleep(2)  # "later": the processes have been idle since

            failed = []
            for api_n, api in enumerate(stack.apis):
                failed += [(api.name, what, status) for what, status
                           in every_request(api.base, tenant, admin, 10 * (n + 1) + api_n) + burst(api.base, tenant)
                           if status >= 300]
            assert failed == [], restart.__name__
            assert stack.wait_drained(30), "the worker goes on reading the stream"
        hits = stack.stored(tenant.project_id, "path", "origin = 'collect'")
        assert set(hits) == {f"/r/{n}" for n in (0, 1, 10, 11, 20, 21)} and set(hits.values()) == {1}
        users = stack.stored(tenant.project_id, "user_id", "event_type = 'identify'")
        deadline = time.monotonic() + 30
        while users and time.monotonic() < deadline:  # every deletion asked for is carried out
            time.sleep(0.5)
            users = stack.stored(tenant.project_id, "user_id", "event_type = 'identify'")
        assert users == {}
        for api in stack.apis:
            assert api.metric("oa_collect_events_total", outcome="failed") == 0
