"""Breakdowns by path summed from each event's path ages (query/path_sums.py), on events the real
/collect pipeline made, with hand-counted answers; and the same answers as grouping.

Day D is two days ago (UTC). Each visitor is its own address; times are UTC:

    A: D-1 23:50 /home, D 00:10 /home, D 00:20 /shop    one visit going on when D opens
    B: D-1 23:55 /home, D 00:05 /shop                   going on; its one event on D a bounce there
    H: D 02:00 /home, D 08:00 /home                     two visits of one visitor (a bounce each)
    C: D 10:00 /home, D 14:00 /home                     the same
    E: D 11:00 /shop, D 11:05 /shop event click
    F: D 12:00 /shop conversion signup                  not a pageview: no bounce
    server-side, no session: D 13:00 event renewal of user u9 on /pricing

Pageviews unless said otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from itertools import product

import pytest

from openanalytics.provisioning.events_schema import database_name
from openanalytics.query import path_sums, session_sums
from openanalytics.query.aggregate import Aggregate
from openanalytics.query.window import Window
from tests.helpers import aggregate_spy, one_visit, query_plan, store_events, stored_rows
from tests.test_collect_pipeline import send

D = datetime.now(UTC).date() - timedelta(days=2)
D -= timedelta(days=D.weekday() == 0)  # not a Monday: a week bucket opens before a window of D
BEFORE = D - timedelta(days=1)
METRICS = ["visitors", "pageviews", "sessions", "bounce_rate", "events", "conversions"]


def moment(hour: int, minute: int, day=D) -> datetime:
    return datetime.combine(day, time(hour, minute), UTC)


HITS = [
    ("A", moment(23, 50, BEFORE), "/home", {}), ("A", moment(0, 10), "/home", {}), ("A", moment(0, 20), "/shop", {}),
    ("B", moment(23, 55, BEFORE), "/home", {}), ("B", moment(0, 5), "/shop", {}),
    ("H", moment(2, 0), "/home", {}), ("H", moment(8, 0), "/home", {}),
    ("C", moment(10, 0), "/home", {}), ("C", moment(14, 0), "/home", {}),
    ("E", moment(11, 0), "/shop", {}), ("E", moment(11, 5), "/shop", {"event_type": "event", "event_name": "click"}),
    ("F", moment(12, 0), "/shop", {"event_type": "conversion", "event_name": "signup"}),
]
ADDRESS = {name: f"198.51.{n}.7" for n, name in enumerate("ABHCEF", start=1)}  # apart once anonymised


@pytest.fixture
async def visits(app, client, stores, worker, tenant):
    for name, at, path, fields in sorted(HITS, key=lambda hit: hit[1]):
        app.state.collector.clock = lambda at=at: at
        await send(app, tenant, ip=ADDRESS[name], url=f"https://shop.example{path}", **fields)
    renewal = {"event_type": "event", "event_name": "renewal", "user_id": "u9", "url": "https://shop.example/pricing",
               "timestamp": int(moment(13, 0).timestamp() * 1000)}
    sent = await client.post(f"/v1/projects/{tenant.id}/events", json=[renewal], headers=tenant.headers)
    assert sent.status_code == 202, sent.text
    await worker.drain()
    return tenant


@pytest.fixture
def grouped(monkeypatch) -> list:
    """The breakdowns grouped instead of summed."""
    return aggregate_spy(monkeypatch, path_sums, session_sums)


async def breakdown(client, tenant, first, last, zone="UTC", metrics=METRICS, **params) -> list[dict]:
    response = await client.get(f"/v1/projects/{tenant.id}/breakdown", headers=tenant.headers, params={
        "from": first.isoformat(), "to": last.isoformat(), "timezone": zone, "dimension": "path",
        "metrics": ",".join(metrics), **params})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def row(path, visitors, pageviews, sessions, bounce_rate, events, conversions=0) -> dict:
    return {"path": path, "visitors": visitors, "pageviews": pageviews, "sessions": sessions,
            "bounce_rate": bounce_rate, "events": events, "conversions": conversions}


async def test_the_pipeline_records_each_events_path_ages(visits, stores):
    found = await stored_rows(stores, visits.id, "timestamp, path_visitor_age, path_session_age, bounce_path")
    ages = {at.replace(tzinfo=UTC): (visitor_age, session_age, bounce_path)
            for at, visitor_age, session_age, bounce_path in found}
    new = 65535
    assert ages[moment(23, 50, BEFORE)] == (new, new, "")
    assert ages[moment(0, 10)] == (1 + 1, 1 + 1, "/home"), "A's second /home: an hour (of the clock) after its first"
    assert ages[moment(0, 20)] == (new, new, ""), "A's third event: the bounce has ended"
    assert ages[moment(0, 5)] == (new, new, "/home"), "B's second event ends the bounce of its first, on /home"
    assert ages[moment(8, 0)] == (6 + 1, new, ""), "H's second visit: the visitor was on /home, the visit not"
    assert ages[moment(11, 5)] == (0 + 1, 0 + 1, "/shop"), "E's click, in the same hour as its pageview"
    assert ages[moment(13, 0)] == (0, 0, ""), "server-side: no ages"


async def test_a_day_visits_were_going_on_into(client, visits, grouped):
    assert await breakdown(client, visits, D, D) == [
        row("/shop", 4, 3, 4, 0.25, 5, 1), row("/home", 3, 5, 5, 0.8, 5), row("/pricing", 1, 0, 0, 0.0, 1)]
    assert grouped == [], "summed, not grouped"


async def test_the_day_before_and_both_days(client, visits, grouped):
    assert await breakdown(client, visits, BEFORE, BEFORE) == [row("/home", 2, 2, 2, 1.0, 2)]
    assert await breakdown(client, visits, BEFORE, D) == [
        row("/home", 4, 7, 6, 0.6667, 7), row("/shop", 4, 3, 4, 0.0, 5, 1), row("/pricing", 1, 0, 0, 0.0, 1)]
    assert grouped == [], "summed, not grouped"


async def test_pages_in_the_order_asked_for(client, visits, grouped):
    by_bounce = await breakdown(client, visits, D, D, metrics=["bounce_rate", "visitors"], limit=1)
    assert by_bounce == [{"path": "/home", "bounce_rate": 0.8, "visitors": 3}]
    second = await breakdown(client, visits, D, D, metrics=["pageviews"], limit=1, offset=1)
    assert second == [{"path": "/shop", "pageviews": 3}], "3 pageviews beside /home's 5, the same events"
    response = await client.get(f"/v1/projects/{visits.id}/pageviews", headers=visits.headers, params={
        "from": D.isoformat(), "to": D.isoformat(), "group_by": "path"})
    assert [(r["path"], r["visitors"], r["pageviews"]) for r in response.json()["results"]] == [
        ("/home", 3, 5), ("/shop", 4, 3), ("/pricing", 1, 0)]
    assert grouped == [], "summed, not grouped"


async def test_sums_answer_as_grouping_does(visits, stores):
    table = f"{database_name(visits.id)}.events"
    for zone, days in product(["UTC", "Europe/Amsterdam", "America/New_York"], [(0, 0), (-1, -1), (-1, 0), (0, 1)]):
        window = Window(D + timedelta(days=days[0]), D + timedelta(days=days[1]), zone)
        assert path_sums.applies(window, [], METRICS, "path", 5)
        found = await stores.events.run(stores.events.rows, *path_sums.sql(table, window, METRICS, 100, 0))
        assert all(r[-1] == 0 for r in found), "every session event has its ages: the sums answer"
        summed = [(r[0], path_sums.values(r[1:-1], METRICS)) for r in found]
        grouped = await Aggregate(table, window, [], METRICS, group="path").run(stores.events, 100)
        assert summed == grouped, (zone, days)


async def test_the_sums_are_read_from_the_hourly_projections(visits, stores):
    statement, params = path_sums.sql(f"{database_name(visits.id)}.events", Window(BEFORE, D, "UTC"), METRICS, 10, 0)
    plan = await query_plan(stores, statement, params)
    assert "hourly_paths" in plan and "hourly_bounce_paths" in plan, plan


async def test_events_stored_without_ages_are_grouped_instead(client, stores, tenant, grouped):
    """As events stored before schema 5: two pageviews of one visit on / without ages."""
    ms = int(moment(10, 0).timestamp() * 1000)
    rows = one_visit(ms, session_seq=lambda n: n + 1)
    await store_events(stores, tenant.id, rows)
    assert await breakdown(client, tenant, D, D) == [row("/", 1, 2, 1, 0.0, 2)]
    assert len(grouped) == 1, "grouped"


async def test_filters_and_other_dimensions_are_grouped(client, visits, grouped):
    assert await breakdown(client, visits, D, D, metrics=["visitors"], filter="path==/home") == [
        {"path": "/home", "visitors": 3}]
    assert len(grouped) == 1, "a filter: grouped"
    assert not path_sums.applies(Window(D, D, "Asia/Kolkata"), [], METRICS, "path", 5), "half-hour zones"
    assert not path_sums.applies(Window(D, D, "UTC"), [], ["session_duration"], "path", 5)
    assert not path_sums.applies(Window(D, D, "UTC"), [], METRICS, "country", 5)
    assert not path_sums.applies(Window(D, D, "UTC"), [], METRICS, "path", 4)


async def test_a_visit_a_pod_of_the_version_before_started_leaves_the_ages_unknown(app, stores, worker, tenant):
    """Its session value names no first path, so its second event cannot say where the bounce it ends
    was: that event's ages are not known (0), and windows holding it group events."""
    for minute in (0, 1, 2):
        app.state.collector.clock = lambda minute=minute: moment(9, minute)
        await send(app, tenant, url=f"https://shop.example/{minute}")
        if minute == 0:
            [key] = [k async for k in stores.redis.scan_iter(match=f"oa:vp:{tenant.id}:*")]
            value = (await stores.redis.hget(key, "s")).decode()
            assert value.endswith("\n/0"), "the first pageview's path, while the visit is one pageview"
            await stores.redis.hset(key, "s", value.split("\n")[0])  # as schema 4's script left it
    await worker.drain()
    rows = sorted(await stored_rows(stores, tenant.id, "timestamp, path, path_visitor_age, bounce_path"))
    assert [row[1:] for row in rows] == [("/0", 65535, ""), ("/1", 0, ""), ("/2", 65535, "")]
