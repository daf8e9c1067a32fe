"""Pageviews query: input errors in the seed's shape, and inputs that never reach SQL unchecked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import assert_error

TODAY = datetime.now(UTC).date()  # at collection: only for ranges a day either way cannot change


@pytest.mark.parametrize(
    ("params", "code", "fragment"),
    [
        ({"from": "2026-05-12", "to": "2026-05-01"}, "invalid_range", "after"),
        ({"from": "2026-13-01", "to": "2026-05-01"}, "validation_error", "from"),
        ({"from": "yesterday", "to": "2026-05-01"}, "validation_error", "from"),
        ({"to": "2026-05-01"}, "validation_error", "from"),
        ({"from": "2026-05-01", "to": "2026-05-02", "group_by": "path; DROP DATABASE x"}, "unknown_dimension", "allowed"),
        ({"from": "2026-05-01", "to": "2026-05-02", "group_by": "visitors"}, "unknown_dimension", "allowed"),
        ({"from": "2026-05-01", "to": "2026-05-02", "limit": "0"}, "validation_error", "limit"),
        ({"from": (TODAY - timedelta(days=91)).isoformat(), "to": TODAY.isoformat()}, "range_beyond_retention", "90 days"),
        ({"from": TODAY.isoformat(), "to": "9999-12-31"}, "invalid_range", "after today"),
    ],
)
async def test_bad_query_input_is_400(client, make_tenant, params, code, fragment):
    free = make_tenant(plan="free")
    body = assert_error(await client.get(f"/v1/projects/{free.id}/pageviews", params=params, headers=free.headers), 400, code)
    assert fragment in body["message"]


async def test_the_oldest_day_is_the_first_one_the_retention_keeps_whole(client, make_tenant):
    free = make_tenant(plan="free")  # 90 days: the day 90 days ago has lost its first hours already
    today = datetime.now(UTC).date()
    params = {"to": today.isoformat()}
    kept = await client.get(f"/v1/projects/{free.id}/pageviews", headers=free.headers,
                            params={**params, "from": (today - timedelta(days=89)).isoformat()})
    assert kept.status_code == 200, kept.text
    gone = await client.get(f"/v1/projects/{free.id}/pageviews", headers=free.headers,
                            params={**params, "from": (today - timedelta(days=90)).isoformat()})
    oldest = (today - timedelta(days=89)).isoformat()
    assert f"oldest: {oldest}" in assert_error(gone, 400, "range_beyond_retention")["message"]


async def test_unprovisioned_project_answers_zero_filled_days(client, tenant):
    today = datetime.now(UTC).date()  # not TODAY: a run may cross midnight
    params = {"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat(), "group_by": "day"}
    body = (await client.get(f"/v1/projects/{tenant.id}/pageviews", params=params, headers=tenant.headers)).json()
    assert body["totals"] == {"pageviews": 0, "visitors": 0, "events": 0}
    assert [r["pageviews"] for r in body["results"]] == [0, 0]


async def test_hostile_paths_are_data_not_sql(client, tenant, worker):
    hostile = "/x') UNION ALL SELECT 1,2,3,4 --"
    moment = datetime.now(UTC)  # the event's day is the day asked for, even if the run crosses midnight
    now = int(moment.timestamp() * 1000)
    event = {"event_type": "pageview", "url": "https://a.example" + hostile.replace(" ", "%20"), "timestamp": now}
    assert (await client.post(f"/v1/projects/{tenant.id}/events", json=event, headers=tenant.headers)).status_code == 202
    await worker.drain()
    params = {"from": moment.date().isoformat(), "to": moment.date().isoformat(), "group_by": "path"}
    body = (await client.get(f"/v1/projects/{tenant.id}/pageviews", params=params, headers=tenant.headers)).json()
    assert body["results"] == [{"path": hostile.replace(" ", "%20"), "pageviews": 1, "visitors": 0, "events": 1}]
