"""Server-side events: strict validation, 202 + queued, and the round trip into the pageviews query."""

from __future__ import annotations

import time

import pytest

from tests.helpers import assert_error, stored_rows, stream_length

SEED_EVENT = {
    "event_type": "conversion",
    "event_name": "purchase",
    "user_id": "sha256_hash_of_user_id",
    "url": "https://example.com/thanks",
    "properties": {"plan": "pro"},
    "revenue": 49.99,
    "currency": "USD",
    "timestamp": 1747000000000,
}


async def test_seed_event_round_trip(client, tenant, worker, stores):
    response = await client.post(f"/v1/projects/{tenant.id}/events", json=SEED_EVENT, headers=tenant.headers)
    assert response.status_code == 202
    body = response.json()
    assert body["queued"] is True and body["count"] == 1 and len(body["event_ids"]) == 1

    assert await worker.drain() == 1
    rows = await stored_rows(stores, tenant.id, "event_type, event_name, user_id, path, hostname, properties, revenue, currency, toUnixTimestamp64Milli(timestamp)")
    assert len(rows) == 1
    event_type, name, user, path, host, props, revenue, currency, ts = rows[0]
    assert (event_type, name, user, path, host) == ("conversion", "purchase", "sha256_hash_of_user_id", "/thanks", "example.com")
    assert props == {"plan": "pro"} and str(revenue) == "49.9900" and currency == "USD" and ts == 1747000000000

    query = await client.get(
        f"/v1/projects/{tenant.id}/pageviews",
        params={"from": "2025-05-01", "to": "2025-05-12", "group_by": "path"},
        headers=tenant.headers,
    )
    assert query.status_code == 200, query.text
    result = query.json()
    assert result["totals"] == {"pageviews": 0, "visitors": 1, "events": 1}  # the user is a visitor
    assert result["results"] == [{"path": "/thanks", "pageviews": 0, "visitors": 1, "events": 1}]


async def test_pageviews_by_path_and_day_with_known_answers(client, tenant, worker):
    day_ms = 24 * 3600 * 1000
    now = int(time.time() * 1000)
    base = now - now % day_ms - 3 * day_ms  # midnight UTC three days ago
    events = (
        [{"event_type": "pageview", "url": "https://a.example/", "user_id": "u1", "timestamp": base + 1000}] * 3
        + [{"event_type": "pageview", "url": "https://a.example/pricing", "timestamp": base + day_ms + 5}] * 2
        + [{"event_type": "event", "event_name": "signup", "url": "https://a.example/pricing", "timestamp": base + day_ms}]
    )
    response = await client.post(f"/v1/projects/{tenant.id}/events", json=events, headers=tenant.headers)
    assert response.status_code == 202 and response.json()["count"] == 6
    await worker.drain()

    from datetime import UTC, datetime, timedelta

    first = datetime.fromtimestamp(base / 1000, UTC).date()
    params = {"from": first.isoformat(), "to": (first + timedelta(days=2)).isoformat()}
    by_path = (await client.get(f"/v1/projects/{tenant.id}/pageviews", params={**params, "group_by": "path"}, headers=tenant.headers)).json()
    assert by_path["totals"]["pageviews"] == 5 and by_path["totals"]["events"] == 6
    assert [(r["path"], r["pageviews"], r["visitors"], r["events"]) for r in by_path["results"]] == [
        ("/", 3, 1, 3),  # one user_id: one visitor
        ("/pricing", 2, 0, 3),  # no user_id on server-side events: no visitor to count
    ]

    by_day = (await client.get(f"/v1/projects/{tenant.id}/pageviews", params={**params, "group_by": "day"}, headers=tenant.headers)).json()
    assert [(r["day"], r["pageviews"], r["events"]) for r in by_day["results"]] == [
        (first.isoformat(), 3, 3),
        ((first + timedelta(days=1)).isoformat(), 2, 3),
        ((first + timedelta(days=2)).isoformat(), 0, 0),
    ]


BAD_EVENTS = {
    "conversion without event_name": ({"event_type": "conversion", "revenue": 1, "currency": "USD"}, "event_name"),
    "51 properties": ({"event_type": "event", "event_name": "x", "properties": {f"k{i}": i for i in range(51)}}, "at most 50"),
    "nested property value": ({"event_type": "event", "event_name": "x", "properties": {"a": {"b": 1}}}, "no objects"),
    "array property value": ({"event_type": "event", "event_name": "x", "properties": {"a": [1]}}, "no objects"),
    "bad currency": ({"event_type": "conversion", "event_name": "x", "revenue": 5, "currency": "usd"}, "ISO 4217"),
    "unknown currency": ({"event_type": "conversion", "event_name": "x", "revenue": 5, "currency": "XYZ"}, "ISO 4217"),
    "timestamp not a number": ({"event_type": "pageview", "timestamp": "yesterday"}, "timestamp"),
    "timestamp as numeric string": ({"event_type": "pageview", "timestamp": "1747000000000"}, "timestamp"),
    "unknown event_type": ({"event_type": "click"}, "event_type"),
    "missing event_type": ({"event_name": "x"}, "event_type"),
    "relative url": ({"event_type": "pageview", "url": "/pricing"}, "url"),
    "unknown field": ({"event_type": "pageview", "colour": "red"}, "colour"),
    "revenue without currency": ({"event_type": "conversion", "event_name": "x", "revenue": 5}, "currency"),
    "timestamp beyond retention": ({"event_type": "pageview", "timestamp": 946684800000}, "retention"),
    "timestamp far in the future": ({"event_type": "pageview", "timestamp": 10**15}, "future"),
}


@pytest.mark.parametrize("case", BAD_EVENTS, ids=list(BAD_EVENTS))
async def test_bad_server_events_are_400_and_queue_nothing(client, tenant, stores, case):
    payload, fragment = BAD_EVENTS[case]
    response = await client.post(f"/v1/projects/{tenant.id}/events", json=payload, headers=tenant.headers)
    body = assert_error(response, 400)
    assert fragment in body["message"], body
    assert await stream_length(stores) == 0


async def test_one_bad_event_rejects_the_whole_batch(client, tenant, stores):
    batch = [{"event_type": "pageview"}, {"event_type": "event"}]
    body = assert_error(await client.post(f"/v1/projects/{tenant.id}/events", json=batch, headers=tenant.headers), 400)
    assert body["message"] == "events[1]: event_name is required for event_type 'event'"
    assert await stream_length(stores) == 0


async def test_an_integer_past_64_bits_is_refused_not_rounded_but_a_float_is_kept(client, tenant, worker, stores):
    """A JSON parser that reads 100000000000000000000001 as 1e+23 would store another number without a
    word: the integer is refused (send it as a string), a float literal of that size is kept as one."""
    for literal in (b"100000000000000000000001", b"-100000000000000000000001", b"18446744073709551616"):
        body = b'{"event_type": "event", "event_name": "x", "properties": {"a": ' + literal + b"}}"
        response = await client.post(f"/v1/projects/{tenant.id}/events", content=body, headers=tenant.headers)
        assert assert_error(response, 400)["message"] == (
            "properties: property 'a' is outside the 64-bit integer range; send it as a string")
    body = b'[{"event_type": "event", "event_name": "x", "properties": {"a": 1e23, "b": 9007199254740993}}]'
    assert (await client.post(f"/v1/projects/{tenant.id}/events", content=body, headers=tenant.headers)).status_code == 202
    await worker.drain()
    assert await stored_rows(stores, tenant.id, "properties['a'], properties['b']") == [("1e+23", "9007199254740993")]


async def test_error_names_the_field(client, tenant):
    response = await client.post(f"/v1/projects/{tenant.id}/events", json={"event_type": "event", "event_name": ""}, headers=tenant.headers)
    assert assert_error(response, 400, "validation_error")["message"] == "event_name: String should have at least 1 character"


async def test_body_is_not_read_before_the_key_is_checked(client, tenant, stores):
    huge = b"[" + b",".join([b'{"event_type":"pageview"}'] * 300_000) + b"]"  # ~7.5 MB
    headers = {"Content-Type": "application/json"}
    wrong = await client.post(f"/v1/projects/{tenant.id}/events", content=huge, headers={**headers, "Authorization": "Bearer oa_live_x"})
    assert_error(wrong, 401)
    right = await client.post(f"/v1/projects/{tenant.id}/events", content=huge, headers={**headers, **tenant.headers})
    assert_error(right, 413, "payload_too_large")
    assert await stream_length(stores) == 0


async def test_batch_limit_follows_the_setting(client, tenant, stores):
    stores.settings.events_max_batch = 3
    batch = [{"event_type": "pageview"}] * 4
    body = assert_error(await client.post(f"/v1/projects/{tenant.id}/events", json=batch, headers=tenant.headers), 400)
    assert "1 to 3" in body["message"]


@pytest.mark.parametrize("body", [b"{not json", b"", b"[]", b"42", b'["x"]'])
async def test_malformed_bodies_are_400(client, tenant, stores, body):
    headers = {**tenant.headers, "Content-Type": "application/json"}
    assert_error(await client.post(f"/v1/projects/{tenant.id}/events", content=body, headers=headers), 400)
    assert await stream_length(stores) == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer oa_live_wrong"},
     {"Authorization": "Bearer oa_live_" + "x" * 40}],
    ids=["missing", "empty", "basic", "malformed", "unknown"],
)
async def test_without_a_valid_key_is_401(client, tenant, headers):
    for method, path in [("get", "/v1/projects"), ("get", f"/v1/projects/{tenant.id}"), ("post", f"/v1/projects/{tenant.id}/events")]:
        kwargs = {"json": {"event_type": "pageview"}} if method == "post" else {}
        assert_error(await getattr(client, method)(path, headers=headers, **kwargs), 401, "unauthorized")


async def test_another_tenants_project_is_404(client, tenant, make_tenant):
    other = make_tenant()
    for path in (f"/v1/projects/{other.id}", f"/v1/projects/{other.id}/pageviews?from=2026-01-01&to=2026-01-02"):
        assert_error(await client.get(path, headers=tenant.headers), 404, "project_not_found")
    response = await client.post(f"/v1/projects/{other.id}/events", json={"event_type": "pageview"}, headers=tenant.headers)
    assert_error(response, 404, "project_not_found")
    # ...and the same answer as for a project that does not exist at all.
    missing = await client.get("/v1/projects/prj_0000000000000000", headers=tenant.headers)
    assert missing.json() == (await client.get(f"/v1/projects/{other.id}", headers=tenant.headers)).json()


async def test_missing_scope_is_403(client, make_tenant, stores):
    reader = make_tenant(scopes=["stats:read"])
    response = await client.post(f"/v1/projects/{reader.id}/events", json={"event_type": "pageview"}, headers=reader.headers)
    assert_error(response, 403, "insufficient_scope")
    assert await stream_length(stores) == 0
