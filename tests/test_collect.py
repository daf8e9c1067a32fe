"""`POST /collect`: silent 204 for everything, and good hits stored with privacy-safe ids."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import orjson
import pytest

from openanalytics.app import create_app

from tests.conftest import BROWSER
from tests.helpers import CollectTransport, HeldRedis, counted, stored_rows, stream_length

PAGE = "https://shop.example/pricing?utm_source=newsletter&utm_medium=email"


def hit(site_id: str, **extra) -> dict:
    return {"site_id": site_id, "url": PAGE, **extra}


def assert_silent(response) -> None:
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers.get("access-control-allow-origin") == "*"


async def test_pageview_is_stored_with_enrichment(client, stores, worker, make_tenant):
    tenant = make_tenant(domains=["shop.example"])
    headers = {"User-Agent": "Mozilla/5.0 Firefox/130.0", "Accept-Language": "de-DE", "Content-Type": "text/plain"}
    for _ in range(2):
        body = orjson.dumps(hit(tenant.site_id, referrer="https://news.example/", screen_width=1440))
        assert_silent(await client.post("/collect", content=body, headers=headers))
    await worker.drain()
    rows = await stored_rows(stores, tenant.id, "event_type, hostname, path, utm_source, utm_medium, referrer, screen_width, visitor_id, session_id, origin")
    assert len(rows) == 2
    first, second = rows
    assert first[:7] == ("pageview", "shop.example", "/pricing", "newsletter", "email", "https://news.example/", 1440)
    assert first[7] != 0 and first[7] == second[7], "same browser, same day: same visitor"
    assert first[8] != 0 and first[8] == second[8], "within 30 minutes: same session"
    assert first[9] == "collect"


async def visitor_of(stores, app, tenant, worker, ip: str, headers: dict | None = None) -> int:
    marker = f"/{secrets.token_hex(4)}"
    transport = CollectTransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        body = {"site_id": tenant.site_id, "url": "https://shop.example" + marker}
        assert_silent(await http.post("/collect", json=body, headers={"User-Agent": "UA/1", **(headers or {})}))
    await worker.drain()
    rows = dict((path, visitor) for visitor, path in await stored_rows(stores, tenant.id, "visitor_id, path"))
    return rows[marker]


async def test_visitor_is_the_anonymised_ip_not_the_ip(stores, worker, tenant):
    app = create_app(stores)
    a = await visitor_of(stores, app, tenant, worker, "198.51.100.10")
    assert a == await visitor_of(stores, app, tenant, worker, "198.51.100.99"), "same /24: same visitor"
    assert a != await visitor_of(stores, app, tenant, worker, "198.51.101.10"), "other /24: other visitor"
    v6 = await visitor_of(stores, app, tenant, worker, "2001:db8:1:2::1")
    assert v6 == await visitor_of(stores, app, tenant, worker, "2001:db8:1:ffff::2"), "same /48"
    assert v6 != await visitor_of(stores, app, tenant, worker, "2001:db8:2::1")


async def test_forwarded_for_only_from_trusted_proxies(stores, worker, tenant):
    stores.settings.trusted_proxies = ["10.0.0.0/8"]
    app = create_app(stores)
    spoof = {"X-Forwarded-For": "192.0.2.1"}
    direct = await visitor_of(stores, app, tenant, worker, "198.51.100.10")
    assert direct == await visitor_of(stores, app, tenant, worker, "198.51.100.10", spoof), "untrusted peer: header ignored"
    proxied = {"X-Forwarded-For": "192.0.2.1, 198.51.100.10, 10.1.1.1"}
    assert direct == await visitor_of(stores, app, tenant, worker, "10.0.0.5", proxied), "rightmost untrusted hop"


async def test_client_timestamps_are_ignored(client, stores, worker, tenant):
    assert_silent(await client.post("/collect", json=hit(tenant.site_id, timestamp=1_000_000_000_000_000)))
    assert_silent(await client.post("/collect", json=hit(tenant.site_id, timestamp="now")))
    await worker.drain()
    rows = await stored_rows(stores, tenant.id, "timestamp = received_at")
    assert rows == [(1,), (1,)]


async def test_batch_of_hits(client, stores, worker, tenant):
    batch = [hit(tenant.site_id), hit(tenant.site_id, event_type="event", event_name="signup")]
    assert_silent(await client.post("/collect", json=batch))
    await worker.drain()
    assert sorted(r[0] for r in await stored_rows(stores, tenant.id, "event_type")) == ["event", "pageview"]


def bad_inputs(site_id: str) -> dict[str, tuple[bytes, dict]]:
    json_ct = {"Content-Type": "application/json"}
    return {
        "malformed json": (b'{"site_id": ', json_ct),
        "not json at all": (b"\x00\xff\xfe garbage", {"Content-Type": "text/plain"}),
        "empty body": (b"", json_ct),
        "json scalar": (b"42", json_ct),
        "json null": (b"null", json_ct),
        "empty array": (b"[]", json_ct),
        "array of strings": (b'["a", "b"]', json_ct),
        "unknown site": (orjson.dumps(hit("site_doesnotexist00")), json_ct),
        "missing site_id": (orjson.dumps({"url": PAGE}), json_ct),
        "site_id wrong type": (orjson.dumps({"site_id": 12345, "url": PAGE}), json_ct),
        "url wrong type": (orjson.dumps(hit(site_id, url=["x"])), json_ct),
        "relative url": (orjson.dumps(hit(site_id, url="/x")), json_ct),
        "unknown event_type": (orjson.dumps(hit(site_id, event_type="click")), json_ct),
        "event without name": (orjson.dumps(hit(site_id, event_type="event")), json_ct),
        "nested properties": (orjson.dumps(hit(site_id, properties={"a": {"b": 1}})), json_ct),
        "malformed site_id": (orjson.dumps(hit("site_' OR 1=1 --")), json_ct),
        "huge body of valid hits": (orjson.dumps([hit(site_id, properties={"a": "x" * 900, "b": "y" * 900})] * 50), json_ct),
        "too many in a batch": (orjson.dumps([hit(site_id)] * 51), json_ct),
        "disallowed domain": (orjson.dumps(hit(site_id, url="https://evil.example/")), json_ct),
        "deeply nested json": (b"[" * 5000 + b"]" * 5000, json_ct),
    }


@pytest.mark.parametrize("case", list(bad_inputs("x")))
async def test_bad_input_is_silently_ignored(client, stores, worker, make_tenant, case):
    tenant = make_tenant(domains=["shop.example"])
    body, headers = bad_inputs(tenant.site_id)[case]
    assert_silent(await client.post("/collect", content=body, headers=headers))
    assert await stream_length(stores) == 0
    await worker.drain()
    assert await stored_rows(stores, tenant.id) == []


async def test_lying_content_length_is_silently_ignored(client, stores, tenant):
    body = orjson.dumps(hit(tenant.site_id))
    response = await client.post("/collect", content=body, headers={"Content-Length": "99999999"})
    assert_silent(response)
    assert await stream_length(stores) == 0


async def test_one_bad_hit_in_a_batch_drops_only_itself(client, stores, worker, tenant):
    batch = [hit(tenant.site_id), hit(tenant.site_id, event_type="nonsense"), {"site_id": "site_unknown"}]
    assert_silent(await client.post("/collect", json=batch))
    await worker.drain()
    assert len(await stored_rows(stores, tenant.id)) == 1


async def test_preflight(client):
    response = await client.options("/collect", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert response.status_code == 204
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-headers"] == "Content-Type"
    assert response.headers["access-control-max-age"] == "86400"


async def test_store_failure_is_still_204(client, stores, tenant, monkeypatch):
    from openanalytics.ingest import commit
    from openanalytics.ingest.commit import Committer

    async def broken(*args, **kwargs):
        raise ConnectionError("redis down")

    monkeypatch.setattr(Committer, "_call", broken)
    monkeypatch.setattr(commit, "RETRY_SECONDS", 0.2)  # sent again for a while first
    assert_silent(await client.post("/collect", json=hit(tenant.site_id)))
    assert_silent(await client.post("/collect", json=hit(tenant.site_id)))  # and the next one too


# -- answered first, stored a moment later ---------------------------------------------------


def plain_client(app) -> httpx.AsyncClient:
    """No settling after /collect: what a browser sees."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("198.51.100.4", 1)), base_url="http://t",
                             headers={"User-Agent": BROWSER})


async def test_the_answer_does_not_wait_for_redis(stores, worker, tenant, monkeypatch):
    held = HeldRedis(monkeypatch)
    app = create_app(stores)
    async with plain_client(app) as http:
        async with asyncio.timeout(5):  # would hang if the response waited for the held call
            assert_silent(await http.post("/collect", json=hit(tenant.site_id)))
        await asyncio.sleep(0.05)
        assert held.calls == 1 and await stream_length(stores) == 0
        held.release.set()
        await app.state.intake.settle()
    assert await stream_length(stores) == 1


async def stored_urls(stores) -> list[str]:
    """The URLs on the stream, in stream order."""
    entries = await stores.redis.xrange(stores.settings.stream_key)
    return [orjson.loads(fields[b"e"])["url"] for _, fields in entries]


async def test_hits_reach_redis_in_order_one_batch_at_a_time(stores, tenant, monkeypatch):
    held = HeldRedis(monkeypatch)
    app = create_app(stores)
    async with plain_client(app) as http:
        assert_silent(await http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=1")))
        while held.calls == 0:
            await asyncio.sleep(0.001)
        assert_silent(await http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=2")))
        await asyncio.sleep(0.05)
        assert held.calls == 1, "the second batch waits for the first one's call"
        held.release.set()
        await app.state.intake.settle()
    assert await stored_urls(stores) == [PAGE + "&n=1", PAGE + "&n=2"]


async def test_a_full_queue_drops_new_hits_silently_and_says_so(stores, worker, tenant, monkeypatch, caplog):
    from openanalytics.ingest import intake

    outcomes = counted(monkeypatch)
    held = HeldRedis(monkeypatch)
    bodies = [orjson.dumps(hit(tenant.site_id, url=PAGE + f"&n={n}")) for n in (1, 2, 3, 4)]
    monkeypatch.setattr(intake, "MAX_HELD_BYTES", sum(len(b) + intake.HELD_OVERHEAD for b in bodies[:3]))
    app = create_app(stores)
    async with plain_client(app) as http:
        assert_silent(await http.post("/collect", content=bodies[0]))
        while held.calls == 0:  # the first is held in Redis, and still counts
            await asyncio.sleep(0.001)
        for body in bodies[1:]:
            async with asyncio.timeout(5):
                assert_silent(await http.post("/collect", content=body))
        held.release.set()
        await app.state.intake.settle()
    assert await stored_urls(stores) == [PAGE + "&n=1", PAGE + "&n=2", PAGE + "&n=3"]
    assert outcomes == {"accepted": 3, "overloaded": 1}
    assert "collect queue full" in caplog.text


async def test_past_the_high_water_mark_answers_wait_for_the_processor(stores, tenant, monkeypatch):
    from openanalytics.ingest import intake

    held = HeldRedis(monkeypatch)
    monkeypatch.setattr(intake, "HIGH_WATER", 1)
    app = create_app(stores)
    async with plain_client(app) as http:
        assert_silent(await http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=1")))
        while held.calls == 0:  # taken, and held in Redis
            await asyncio.sleep(0.001)
        assert_silent(await http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=2")))  # taken next
        third = asyncio.create_task(http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=3")))
        await asyncio.sleep(0.1)
        assert not third.done(), "the processor is stuck behind Redis: the answer waits"
        held.release.set()
        assert_silent(await third)
        await app.state.intake.settle()
    assert len(await stored_urls(stores)) == 3


async def test_a_hung_redis_call_times_out_and_the_next_batch_goes_through(stores, tenant, monkeypatch, caplog):
    """A call that does not answer is sent again for a while (RETRY_SECONDS), then its hits count as failed."""
    from openanalytics.ingest import commit

    outcomes = counted(monkeypatch)
    held = HeldRedis(monkeypatch)
    monkeypatch.setattr(commit, "ATTEMPT_SECONDS", 0.1)
    monkeypatch.setattr(commit, "RETRY_SECONDS", 0.3)
    app = create_app(stores)
    async with plain_client(app) as http:
        assert_silent(await http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=1")))
        await app.state.intake.settle()
        assert outcomes == {"failed": 1} and "collect failed" in caplog.text
        held.release.set()
        assert_silent(await http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=2")))
        await app.state.intake.settle()
    assert await stored_urls(stores) == [PAGE + "&n=2"]
    assert held.calls >= 3, "sent again while it did not answer"


async def test_a_batch_whose_answer_was_lost_is_sent_again_and_stored_once(stores, make_tenant, monkeypatch):
    """Redis ran the script but the connection broke before its answer came (a Redis restart): the batch is
    sent again under the same key, answered from the first run's counts, and nothing is stored twice."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from openanalytics.ingest.commit import Committer

    outcomes = counted(monkeypatch)
    original, calls = Committer._call, []

    async def answer_lost_once(committer, argv):
        calls.append(argv[-2])  # the batch key
        reply = await original(committer, argv)
        if len(calls) == 1:
            raise RedisConnectionError("Connection closed by server.")
        return reply

    monkeypatch.setattr(Committer, "_call", answer_lost_once)
    tenant = make_tenant(domains=["shop.example"])
    app = create_app(stores)
    async with plain_client(app) as http:
        hits = [hit(tenant.site_id, url=PAGE + f"&n={n}") for n in range(3)]
        assert_silent(await http.post("/collect", json=hits + [hit(tenant.site_id, url="https://elsewhere.test/")]))
        await app.state.intake.settle()
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0].startswith("oa:commit:")
    assert sorted(await stored_urls(stores)) == [PAGE + f"&n={n}" for n in range(3)]
    assert outcomes == {"accepted": 3, "disallowed_domain": 1}


async def test_a_failing_batch_loses_only_itself(stores, tenant, monkeypatch, caplog):
    from openanalytics.ingest.intake import Intake

    outcomes = counted(monkeypatch)
    original, calls = Intake.prepare_batch, []

    async def fails_once(intake, batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return await original(intake, batch)

    monkeypatch.setattr(Intake, "prepare_batch", fails_once)
    app = create_app(stores)
    async with plain_client(app) as http:
        assert_silent(await http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=1")))
        await app.state.intake.settle()
        assert_silent(await http.post("/collect", json=hit(tenant.site_id, url=PAGE + "&n=2")))
        await app.state.intake.settle()
    assert await stored_urls(stores) == [PAGE + "&n=2"]
    assert outcomes == {"failed": 1, "accepted": 1} and app.state.intake.held == 0
    assert "collect failed" in caplog.text


def quick_listener(monkeypatch) -> None:
    """The invalidation listener stops at once (the real one polls twice a second), so a test of
    shutdown sees shutdown's own waiting."""
    import openanalytics.app

    async def listen(redis, caches, stop):
        await stop.wait()

    monkeypatch.setattr(openanalytics.app, "listen_for_changes", listen)


async def test_a_stopping_server_stores_what_it_answered(stores, tenant, monkeypatch):
    quick_listener(monkeypatch)
    held = HeldRedis(monkeypatch)
    app = create_app(stores)
    async with app.router.lifespan_context(app):
        async with plain_client(app) as http:
            assert_silent(await http.post("/collect", json=hit(tenant.site_id)))
        asyncio.get_running_loop().call_later(0.3, held.release.set)
    assert await stream_length(stores) == 1, "shutdown waited for the queued hit"


async def test_a_stop_does_not_wait_for_a_hung_redis_for_ever(stores, tenant, monkeypatch, caplog):
    import openanalytics.app

    quick_listener(monkeypatch)
    HeldRedis(monkeypatch)  # never released
    monkeypatch.setattr(openanalytics.app, "SETTLE_SECONDS", 0.2)
    app = create_app(stores)
    async with asyncio.timeout(5):
        async with app.router.lifespan_context(app):
            async with plain_client(app) as http:
                assert_silent(await http.post("/collect", json=hit(tenant.site_id)))
    assert "answered /collect requests could not be stored" in caplog.text


def test_event_and_session_ids_are_random_and_a_forked_child_makes_its_own():
    import os
    import uuid

    from openanalytics.ingest.collect import _fresh_session
    from openanalytics.ingest.rows import new_event_id

    ids = [new_event_id() for _ in range(600)]  # past one read of the random source
    assert len(set(ids)) == 600
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then gone whatever happens, running nothing else
        try:
            os.write(write, f"{new_event_id()} {_fresh_session()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child_event, child_session = pipe.read().split()
    assert child_event != new_event_id(), "the parent's unused random bytes were reused"
    assert int(child_session) != _fresh_session(), "the child's session ids repeat the parent's"


async def test_the_answer_carries_only_the_cors_header_a_browser_reads(client, tenant):
    response = await client.post("/collect", json=hit(tenant.site_id))
    assert_silent(response)
    assert not any(name.startswith("access-control-") and name != "access-control-allow-origin"
                   for name in response.headers), "Allow-Methods, Allow-Headers and Max-Age belong to the preflight"


async def test_line_breaks_in_a_hit_reach_the_store_intact(client, stores, worker, tenant):
    """The commit script takes rows one per line; a line break inside a value must not split one."""
    body = hit(tenant.site_id, event_type="event", event_name="two\nlines", properties={"note": "a\r\nb\n"})
    assert_silent(await client.post("/collect", json=body))
    await worker.drain()
    assert await stored_rows(stores, tenant.id, "event_name, properties") == [("two\nlines", {"note": "a\r\nb\n"})]


def test_the_plain_pageview_path_answers_as_the_model_does():
    """The tracker's pageview skips CollectIn (collect.plain_pageview_row): for every mix of its fields'
    values, plain and odd, it gives the model's row or leaves the item to the model."""
    from itertools import product

    from openanalytics.ingest.collect import Dropped, model_row, plain_pageview_row

    long_url = "https://shop.example/" + "a" * 2100
    values = {
        "url": [None, PAGE, "https://shop.example", "http://x.example/a?b=1#c", "", "/relative", "ftp://shop.example/",
                long_url, long_url[:2048], 7, ["https://shop.example/"], "http://[x", "http://a\uff03b@c/"],
        "referrer": [None, "", "https://www.google.com/", "http://[x", "x" * 2048, "x" * 2049, 5],
        "screen_width": [None, 0, 1440, 65535, 65536, -1, True, 1440.0, "1440"],
        "language": [None, "en-US", "", "x" * 35, "x" * 36, 1],
        "event_type": [None, "pageview", "event", "PAGEVIEW", 0],
    }
    absent = object()
    fast = 0
    for combination in product(*([absent, *options] for options in values.values())):
        item = {"site_id": "site_0123456789abcdef"}
        item.update({k: v for k, v in zip(values, combination, strict=True) if v is not absent})
        for extra in ({}, {"event_name": "x"}, {"timestamp": 1}, {"unknown": 1}):
            plain = plain_pageview_row({**item, **extra}, "p1", 1_000)
            try:
                row, referrer = model_row({**item, **extra}, "p1", 1_000)
            except Dropped:
                assert plain is None, (item, extra)
                continue
            if plain is None:
                continue
            fast += 1
            assert {**plain, "event_id": ""} == {**row, "event_id": ""}, (item, extra)
            assert list(plain) == list(row), "the same members in the same order"
            assert referrer == item.get("referrer")
    # Every mix of plain values takes it: 6 urls (absent too), 6 referrers, 5 widths and languages, 2 event types.
    assert fast == 6 * 6 * 5 * 5 * 2


def test_a_site_id_is_the_whole_text():
    from openanalytics.ingest.collect import site_ids

    good = "site_0123456789abcdef"
    assert site_ids([{"site_id": good}, {"site_id": good + "\n"}, {"site_id": " " + good}, {"site_id": [good]}]) == {good}


async def test_odd_urls_referrers_and_lengths_are_dropped_or_kept_alone(client, stores, worker, tenant, monkeypatch):
    """A URL or referrer urlsplit cannot take, or a declared length that is digits but not ASCII ones,
    concerns that hit alone: no failure, and the good hit beside it is stored."""
    outcomes = counted(monkeypatch)
    batch = [hit(tenant.site_id, url="http://[x"), hit(tenant.site_id, referrer="http://[x")]
    assert_silent(await client.post("/collect", json=batch))
    odd_length = {"Content-Length": "\u00b2".encode("latin-1"), "Content-Type": "text/plain"}
    assert_silent(await client.post("/collect", content=orjson.dumps(hit(tenant.site_id)), headers=odd_length))
    await worker.drain()
    assert await stored_rows(stores, tenant.id, "referrer") == [("",)]
    assert "failed" not in outcomes
    assert outcomes.get("invalid") == 1 and outcomes.get("too_large") == 1


async def test_bodies_without_a_declared_length_are_held_to_the_limit_whole_or_in_parts():
    from openanalytics.ingest.collect import DropReason, Dropped
    from openanalytics.ingest.intake import _read_body

    def arriving(*chunks: bytes):
        messages = iter([{"type": "http.request", "body": c, "more_body": n < len(chunks) - 1}
                         for n, c in enumerate(chunks)])

        async def receive():
            return next(messages)
        return receive

    assert await _read_body(arriving(b"x" * 10), 10) == b"x" * 10
    assert await _read_body(arriving(b"x" * 6, b"y" * 4), 10) == b"x" * 6 + b"y" * 4
    for chunks in ((b"x" * 11,), (b"x" * 6, b"y" * 5), (b"", b"x" * 11)):
        with pytest.raises(Dropped) as dropped:
            await _read_body(arriving(*chunks), 10)
        assert dropped.value.reason is DropReason.too_large


NOON = 1_795_780_800_000  # epoch ms, 2026-11-27 12:00 UTC


async def test_a_clients_hits_share_its_ids_while_the_salts_stay(monkeypatch):
    """Address, budget tag and visitor ids are worked out once per client, and none made with a
    salt outlives it: at midnight, and when the day before's salt stops counting, all are made anew."""
    from openanalytics.ingest import clients as module
    from openanalytics.ingest.client_ip import parse_networks
    from openanalytics.ingest.collect import salts_end

    clients = module.Clients(parse_networks(["10.0.0.0/8"]), salts_end)
    today, yesterday = secrets.token_bytes(32), secrets.token_bytes(32)
    browser = {"user-agent": BROWSER, "accept-language": "en", "x-forwarded-for": "198.51.100.4"}
    first = clients.of(yesterday, None, "10.0.0.2", browser, NOON)
    assert first.ip == "198.51.100.4" and clients.of(yesterday, None, "10.0.0.2", dict(browser), NOON) is first
    for other in ({**browser, "user-agent": BROWSER + " x"}, {**browser, "accept-language": "de"},
                  {**browser, "x-forwarded-for": "198.51.100.5"}):
        assert clients.of(yesterday, None, "10.0.0.2", other, NOON) is not first
    long = clients.of(yesterday, None, "10.0.0.2", {**browser, "user-agent": BROWSER + "x" * 600}, NOON)
    assert long.user_agent == (BROWSER + "x" * 600)[:512], "cut before parsing and hashing"
    visitor, _ = first.visitors_in("p1")
    assert first.visitors_in("p2")[0] != visitor and first.visitors_in("p1") == (visitor, None)
    midnight = clients.of(today, yesterday, "10.0.0.2", browser, NOON)
    assert midnight is not first and midnight.budget_tag != first.budget_tag
    assert midnight.visitors_in("p1")[1] == visitor != midnight.visitors_in("p1")[0], "yesterday's goes on"
    later = clients.of(today, None, "10.0.0.2", browser, NOON)
    assert later is not midnight and later.visitors_in("p1") == (midnight.visitors_in("p1")[0], None)

    monkeypatch.setattr(module, "MAX_CLIENTS", 2)
    assert clients.of(today, None, "10.0.0.2", {**browser, "accept-language": "fr"}, NOON) is not later
    assert clients.of(today, None, "10.0.0.2", browser, NOON) is not later, "past the bound, all are forgotten"


async def test_the_clients_are_forgotten_when_their_salts_end_without_a_hit():
    from openanalytics.ingest.client_ip import parse_networks
    from openanalytics.ingest.clients import Clients
    from openanalytics.ingest.collect import salts_end

    clients, browser = Clients(parse_networks([]), salts_end), {"user-agent": BROWSER, "accept-language": "en"}
    day, salt, previous = 1_795_737_600_000, secrets.token_bytes(32), secrets.token_bytes(32)  # a UTC midnight
    first = clients.of(salt, None, "198.51.100.4", browser, day + 86_400_000 - 50)  # 50 ms before midnight
    assert clients.of(salt, None, "198.51.100.4", browser, day + 86_400_000 - 40) is first
    await asyncio.sleep(0.1)
    assert clients.of(salt, None, "198.51.100.4", browser, day + 86_400_000 - 30) is not first, "forgotten at midnight"
    after = clients.of(salt, previous, "198.51.100.4", browser, day + 30 * 60_000 - 50)  # just after midnight
    await asyncio.sleep(0.1)
    assert clients.of(salt, previous, "198.51.100.4", browser, day + 30 * 60_000 - 30) is not after, \
        "forgotten when the day before's salt stops counting"
