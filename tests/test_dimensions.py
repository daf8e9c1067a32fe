"""Pageviews grouped by every dimension and time bucket, on data where each one has its own values.

The data (day D is two days ago, UTC); a session's events share its referrer, source and UTM
fields, as the pipeline stores them:

    visitor 1, session 1: 10:00 pageview /a, 10:05 pageview /b  on a.example, from r1.example
                          with utm u1*, NL/NH/Amsterdam, desktop, Chrome, Windows
    visitor 2, session 2: 11:00 pageview /a, 11:01 event click on /a  on b.example, from r2.example
                          with utm u2*, DE/BE/Berlin, mobile, Safari, iOS
    visitor 1, session 3: 12:00 pageview /c on a.example, direct, NL/NH/Amsterdam, desktop, Chrome, Windows
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import pytest

from openanalytics.query import catalog
from tests.helpers import store_events

D = datetime.now(UTC).date() - timedelta(days=2)
DAY = D.isoformat()
UTM = ("source", "medium", "campaign", "term", "content")


def at(hour: int, minute: int = 0) -> int:
    return int(datetime.combine(D, time(hour, minute), UTC).timestamp() * 1000)


def visit(n: int, host: str, country: tuple[str, str, str], agent: tuple[str, str, str]) -> dict:
    acquired = {"referrer": f"https://r{n}.example/x", "referrer_source": f"r{n}.example",
                **{f"utm_{name}": f"u{n}{name[0]}" for name in UTM}} if n else {}
    return {"hostname": host, "country": country[0], "region": country[1], "city": country[2],
            "device": agent[0], "browser": agent[1], "os": agent[2], **acquired}


NL, DE = ("NL", "NH", "Amsterdam"), ("DE", "BE", "Berlin")
DESKTOP, PHONE = ("desktop", "Chrome", "Windows"), ("mobile", "Safari", "iOS")


def event(ms: int, visitor: int, session: int, path: str, where: dict, event_type: str = "pageview", name: str = ""):
    return {"event_id": str(uuid.uuid4()), "event_type": event_type, "event_name": name, "timestamp": ms,
            "received_at": ms, "origin": "collect", "visitor_id": visitor, "session_id": session, "path": path,
            "url": f"https://{where['hostname']}{path}", **where}


S1, S2, S3 = visit(1, "a.example", NL, DESKTOP), visit(2, "b.example", DE, PHONE), visit(0, "a.example", NL, DESKTOP)
EVENTS = [
    event(at(10), 1, 1, "/a", S1), event(at(10, 5), 1, 1, "/b", S1),
    event(at(11), 2, 2, "/a", S2), event(at(11, 1), 2, 2, "/a", S2, "event", "click"),
    event(at(12), 1, 3, "/c", S3),
]

# {dimension: {value: (pageviews, visitors)}}, counted by hand from the table above.
EXPECTED: dict[str, dict[str, tuple[int, int]]] = {
    "path": {"/a": (2, 2), "/b": (1, 1), "/c": (1, 1)},
    "hostname": {"a.example": (3, 1), "b.example": (1, 1)},
    "referrer": {"https://r1.example/x": (2, 1), "https://r2.example/x": (1, 1), "": (1, 1)},
    "source": {"r1.example": (2, 1), "r2.example": (1, 1), "": (1, 1)},
    **{f"utm_{name}": {f"u1{name[0]}": (2, 1), f"u2{name[0]}": (1, 1), "": (1, 1)} for name in UTM},
    "country": {"NL": (3, 1), "DE": (1, 1)},
    "region": {"NH": (3, 1), "BE": (1, 1)},
    "city": {"Amsterdam": (3, 1), "Berlin": (1, 1)},
    "device": {"desktop": (3, 1), "mobile": (1, 1)},
    "browser": {"Chrome": (3, 1), "Safari": (1, 1)},
    "os": {"Windows": (3, 1), "iOS": (1, 1)},
    "event_name": {"": (4, 2), "click": (0, 1)},
    "event_type": {"pageview": (4, 2), "event": (0, 1)},
    "entry_page": {"/a": (3, 2), "/c": (1, 1)},  # sessions 1 and 2 entered on /a
    "exit_page": {"/b": (2, 1), "/a": (1, 1), "/c": (1, 1)},
    "hour": {f"{DAY}T10:00:00+0000": (2, 1), f"{DAY}T11:00:00+0000": (1, 1), f"{DAY}T12:00:00+0000": (1, 1)},
    "day": {DAY: (4, 2)},
    "week": {(D - timedelta(days=D.weekday())).isoformat(): (4, 2)},
    "month": {D.replace(day=1).isoformat(): (4, 2)},
}


def test_every_dimension_and_bucket_is_covered():
    assert set(EXPECTED) == {*catalog.DIMENSIONS, *catalog.BUCKETS}


@pytest.fixture
async def wide(stores, tenant):
    await store_events(stores, tenant.id, EVENTS)
    return tenant


async def pageviews(client, tenant, **params) -> dict:
    response = await client.get(f"/v1/projects/{tenant.id}/pageviews", headers=tenant.headers,
                                params={"from": DAY, "to": DAY, **params})
    assert response.status_code == 200, response.text
    return response.json()


async def test_pageviews_by_every_dimension(client, wide):
    for dimension, expected in EXPECTED.items():
        body = await pageviews(client, wide, group_by=dimension)
        assert body["totals"] == {"pageviews": 4, "visitors": 2, "events": 5}, dimension
        found = {row[dimension]: (row["pageviews"], row["visitors"]) for row in body["results"]
                 if row["pageviews"] or row["visitors"]}  # buckets list empty hours too
        assert found == expected, dimension


async def test_pageviews_pages_through_groups(client, wide):
    first = await pageviews(client, wide, group_by="path", limit=2)
    assert [(r["path"], r["pageviews"]) for r in first["results"]] == [("/a", 2), ("/b", 1)]  # a tie: by name
    assert first["next_offset"] == 2
    second = await pageviews(client, wide, group_by="path", limit=2, offset=2)
    assert [(r["path"], r["pageviews"]) for r in second["results"]] == [("/c", 1)]
    assert second["next_offset"] is None
    beyond = await pageviews(client, wide, group_by="path", limit=2, offset=4)
    assert beyond["results"] == [] and beyond["next_offset"] is None


async def test_a_filter_on_a_session_source_keeps_whole_visits(client, wide):
    body = await pageviews(client, wide, group_by="path", filter="utm_campaign==u1c")
    assert {r["path"]: r["pageviews"] for r in body["results"]} == {"/a": 1, "/b": 1}
    assert body["totals"] == {"pageviews": 2, "visitors": 1, "events": 2}
