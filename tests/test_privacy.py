"""Data-subject export and deletion: caps, sanitization, what deletion reaches, crashes, scopes."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from openanalytics.privacy.models import PrivacyRequest
from tests.helpers import assert_error, server_store_urls, store_events, stored_rows

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(UTC)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def event(user: str, moment: datetime, **fields) -> dict:
    return {"event_id": str(uuid.uuid4()), "event_type": "event", "event_name": "click", "timestamp": ms(moment),
            "received_at": ms(moment), "origin": "server", "user_id": user, "visitor_id": 7 if user == "u1" else 8,
            **fields}


async def store(stores, tenant, events: list[dict]) -> None:
    await store_events(stores, tenant.id, events)


def only(stores, request_id: str) -> None:
    """Earlier tests' requests share the control plane: out of the way, so workers claim this one."""
    with stores.db.session() as session:
        for other in session.query(PrivacyRequest).filter(PrivacyRequest.id != request_id,
                                                          PrivacyRequest.status.in_(("queued", "running"))):
            other.status = "failed"


async def tag(stores, project_id: str, user_id: str) -> str:
    """How the tombstones name a user (a keyed hash, never the id itself)."""
    from openanalytics.privacy.tombstones import tombstone_key, user_tag

    return user_tag(await tombstone_key(stores.db), project_id, user_id)


def privacy_tenant(make_tenant):
    return make_tenant(scopes=["privacy:export", "privacy:delete", "events:write", "stats:read"])


async def test_export_is_sanitized(client, stores, make_tenant):
    tenant = privacy_tenant(make_tenant)
    await store(stores, tenant, [
        event("u1", NOW - timedelta(hours=1), url="https://a.example/account?email=ann@example.com", path="/account",
              hostname="a.example", properties={"email": "ann@example.com", "plan": "gold-tier-x"}, country="NL",
              browser="Firefox", revenue="12.5", currency="EUR"),
        event("u2", NOW - timedelta(hours=2), properties={"secret": "bob"}),
    ])
    response = await client.get(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["event_count"] == 1 and body["truncated"] is False and body["user_id"] == "u1"
    (exported,) = body["events"]
    assert exported["property_keys"] == ["email", "plan"] and exported["path"] == "/account"
    assert exported["revenue"] == "12.5000" and exported["country"] == "NL" and exported["browser"] == "Firefox"
    text = response.text
    for secret in ("ann@example.com", "gold-tier-x", "bob", "email=", "u2"):
        assert secret not in text.replace('"email"', ""), secret
    assert not {"ip", "user_agent", "url", "properties", "visitor_id", "session_id"} & set(exported)


async def test_export_caps_at_10000_events_and_90_days(client, stores, make_tenant):
    tenant = privacy_tenant(make_tenant)
    recent = [event("u1", NOW - timedelta(minutes=n)) for n in range(10_001)]
    await store(stores, tenant, recent + [event("u1", NOW - timedelta(days=91))])
    body = (await client.get(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    assert body["event_count"] == 10_000 and len(body["events"]) == 10_000 and body["truncated"] is True
    assert body["events"][0]["timestamp"] > body["events"][-1]["timestamp"]  # newest first
    await store(stores, tenant, [event("u3", NOW - timedelta(days=91)), event("u3", NOW - timedelta(days=1))])
    only_old_cut = (await client.get(f"/v1/projects/{tenant.id}/privacy/user/u3", headers=tenant.headers)).json()
    assert only_old_cut["event_count"] == 1 and only_old_cut["truncated"] is True
    nobody = (await client.get(f"/v1/projects/{tenant.id}/privacy/user/nobody", headers=tenant.headers)).json()
    assert nobody["event_count"] == 0 and nobody["truncated"] is False


async def test_deletion_reaches_stored_and_queued_events_and_leaves_others(client, stores, worker, make_tenant):
    tenant = privacy_tenant(make_tenant)
    await store(stores, tenant, [event("u1", NOW - timedelta(hours=n)) for n in range(5)]
                + [event("u2", NOW - timedelta(hours=n)) for n in range(3)]
                + [event("u1", NOW + timedelta(hours=1))])  # received after the request: theirs to keep
    queued = [{"event_type": "event", "event_name": "late", "user_id": user} for user in ("u1", "u1", "u2")]
    sent = await client.post(f"/v1/projects/{tenant.id}/events", json=queued, headers=tenant.headers)
    assert sent.status_code == 202  # on the stream, not stored yet
    # u1's visitor's paths, session and source; its visit went on past midnight, named by visitor 70
    await stores.redis.hset(f"oa:vp:{tenant.id}:7", mapping={
        "a1b2": "1:1", "*": "1", "s": "1:1:7:3:0", "a": 'Google\n,"referrer":"https://www.google.com/?q=u1"',
        "n": "70"})
    await stores.redis.hset(f"oa:vp:{tenant.id}:70", mapping={"s": "1:1:7:2:0"})
    await stores.redis.hset(f"oa:vp:{tenant.id}:80", mapping={"*": "1", "s": "2:1:8:1:1"})  # someone else's
    # as the release before kept sessions and sources
    await stores.redis.set(f"oa:sess:{tenant.id}:7", "1:1:7")
    await stores.redis.set(f"oa:acq:{tenant.id}:7", 'Google\n,"referrer":"https://www.google.com/?q=u1"')
    await stores.redis.set(f"oa:sess:{tenant.id}:71", "1:1:7")
    await stores.redis.set(f"oa:sess:{tenant.id}:80", "2:1:8")
    await stores.redis.zadd(f"oa:rt:{tenant.id}:visitors", {"7": ms(NOW), "8": ms(NOW)})

    first = await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)
    assert first.status_code == 202, first.text
    request = first.json()
    assert request["status"] == "queued" and request["poll_url"] == first.headers["location"]
    assert request["poll_url"] == f"/v1/projects/{tenant.id}/privacy/requests/{request['request_id']}"
    again = await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)
    assert again.status_code == 202 and again.json()["request_id"] == request["request_id"]
    assert len(await stored_rows(stores, tenant.id, "event_id")) == 9  # nothing deleted inline
    only(stores, request["request_id"])

    assert await worker.forget() == [request["request_id"]]
    status = (await client.get(request["poll_url"], headers=tenant.headers)).json()
    assert status["status"] == "completed" and status["events_deleted"] == 5 and status["queued_events_deleted"] == 2
    assert status["started_at"] and status["completed_at"] and status["error"] is None
    await worker.drain()
    users = sorted(user for (user,) in await stored_rows(stores, tenant.id, "user_id"))
    assert users == ["u1"] + ["u2"] * 4  # u1's event after the request stays
    assert not await stores.redis.exists(f"oa:vp:{tenant.id}:7"), "its session and where it came from go too"
    assert not await stores.redis.exists(f"oa:vp:{tenant.id}:70"), "the next day's visitor names it no more"
    assert await stores.redis.hget(f"oa:vp:{tenant.id}:80", "s") == b"2:1:8:1:1"
    assert not await stores.redis.exists(*[f"oa:{kind}:{tenant.id}:{v}" for kind, v in
                                          (("sess", 7), ("acq", 7), ("sess", 71))]), "the release before's"
    assert await stores.redis.get(f"oa:sess:{tenant.id}:80") == b"2:1:8"
    assert await stores.redis.zrange(f"oa:rt:{tenant.id}:visitors", 0, -1) == [b"8"]
    with stores.db.session() as session:
        row = session.get(PrivacyRequest, request["request_id"])
        assert row.user_id is None and len(row.user_hash) == 64  # the audit trail keeps no user id
    third = await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)
    assert third.json()["request_id"] != request["request_id"]  # a new request once the last one is done


@pytest.mark.parametrize("per_statement", [1000, 1])
async def test_deletion_takes_the_whole_browser_sessions_the_user_is_in(client, stores, worker, make_tenant, monkeypatch,
                                                                        per_statement):
    """A visit that identified u1 halfway goes whole: its anonymous start, stored or still queued, and
    what came after the request; also a visit whose only event naming u1 was still queued (which
    the flusher may drop once the request began). Someone else's session, and u1's server events
    after the request, stay. (per_statement: session ids per ClickHouse statement.)"""
    import orjson

    from openanalytics.ingest.buffer import FIELD
    from openanalytics.privacy import deletion

    monkeypatch.setattr(deletion, "SESSIONS_PER_STATEMENT", per_statement)
    now = datetime.now(UTC)
    tenant = privacy_tenant(make_tenant)
    visit = {"origin": "collect", "visitor_id": 7, "session_id": 500, "event_type": "pageview"}
    queued_visit = {**visit, "session_id": 501}
    other = {"origin": "collect", "visitor_id": 8, "session_id": 600, "event_type": "pageview"}
    await store(stores, tenant, [
        event("", now - timedelta(hours=3), **visit), event("u1", now - timedelta(hours=2), **visit),
        event("", now + timedelta(minutes=1), **visit),  # the visit went on after the request
        event("", now - timedelta(hours=1), **queued_visit),
        event("", now - timedelta(hours=3), **other), event("u2", now - timedelta(hours=2), **other),
        event("u1", now + timedelta(hours=1)),  # server-side, after the request: theirs to keep
    ])
    queued = [event("", now - timedelta(minutes=5), **visit), event("u1", now - timedelta(minutes=5), **queued_visit),
              event("", now - timedelta(minutes=5), **other)]
    for row in queued:
        await stores.redis.xadd(stores.settings.stream_key, {FIELD: orjson.dumps({"project_id": tenant.id, **row})})
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])
    assert await worker.forget() == [request["request_id"]]
    status = (await client.get(request["poll_url"], headers=tenant.headers)).json()
    assert status["status"] == "completed" and status["events_deleted"] == 4 and status["queued_events_deleted"] == 2
    await worker.drain()
    left = sorted(await stored_rows(stores, tenant.id, "session_id, user_id"))
    assert left == [(0, "u1"), (600, ""), (600, ""), (600, "u2")]


async def test_the_other_visits_of_their_visitors_lose_their_ages(client, stores, worker, make_tenant):
    """u1's visit goes; the same visitor's other visits, stored and still queued, stay, but their ages
    may count from a deleted event: they are marked not known (0), so queries over them group events
    (query/path_sums.py, query/visitor_sums.py). Someone else's visit keeps its ages, and the visitor's
    kept paths are gone from Redis, so its next events count from none."""
    import orjson

    from openanalytics.ingest.buffer import FIELD

    now = datetime.now(UTC)
    tenant = privacy_tenant(make_tenant)
    aged = {"origin": "collect", "event_type": "pageview", "path_visitor_age": 3, "path_session_age": 65535,
            "visitor_age": 2}
    await store(stores, tenant, [
        event("u1", now - timedelta(hours=3), visitor_id=7, session_id=500, **aged),
        event("", now - timedelta(hours=2), visitor_id=7, session_id=501, **aged),
        event("", now - timedelta(hours=2), visitor_id=8, session_id=600, **aged),
    ])
    queued = event("", now - timedelta(minutes=5), visitor_id=7, session_id=502, **aged)
    await stores.redis.xadd(stores.settings.stream_key, {FIELD: orjson.dumps({"project_id": tenant.id, **queued})})
    await stores.redis.hset(f"oa:vp:{tenant.id}:7", "a1b2", "100:500")
    await stores.redis.hset(f"oa:vp:{tenant.id}:8", "a1b2", "100:600")
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])
    assert await worker.forget() == [request["request_id"]]
    await worker.drain()
    left = sorted(await stored_rows(stores, tenant.id, "session_id, path_visitor_age, path_session_age, visitor_age"))
    assert left == [(501, 0, 0, 0), (502, 0, 0, 0), (600, 3, 65535, 2)]
    assert not await stores.redis.exists(f"oa:vp:{tenant.id}:7")
    assert await stores.redis.exists(f"oa:vp:{tenant.id}:8")


async def test_a_session_is_found_though_the_flusher_dropped_the_event_naming_the_user(client, stores, worker,
                                                                                     make_tenant):
    """As after an attempt that set the tombstone and died: the flusher drops u1's queued event and
    notes its session, so the next attempt still takes the anonymous rest of that visit. Another visit
    of the same visitor in that batch is stored with its ages marked not known (query/path_sums.py)."""
    import orjson

    from openanalytics.ingest.buffer import FIELD
    from openanalytics.privacy.tombstones import forget_key

    now = datetime.now(UTC)
    tenant = privacy_tenant(make_tenant)
    visit = {"origin": "collect", "visitor_id": 7, "session_id": 501, "event_type": "pageview"}
    await store(stores, tenant, [event("", now - timedelta(hours=2), **visit),
                                 event("", now - timedelta(hours=2), origin="collect", visitor_id=8, session_id=600)])
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])
    await stores.redis.hset(forget_key(tenant.id), await tag(stores, tenant.id, "u1"), ms(now) + 60_000)
    aged = {"visitor_age": 5, "path_visitor_age": 5, "path_session_age": 5}
    for row in (event("u1", now - timedelta(minutes=5), **visit), event("", now - timedelta(minutes=4), **visit),
                event("", now - timedelta(minutes=3), **{**visit, "session_id": 502}, **aged)):
        await stores.redis.xadd(stores.settings.stream_key, {FIELD: orjson.dumps({"project_id": tenant.id, **row})})
    await worker.drain()
    assert sorted(await stored_rows(stores, tenant.id, "session_id, user_id, visitor_age, path_visitor_age")) == [
        (501, "", 0, 0), (501, "", 0, 0), (502, "", 0, 0), (600, "", 0, 0)]
    assert await worker.forget() == [request["request_id"]]
    status = (await client.get(request["poll_url"], headers=tenant.headers)).json()
    assert status["status"] == "completed" and status["events_deleted"] == 2
    assert sorted(await stored_rows(stores, tenant.id, "session_id")) == [(502,), (600,)]
    await stores.redis.xadd(stores.settings.stream_key, {FIELD: orjson.dumps(
        {"project_id": tenant.id, **event("", now + timedelta(minutes=1), **visit)})})
    await worker.drain()
    assert sorted(await stored_rows(stores, tenant.id, "session_id")) == [(502,), (600,)], \
        "a late event of the visit is dropped"


async def test_a_deletion_while_events_of_the_visit_keep_arriving_and_being_stored(client, stores, worker, make_tenant):
    """Events of u1's visit (already in flight when the visit ended) and of someone else's keep coming
    and a flusher keeps storing while the deletion runs: none of the visit's is left, all the others are."""
    import asyncio

    import orjson

    from openanalytics.ingest.buffer import FIELD

    now = datetime.now(UTC)
    tenant = privacy_tenant(make_tenant)
    visit = {"origin": "collect", "visitor_id": 7, "session_id": 500, "event_type": "pageview"}
    other = {"origin": "collect", "visitor_id": 8, "session_id": 600, "event_type": "pageview"}
    await store(stores, tenant, [event("u1", now - timedelta(minutes=10), **visit)])
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])
    sending = True

    async def send() -> None:
        nonlocal sending
        for n in range(20):
            for fields in (visit, other):
                row = {"project_id": tenant.id, **event("", now + timedelta(seconds=n), **fields)}
                await stores.redis.xadd(stores.settings.stream_key, {FIELD: orjson.dumps(row)})
            await asyncio.sleep(0.01)
        sending = False

    async def flush() -> None:
        while sending:
            await worker.drain()
            await asyncio.sleep(0)

    done, _, _ = await asyncio.gather(worker.forget(), send(), flush())
    assert done == [request["request_id"]]
    await worker.drain()
    assert (await client.get(request["poll_url"], headers=tenant.headers)).json()["status"] == "completed"
    left = [session for (session,) in await stored_rows(stores, tenant.id, "session_id")]
    assert left.count(500) == 0 and left.count(600) == 20


async def test_tombstones_older_than_a_day_are_pruned_by_the_next_deletion(client, stores, worker, make_tenant):
    from openanalytics.privacy.tombstones import forget_key, forget_sessions_key, forgotten, tombstone_key

    key = await tombstone_key(stores.db)
    tenant = privacy_tenant(make_tenant)
    day_ago = ms(datetime.now(UTC) - timedelta(hours=25))
    await stores.redis.hset(forget_key(tenant.id), mapping={"old": day_ago, "recent": ms(datetime.now(UTC))})
    await stores.redis.hset(forget_sessions_key(tenant.id), mapping={
        "41": f"{day_ago}:4:old", "42": f"{ms(datetime.now(UTC))}:4:recent:with:colons", "43": "another form"})
    assert 43 in (await forgotten(stores.redis, key, tenant.id)).sessions, "read, not a stop for the flusher"
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])
    assert await worker.forget() == [request["request_id"]]
    left = await forgotten(stores.redis, key, tenant.id)
    assert set(left.users) == {"recent", await tag(stores, tenant.id, "u1")}
    assert left.sessions == {42: ("recent:with:colons", 4)}


async def test_a_deletion_waits_for_the_batches_workers_hold_until_stored(stores, worker, monkeypatch):
    """Entries a worker read but has not acknowledged yet (ids out of text order among them) are waited
    for; ones read later are not; a batch held too long fails the attempt, to be retried."""
    import asyncio

    from openanalytics.privacy import deletion
    from openanalytics.worker.flush import GROUP

    stream = stores.settings.stream_key
    await worker.flusher.ensure_group()
    for n in (2, 12):  # "...-12" sorts before "...-2" as text
        await stores.redis.xadd(stream, {"e": b"{}"}, id=f"1700000000000-{n}")
    held = await stores.redis.xreadgroup(GROUP, "slow-worker", {stream: ">"})
    ids = [entry_id for entry_id, _ in held[0][1]]

    stored = []

    async def store_later() -> None:
        await asyncio.sleep(0.2)
        await stores.redis.xadd(stream, {"e": b"{}"}, id="1700000000001-0")  # read after: not waited for
        await stores.redis.xreadgroup(GROUP, "other-worker", {stream: ">"})
        await asyncio.sleep(0.3)
        await stores.redis.xack(stream, GROUP, *ids)
        stored.append(True)

    async def wait() -> bool:
        await worker.deleter._read_batches_stored()
        return bool(stored)

    waited, _ = await asyncio.gather(wait(), store_later())
    assert waited, "returned only once the held batch was stored"
    monkeypatch.setattr(deletion, "IN_FLIGHT_SECONDS", 0.3)  # the entry read after is held for good
    with pytest.raises(deletion.DeletionFailed, match="batches_in_flight"):
        await worker.deleter._read_batches_stored()


async def test_two_workers_deleting_two_users_of_one_shared_visit_at_once(client, stores, make_tenant):
    """u1 and u2 both identified themselves in visit 700 (a shared device); two workers carry out their
    two requests at the same time. Both complete, and of the visits only u3's is left."""
    import asyncio

    from openanalytics.worker.runner import Worker

    now = datetime.now(UTC)
    tenant = privacy_tenant(make_tenant)

    def visit(session: int, user: str, visitor: int = 7) -> dict:
        return event(user, now - timedelta(minutes=10), origin="collect", visitor_id=visitor, session_id=session)

    await store(stores, tenant, [visit(700, ""), visit(700, "u1"), visit(700, "u2"), visit(701, "u1"),
                                 visit(702, "u2", 9), visit(800, "u3", 8)])
    ids = [(await client.delete(f"/v1/projects/{tenant.id}/privacy/user/{user}", headers=tenant.headers)).json()[
        "request_id"] for user in ("u1", "u2")]
    with stores.db.session() as session:
        for other in session.query(PrivacyRequest).filter(PrivacyRequest.id.notin_(ids),
                                                          PrivacyRequest.status.in_(("queued", "running"))):
            other.status = "failed"
    done = await asyncio.gather(Worker(stores, consumer="a").forget(), Worker(stores, consumer="b").forget())
    assert sorted(done[0] + done[1]) == sorted(ids)
    for request_id in ids:
        status = (await client.get(f"/v1/projects/{tenant.id}/privacy/requests/{request_id}",
                                   headers=tenant.headers)).json()
        assert status["status"] == "completed", status
    assert await stored_rows(stores, tenant.id, "session_id, user_id") == [(800, "u3")]


async def test_a_batch_read_before_the_tombstone_and_stored_late_is_deleted_whole(client, stores, worker, make_tenant):
    """A worker read u1's event (visit 900) before the deletion began and stores it only while the
    deletion runs; the entry is no longer in the stream to be seen. The visit still goes whole."""
    import asyncio

    import orjson

    from openanalytics.ingest.buffer import FIELD
    from openanalytics.worker.flush import GROUP

    now = datetime.now(UTC)
    tenant = privacy_tenant(make_tenant)
    visit = {"origin": "collect", "visitor_id": 7, "session_id": 900, "event_type": "pageview"}
    await store(stores, tenant, [event("", now - timedelta(minutes=20), **visit), event("u2", now, visitor_id=8)])
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])
    stream, late = stores.settings.stream_key, event("u1", now - timedelta(minutes=10), **visit)
    await worker.flusher.ensure_group()
    entry = await stores.redis.xadd(stream, {FIELD: orjson.dumps({"project_id": tenant.id, **late})})
    await stores.redis.xreadgroup(GROUP, "slow-worker", {stream: ">"})
    await stores.redis.xdel(stream, entry)  # held by the slow worker, gone from the stream

    async def store_late() -> None:
        await asyncio.sleep(0.3)
        await store(stores, tenant, [late])
        await stores.redis.xack(stream, GROUP, entry)

    done, _ = await asyncio.gather(worker.forget(), store_late())
    assert done == [request["request_id"]]
    assert await stored_rows(stores, tenant.id, "user_id") == [("u2",)]


async def test_usage_still_counts_what_was_tracked_after_a_deletion(client, stores, worker, make_tenant, monkeypatch):
    from openanalytics.provisioning import events_schema

    monkeypatch.setattr(events_schema, "USAGE_MARGIN_SECONDS", 0)  # counting starts at once, not in a minute
    tenant = privacy_tenant(make_tenant)
    await store(stores, tenant, [])  # provisioned
    sent = [{"event_type": "event", "event_name": "click", "user_id": user} for user in ("u1", "u1", "u1", "u2")]
    assert (await client.post(f"/v1/projects/{tenant.id}/events", json=sent, headers=tenant.headers)).status_code == 202
    await worker.drain()

    async def usage() -> int:
        response = await client.get(f"/v1/projects/{tenant.id}/usage", params={"months": 1}, headers=tenant.headers)
        return response.json()["months"][0]["events"]

    assert await usage() == 4
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])
    assert await worker.forget() == [request["request_id"]]
    assert len(await stored_rows(stores, tenant.id, "event_id")) == 1
    assert await usage() == 4, "tracked is tracked: a deletion removes the data, not the usage"


async def test_events_queued_before_the_request_are_not_stored_later(client, stores, worker, make_tenant):
    from openanalytics.privacy.tombstones import forget_key

    tenant = privacy_tenant(make_tenant)
    u1 = await tag(stores, tenant.id, "u1")
    body = [{"event_type": "event", "event_name": "x", "user_id": "u1"}, {"event_type": "event", "event_name": "x"}]
    assert (await client.post(f"/v1/projects/{tenant.id}/events", json=body, headers=tenant.headers)).status_code == 202
    # A deletion that started after these were queued but before they were flushed:
    await stores.redis.hset(forget_key(tenant.id), u1, ms(datetime.now(UTC)) + 1000)
    await worker.drain()
    assert [user for (user,) in await stored_rows(stores, tenant.id, "user_id")] == [""]
    await stores.redis.hset(forget_key(tenant.id), u1, ms(NOW) - 60_000)  # a deletion long before
    assert (await client.post(f"/v1/projects/{tenant.id}/events", json=body[:1], headers=tenant.headers)).status_code == 202
    await worker.drain()
    assert sorted(user for (user,) in await stored_rows(stores, tenant.id, "user_id")) == ["", "u1"]


async def test_requests_of_other_tenants_and_unknown_ids_are_404(client, stores, make_tenant):
    owner, other = privacy_tenant(make_tenant), privacy_tenant(make_tenant)
    request = (await client.delete(f"/v1/projects/{owner.id}/privacy/user/u1", headers=owner.headers)).json()
    assert_error(await client.get(f"/v1/projects/{other.id}/privacy/requests/{request['request_id']}",
                                  headers=other.headers), 404, "request_not_found")
    assert_error(await client.get(f"/v1/projects/{owner.id}/privacy/requests/prq_0000000000000000",
                                  headers=owner.headers), 404, "request_not_found")
    assert_error(await client.get(request["poll_url"], headers=other.headers), 404)  # not their project


async def test_export_and_delete_need_their_own_scopes(client, make_tenant):
    reader = make_tenant(scopes=["stats:read", "events:write", "projects:read"])
    exporter = make_tenant(scopes=["privacy:export"])
    assert_error(await client.get(f"/v1/projects/{reader.id}/privacy/user/u1", headers=reader.headers), 403)
    assert_error(await client.delete(f"/v1/projects/{reader.id}/privacy/user/u1", headers=reader.headers), 403)
    assert (await client.get(f"/v1/projects/{exporter.id}/privacy/user/u1", headers=exporter.headers)).status_code == 200
    assert_error(await client.delete(f"/v1/projects/{exporter.id}/privacy/user/u1", headers=exporter.headers), 403)


async def test_a_worker_killed_mid_deletion_is_finished_by_the_next(client, stores, worker, make_tenant, request):
    if stores.events.embedded:
        pytest.skip("two processes cannot share one embedded ClickHouse")
    stores_env = server_store_urls(request)  # before `request` names the deletion below

    tenant = privacy_tenant(make_tenant)
    await store(stores, tenant, [event("u1", NOW - timedelta(hours=n)) for n in range(4)] + [event("u2", NOW)])
    queued = [{"event_type": "event", "event_name": "late", "user_id": "u1"}]
    assert (await client.post(f"/v1/projects/{tenant.id}/events", json=queued, headers=tenant.headers)).status_code == 202
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OA_")}
    env.update(stores_env, OA_STREAM_KEY=stores.settings.stream_key)
    died = subprocess.run([sys.executable, "-m", "tests.support.dying_deleter"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert died.returncode == 137, died.stderr
    status = (await client.get(request["poll_url"], headers=tenant.headers)).json()
    assert status["status"] == "running"  # claimed, half done, its worker gone
    assert len(await stored_rows(stores, tenant.id, "event_id")) == 5  # ClickHouse not reached yet

    assert await worker.forget() == []  # the lease has not run out yet
    time.sleep(1.1)
    assert await worker.forget() == [request["request_id"]]
    status = (await client.get(request["poll_url"], headers=tenant.headers)).json()
    assert status["status"] == "completed" and status["events_deleted"] == 4
    await worker.drain()
    assert [user for (user,) in await stored_rows(stores, tenant.id, "user_id")] == ["u2"]
    with stores.db.session() as session:
        assert session.get(PrivacyRequest, request["request_id"]).attempts == 2


async def test_failed_attempts_are_retried_with_backoff_and_end_failed_only_when_the_retry_time_ran_out(
        client, stores, make_tenant, caplog):
    """An attempt that fails (here: ClickHouse unreachable, with the user id and the server's URL in the
    error's text) is queued again 1 s later, then 2 s, ...; the request keeps a code and a sentence,
    never the text; past OA_PRIVACY_RETRY_SECONDS from its first attempt it ends failed."""
    import dataclasses

    from clickhouse_connect.driver.exceptions import OperationalError

    from openanalytics.privacy.deletion import Deleter

    tenant = privacy_tenant(make_tenant)
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/sha256%2Fu1%3D%3D",
                                   headers=tenant.headers)).json()
    only(stores, request["request_id"])
    deleter = Deleter(dataclasses.replace(stores, settings=stores.settings.model_copy(
        update={"privacy_retry_seconds": 3600})))

    async def unreachable(claimed):
        raise OperationalError(f"Error HTTPConnectionPool(host='ch.internal', port=8123): url: "
                               f"http://default:pw@ch.internal:8123/?param_user={claimed.user_id}")

    deleter.delete_user = unreachable

    def move(**times) -> None:
        with stores.db.session() as session:
            row = session.get(PrivacyRequest, request["request_id"])
            for name, moment in times.items():
                setattr(row, name, moment)

    for attempt, delay in ((1, 1), (2, 2), (3, 4)):
        before = datetime.now(UTC)
        assert await deleter.run_once() == request["request_id"]
        status = (await client.get(request["poll_url"], headers=tenant.headers)).json()
        assert status["status"] == "queued" and status["attempts"] == attempt
        assert status["error"] == "events_store_unreachable"
        assert status["error_message"] == ("The events store (ClickHouse) could not be reached. "
                                           "The deletion is retried with backoff.")
        retry_at = datetime.fromisoformat(status["next_attempt_at"])
        assert before + timedelta(seconds=delay) <= retry_at <= datetime.now(UTC) + timedelta(seconds=delay)
        assert await deleter.run_once() is None, "not due before its time"
        move(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))

    move(started_at=datetime.now(UTC) - timedelta(seconds=3601))
    assert await deleter.run_once() == request["request_id"]
    status = (await client.get(request["poll_url"], headers=tenant.headers)).json()
    assert status["status"] == "failed" and status["attempts"] == 4 and status["next_attempt_at"] is None
    assert status["error"] == "events_store_unreachable"
    assert status["error_message"].endswith("retried until OA_PRIVACY_RETRY_SECONDS ran out.")
    assert await deleter.run_once() is None
    with stores.db.session() as session:
        row = session.get(PrivacyRequest, request["request_id"])
        assert row.user_id is None and row.error == "events_store_unreachable"
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("openanalytics"))
    assert "attempt 1 failed (events_store_unreachable, OperationalError); retrying in 1 s" in logged
    assert "u1" not in logged and "ch.internal" not in logged and "param_user" not in logged


async def test_a_request_whose_worker_died_past_the_retry_time_ends_failed_as_interrupted(client, stores, worker,
                                                                                      make_tenant):
    tenant = privacy_tenant(make_tenant)
    request = (await client.delete(f"/v1/projects/{tenant.id}/privacy/user/u1", headers=tenant.headers)).json()
    only(stores, request["request_id"])
    long_ago = datetime.now(UTC) - timedelta(days=2)
    with stores.db.session() as session:
        row = session.get(PrivacyRequest, request["request_id"])
        row.status, row.attempts, row.started_at, row.lease_until = "running", 1, long_ago, long_ago
    assert await worker.forget() == []
    status = (await client.get(request["poll_url"], headers=tenant.headers)).json()
    assert (status["status"], status["error"]) == ("failed", "interrupted")
