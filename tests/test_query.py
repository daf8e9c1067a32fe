"""Stats, timeseries, breakdown and pageviews on a small hand-made data set with hand-computed answers.

The data (day D is two days ago, UTC; C's visit is the evening before):

    visitor 1, session 11: 10:00 pageview /        (Google, NL, Chrome, desktop)
                           10:01 pageview /pricing (NL)
                           10:03 conversion signup on /pricing, 10.50 EUR (NL)
    visitor 2, session 21: 11:00 pageview /pricing (DE, Firefox, mobile)              -> a bounce
    visitor 2, session 22: 15:00 pageview /        (Twitter, DE)
                           15:00:30 event click on /, property button=buy (DE)

Every event of a session carries the session's referrer and source, as the pipeline stores them.
    server, no session:    12:00 event invoice (no visitor); 13:00 conversion renewal, 5 USD (visitor 9)
    visitor 3, session 31: D-1 23:30 pageview /blog (Twitter, NL)                       -> a bounce
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import pytest

from tests.helpers import assert_error, store_events

D = datetime.now(UTC).date() - timedelta(days=2)
DAY = D.isoformat()
BEFORE = (D - timedelta(days=1)).isoformat()


def at(hour: int, minute: int = 0, second: int = 0, day=D) -> int:
    return int(datetime.combine(day, time(hour, minute, second), UTC).timestamp() * 1000)


def event(ms: int, event_type: str = "pageview", **fields) -> dict:
    return {"event_id": str(uuid.uuid4()), "event_type": event_type, "timestamp": ms, "received_at": ms,
            "origin": "collect" if fields.get("session_id") else "server", **fields}


A = {"visitor_id": 1, "session_id": 11, "country": "NL", "browser": "Chrome", "device": "desktop", "hostname": "shop.example"}
B21 = {"visitor_id": 2, "session_id": 21, "country": "DE", "browser": "Firefox", "device": "mobile", "hostname": "shop.example"}
B22 = {**B21, "session_id": 22}
C = {"visitor_id": 3, "session_id": 31, "country": "NL", "browser": "Chrome", "device": "desktop", "hostname": "shop.example"}
EVENTS = [
    event(at(10), path="/", referrer="https://www.google.com/", referrer_source="Google", **A),
    event(at(10, 1), path="/pricing", referrer="https://www.google.com/", referrer_source="Google", **A),
    event(at(10, 3), "conversion", event_name="signup", path="/pricing", revenue="10.5", currency="EUR",
          referrer="https://www.google.com/", referrer_source="Google", **A),
    event(at(11), path="/pricing", **B21),
    event(at(15), path="/", referrer="https://t.co/x", referrer_source="Twitter", **B22),
    event(at(15, 0, 30), "event", event_name="click", path="/", properties={"button": "buy"},
          referrer="https://t.co/x", referrer_source="Twitter", **B22),
    event(at(12), "event", event_name="invoice"),
    event(at(13), "conversion", event_name="renewal", revenue="5", currency="USD", visitor_id=9, user_id="u9"),
    event(at(23, 30, day=D - timedelta(days=1)), path="/blog", referrer_source="Twitter", **C),
]


@pytest.fixture
async def data(stores, tenant):
    await store_events(stores, tenant.id, EVENTS)
    return tenant


async def get(client, tenant, endpoint: str, **params) -> dict:
    response = await client.get(f"/v1/projects/{tenant.id}/{endpoint}", params=params, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()


ALL_ON_D = {"visitors": 3, "pageviews": 4, "sessions": 3, "bounce_rate": 0.3333, "session_duration": 70.0,
            "pages_per_session": 1.33, "events": 8, "conversions": 2, "revenue": {"EUR": "10.5000", "USD": "5.0000"}}


async def test_stats_on_one_day(client, data):
    body = await get(client, data, "stats", **{"from": DAY, "to": DAY})
    assert body["results"] == ALL_ON_D
    assert body["comparison"] is None and body["timezone"] == "UTC" and body["filters"] == []


async def test_stats_over_two_days_with_the_previous_period(client, data):
    body = await get(client, data, "stats", **{"from": BEFORE, "to": DAY})
    assert body["results"] == {"visitors": 4, "pageviews": 5, "sessions": 4, "bounce_rate": 0.5, "session_duration": 52.5,
                               "pages_per_session": 1.25, "events": 9, "conversions": 2,
                               "revenue": {"EUR": "10.5000", "USD": "5.0000"}}
    body = await get(client, data, "stats", **{"from": DAY, "to": DAY, "compare": "previous_period"})
    assert body["comparison"] == {"from": BEFORE, "to": BEFORE, "results": {
        "visitors": 1, "pageviews": 1, "sessions": 1, "bounce_rate": 1.0, "session_duration": 0.0,
        "pages_per_session": 1.0, "events": 1, "conversions": 0, "revenue": {}}}


@pytest.mark.parametrize(("zone", "now", "before"), [
    ("UTC", {"visitors": 1, "events": 3}, {"visitors": 1, "events": 1}),
    # C's 23:30 UTC visit the evening before is 00:30 or 01:30 on day D in Amsterdam (UTC+1 or +2)
    ("Europe/Amsterdam", {"visitors": 2, "events": 4}, {"visitors": 0, "events": 0}),
])
async def test_the_previous_period_takes_the_filters_and_the_timezone(client, data, zone, now, before):
    body = await get(client, data, "stats", **{"from": DAY, "to": DAY, "filter": "country==NL", "timezone": zone,
                                               "metrics": "visitors,events", "compare": "previous_period"})
    assert body["results"] == now
    assert body["comparison"] == {"from": BEFORE, "to": BEFORE, "results": before}


@pytest.mark.parametrize(("filters", "expected"), [
    (["country==NL"], {"visitors": 1, "pageviews": 2, "sessions": 1, "bounce_rate": 0.0, "events": 3,
      "revenue": {"EUR": "10.5000"}}),
    (["country!=NL"], {"visitors": 2, "pageviews": 2, "sessions": 2, "bounce_rate": 0.5, "events": 5,
      "revenue": {"USD": "5.0000"}}),
    (["path=@pric"], {"visitors": 2, "pageviews": 2, "sessions": 2, "bounce_rate": 0.5, "events": 3,
      "revenue": {"EUR": "10.5000"}}),
    (["path!@pric", "device==mobile"], {"visitors": 1, "pageviews": 1, "sessions": 1, "bounce_rate": 0.0, "events": 2,
      "revenue": {}}),
    (["property:button==buy"], {"visitors": 1, "pageviews": 0, "sessions": 1, "bounce_rate": 0.0, "events": 1,
      "revenue": {}}),
    (["event_name==renewal"], {"visitors": 1, "pageviews": 0, "sessions": 0, "bounce_rate": 0.0, "events": 1,
      "revenue": {"USD": "5.0000"}}),
    (["entry_page==/pricing"], {"visitors": 1, "pageviews": 1, "sessions": 1, "bounce_rate": 1.0, "events": 1,
      "revenue": {}}),
    (["exit_page==/"], {"visitors": 1, "pageviews": 1, "sessions": 1, "bounce_rate": 0.0, "events": 2,
      "revenue": {}}),
    (["source==Google"], {"visitors": 1, "pageviews": 2, "sessions": 1, "bounce_rate": 0.0, "events": 3,
      "revenue": {"EUR": "10.5000"}}),  # the whole of session 11, its conversion too
])
async def test_filters_combine_on_stats(client, data, filters, expected):
    body = await get(client, data, "stats", **{"from": DAY, "to": DAY, "filter": filters,
                                               "metrics": ",".join(expected)})
    assert body["results"] == expected
    assert body["filters"] == filters


async def test_session_metrics_describe_whole_sessions_a_filter_picks(client, data):
    body = await get(client, data, "stats", **{"from": DAY, "to": DAY, "filter": "path==/pricing",
                                               "metrics": "session_duration,pages_per_session"})
    # sessions 11 (180 s, 2 pages) and 21 (0 s, 1 page), whole
    assert body["results"] == {"session_duration": 90.0, "pages_per_session": 1.5}


async def test_conversions_and_revenue_by_event_name(client, data):
    body = await get(client, data, "breakdown", **{"from": DAY, "to": DAY, "dimension": "event_name",
                                                   "metrics": "conversions,revenue", "filter": "event_type==conversion"})
    assert body["results"] == [
        {"event_name": "renewal", "conversions": 1, "revenue": {"USD": "5.0000"}},
        {"event_name": "signup", "conversions": 1, "revenue": {"EUR": "10.5000"}},
    ]


async def test_breakdown_by_source(client, data):
    body = await get(client, data, "breakdown", **{"from": DAY, "to": DAY, "dimension": "source",
                                                   "metrics": "visitors,pageviews,sessions,bounce_rate"})
    assert body["results"] == [
        {"source": "", "visitors": 2, "pageviews": 1, "sessions": 1, "bounce_rate": 1.0},  # session 21, server events
        {"source": "Google", "visitors": 1, "pageviews": 2, "sessions": 1, "bounce_rate": 0.0},
        {"source": "Twitter", "visitors": 1, "pageviews": 1, "sessions": 1, "bounce_rate": 0.0},
    ]
    assert body["next_offset"] is None
    body = await get(client, data, "breakdown", **{"from": DAY, "to": DAY, "dimension": "source",
                                                   "metrics": "conversions,revenue"})
    assert body["results"] == [  # session 11 converted three pages after landing from Google
        {"source": "", "conversions": 1, "revenue": {"USD": "5.0000"}},
        {"source": "Google", "conversions": 1, "revenue": {"EUR": "10.5000"}},
        {"source": "Twitter", "conversions": 0, "revenue": {}},
    ]


async def test_breakdown_by_entry_page(client, data):
    body = await get(client, data, "breakdown", **{"from": DAY, "to": DAY, "dimension": "entry_page",
                                                   "metrics": "sessions,visitors,bounce_rate,pageviews,revenue"})
    assert body["results"] == [
        {"entry_page": "/", "sessions": 2, "visitors": 2, "bounce_rate": 0.0, "pageviews": 3, "revenue": {"EUR": "10.5000"}},
        {"entry_page": "/pricing", "sessions": 1, "visitors": 1, "bounce_rate": 1.0, "pageviews": 1, "revenue": {}},
    ]


async def test_breakdown_pages(client, data):
    params = {"from": DAY, "to": DAY, "dimension": "path", "metrics": "pageviews,visitors", "limit": 1}
    first = await get(client, data, "breakdown", **params)
    assert first["results"] == [{"path": "/", "pageviews": 2, "visitors": 2}]  # a tie with /pricing: by name
    assert first["next_offset"] == 1
    second = await get(client, data, "breakdown", **{**params, "offset": 1})
    assert second["results"] == [{"path": "/pricing", "pageviews": 2, "visitors": 2}]
    third = await get(client, data, "breakdown", **{**params, "offset": 2})
    assert third["results"] == [{"path": "", "pageviews": 0, "visitors": 1}] and third["next_offset"] is None


async def test_bounces_count_under_the_group_of_their_one_event_when_it_matches(client, data):
    # On D: A's session has 3 events, B21 one pageview (/pricing, a bounce), B22 a pageview and a click.
    by_path = await get(client, data, "breakdown", **{"from": DAY, "to": DAY, "dimension": "path",
                                                      "metrics": "sessions,bounce_rate", "filter": "country==DE"})
    assert by_path["results"] == [{"path": "/", "sessions": 1, "bounce_rate": 0.0},
                                  {"path": "/pricing", "sessions": 1, "bounce_rate": 1.0}]
    # B21's bounce does not match path==/, so the day has two sessions and no bounce.
    by_day = await get(client, data, "timeseries", **{"from": DAY, "to": DAY, "metrics": "sessions,bounce_rate",
                                                      "filter": "path==/"})
    assert by_day["results"] == [{"bucket": DAY, "sessions": 2, "bounce_rate": 0.0}]
    by_country = await get(client, data, "breakdown", **{"from": BEFORE, "to": DAY, "dimension": "country",
                                                         "metrics": "sessions,bounce_rate,visitors,revenue"})
    assert by_country["results"] == [
        {"country": "NL", "sessions": 2, "bounce_rate": 0.5, "visitors": 2, "revenue": {"EUR": "10.5000"}},
        {"country": "DE", "sessions": 2, "bounce_rate": 0.5, "visitors": 1, "revenue": {}},
        {"country": "", "sessions": 0, "bounce_rate": 0.0, "visitors": 1, "revenue": {"USD": "5.0000"}},
    ]


@pytest.mark.parametrize("filters", [[], ["entry_page==/"], ["exit_page!=/pricing"], ["property:button==buy"],
                                     ["country!=NL", "path=@p"]])
async def test_counting_sessions_and_bounces_agrees_with_joining_whole_sessions(client, data, filters):
    """Asking for session_duration too takes the joined shape; sessions and bounce rate must not move."""
    for dimension in ("path", "country", "source", "browser"):
        answers = []
        for metrics in ("sessions,bounce_rate", "sessions,bounce_rate,session_duration"):
            body = await get(client, data, "breakdown", **{"from": BEFORE, "to": DAY, "dimension": dimension,
                                                           "metrics": metrics, "filter": filters, "limit": 100})
            answers.append({row[dimension]: (row["sessions"], row["bounce_rate"]) for row in body["results"]})
        assert answers[0] == answers[1], (dimension, filters)
        assert answers[0] or filters, dimension


async def test_daily_timeseries_in_utc_and_in_amsterdam(client, data):
    utc = await get(client, data, "timeseries", **{"from": BEFORE, "to": DAY})
    assert utc["results"] == [{"bucket": BEFORE, "visitors": 1, "pageviews": 1},
                              {"bucket": DAY, "visitors": 3, "pageviews": 4}]
    # C's 23:30 UTC visit is past midnight in Amsterdam (UTC+1 in winter, +2 in summer)
    local = await get(client, data, "timeseries", **{"from": BEFORE, "to": DAY, "timezone": "Europe/Amsterdam"})
    assert local["results"] == [{"bucket": BEFORE, "visitors": 0, "pageviews": 0},
                                {"bucket": DAY, "visitors": 4, "pageviews": 5}]


async def test_hourly_timeseries_is_zero_filled(client, data):
    body = await get(client, data, "timeseries", **{"from": DAY, "to": DAY, "interval": "hour",
                                                     "metrics": "visitors,pageviews,events"})
    assert len(body["results"]) == 24
    busy = {row["bucket"]: {k: v for k, v in row.items() if k != "bucket"}
            for row in body["results"] if row["events"]}
    assert busy == {
        f"{DAY}T10:00:00+0000": {"visitors": 1, "pageviews": 2, "events": 3},
        f"{DAY}T11:00:00+0000": {"visitors": 1, "pageviews": 1, "events": 1},
        f"{DAY}T12:00:00+0000": {"visitors": 0, "pageviews": 0, "events": 1},
        f"{DAY}T13:00:00+0000": {"visitors": 1, "pageviews": 0, "events": 1},
        f"{DAY}T15:00:00+0000": {"visitors": 1, "pageviews": 1, "events": 2},
    }


async def test_weekly_and_monthly_buckets(client, data):
    weeks = await get(client, data, "timeseries", **{"from": BEFORE, "to": DAY, "interval": "week"})
    mondays = sorted({(day - timedelta(days=day.weekday())).isoformat() for day in (D - timedelta(days=1), D)})
    assert [row["bucket"] for row in weeks["results"]] == mondays
    assert sum(row["pageviews"] for row in weeks["results"]) == 5
    months = await get(client, data, "timeseries", **{"from": BEFORE, "to": DAY, "interval": "month"})
    firsts = sorted({day.replace(day=1).isoformat() for day in (D - timedelta(days=1), D)})
    assert [row["bucket"] for row in months["results"]] == firsts
    assert sum(row["visitors"] for row in months["results"]) == 4


async def test_pageviews_grouped_by_any_dimension(client, data):
    body = await get(client, data, "pageviews", **{"from": DAY, "to": DAY, "group_by": "country"})
    assert body["totals"] == {"pageviews": 4, "visitors": 3, "events": 8}
    assert body["results"] == [
        {"country": "DE", "pageviews": 2, "visitors": 1, "events": 3},
        {"country": "NL", "pageviews": 2, "visitors": 1, "events": 3},
        {"country": "", "pageviews": 0, "visitors": 1, "events": 2},
    ]
    body = await get(client, data, "pageviews", **{"from": DAY, "to": DAY, "group_by": "hour", "filter": "browser==Chrome"})
    assert [row["hour"] for row in body["results"] if row["pageviews"]] == [f"{DAY}T10:00:00+0000"]


async def test_events_list_newest_first_with_filters_and_pages(client, data):
    body = await get(client, data, "events", **{"from": BEFORE, "to": DAY, "limit": 4})
    assert [e["path"] for e in body["results"]] == ["/", "/", "", ""]  # 15:00:30, 15:00, 13:00, 12:00
    assert body["next_offset"] == 4
    rest = await get(client, data, "events", **{"from": BEFORE, "to": DAY, "limit": 4, "offset": 4})
    assert [e["timestamp"] for e in rest["results"]] == sorted((e["timestamp"] for e in rest["results"]), reverse=True)
    assert len(rest["results"]) == 4 and rest["next_offset"] == 8
    click = body["results"][0]
    assert click["event_name"] == "click" and click["properties"] == {"button": "buy"}
    assert click["session_id"] == "22" and click["visitor_id"] == "2" and click["timestamp"].endswith("Z")
    assert not {"ip", "user_agent", "ua"} & set(click)
    conversions = await get(client, data, "events", **{"from": DAY, "to": DAY, "event_type": "conversion"})
    assert {(e["event_name"], e["revenue"], e["currency"]) for e in conversions["results"]} == {
        ("signup", "10.5000", "EUR"), ("renewal", "5.0000", "USD")}
    named = await get(client, data, "events", **{"from": DAY, "to": DAY, "event_name": "signup", "filter": "country==NL"})
    assert [e["event_name"] for e in named["results"]] == ["signup"]


async def test_sessions_list_and_totals(client, data):
    body = await get(client, data, "sessions", **{"from": BEFORE, "to": DAY})
    assert body["totals"] == {"sessions": 4, "visitors": 3, "pageviews": 5, "bounce_rate": 0.5,
                              "session_duration": 52.5, "pages_per_session": 1.25}
    rows = {row["session_id"]: row for row in body["results"]}
    assert list(rows) == ["22", "21", "11", "31"]  # newest first
    assert {k: rows["11"][k] for k in ("visitor_id", "duration", "pageviews", "events", "entry_page", "exit_page",
                                       "source", "country", "device", "browser")} == {
        "visitor_id": "1", "duration": 180.0, "pageviews": 2, "events": 3, "entry_page": "/",
        "exit_page": "/pricing", "source": "Google", "country": "NL", "device": "desktop", "browser": "Chrome"}
    assert rows["22"]["duration"] == 30.0 and rows["22"]["source"] == "Twitter"
    picked = await get(client, data, "sessions", **{"from": BEFORE, "to": DAY, "filter": "path==/pricing", "limit": 1})
    assert [row["session_id"] for row in picked["results"]] == ["21"] and picked["next_offset"] == 1
    # sessions 11 and 21, whole: the totals add up what the rows list
    assert picked["totals"] == {"sessions": 2, "visitors": 2, "pageviews": 3, "bounce_rate": 0.5,
                                "session_duration": 90.0, "pages_per_session": 1.5}


@pytest.mark.parametrize(("endpoint", "params", "code", "fragment"), [
    ("stats", {"metrics": "visitors,dwell_time"}, "unknown_metric", "allowed: visitors, pageviews"),
    ("breakdown", {"dimension": "ip"}, "unknown_dimension", "allowed: path, hostname"),
    ("breakdown", {"dimension": "path", "filter": "user_agent==x"}, "unknown_dimension", "property:<key>"),
    ("stats", {"filter": "country~NL"}, "invalid_filter", "=@"),
    ("stats", {"timezone": "Mars/Olympus"}, "invalid_timezone", "IANA"),
    ("stats", {"timezone": "../../etc/passwd"}, "invalid_timezone", "IANA"),
    ("stats", {"timezone": "Europe"}, "invalid_timezone", "IANA"),
    ("timeseries", {"timezone": "right/UTC"}, "invalid_timezone", "IANA"),
    ("breakdown", {"dimension": "path", "timezone": "localtime"}, "invalid_timezone", "IANA"),
    ("stats", {"from": DAY, "to": BEFORE}, "invalid_range", "after"),
    ("timeseries", {"from": "2026-02-30"}, "validation_error", "from"),
    ("stats", {"from": "1747008000"}, "validation_error", "YYYY-MM-DD"),  # not a Unix time
    ("stats", {"to": f"{DAY}T00:00:00+05:00"}, "validation_error", "YYYY-MM-DD"),  # not a date-time
    ("events", {"from": f" {DAY}"}, "validation_error", "YYYY-MM-DD"),
    ("breakdown", {"dimension": "path", "from": "2020-01-01"}, "range_beyond_retention", "730 days"),
    ("stats", {"from": (D - timedelta(days=700)).isoformat(), "compare": "previous_period"},  # back to D-1403
     "range_beyond_retention", "previous period"),
    ("stats", {"from": (D - timedelta(days=360)).isoformat(), "compare": "previous_period"}, None, None),
    ("timeseries", {"interval": "hour", "from": BEFORE, "to": (D + timedelta(days=1)).isoformat(),
                    "timezone": "UTC"}, None, None),
    ("timeseries", {"interval": "hour", "from": (D - timedelta(days=40)).isoformat()}, "invalid_range", "31 days"),
    ("timeseries", {"interval": "fortnight"}, "validation_error", "interval"),
    ("pageviews", {"group_by": "visitors"}, "unknown_dimension", "hour, day, week, month"),
])
async def test_nonsense_is_a_clear_400(client, tenant, endpoint, params, code, fragment):
    params = {"from": DAY, "to": DAY, **params}
    response = await client.get(f"/v1/projects/{tenant.id}/{endpoint}", params=params, headers=tenant.headers)
    if code is None:  # the sane neighbour of a nonsense case
        assert response.status_code == 200, response.text
        return
    assert fragment in assert_error(response, 400, code)["message"]


HOSTILE = ["' OR 1=1 --", "x') UNION ALL SELECT * FROM system.tables --", "{start:String}", "\\'; DROP TABLE events; --",
           "a\u0000b", "%' OR '%'='"]


@pytest.mark.parametrize("value", HOSTILE)
async def test_hostile_filter_values_match_nothing(client, data, value):
    for name in ("path", "country", "entry_page", "property:button"):
        for op in ("==", "=@"):
            body = await get(client, data, "stats", **{"from": DAY, "to": DAY, "metrics": "events",
                                                       "filter": f"{name}{op}{value}"})
            assert body["results"] == {"events": 0}, (name, op)
        for op in ("!=", "!@"):
            body = await get(client, data, "stats", **{"from": DAY, "to": DAY, "metrics": "events",
                                                       "filter": f"{name}{op}{value}"})
            everything = {"entry_page": 6} .get(name, ALL_ON_D["events"])  # entry pages: sessions only
            assert body["results"] == {"events": everything}, (name, op)


def hostile_requests(value: str) -> list[tuple[str, dict]]:
    """Every query endpoint, with `value` in each parameter that carries a value into SQL."""
    key = value.replace("=", "").replace("!", "").replace("@", "")
    picked = [f"path=={value}", f"property:{key}!@{value}"]
    return [
        ("stats", {"filter": picked, "metrics": "events,bounce_rate", "compare": "previous_period"}),
        ("timeseries", {"interval": "hour", "filter": picked}),
        ("breakdown", {"dimension": "path", "metrics": "visitors,bounce_rate,session_duration", "filter": picked}),
        ("pageviews", {"group_by": "entry_page", "filter": picked}),
        ("sessions", {"filter": picked}),
        ("events", {"event_name": value, "filter": picked}),
        ("funnel", {"step": [f"path=={value}", f"event_name=={value}"], "filter": picked}),
        ("conversions", {"filter": picked}),
    ]


@pytest.mark.parametrize("value", HOSTILE)
async def test_values_in_every_parameter_are_bound_never_sql(client, data, stores, monkeypatch, value):
    """The statements each endpoint runs are the same text for a hostile value as for a plain one."""
    ran: list[str] = []
    rows = stores.events.rows
    monkeypatch.setattr(stores.events, "rows", lambda sql, params=None: ran.append(sql) or rows(sql, params))
    from openanalytics.auth.keys import issue_key

    goals = f"/v1/projects/{data.id}/goals"
    with stores.db.session() as session:
        manager = {"Authorization": f"Bearer {issue_key(session, data.id, 'goals', ['goals:manage']).secret}"}

    async def statements(text: str) -> list[str]:
        made = [(await client.post(goals, headers=manager, json=goal)).json()["id"] for goal in (
            {"name": "a", "match": "event_name", "value": text}, {"name": "b", "match": "path", "value": "/" + text})
            if "\x00" not in value]  # a goal cannot hold NUL (test_stored_text.py)
        ran.clear()
        for endpoint, params in hostile_requests(text):
            body = await get(client, data, endpoint, **{"from": DAY, "to": DAY, **params})
            assert not any(body.get(name) for name in ("results", "sessions") if isinstance(body.get(name), list)) \
                or endpoint in ("timeseries", "funnel"), (endpoint, body)  # nothing matches the value
            if endpoint == "funnel":
                assert [s["visitors"] for s in body["steps"]] == [0, 0]
            if endpoint == "conversions":
                assert [g["conversions"] for g in body["goals"]] == [0] * len(made)
        for goal in made:
            await client.delete(f"{goals}/{goal}", headers=manager)
        return list(ran)

    plain, hostile = await statements("plain"), await statements(value)
    assert len(plain) >= len(hostile_requests("x"))
    assert hostile == plain
    assert not any(value in sql for sql in hostile)


@pytest.mark.parametrize(("metrics", "group"), [
    (["visitors", "revenue"], "path"),  # flat
    (["bounce_rate", "revenue"], None),  # per session
    (["sessions"], "entry_page"),  # per session, by a session dimension
    (["bounce_rate", "sessions", "revenue"], "path"),  # counted
    (["session_duration", "visitors"], "day"),  # joined
])
def test_values_never_change_the_shape_of_the_sql(metrics, group):
    from openanalytics.query.aggregate import Aggregate
    from openanalytics.query.filters import parse
    from openanalytics.query.window import Window

    span = Window(D, D, "Europe/Amsterdam")

    def statement(value: str, key: str) -> tuple[str, dict]:
        texts = [f"path=={value}", f"entry_page!@{value}", f"property:{key}=@{value}"]
        return Aggregate("oa_prj_0000000000000000.events", span, parse(texts), metrics, group).sql(10, 0)

    benign, _ = statement("/pricing", "k")
    for value in HOSTILE:
        key = value.replace("=", "").replace("!", "").replace("@", "")
        sql, params = statement(value, key)
        assert sql == benign
        assert value not in sql and key not in sql
        assert list(params.values()).count(value) >= 3 and key in params.values()


@pytest.mark.parametrize(("zone", "day", "hours"), [
    ("Europe/Amsterdam", "2026-03-29", 23), ("Europe/Amsterdam", "2026-10-25", 25),
    ("Asia/Kolkata", "2026-10-25", 24), ("Australia/Lord_Howe", "2026-04-05", 25), ("America/Santiago", "2026-04-04", 25),
])
async def test_hour_buckets_in_sql_match_the_zero_filled_keys(stores, zone, day, hours):
    from openanalytics.query.catalog import BUCKETS
    from openanalytics.query.common import bucket_keys
    from openanalytics.query.window import Window

    span = Window(datetime.fromisoformat(day).date(), datetime.fromisoformat(day).date(), zone)
    keys = bucket_keys("hour", span)
    assert len(keys) == hours
    sql = (f"SELECT DISTINCT {BUCKETS['hour']} FROM (SELECT toDateTime64({{start:DateTime64(3, 'UTC')}}, 3, 'UTC') "
           "+ toIntervalMinute(number * 10) AS timestamp FROM numbers(200)) "
           "WHERE timestamp < {end:DateTime64(3, 'UTC')} ORDER BY 1")
    found = [row[0] for row in await stores.events.run(stores.events.rows, sql, span.params())]
    assert sorted(found) == sorted(keys)


# -- goals, conversions, funnels ------------------------------------------------------


async def test_goals_are_managed_with_their_own_scope(client, make_tenant):
    owner = make_tenant(scopes=["stats:read", "goals:manage"])
    reader = make_tenant(scopes=["stats:read"])
    url = f"/v1/projects/{owner.id}/goals"
    created = await client.post(url, json={"name": "Signups", "match": "event_name", "value": "signup"}, headers=owner.headers)
    assert created.status_code == 201, created.text
    goal = created.json()
    assert goal["id"].startswith("goal_") and goal["match"] == "event_name" and goal["value"] == "signup"
    again = await client.post(url, json={"name": "Signups", "match": "any_conversion"}, headers=owner.headers)
    assert_error(again, 409, "goal_exists")
    for bad in ({"name": "x", "match": "any_conversion", "value": "y"}, {"name": "x", "match": "path", "value": "pricing"},
                {"name": "x", "match": "event_type", "value": "purchase"}, {"name": "x", "match": "referrer", "value": "a"},
                {"name": "", "match": "any_conversion"}):
        assert_error(await client.post(url, json=bad, headers=owner.headers), 400)
    listed = (await client.get(url, headers=owner.headers)).json()
    assert [g["name"] for g in listed["goals"]] == ["Signups"]
    assert_error(await client.post(f"/v1/projects/{reader.id}/goals", json={"name": "a", "match": "any_conversion"},
                                   headers=reader.headers), 403)
    assert_error(await client.delete(f"{url}/{goal['id']}", headers=reader.headers), 404)  # another tenant's project
    assert_error(await client.delete(f"/v1/projects/{reader.id}/goals/{goal['id']}", headers=reader.headers), 403)
    assert (await client.delete(f"{url}/{goal['id']}", headers=owner.headers)).status_code == 204
    assert_error(await client.delete(f"{url}/{goal['id']}", headers=owner.headers), 404, "goal_not_found")
    assert (await client.get(url, headers=owner.headers)).json() == {"goals": []}


async def test_conversions_per_goal(client, stores, data):
    from openanalytics.goals.models import Goal

    with stores.db.session() as session:
        for n, (name, match, value) in enumerate([("Signups", "event_name", "signup"), ("Pricing", "path", "/pricing"),
                                                  ("Any", "any_conversion", ""), ("Clicks", "event_type", "event")]):
            session.add(Goal(id=f"goal_{n:016x}", project_id=data.id, name=name, match=match, value=value,
                             created_at=datetime(2026, 1, 1, 0, n, tzinfo=UTC)))
    body = await get(client, data, "conversions", **{"from": DAY, "to": DAY})
    assert body["visitors"] == 3
    assert [(g["goal"]["name"], g["visitors"], g["conversions"], g["conversion_rate"], g["revenue"]) for g in body["goals"]] == [
        ("Signups", 1, 1, 0.3333, {"EUR": "10.5000"}),
        ("Pricing", 2, 2, 0.6667, {}),
        ("Any", 2, 2, 0.6667, {"EUR": "10.5000", "USD": "5.0000"}),
        ("Clicks", 1, 2, 0.3333, {}),
    ]
    nl = await get(client, data, "conversions", **{"from": DAY, "to": DAY, "filter": "country==NL"})
    assert [(g["visitors"], g["conversions"]) for g in nl["goals"]] == [(1, 1), (1, 1), (1, 1), (0, 0)]


async def test_funnel_counts_visitors_through_ordered_steps(client, data):
    steps = ["path==/", "path==/pricing", "event_name==signup"]
    body = await get(client, data, "funnel", **{"from": DAY, "to": DAY, "step": steps})
    assert [(s["step"], s["visitors"], s["conversion_rate"], s["step_rate"]) for s in body["steps"]] == [
        ("path==/", 2, 1.0, 1.0), ("path==/pricing", 1, 0.5, 0.5), ("event_name==signup", 1, 0.5, 1.0)]
    short = await get(client, data, "funnel", **{"from": DAY, "to": DAY, "step": steps, "window": 120})
    assert [s["visitors"] for s in short["steps"]] == [2, 1, 0]  # the signup came 3 minutes after the first step
    reverse = await get(client, data, "funnel", **{"from": DAY, "to": DAY, "step": ["path==/pricing", "path==/"]})
    assert [s["visitors"] for s in reverse["steps"]] == [2, 1]  # visitor 2 saw /pricing, then / in a later session


@pytest.mark.parametrize("steps", [["path==/"], ["path=@/", "path==/x"], ["referrer==a", "path==/"], ["path==/"] * 11])
async def test_bad_funnels_are_400(client, tenant, steps):
    response = await client.get(f"/v1/projects/{tenant.id}/funnel", params={"from": DAY, "to": DAY, "step": steps},
                                headers=tenant.headers)
    assert_error(response, 400)
