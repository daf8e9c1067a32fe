"""Totals summed from each event's place in its session (query/session_sums.py), on events the real
/collect pipeline made, with hand-counted answers; and the same answers as grouping whole sessions.

Day D is two days ago (UTC). Each visitor is its own address; times are UTC:

    A: D-1 23:50 pageview, D 00:10 pageview, D 00:20 pageview     going on when D opens
    B: D-1 23:55 pageview, D 00:05 pageview                       going on; one event on D: a bounce there
    G: D-1 23:41 pageview, D-1 23:51 pageview, D 00:15 pageview   going on; its third event alone on D
    C: D 10:00 pageview                                           a bounce
    E: D 11:00 pageview, D 11:05 event click
    F: D 12:00 conversion signup, 9.99 EUR                        not a pageview: no bounce
    server-side, no session: D 13:00 conversion renewal of user u9, 5 USD
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from itertools import product

import pytest

from openanalytics.provisioning.events_schema import database_name
from openanalytics.query import session_sums
from openanalytics.query.aggregate import Aggregate, values, zero
from openanalytics.query.window import Window
from tests.helpers import aggregate_spy, one_visit, query_plan, store_events, stored_rows
from tests.test_collect_pipeline import send

D = datetime.now(UTC).date() - timedelta(days=2)
METRICS = ["visitors", "pageviews", "sessions", "bounce_rate", "session_duration", "pages_per_session", "events",
           "conversions", "revenue"]


def moment(hour: int, minute: int, day=D) -> datetime:
    return datetime.combine(day, time(hour, minute), UTC)


BEFORE = D - timedelta(days=1)
HITS = [
    ("A", moment(23, 50, BEFORE), {}), ("A", moment(0, 10), {}), ("A", moment(0, 20), {}),
    ("B", moment(23, 55, BEFORE), {}), ("B", moment(0, 5), {}),
    ("G", moment(23, 41, BEFORE), {}), ("G", moment(23, 51, BEFORE), {}), ("G", moment(0, 15), {}),
    ("C", moment(10, 0), {}),
    ("E", moment(11, 0), {}), ("E", moment(11, 5), {"event_type": "event", "event_name": "click"}),
    ("F", moment(12, 0), {"event_type": "conversion", "event_name": "signup", "revenue": 9.99, "currency": "EUR"}),
]
ADDRESS = {name: f"198.51.{n}.7" for n, name in enumerate("ABGCEF", start=1)}  # apart once anonymised


@pytest.fixture
async def visits(app, client, stores, worker, tenant):
    for name, at, fields in sorted(HITS, key=lambda hit: hit[1]):
        app.state.collector.clock = lambda at=at: at
        await send(app, tenant, ip=ADDRESS[name], url=f"https://shop.example/{name}", **fields)
    renewal = {"event_type": "conversion", "event_name": "renewal", "user_id": "u9", "revenue": 5, "currency": "USD",
               "timestamp": int(moment(13, 0).timestamp() * 1000)}
    sent = await client.post(f"/v1/projects/{tenant.id}/events", json=[renewal], headers=tenant.headers)
    assert sent.status_code == 202, sent.text
    await worker.drain()
    return tenant


@pytest.fixture
def grouped(monkeypatch) -> list:
    """The windows /stats grouped by session for, instead of summing."""
    return aggregate_spy(monkeypatch, session_sums)


async def stats(client, tenant, first, last, zone="UTC") -> dict:
    response = await client.get(f"/v1/projects/{tenant.id}/stats", headers=tenant.headers,
                                params={"from": first.isoformat(), "to": last.isoformat(), "timezone": zone})
    assert response.status_code == 200, response.text
    return response.json()["results"]


async def test_the_pipeline_records_each_events_place_in_its_session(visits, stores):
    rows = await stored_rows(stores, visits.id, "timestamp, session_seq, session_gap_ms, bounce")
    places = {at.replace(tzinfo=UTC): (seq, gap, bounce) for at, seq, gap, bounce in rows}
    ten_minutes = 600_000
    assert [places[moment(h, m, day)] for h, m, day in ((23, 41, BEFORE), (23, 51, BEFORE), (0, 15, D))] == [
        (1, 0, 1), (2, ten_minutes, -1), (3, 24 * 60_000, 0)], "G: a bounce until its second event, then no more marks"
    assert places[moment(0, 5)] == (2, ten_minutes, -1), "B's second event, past midnight under its first day's visitor"
    assert places[moment(23, 55, BEFORE)] == (1, 0, 1)
    assert places[moment(12, 0)] == (1, 0, 0), "F opens with a conversion: never a bounce"
    assert places[moment(11, 5)] == (2, 5 * 60_000, -1)


async def test_totals_of_a_day_visits_were_going_on_into(client, visits, grouped):
    assert await stats(client, visits, D, D) == {
        "visitors": 7, "pageviews": 6, "sessions": 6, "bounce_rate": 0.5, "session_duration": 150.0,
        "pages_per_session": 1.0, "events": 9, "conversions": 2, "revenue": {"EUR": "9.9900", "USD": "5.0000"}}
    assert grouped == [], "summed, not grouped by session"


async def test_totals_of_the_day_before_and_of_both(client, visits, grouped):
    assert await stats(client, visits, BEFORE, BEFORE) == {
        "visitors": 3, "pageviews": 4, "sessions": 3, "bounce_rate": 0.6667, "session_duration": 200.0,
        "pages_per_session": 1.33, "events": 4, "conversions": 0, "revenue": {}}
    assert await stats(client, visits, BEFORE, D) == {
        "visitors": 7, "pageviews": 10, "sessions": 6, "bounce_rate": 0.1667, "session_duration": 790.0,
        "pages_per_session": 1.67, "events": 13, "conversions": 2, "revenue": {"EUR": "9.9900", "USD": "5.0000"}}
    assert grouped == [], "summed, not grouped by session"


async def test_sums_answer_as_grouping_whole_sessions_does(visits, stores):
    """Visitors counted from session starts (schema 4), or summed from ages (5)."""
    table = f"{database_name(visits.id)}.events"
    for zone, days, version in product(["UTC", "Europe/Amsterdam", "America/New_York"],
                                       [(0, 0), (-1, -1), (-1, 0), (0, 1)], [4, 5]):
        window = Window(D + timedelta(days=days[0]), D + timedelta(days=days[1]), zone)
        assert session_sums.applies(window, [], METRICS, version)
        row = (await stores.events.run(stores.events.rows, *session_sums.sql(table, window, version)))[0]
        assert row[-1] == 0, "every session event has its place: the sums answer"
        grouped = await Aggregate(table, window, [], METRICS).run(stores.events)
        assert values(row[:-1], METRICS) == (grouped[0][1] if grouped else zero(METRICS)), (zone, days, version)


async def test_the_sums_are_read_from_the_hourly_projection(visits, stores):
    window = Window(BEFORE, D, "UTC")
    statement, params = session_sums.sql(f"{database_name(visits.id)}.events", window)
    plan = await query_plan(stores, statement, params)
    assert "hourly_totals" in plan, plan


async def test_events_stored_without_their_place_are_grouped_by_session_instead(client, stores, tenant, grouped):
    """As events stored before schema 4: B's two events without places, on D."""
    ms = int(moment(10, 0).timestamp() * 1000)
    rows = one_visit(ms)
    await store_events(stores, tenant.id, rows)
    window = Window(D, D, "UTC")
    row = (await stores.events.run(stores.events.rows, *session_sums.sql(f"{database_name(tenant.id)}.events", window)))[0]
    assert row[-1] == 2 + 2, "two session events without a place, and the same without a visitor age"
    assert await stats(client, tenant, D, D) == {
        "visitors": 1, "pageviews": 2, "sessions": 1, "bounce_rate": 0.0, "session_duration": 60.0,
        "pages_per_session": 2.0, "events": 2, "conversions": 0, "revenue": {}}
    assert grouped == [window]


def test_sums_answer_only_unfiltered_totals_over_whole_hours_with_session_metrics():
    whole = Window(D, D, "Europe/Amsterdam")
    assert session_sums.applies(whole, [], ["bounce_rate"], 4)
    assert not session_sums.applies(Window(D, D, "Asia/Kolkata"), [], ["bounce_rate"], 4), "a half-hour zone"
    assert not session_sums.applies(whole, ["a filter"], ["bounce_rate"], 4)
    assert not session_sums.applies(whole, [], ["visitors", "pageviews"], 4), "nothing per session: one pass anyway"
    assert session_sums.applies(whole, [], ["visitors", "pageviews"], 5), "visitors are summed too"
    assert not session_sums.applies(whole, [], ["bounce_rate"], 3), "no places before schema 4"


async def test_a_session_value_of_an_older_version_leaves_the_place_unknown(app, stores, worker, tenant):
    """A session a pod of the version before started has no count: its events' places stay unknown (0)."""
    for minute in (0, 1, 2):
        app.state.collector.clock = lambda minute=minute: moment(9, minute)
        await send(app, tenant)
        if minute == 0:
            await worker.drain()
            [key] = [k async for k in stores.redis.scan_iter(match=f"oa:vp:{tenant.id}:*")]
            sid, seen, visitor, *_ = (await stores.redis.hget(key, "s")).decode().split(":")
            await stores.redis.hset(key, "s", f"{sid}:{seen}:{visitor}")
    await worker.drain()
    rows = sorted(await stored_rows(stores, tenant.id, "timestamp, session_seq, session_gap_ms, bounce"))
    assert [row[1:] for row in rows] == [(1, 0, 1), (0, 60_000, 0), (0, 60_000, 0)]


async def test_hits_of_a_visit_committed_out_of_order_keep_its_order(app, stores, worker, tenant):
    """Pods stamp hits with their own clocks and commit them apart: a hit stamped before its session's
    last event is stored at that event's time, so the session's events stay in order."""
    for at in (moment(10, 1), moment(10, 0), moment(10, 2)):
        app.state.collector.clock = lambda at=at: at
        await send(app, tenant)
    await worker.drain()
    rows = sorted(await stored_rows(stores, tenant.id, "session_seq, timestamp, session_gap_ms, bounce"))
    assert [(seq, at.replace(tzinfo=UTC), gap, bounce) for seq, at, gap, bounce in rows] == [
        (1, moment(10, 1), 0, 1), (2, moment(10, 1), 0, -1), (3, moment(10, 2), 60_000, 0)]


async def test_events_stored_with_places_but_no_visitor_ages_are_summed_still(client, stores, tenant, grouped):
    """As events stored under schema 4: a visit of two pageviews; its visitor is counted from its start."""
    ms = int(moment(10, 0).timestamp() * 1000)
    rows = one_visit(ms, session_seq=lambda n: n + 1, session_gap_ms=lambda n: n * 60_000, bounce=lambda n: 1 - 2 * n)
    await store_events(stores, tenant.id, rows)
    assert await stats(client, tenant, D, D) == {
        "visitors": 1, "pageviews": 2, "sessions": 1, "bounce_rate": 0.0, "session_duration": 60.0,
        "pages_per_session": 2.0, "events": 2, "conversions": 0, "revenue": {}}
    assert grouped == [], "summed, with the visitors of session starts"
