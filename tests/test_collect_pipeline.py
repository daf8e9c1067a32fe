"""The /collect pipeline: each gate, each enrichment, visitors and sessions over time, Verify Installation, usage."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from openanalytics.ingest.client_ip import parse_networks
from openanalytics.ingest.clients import Clients
from openanalytics.ingest.collect import salts_end
from openanalytics.ingest.geo import Geo
from openanalytics.ingest.visitor import anonymise_ip
from tests.conftest import BROWSER
from tests.helpers import CollectTransport, stored_rows

ROOT = Path(__file__).resolve().parent.parent
UA = {
    "mac_chrome": BROWSER.replace("X11; Linux x86_64", "Macintosh; Intel Mac OS X 10_15_7"),
    "iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "ipad": "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "android_phone": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Mobile Safari/537.36",
    "android_tablet": "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "firefox_windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
}
BOTS = {
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "headless chrome": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/130.0.0.0 Safari/537.36",
    "curl": "curl/8.5.0",
    "empty": "",
    "ahrefs": "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
}


@pytest.fixture(scope="session")
def country_db() -> Path:
    path = ROOT / ".tools" / "geoip" / "country.mmdb"
    subprocess.run([str(ROOT / "scripts" / "fetch-geoip"), str(path)], check=True, capture_output=True, timeout=300)
    return path


@pytest.fixture(scope="session")
def city_db(tmp_path_factory) -> Path:
    """A tiny City-format database: the country one has no regions or cities."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["198.51.100.0/24"]), {
        "country": {"iso_code": "NL"}, "subdivisions": [{"iso_code": "NH"}], "city": {"names": {"en": "Amsterdam"}}})
    writer.insert_network(IPSet(["2001:db8::/32"]), {
        "country": {"iso_code": "DE"}, "subdivisions": [{"iso_code": "BE"}], "city": {"names": {"en": "Berlin"}}})
    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    writer.to_db_file(str(path))
    return path


def client_at(app, ip: str, ua: str = BROWSER, **headers) -> httpx.AsyncClient:
    transport = CollectTransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers={"User-Agent": ua, **headers})


async def send(app, tenant, ip="198.51.100.7", ua=BROWSER, headers=None, **fields) -> None:
    body = {"site_id": tenant.site_id, "url": "https://shop.example/", **fields}
    async with client_at(app, ip, ua, **(headers or {})) as http:
        response = await http.post("/collect", json=body)
    assert response.status_code == 204 and response.content == b""


async def rows(stores, worker, tenant, columns: str) -> list[tuple]:
    await worker.drain()
    return await stored_rows(stores, tenant.id, columns)


# -- enrichment --------------------------------------------------------------------


async def test_every_enrichment_on_one_hit(app, stores, worker, tenant, city_db):
    app.state.collector.geo = Geo(city_db)
    await send(app, tenant, ua=UA["mac_chrome"], headers={"Accept-Language": "nl-NL"},
               url="https://shop.example/pricing?utm_source=news&utm_medium=email&utm_campaign=fall&utm_term=shoes&utm_content=a",
               referrer="https://www.google.nl/search?q=shoes", screen_width=1512, language="nl-NL")
    (row,) = await rows(stores, worker, tenant,
                        "country, region, city, browser, browser_version, os, os_version, device, referrer_source, "
                        "hostname, path, utm_source, utm_medium, utm_campaign, utm_term, utm_content, screen_width, language")
    assert row == ("NL", "NH", "Amsterdam", "Chrome", "130.0", "Mac OS X", "10.15", "desktop", "Google",
                   "shop.example", "/pricing", "news", "email", "fall", "shoes", "a", 1512, "nl-NL")


async def test_country_from_the_default_database(app, stores, worker, tenant, country_db):
    app.state.collector.geo = Geo(country_db)
    await send(app, tenant, ip="8.8.8.8")
    await send(app, tenant, ip="2001:4860:4860::8888")
    await send(app, tenant, ip="127.0.0.1")
    assert sorted(r[0] for r in await rows(stores, worker, tenant, "country")) == ["", "US", "US"]


@pytest.mark.parametrize(("name", "device", "os"), [
    ("iphone", "mobile", "iOS"), ("ipad", "tablet", "iOS"), ("android_phone", "mobile", "Android"),
    ("android_tablet", "tablet", "Android"), ("firefox_windows", "desktop", "Windows"),
])
async def test_device_types(app, stores, worker, tenant, name, device, os):
    await send(app, tenant, ua=UA[name])
    assert await rows(stores, worker, tenant, "device, os") == [(device, os)]


@pytest.mark.parametrize(("referrer", "kept", "source"), [
    ("https://www.google.com/", "https://www.google.com/", "Google"),
    ("https://www.google.ch/", "https://www.google.ch/", "Google"),
    ("https://www.google.com.mx/search", "https://www.google.com.mx/search", "Google"),
    ("https://google.co.uk/", "https://google.co.uk/", "Google"),
    ("https://yandex.kz/search/?text=x", "https://yandex.kz/search/?text=x", "Yandex"),
    ("https://notgoogle.com/", "https://notgoogle.com/", "notgoogle.com"),
    ("https://google.example.org/", "https://google.example.org/", "google.example.org"),
    ("https://sites.google.com/view/x", "https://sites.google.com/view/x", "sites.google.com"),
    ("https://www.google.org/", "https://www.google.org/", "google.org"),
    ("https://yandex.net/", "https://yandex.net/", "yandex.net"),
    ("https://l.facebook.com/l.php?u=x", "https://l.facebook.com/l.php?u=x", "Facebook"),
    ("https://news.ycombinator.com/item?id=1", "https://news.ycombinator.com/item?id=1", "Hacker News"),
    ("https://blog.example.org/post", "https://blog.example.org/post", "blog.example.org"),
    ("https://shop.example/other-page", "", ""),  # self-referral
    ("https://www.shop.example/", "", ""),  # self-referral via www
    ("not a url", "", ""),
])
async def test_referrer_sources(app, stores, worker, tenant, referrer, kept, source):
    await send(app, tenant, referrer=referrer)
    assert await rows(stores, worker, tenant, "referrer, referrer_source") == [(kept, source)]


def test_ip_anonymisation():
    assert anonymise_ip("203.0.113.77") == "203.0.113.0"
    assert anonymise_ip("2001:db8:1234:5678:9abc:def0:1234:5678") == "2001:db8:1234::"
    assert anonymise_ip("::ffff:203.0.113.77") == "203.0.113.0"
    assert anonymise_ip("garbage") == ""


async def test_no_ip_or_user_agent_is_stored(app, stores, worker, tenant, city_db):
    app.state.collector.geo = Geo(city_db)
    await send(app, tenant, ip="2001:db8:aaaa:bbbb::1", ua=UA["iphone"])
    (row,) = await rows(stores, worker, tenant, "*")
    text = repr(row)
    for secret in ("2001:db8", "aaaa", "bbbb", "iPhone; CPU", "AppleWebKit"):
        assert secret not in text
    assert "DE" in row and "Berlin" in row  # geo came from the full IP before it was dropped


async def test_no_ip_in_redis_either(app, stores, tenant):
    import hashlib

    await send(app, tenant, ip="198.51.100.7", ua=UA["iphone"])
    async with client_at(app, "198.51.100.7") as http:  # a failed authentication is counted per IP too
        assert (await http.get("/v1/projects", headers={"Authorization": "Bearer oa_live_guess"})).status_code == 401
    assert len(await stores.redis.keys("oa:rl:authfail:*")) == 1
    plain = hashlib.sha256(b"198.51.100.7").hexdigest()[:24]
    for key in await stores.redis.keys("*"):
        assert b"198.51.100" not in key and plain.encode() not in key, key
        if await stores.redis.type(key) == b"string":
            assert b"198.51.100" not in (await stores.redis.get(key) or b""), key
    stream = await stores.redis.xrange(stores.settings.stream_key)
    assert stream and all(b"198.51.100" not in fields[b"e"] and b"iPhone; CPU" not in fields[b"e"]
                          for _, fields in stream)


async def test_forwarded_for_spoofing_does_not_move_the_client(app, stores, worker, tenant, city_db):
    app.state.collector.geo = Geo(city_db)
    await send(app, tenant, ip="198.51.100.7", headers={"X-Forwarded-For": "2001:db8::1"})  # untrusted peer
    app.state.collector.clients = Clients(parse_networks(["10.0.0.0/8"]), salts_end)
    await send(app, tenant, ip="10.0.0.9", headers={"X-Forwarded-For": "2001:db8::1, 10.0.0.3"})  # trusted chain
    await send(app, tenant, ip="10.0.0.9", headers={"X-Forwarded-For": "198.51.100.7, 2001:db8::1"})  # spoofed left
    assert [r[0] for r in sorted(await rows(stores, worker, tenant, "country, received_at"), key=lambda r: r[1])] == ["NL", "DE", "DE"]


# -- gates -------------------------------------------------------------------------


@pytest.mark.parametrize("bot", list(BOTS))
async def test_bots_are_dropped(app, stores, worker, tenant, bot):
    await send(app, tenant, ua=BOTS[bot])
    assert await rows(stores, worker, tenant, "event_id") == []
    async with client_at(app, "198.51.100.1") as http:
        verify = (await http.get(f"/v1/projects/{tenant.id}/verify", headers=tenant.headers)).json()
    assert verify["ignored_today"] == {"bot": 1}


async def test_people_in_desktop_apps_are_not_bots(app, stores, worker, tenant):
    electron = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Slack/4.41.105 Chrome/130.0.6723.191 Electron/33.3.1 Safari/537.36 AtomShell/33.3.1")
    await send(app, tenant, ua=electron)
    assert await rows(stores, worker, tenant, "browser") == [("Electron",)]


async def test_per_ip_and_per_site_budgets(app, stores, worker, make_tenant):
    from openanalytics.projects.models import Project
    from openanalytics.projects.service import apply_plan

    tenant = make_tenant(plan="free")
    with stores.db.session() as session:
        apply_plan(session.get(Project, tenant.id), "free",
                   {"collect_per_ip_per_minute": 3, "collect_per_site_per_minute": 5})
    app.state.collector.sites.clear()
    for _ in range(4):
        await send(app, tenant, ip="198.51.100.1")
    for _ in range(3):
        await send(app, tenant, ip="198.51.100.2")
    assert len(await rows(stores, worker, tenant, "event_id")) == 5
    async with client_at(app, "192.0.2.1") as http:
        verify = (await http.get(f"/v1/projects/{tenant.id}/verify", headers=tenant.headers)).json()
    assert verify["ignored_today"] == {"rate_limited_ip": 1, "rate_limited_site": 1}


async def test_ipv6_budgets_cover_the_whole_64(app, stores, worker, make_tenant):
    from openanalytics.projects.models import Project
    from openanalytics.projects.service import apply_plan

    tenant = make_tenant(plan="free")
    with stores.db.session() as session:
        apply_plan(session.get(Project, tenant.id), "free", {"collect_per_ip_per_minute": 2})
    app.state.collector.sites.clear()
    for suffix in ("1", "2", "3"):  # rotating addresses inside one /64
        await send(app, tenant, ip=f"2001:db8:1:2::{suffix}")
    await send(app, tenant, ip="2001:db8:1:3::1")  # another /64: its own budget
    assert len(await rows(stores, worker, tenant, "event_id")) == 3


async def test_probing_random_site_ids_costs_a_bounded_number_of_queries(app, stores, tenant, monkeypatch):
    from openanalytics.ingest import collect

    lookups = []
    real = collect.site_lookup
    monkeypatch.setattr(collect, "site_lookup", lambda db, site_id: lookups.append(site_id) or real(db, site_id))
    rate = collect.SITE_LOOKUPS_PER_SECOND
    started = time.monotonic()
    async with client_at(app, "198.51.100.7") as http:
        for n in range(rate * 2):
            await http.post("/collect", json={"site_id": f"site_{n:016x}", "url": "https://a.example/"})
    elapsed = time.monotonic() - started
    assert len(lookups) <= rate + rate * elapsed + 1, "a burst, then the refill rate"
    assert len(lookups) < rate * 2 or elapsed > 1


async def test_concurrent_hits_for_an_uncached_site_share_one_lookup(app, stores, worker, tenant, monkeypatch):
    import asyncio

    from openanalytics.ingest import collect

    lookups = []
    real = collect.site_lookup
    monkeypatch.setattr(collect, "site_lookup", lambda db, site_id: lookups.append(site_id) or real(db, site_id))
    app.state.collector.sites.clear()
    await asyncio.gather(*(send(app, tenant, ip=f"198.51.100.{n}") for n in range(20)))
    assert lookups == [tenant.site_id]
    assert len(await rows(stores, worker, tenant, "event_id")) == 20


async def test_an_expired_site_answers_while_one_refresh_runs(app, stores, worker, tenant, monkeypatch):
    import asyncio

    from openanalytics.ingest import collect
    from openanalytics.projects.models import Project

    collector = app.state.collector
    collector.sites.clear()
    await send(app, tenant)
    with stores.db.session() as session:
        session.get(Project, tenant.id).active = False  # deactivated behind the cache's back
    lookups = []
    real = collect.site_lookup
    monkeypatch.setattr(collect, "site_lookup", lambda db, site_id: lookups.append(site_id) or real(db, site_id))
    monkeypatch.setattr(collector.sites, "ttl", 0.01)
    collector.sites.put(tenant.site_id, collector.sites.peek(tenant.site_id)[1])  # now with the short lifetime
    time.sleep(0.02)
    await send(app, tenant)  # the expired entry still answers; its refresh runs alongside
    for _ in range(100):
        if not collector._looking:
            break
        await asyncio.sleep(0.01)
    assert lookups == [tenant.site_id]
    await send(app, tenant)  # the refreshed entry: the project is gone
    with stores.db.session() as session:
        session.get(Project, tenant.id).active = True  # so the worker stores what was accepted
    assert len(await rows(stores, worker, tenant, "event_id")) == 2


# -- visitors and sessions over time ------------------------------------------------


async def test_session_splits_after_30_idle_minutes(app, stores, worker, tenant):
    now = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    app.state.collector.clock = lambda: now
    for minutes in (0, 29, 29 + 30, 29 + 30 + 31):
        now = datetime(2026, 11, 26, 10, 0, tzinfo=UTC) + timedelta(minutes=minutes)
        await send(app, tenant)
    found = await rows(stores, worker, tenant, "visitor_id, session_id, received_at")
    found.sort(key=lambda r: r[2])
    visitors = {r[0] for r in found}
    sessions = [r[1] for r in found]
    assert len(visitors) == 1, "same browser, same day: one visitor"
    assert sessions[0] == sessions[1] == sessions[2] != sessions[3], "30 idle minutes end a session, 31 do"


async def test_a_visit_across_midnight_keeps_its_visitor_and_session(app, stores, worker, tenant):
    times = [datetime(2026, 11, 26, 23, 50, tzinfo=UTC), datetime(2026, 11, 27, 0, 10, tzinfo=UTC),
             datetime(2026, 11, 27, 1, 0, tzinfo=UTC)]
    for moment in times:
        app.state.collector.clock = lambda moment=moment: moment
        await send(app, tenant)
    found = sorted(await rows(stores, worker, tenant, "visitor_id, session_id, received_at"), key=lambda r: r[2])
    assert found[0][:2] == found[1][:2], "23:50 and 00:10: the same visit"
    assert found[2][0] != found[0][0] and found[2][1] != found[0][1], "a new day's salt: a new visitor after the visit"
    salts = sorted(await stores.redis.keys("oa:salt:*"))
    assert salts == [b"oa:salt:2026-11-26", b"oa:salt:2026-11-27"]
    for key in salts:
        assert 0 < await stores.redis.ttl(key) <= 2 * 24 * 3600, "salts are destroyed after two days"


async def test_a_visit_continuing_well_past_midnight_stays_one_visit(app, stores, worker, tenant):
    for moment in (datetime(2026, 11, 26, 23, 50, tzinfo=UTC), datetime(2026, 11, 27, 0, 10, tzinfo=UTC),
                   datetime(2026, 11, 27, 0, 35, tzinfo=UTC), datetime(2026, 11, 27, 0, 50, tzinfo=UTC)):
        app.state.collector.clock = lambda moment=moment: moment
        await send(app, tenant)
    found = await rows(stores, worker, tenant, "visitor_id, session_id")
    assert len(set(found)) == 1, "gaps of 25 minutes at most: one visitor, one session"


async def test_a_visit_past_midnight_ends_when_its_visitors_hash_goes(app, stores, worker, tenant):
    """The new day's visitor only names the visit yesterday's visitor keeps: once that hash is gone
    (privacy deletion removes it), the next hit begins a new visit as the new day's visitor."""
    moments = (datetime(2026, 11, 26, 23, 50, tzinfo=UTC), datetime(2026, 11, 27, 0, 10, tzinfo=UTC),
               datetime(2026, 11, 27, 0, 35, tzinfo=UTC))
    for moment in moments:
        app.state.collector.clock = lambda moment=moment: moment
        await send(app, tenant)
        if moment == moments[1]:
            yesterdays = [k async for k in stores.redis.scan_iter(match=f"oa:vp:{tenant.id}:*")
                          if await stores.redis.hget(k, "*")]
            todays = [k for k in await stores.redis.keys(f"oa:vp:{tenant.id}:*") if k not in yesterdays]
            assert len(yesterdays) == 1 and len(todays) == 1
            assert await stores.redis.hget(yesterdays[0], "n") == todays[0].rsplit(b":", 1)[1], "for deletion"
            await stores.redis.delete(*yesterdays)
    found = sorted(await rows(stores, worker, tenant, "received_at, visitor_id, session_id, session_seq"))
    assert found[0][1:] == (found[1][1], found[1][2], 1) and found[1][3] == 2
    assert found[2][1] != found[0][1] and found[2][2] != found[0][2] and found[2][3] == 1


async def test_a_session_keeps_where_it_came_from_on_every_event(app, stores, worker, tenant):
    """Referrer, source and UTM fields are the session's first hit's: the pages after landing (their
    referrer is the site itself) and a conversion count for Google and the campaign, not as direct."""
    start = datetime(2026, 11, 26, 23, 40, tzinfo=UTC)
    now = start
    app.state.collector.clock = lambda: now
    visit = [  # minutes after start, url, referrer, event type
        (0, "https://shop.example/?utm_source=news&utm_campaign=fall", "https://www.google.com/", "pageview"),
        (1, "https://shop.example/pricing", "https://shop.example/", "pageview"),
        (2, "https://shop.example/pricing?utm_campaign=other", "https://t.co/x", "pageview"),  # still the first's
        (25, "https://shop.example/thanks", "https://shop.example/pricing", "conversion"),  # after midnight
        (25 + 31, "https://shop.example/", None, "pageview"),  # 31 idle minutes: a new, direct session
        (25 + 32, "https://shop.example/pricing", "https://shop.example/", "pageview"),
    ]
    for minutes, url, referrer, event_type in visit:
        now = start + timedelta(minutes=minutes)
        await send(app, tenant, url=url, referrer=referrer, event_type=event_type, event_name="buy")
    found = sorted(await rows(stores, worker, tenant, "received_at, session_id, path, referrer, referrer_source, "
                                                      "utm_source, utm_campaign"))
    google = ("https://www.google.com/", "Google", "news", "fall")
    assert [r[3:] for r in found] == [google] * 4 + [("", "", "", "")] * 2
    assert [r[2] for r in found] == ["/", "/pricing", "/pricing", "/thanks", "/", "/pricing"], "pages stay each hit's"
    assert len({r[1] for r in found[:4]}) == 1 and found[4][1] == found[5][1] != found[0][1]


async def test_a_visitors_paths_outlive_each_of_its_events_by_a_day_and_two_idle_times(app, stores, tenant):
    """The ages of a visit starting tomorrow count from today's events (query/path_sums.py): each
    event gives the visitor's paths hash a day and two idle times again."""
    start = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    lifetime = 24 * 3_600_000 + 2 * 30 * 60_000
    for n in range(2):
        app.state.collector.clock = lambda n=n: start + timedelta(minutes=25 * n)
        await send(app, tenant)
        (key,) = await stores.redis.keys(f"oa:vp:{tenant.id}:*")
        assert lifetime - 60_000 < await stores.redis.pttl(key) <= lifetime, n
        await stores.redis.pexpire(key, 5_000)  # as if most of its lifetime had passed


async def test_a_visit_keeps_its_source_as_long_as_it_goes_on(app, stores, worker, tenant):
    """The source is kept in the visitor's hash, which each hit gives a day and two idle times again."""
    start = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    for n in range(3):
        app.state.collector.clock = lambda n=n: start + timedelta(minutes=25 * n)
        await send(app, tenant, referrer="https://www.bing.com/" if n == 0 else "https://shop.example/")
        (key,) = await stores.redis.keys(f"oa:vp:{tenant.id}:*")
        assert (await stores.redis.hget(key, "a")).startswith(b"Bing\n"), n
        await stores.redis.pexpire(key, 5_000)  # as if most of its lifetime had passed
    found = await rows(stores, worker, tenant, "session_id, referrer_source")
    assert len({r[0] for r in found}) == 1 and [r[1] for r in found] == ["Bing"] * 3


async def test_a_direct_visit_keeps_nothing_and_stays_direct(app, stores, worker, tenant):
    """A session begun without a referrer or UTM fields goes on as a direct visit, and the next visit
    begun from a search engine keeps that one's source."""
    now = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    app.state.collector.clock = lambda: now
    await send(app, tenant)
    (key,) = await stores.redis.keys(f"oa:vp:{tenant.id}:*")
    sid = (await stores.redis.hget(key, "s")).decode().split(":")[0]
    assert await stores.redis.hget(key, "a") == b"", "a direct visit keeps nothing"
    for minutes in (5, 40):
        now += timedelta(minutes=minutes)
        await send(app, tenant, url="https://shop.example/?utm_campaign=late", referrer="https://www.bing.com/")
    found = sorted(await rows(stores, worker, tenant, "received_at, session_id, referrer_source, utm_campaign"))
    assert [r[1] for r in found[:2]] == [int(sid)] * 2 and found[2][1] != int(sid)
    assert [r[2:] for r in found] == [("", ""), ("", ""), ("Bing", "late")], "the session's, not the later hit's"


async def test_a_visit_a_pod_of_the_release_before_began_goes_on_with_its_source(app, stores, worker, tenant):
    """The release before kept a visitor's session and source in keys of their own (and its paths in the
    hash): a visit it began goes on with that source, and the hash keeps both from then on."""
    start = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    app.state.collector.clock = lambda: start
    await send(app, tenant)
    (key,) = await stores.redis.keys(f"oa:vp:{tenant.id}:*")
    visitor, session = key.decode().rsplit(":", 1)[1], await stores.redis.hget(key, "s")
    await stores.redis.hdel(key, "s", "a")  # as that release left them
    await stores.redis.set(f"oa:sess:{tenant.id}:{visitor}", session, px=3_600_000)
    await stores.redis.set(f"oa:acq:{tenant.id}:{visitor}", 'Google\n,"referrer":"https://www.google.com/"')
    for minutes in (5, 10):
        app.state.collector.clock = lambda minutes=minutes: start + timedelta(minutes=minutes)
        await send(app, tenant, url="https://shop.example/later")
        assert (await stores.redis.hget(key, "a")).startswith(b"Google\n"), minutes
    assert (await stores.redis.hget(key, "s")).split(b":")[3] == str(1 + minutes // 5).encode()
    # a pod of the release before goes on writing (a visit of its own, as it sees no session): the
    # hash's last event is then after its session's, and the next hit goes on from that pod's
    older, at = 1234567, int((start + timedelta(minutes=15)).timestamp() * 1000)
    await stores.redis.set(f"oa:sess:{tenant.id}:{visitor}", f"{older}:{at}:{visitor}:1:1", px=3_600_000)
    await stores.redis.set(f"oa:acq:{tenant.id}:{visitor}", 'Bing\n,"referrer":"https://www.bing.com/"')
    await stores.redis.hset(key, "*", at)
    app.state.collector.clock = lambda: start + timedelta(minutes=20)
    await send(app, tenant, url="https://shop.example/later")
    found = sorted(await rows(stores, worker, tenant, "received_at, session_id, session_seq, referrer"))
    sid, google = int(session.split(b":")[0]), "https://www.google.com/"
    assert [r[1:] for r in found] == [(sid, 1, ""), (sid, 2, google), (sid, 3, google),
                                      (older, 2, "https://www.bing.com/")]
    # that pod's key, had it not been written with the hash's last event, is not the visit's
    await stores.redis.set(f"oa:sess:{tenant.id}:{visitor}", f"999:{at}:{visitor}:1:1", px=3_600_000)
    await stores.redis.hset(key, "*", at + 6 * 60_000)
    app.state.collector.clock = lambda: start + timedelta(minutes=22)
    await send(app, tenant, url="https://shop.example/later")
    found = sorted(await rows(stores, worker, tenant, "received_at, session_id, session_seq"))
    assert found[-1][1:] == (older, 3)


async def test_a_batch_for_two_sites_gives_each_its_own_visitor(app, stores, worker, make_tenant):
    first, second = make_tenant(), make_tenant()
    await send(app, second)  # alone, for reference
    async with client_at(app, "198.51.100.7") as http:
        batch = [{"site_id": first.site_id, "url": "https://shop.example/"},
                 {"site_id": second.site_id, "url": "https://shop.example/b"}]
        assert (await http.post("/collect", json=batch)).status_code == 204
    second_rows = await rows(stores, worker, second, "visitor_id")
    first_rows = await stored_rows(stores, first.id, "visitor_id")
    assert len(second_rows) == 2 and second_rows[0] == second_rows[1], "same browser: same visitor in project B"
    assert first_rows[0] != second_rows[0], "no visitor id shared across tenants"


async def test_what_browsers_really_send_is_kept(app, stores, worker, tenant):
    long_url = "https://shop.example/search?q=" + "x" * 3000
    await send(app, tenant, url=long_url, referrer="https://www.google.com/?" + "y" * 3000)
    await send(app, tenant, event_type="conversion", event_name="buy", revenue=0.1 + 0.2, currency="eur")
    found = await rows(stores, worker, tenant, "event_type, length(url), revenue, currency")
    assert sorted(found, key=lambda r: r[0]) == [("conversion", 21, __import__("decimal").Decimal("0.3"), "EUR"),
                                                ("pageview", 2048, None, "")]


async def test_different_days_are_different_visitors(app, stores, worker, tenant):
    for day in (1, 2):
        app.state.collector.clock = lambda day=day: datetime(2026, 11, day, 12, 0, tzinfo=UTC)
        await send(app, tenant)
    assert len({r[0] for r in await rows(stores, worker, tenant, "visitor_id")}) == 2


# -- realtime --------------------------------------------------------------------


async def test_realtime_from_redis_state(app, stores, tenant):
    start = datetime(2026, 11, 26, 10, 0, 30, tzinfo=UTC)
    now = start
    app.state.collector.clock = lambda: now
    for referrer in ("https://www.google.com/", "https://shop.example/", None):  # the visit came from Google
        await send(app, tenant, ip="198.51.100.1", url="https://shop.example/", referrer=referrer)
    await send(app, tenant, ip="203.0.113.2", url="https://shop.example/pricing")
    await send(app, tenant, ip="203.0.113.2", url="https://shop.example/pricing", event_type="event", event_name="click")
    await send(app, tenant, ip="192.0.2.3", ua=BOTS["googlebot"])  # not a visitor

    async def realtime() -> dict:
        async with client_at(app, "192.0.2.1") as http:
            response = await http.get(f"/v1/projects/{tenant.id}/realtime", headers=tenant.headers)
        assert response.status_code == 200, response.text
        return response.json()

    body = await realtime()
    assert body["visitors"] == 2
    assert len(body["pageviews_per_minute"]) == 30
    assert body["pageviews_per_minute"][-1] == {"minute": "2026-11-26T10:00:00Z", "pageviews": 4}
    assert sum(m["pageviews"] for m in body["pageviews_per_minute"]) == 4
    assert body["top_pages"] == [{"path": "/", "pageviews": 3}, {"path": "/pricing", "pageviews": 1}]
    assert body["top_sources"] == [{"source": "Google", "pageviews": 3}, {"source": "", "pageviews": 1}]

    now = start + timedelta(minutes=4)
    await send(app, tenant, ip="203.0.113.2", url="https://shop.example/pricing")
    now = start + timedelta(minutes=6)  # visitor 1 is gone, visitor 2 was here 2 minutes ago
    body = await realtime()
    assert body["visitors"] == 1
    assert body["top_pages"] == [{"path": "/pricing", "pageviews": 1}]
    assert [m["pageviews"] for m in body["pageviews_per_minute"] if m["pageviews"]] == [4, 1]

    now = start + timedelta(minutes=40)
    body = await realtime()
    assert body["visitors"] == 0 and body["top_pages"] == [] and body["top_sources"] == []
    assert not any(m["pageviews"] for m in body["pageviews_per_minute"])


# -- verify installation and usage -------------------------------------------------


async def test_verify_lists_arrivals_with_reasons_and_storage(app, stores, worker, make_tenant):
    tenant = make_tenant(domains=["shop.example"])
    await send(app, tenant, event_type="event", event_name="signup")
    await send(app, tenant, ua=BOTS["googlebot"])
    await send(app, tenant, url="https://elsewhere.example/")
    await send(app, tenant, event_type="event")  # no name: invalid
    async with client_at(app, "192.0.2.1") as http:
        before = (await http.get(f"/v1/projects/{tenant.id}/verify", headers=tenant.headers)).json()
        await worker.drain()
        after = (await http.get(f"/v1/projects/{tenant.id}/verify", headers=tenant.headers)).json()
    outcomes = [a["outcome"] for a in before["arrivals"]]
    assert outcomes == ["invalid", "disallowed_domain", "bot", "accepted"], "newest first"
    assert before["ignored_today"] == {"invalid": 1, "disallowed_domain": 1, "bot": 1}
    accepted = before["arrivals"][-1]
    assert accepted["event_name"] == "signup" and accepted["stored"] is False and accepted["event_id"]
    assert after["arrivals"][-1]["stored"] is True and after["stored_last_hour"] == 1
    assert all(a["stored"] is None for a in after["arrivals"][:-1])


async def test_verify_shows_a_request_ignored_whole_under_the_site_it_names(app, stores, worker, tenant):
    """Too many events in one request, or an array with a non-object in it: nothing is stored, and the
    site named by its first event sees one "malformed" arrival (a body that is not JSON names none)."""
    page = {"site_id": tenant.site_id, "url": "https://shop.example/big"}
    async with client_at(app, "198.51.100.7") as http:
        for body in ([page] * 51, ["x", {**page, "url": "https://shop.example/mixed"}], b"[{"):
            response = await http.post("/collect", **({"content": body} if isinstance(body, bytes) else {"json": body}))
            assert response.status_code == 204
        verify = (await http.get(f"/v1/projects/{tenant.id}/verify", headers=tenant.headers)).json()
    assert [(a["url"], a["outcome"], a["event_id"]) for a in verify["arrivals"]] == [
        ("https://shop.example/mixed", "malformed", None), ("https://shop.example/big", "malformed", None)]
    assert verify["ignored_today"] == {"malformed": 2}
    assert await rows(stores, worker, tenant, "event_id") == []


async def test_usage_counts_every_tracked_event_by_month(app, stores, worker, tenant):
    await send(app, tenant)
    await send(app, tenant, event_type="conversion", event_name="buy", revenue=5, currency="EUR")
    async with client_at(app, "192.0.2.1") as http:
        response = await http.post(f"/v1/projects/{tenant.id}/events", headers=tenant.headers,
                                   json=[{"event_type": "identify", "user_id": "u1"}, {"event_type": "event", "event_name": "x"}])
        assert response.status_code == 202
        await worker.drain()
        usage = (await http.get(f"/v1/projects/{tenant.id}/usage", headers=tenant.headers)).json()
    month = datetime.now(UTC).strftime("%Y-%m")
    assert usage["months"][0] == {"month": month, "events": 4,
                                  "by_type": {"pageview": 1, "conversion": 1, "identify": 1, "event": 1}}
    assert len(usage["months"]) == 3 and usage["months"][1]["events"] == 0


# -- the tracker script ----------------------------------------------------------


async def test_tracker_is_small_and_cacheable(client):
    response = await client.get("/oa.js", headers={"Accept-Encoding": "*;q=0, br, gzip;q=0.8"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
    assert response.headers["content-encoding"] == "gzip" and response.headers["vary"] == "Accept-Encoding"
    assert int(response.headers["content-length"]) < 2048, "what goes over the wire"
    assert "max-age" in response.headers["cache-control"]
    for refused in ("identity", "br", "gzip;q=0", "gzip; q=0.0, br", "*;q=1, gzip;q=0"):
        plain = await client.get("/oa.js", headers={"Accept-Encoding": refused})
        assert "content-encoding" not in plain.headers, refused
        assert plain.content == response.content, "the same script"
    assert plain.headers["etag"] != response.headers["etag"], "each encoding its own tag"
    for sent in (response, plain):
        again = await client.get("/oa.js", headers={"If-None-Match": sent.headers["etag"],
                                                     "Accept-Encoding": sent.request.headers["accept-encoding"]})
        assert again.status_code == 304 and again.content == b"" and "content-encoding" not in again.headers


@pytest.fixture
def committer(stores):
    from openanalytics.ingest import commit

    return commit.Committer(stores.redis, stores.settings.stream_key, 60_000, 1_800_000)


def _now() -> tuple[int, str]:
    """This moment as the commit script takes it: epoch milliseconds and the UTC day."""
    return int(time.time() * 1000), datetime.now(UTC).strftime("%Y-%m-%d")


def _accepted(project_id: str, n: int, ip_tag: str, per_ip: int, per_site: int, now_ms: int, day: str) -> list:
    from openanalytics.ingest import commit

    return commit.accepted(project_id, ip_tag, per_ip, per_site, 1000 + n, None, 5000 + n, f'{{"n":{n}',
                           f'{{"n":{n}', f"e{n}", now_ms, day, "pageview", "/", "")


async def test_one_batch_spends_the_budgets_hit_by_hit(stores, tenant, committer):
    """Within a script call the site's budget is counted locally: the outcomes must be those of one
    INCR per hit, in order, and the count written back must carry over to the next batch."""
    from openanalytics.ingest import commit

    now, day = _now()
    tags = ["a", "a", "a", "b", "c", "d", "e", "f"]
    batch = [_accepted(tenant.id, n, tag, 2, 5, now, day) for n, tag in enumerate(tags)]
    batch.insert(3, commit.dropped(tenant.id, "z", 100, '{"n":-1', "bot", now, day))  # its IP's budget, not the site's
    assert await committer.commit(batch) == [
        "accepted", "accepted", "rate_limited_ip", "bot", "accepted", "accepted", "accepted",
        "rate_limited_site", "rate_limited_site"]
    assert await committer.commit([_accepted(tenant.id, 9, "g", 2, 5, now, day)]) == ["rate_limited_site"]
    site_key = f"oa:rl:collect:site:{tenant.id}"
    assert int(await stores.redis.get(site_key)) == 8, "every hit that reached the site's budget counts"
    assert 0 < await stores.redis.pttl(site_key) <= 60_000


async def test_a_batch_lists_only_the_newest_arrivals_and_counts_every_drop(stores, tenant, committer):
    from openanalytics.ingest import arrivals, commit

    now, day = _now()
    batch = [commit.dropped(tenant.id, f"t{n}", 10, f'{{"n":{n}', "bot" if n % 3 else "invalid", now, day)
             for n in range(150)]
    batch.append(_accepted(tenant.id, 150, "a", 10, 10, now, day))
    assert await committer.commit(batch) == ["invalid", "bot", "bot"] * 50 + ["accepted"]
    recent, drops = await arrivals.recent(stores.redis, tenant.id, day)
    assert [a["n"] for a in recent] == list(range(150, 50, -1)), "newest first, the last KEEP of them"
    assert recent[0] == {"n": 150, "outcome": "accepted", "event_id": "e150"}
    assert recent[1] == {"n": 149, "outcome": "bot", "event_id": None}
    assert drops == {"bot": 100, "invalid": 50}
    assert await stores.redis.ttl(arrivals.drops_key(tenant.id, day)) > arrivals.TTL_SECONDS


async def test_a_flood_from_one_address_is_counted_but_cannot_crowd_out_the_list(stores, tenant, committer):
    """Ignored hits spend their IP's budget too; past it they are counted, not listed (the first one over
    is, so Verify shows why)."""
    from openanalytics.ingest import arrivals, commit

    now, day = _now()
    flood = [commit.dropped(tenant.id, "flood", 3, f'{{"n":{n}', "bot", now, day) for n in range(50)]
    assert await committer.commit(flood) == ["bot"] * 50
    later = [_accepted(tenant.id, 50, "flood", 3, 100, now, day), _accepted(tenant.id, 51, "person", 3, 100, now, day)]
    assert await committer.commit(later) == ["rate_limited_ip", "accepted"]
    recent, drops = await arrivals.recent(stores.redis, tenant.id, day)
    assert [(a["n"], a["outcome"]) for a in recent] == [(51, "accepted"), (3, "bot"), (2, "bot"), (1, "bot"), (0, "bot")]
    assert drops == {"bot": 50, "rate_limited_ip": 1}


async def test_a_batch_spends_a_running_site_window_without_extending_it(stores, tenant, committer):
    now, day = _now()
    site_key = f"oa:rl:collect:site:{tenant.id}"
    await stores.redis.set(site_key, 3, px=5_000)  # this minute's window: 3 spent, 5 s left
    batch = [_accepted(tenant.id, n, f"x{n}", 10, 5, now, day) for n in range(3)]
    assert await committer.commit(batch) == ["accepted", "accepted", "rate_limited_site"]
    assert int(await stores.redis.get(site_key)) == 6
    assert 0 < await stores.redis.pttl(site_key) <= 5_000


async def test_a_line_break_inside_a_row_fails_the_batch_instead_of_shifting_it(stores, tenant, committer):
    from openanalytics.ingest import commit

    now, day = _now()
    before = await stores.redis.xlen(stores.settings.stream_key)
    broken = commit.accepted(tenant.id, "a", 10, 10, 1, None, 2, '{"n":\n1', '{"n":1', "e1", now, day, "pageview", "/", "")
    with pytest.raises(ValueError, match="line break"):
        await committer.commit([_accepted(tenant.id, 0, "a", 10, 10, now, day), broken])
    assert await stores.redis.xlen(stores.settings.stream_key) == before
