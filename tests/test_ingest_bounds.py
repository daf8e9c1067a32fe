"""The ingest queue's bound, what every accepted user id can be asked of, and input that must not be stored.

Run on both store sets; the Redis-only parts (memory share, confirmation) are in test_durability.py.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import httpx
import pytest

from openanalytics.app import create_app
from tests.conftest import BROWSER, Tenant
from tests.helpers import CollectTransport, assert_error, counted, stored_rows, stream_length


def bounded(stores, **settings):
    """The stores with some settings changed."""
    return dataclasses.replace(stores, settings=stores.settings.model_copy(update=settings))


@pytest.fixture
async def small_queue(stores):
    """A client of an app whose ingest queue holds at most 5 events."""
    app = create_app(bounded(stores, ingest_max_queued=5))
    transport = CollectTransport(app=app, client=("203.0.113.7", 51000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                 headers={"User-Agent": BROWSER}) as http:
        yield http


def events(n: int, name: str = "x") -> list[dict]:
    return [{"event_type": "event", "event_name": name} for _ in range(n)]


async def test_server_side_events_past_the_queue_bound_get_503_and_nothing_of_them_is_queued(
        small_queue, stores, worker):
    tenant = Tenant(stores)
    url = f"/v1/projects/{tenant.id}/events"
    first = await small_queue.post(url, json=events(3, "first"), headers=tenant.headers)
    assert first.status_code == 202
    refused = await small_queue.post(url, json=events(3, "refused"), headers=tenant.headers)
    body = assert_error(refused, 503, "queue_full")
    assert refused.headers["retry-after"] == "30" and "nothing was queued" in body["message"]
    assert await stream_length(stores) == 3, "all or nothing: none of the refused batch"
    assert (await small_queue.post(url, json=events(2, "fits"), headers=tenant.headers)).status_code == 202
    assert_error(await small_queue.post(url, json=events(1, "refused"), headers=tenant.headers), 503, "queue_full")
    await worker.drain()
    assert (await small_queue.post(url, json=events(5, "after"), headers=tenant.headers)).status_code == 202
    await worker.drain()
    names = sorted(name for (name,) in await stored_rows(stores, tenant.id, "event_name"))
    assert names == ["after"] * 5 + ["first"] * 3 + ["fits"] * 2


async def test_collect_hits_past_the_queue_bound_are_dropped_as_overloaded_and_counted(
        small_queue, stores, worker, monkeypatch):
    outcomes = counted(monkeypatch)
    tenant = Tenant(stores)
    hits = [{"site_id": tenant.site_id, "url": f"https://example.com/p{n}"} for n in range(8)]
    assert (await small_queue.post("/collect", json=hits)).status_code == 204
    assert outcomes == {"accepted": 5, "overloaded": 3}
    assert await stream_length(stores) == 5
    verify = (await small_queue.get(f"/v1/projects/{tenant.id}/verify", headers=tenant.headers)).json()
    assert verify["ignored_today"] == {"overloaded": 3}
    assert [a["outcome"] for a in verify["arrivals"]].count("overloaded") == 3
    await worker.drain()
    assert len(await stored_rows(stores, tenant.id, "event_id")) == 5


USER_IDS = [
    "sha256/abc==", "a+b=c", "100%", "%2F", "with space", " leading and trailing ", "ünïcødé 用户 🙂",
    "/leading", "trailing/", "a//b", "a/../b", "..", ".", "?q=1#frag", "semi;colon,comma",
    "x" * 256, "é" * 256,
]


def segment(user_id: str) -> str:
    """A user id as one path segment, as the API description says: percent-encoded, and a "." or ".."
    with its dots encoded too (URL normalisation, as in httpx and browsers, removes such segments)."""
    encoded = quote(user_id, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


async def test_every_user_id_ingest_accepts_can_be_exported_and_deleted(client, stores, worker, make_tenant):
    """Base64 hashes carry / + =; any id ingest stores must be reachable by the privacy routes, each
    percent-encoded as one path segment, as the API description says."""
    tenant = make_tenant(scopes=["events:write", "privacy:export", "privacy:delete"])
    sent = [{"event_type": "identify", "user_id": user} for user in USER_IDS]
    sent.append({"event_type": "identify", "user_id": "bystander"})
    assert (await client.post(f"/v1/projects/{tenant.id}/events", json=sent, headers=tenant.headers)).status_code == 202
    await worker.drain()
    assert len(await stored_rows(stores, tenant.id, "event_id")) == len(USER_IDS) + 1
    polls = []
    for user in USER_IDS:
        path = f"/v1/projects/{tenant.id}/privacy/user/{segment(user)}"
        export = await client.get(path, headers=tenant.headers)
        assert export.status_code == 200, (user, export.text)
        assert export.json()["user_id"] == user and export.json()["event_count"] == 1, user
        deletion = await client.delete(path, headers=tenant.headers)
        assert deletion.status_code == 202, (user, deletion.text)
        polls.append(deletion.json()["poll_url"])
    assert len(await worker.forget()) == len(USER_IDS)
    for poll in polls:
        status = (await client.get(poll, headers=tenant.headers)).json()
        assert status["status"] == "completed" and status["events_deleted"] == 1, status
    assert await stored_rows(stores, tenant.id, "user_id") == [("bystander",)]


async def test_a_user_id_longer_than_ingest_accepts_is_refused_by_both(client, make_tenant):
    tenant = make_tenant(scopes=["events:write", "privacy:export", "privacy:delete"])
    too_long = "x" * 257
    body = {"event_type": "identify", "user_id": too_long}
    assert_error(await client.post(f"/v1/projects/{tenant.id}/events", json=body, headers=tenant.headers), 400)
    path = f"/v1/projects/{tenant.id}/privacy/user/{too_long}"
    assert_error(await client.get(path, headers=tenant.headers), 400)
    assert_error(await client.delete(path, headers=tenant.headers), 400)


@pytest.mark.parametrize("event", [
    {"event_type": "pageview", "url": "https://example.com/a\x00b"},
    {"event_type": "pageview", "url": "https://example.com/a\nb"},
    {"event_type": "event", "event_name": "sign\x00up"},
    {"event_type": "identify", "user_id": "tab\there"},
    {"event_type": "identify", "user_id": "line\nbreak"},
    {"event_type": "event", "event_name": "x", "properties": {"plan\x00": "pro"}},
    {"event_type": "event", "event_name": "x", "properties": {"plan": "p\x00ro"}},
])
async def test_a_nul_or_control_character_where_it_cannot_belong_is_a_clear_400(client, tenant, event):
    response = await client.post(f"/v1/projects/{tenant.id}/events", json=event, headers=tenant.headers)
    assert assert_error(response, 400, "validation_error")


async def test_collect_drops_a_url_or_referrer_with_a_nul_as_invalid(client, stores, worker, tenant, monkeypatch):
    outcomes = counted(monkeypatch)
    hits = [
        {"site_id": tenant.site_id, "url": "https://example.com/a\x00b"},
        {"site_id": tenant.site_id, "url": "https://example.com/ok", "referrer": "https://ref.example/\x00"},
        {"site_id": tenant.site_id, "url": "https://example.com/a%00b"},  # as a browser sends it: kept
    ]
    for hit in hits:
        assert (await client.post("/collect", json=hit)).status_code == 204
    assert outcomes == {"invalid": 2, "accepted": 1}
    await worker.drain()
    assert await stored_rows(stores, tenant.id, "path") == [("/a%00b",)]


async def test_every_answer_of_the_app_says_nosniff(client, tenant):
    for method, path, headers in (("GET", "/v1/projects", tenant.headers), ("GET", "/v1/projects", {}),
                                  ("GET", "/readyz", {}), ("GET", "/oa.js", {}), ("GET", "/openapi.json", {}),
                                  ("GET", "/nowhere", {}),
                                  ("GET", f"/v1/projects/{tenant.id}/privacy/user/x", tenant.headers)):
        response = await client.request(method, path, headers=headers)
        assert response.headers.get("x-content-type-options") == "nosniff", (path, response.status_code)


async def test_an_idempotency_key_sent_again_gets_the_first_answer_and_queues_nothing_twice(client, tenant, stores,
                                                                                            worker):
    url = f"/v1/projects/{tenant.id}/events"
    headers = {**tenant.headers, "Idempotency-Key": "order-1042 (retry-safe)"}
    body = [{"event_type": "conversion", "event_name": "purchase", "revenue": 49.99, "currency": "USD"},
            {"event_type": "event", "event_name": "signup", "properties": {"b": 1, "a": "x"}}]
    first = await client.post(url, json=body, headers=headers)
    assert first.status_code == 202 and first.headers["idempotent-replayed"] == "false"
    # The same events written otherwise (key order, spacing) are the same request.
    again = await client.post(url, content=b'[{"currency":"USD","revenue":49.99,"event_name":"purchase",'
                              b'"event_type":"conversion"},{"properties":{"a":"x","b":1},"event_type":"event",'
                              b'"event_name":"signup"}]', headers={**headers, "Content-Type": "application/json"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json(), "the same event ids"
    assert await stream_length(stores) == 2
    other = await client.post(url, json=body[:1], headers=headers)
    assert assert_error(other, 409, "idempotency_key_reused")
    assert (await client.post(url, json=body, headers={**tenant.headers, "Idempotency-Key": "order-1043"})
            ).json()["event_ids"] != first.json()["event_ids"]
    await worker.drain()
    stored = sorted(event_id for (event_id,) in await stored_rows(stores, tenant.id, "toString(event_id)"))
    assert len(stored) == 4 and set(first.json()["event_ids"]) <= set(stored)
    for bad in ("", "x" * 256, "ключ".encode()):
        response = await client.post(url, json=body, headers={**tenant.headers, "Idempotency-Key": bad})
        assert_error(response, 400)


async def test_events_whose_answer_was_lost_are_sent_again_and_queued_once(client, tenant, stores, monkeypatch):
    """Redis took the append, then the connection broke before its answer (a Redis restart): the append is
    sent again under the request's own key, answered from the first, and the client gets a plain 202."""
    from redis.asyncio.client import Pipeline
    from redis.exceptions import ConnectionError as RedisConnectionError

    original, calls = Pipeline.execute, []

    async def answer_lost_once(pipe, raise_on_error=True):
        appending = any(str(arg).startswith("oa:append:") for args, _ in pipe.command_stack for arg in args)
        replies = await original(pipe, raise_on_error=raise_on_error)
        if not appending:  # the rate limiter's, say
            return replies
        calls.append(replies)
        if len(calls) == 1:
            raise RedisConnectionError("Connection closed by server.")
        return replies

    monkeypatch.setattr(Pipeline, "execute", answer_lost_once)
    response = await client.post(f"/v1/projects/{tenant.id}/events", json=events(3), headers=tenant.headers)
    assert response.status_code == 202 and response.headers["idempotent-replayed"] == "false"
    assert len(calls) == 2 and calls[0][0] in (b"queued", "queued") and calls[1][0] not in (b"queued", "queued")
    assert await stream_length(stores) == 3
