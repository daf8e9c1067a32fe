"""Visitors summed from each event's visitor age (query/visitor_sums.py) in totals and time series, on
the visits of test_path_sums.py (made by the real /collect pipeline), with hand-counted answers; and
the same answers as counting visitor ids."""

from __future__ import annotations

from datetime import UTC, timedelta
from itertools import product

import pytest

from openanalytics.provisioning.events_schema import database_name
from openanalytics.query import session_sums, visitor_sums
from openanalytics.query.aggregate import Aggregate, values
from openanalytics.query.window import Window
from tests.helpers import aggregate_spy, one_visit, query_plan, store_events, stored_rows
from tests.test_collect_pipeline import send
from tests.test_path_sums import BEFORE, D, moment, visits  # noqa: F401 (visits: the fixture)

METRICS = ["visitors", "pageviews", "events", "conversions"]


@pytest.fixture
def grouped(monkeypatch) -> list:
    """The queries that counted visitor ids instead of summing."""
    return aggregate_spy(monkeypatch, visitor_sums, session_sums)


async def series(client, tenant, first, last, interval, zone="UTC") -> list[dict]:
    response = await client.get(f"/v1/projects/{tenant.id}/timeseries", headers=tenant.headers, params={
        "from": first.isoformat(), "to": last.isoformat(), "timezone": zone, "interval": interval,
        "metrics": ",".join(METRICS)})
    assert response.status_code == 200, response.text
    return response.json()["results"]


async def test_the_pipeline_records_each_events_visitor_age(visits, stores):
    found = await stored_rows(stores, visits.id, "timestamp, visitor_age")
    ages = {at.replace(tzinfo=UTC): age for at, age in found}
    assert ages[moment(23, 50, BEFORE)] == 65535
    assert ages[moment(0, 10)] == 1 + 1, "A: the hour before"
    assert ages[moment(0, 20)] == 0 + 1, "A: the same hour, on another path"
    assert ages[moment(8, 0)] == 6 + 1, "H's second visit"
    assert ages[moment(14, 0)] == 4 + 1, "C's second visit"
    assert ages[moment(13, 0)] == 0, "server-side: no age"


async def test_days_hours_and_a_week_cut_by_the_window(client, visits, grouped):
    day = {"visitors": 7, "pageviews": 8, "events": 11, "conversions": 1}
    assert await series(client, visits, BEFORE, D, "day") == [
        {"bucket": BEFORE.isoformat(), "visitors": 2, "pageviews": 2, "events": 2, "conversions": 0},
        {"bucket": D.isoformat(), **day}]
    hours = {row["bucket"][11:13]: row["visitors"] for row in await series(client, visits, D, D, "hour")}
    assert hours == {"00": 2, "01": 0, "02": 1, "03": 0, "04": 0, "05": 0, "06": 0, "07": 0, "08": 1, "09": 0,
                     "10": 1, "11": 1, "12": 1, "13": 1, "14": 1, **{f"{h:02}": 0 for h in range(15, 24)}}
    # A week bucket opens before the window (D is no Monday): A's first event on D counts from before
    # the window, not from before the week.
    (week,) = await series(client, visits, D, D, "week")
    assert {k: v for k, v in week.items() if k != "bucket"} == day
    assert grouped == [], "summed, not counted"


async def test_totals_without_session_metrics_are_summed_too(client, visits, grouped):
    response = await client.get(f"/v1/projects/{visits.id}/stats", headers=visits.headers, params={
        "from": D.isoformat(), "to": D.isoformat(), "metrics": "visitors,pageviews"})
    assert response.json()["results"] == {"visitors": 7, "pageviews": 8}
    assert grouped == [], "summed, not counted"


async def test_sums_answer_as_counting_does(visits, stores):
    table = f"{database_name(visits.id)}.events"
    for zone, interval, days in product(["UTC", "Europe/Amsterdam", "America/New_York"],
                                        ["hour", "day", "week", "month"], [(0, 0), (-1, 0), (0, 1)]):
        window = Window(D + timedelta(days=days[0]), D + timedelta(days=days[1]), zone)
        assert visitor_sums.applies(window, [], METRICS, interval, 5)
        found = await stores.events.run(stores.events.rows, *visitor_sums.series_sql(table, window, interval))
        assert all(row[-1] == 0 for row in found), "every session event has its age: the sums answer"
        summed = [(row[0], values(row[1:-1], METRICS)) for row in found]
        counted = sorted(await Aggregate(table, window, [], METRICS, group=interval).run(stores.events))
        assert summed == counted, (zone, interval, days)


async def test_the_sums_are_read_from_the_hourly_projection(visits, stores):
    table, window = f"{database_name(visits.id)}.events", Window(BEFORE, D, "Europe/Amsterdam")
    for statement, params in (visitor_sums.series_sql(table, window, "day"), session_sums.sql(table, window)):
        plan = await query_plan(stores, statement, params)
        assert "hourly_visitors" in plan, plan


async def test_events_stored_without_visitor_ages_are_counted_instead(client, stores, tenant, grouped):
    ms = int(moment(10, 0).timestamp() * 1000)
    rows = one_visit(ms)
    await store_events(stores, tenant.id, rows)
    (day,) = await series(client, tenant, D, D, "day")
    assert day == {"bucket": D.isoformat(), "visitors": 1, "pageviews": 2, "events": 2, "conversions": 0}
    assert len(grouped) == 1, "counted"
    assert not visitor_sums.applies(Window(D, D, "Asia/Kolkata"), [], METRICS, "day", 5), "half-hour zones"
    lord_howe = Window(D.replace(month=3, day=1), D.replace(month=10, day=31), "Australia/Lord_Howe")
    assert not visitor_sums.applies(lord_howe, [], METRICS, "day", 5), "half an hour of summer time"
    assert not visitor_sums.applies(Window(D, D, "UTC"), [], ["sessions"], "day", 5)
    assert not visitor_sums.applies(Window(D, D, "UTC"), ["a filter"], METRICS, "day", 5)
    assert not visitor_sums.applies(Window(D, D, "UTC"), [], METRICS, "path", 5)


async def test_a_visitor_whose_hash_is_lost_begins_anew(app, stores, worker, tenant):
    """Redis lost the visitor's hash (evicted, say) while its visit went on: its paths and its visit are
    gone together, so its next event begins a visit with nothing before it, never one with half a past."""
    for minute in (0, 1):
        app.state.collector.clock = lambda minute=minute: moment(9, minute)
        await send(app, tenant)
        if minute == 0:
            [key] = [k async for k in stores.redis.scan_iter(match=f"oa:vp:{tenant.id}:*")]
            await stores.redis.delete(key)
    await worker.drain()
    rows = sorted(await stored_rows(stores, tenant.id, "timestamp, session_seq, visitor_age, path_visitor_age, path_session_age"))
    assert [row[1:] for row in rows] == [(1, 65535, 65535, 65535), (1, 65535, 65535, 65535)]


async def test_a_visitors_events_keep_their_order_across_visits(app, stores, worker, tenant):
    """A hit stamped before its visitor's last event (another pod's clock, a batch committed late) is stored
    at that event's time, even when it starts a visit: ages never count from a later event."""
    for at in (moment(10, 5), moment(10, 0)):
        app.state.collector.clock = lambda at=at: at
        await send(app, tenant)
        for key in [k async for k in stores.redis.scan_iter(match=f"oa:vp:{tenant.id}:*")]:
            await stores.redis.hdel(key, "s")  # its visit ends
    await worker.drain()
    rows = sorted(await stored_rows(stores, tenant.id, "timestamp, session_seq, visitor_age"))
    assert [(at.replace(tzinfo=UTC), seq, age) for at, seq, age in rows] == [
        (moment(10, 5), 1, 1), (moment(10, 5), 1, 65535)], "the later-stamped first, then the one stored at its time"
