"""Visitors from sums, in totals and time series, without hashing visitor ids.

Each browser event carries the hours since its visitor's previous event, plus 1 (`visitor_age`;
65535 when there was none; ingest/commit.py). A visitor has events in a window (or a time bucket)
that opens at hour h exactly when one of them there came after none since before h: for an event in
hour t, when its age exceeds t - h (see path_sums.py, which does the same per path). So visitors
are a count of events, which ClickHouse keeps per hour and age (the `hourly_visitors` projection).
Events without a session carry user ids as visitors, which no browser event does: those are
counted exactly, from those events alone.

Used without filters over whole UTC hours, when every session event in the window has its age:
events stored before schema 5 do not, nor the other events of a visitor whose visits a privacy
deletion took (privacy/deletion.py marks them). Otherwise aggregate.py counts visitor ids, with
the same numbers. Buckets are whole hours too: the window's zone is a whole number of hours off
UTC, so its days, weeks and months start on UTC hours.
"""

from __future__ import annotations

from typing import Any

from openanalytics.provisioning.events_schema import PATH_SUMS_VERSION, VISITOR_SUMS
from openanalytics.query.aggregate import RANGE_SQL, Aggregate, values
from openanalytics.query.catalog import BUCKETS
from openanalytics.query.window import Window, whole_hours

METRICS = {"visitors", "pageviews", "events", "conversions"}
HOURS = (
    "toStartOfHour(timestamp) >= {start:DateTime64(3, 'UTC')} AND toStartOfHour(timestamp) < {end:DateTime64(3, 'UTC')}"
)
_HOUR = "toStartOfHour(timestamp)"
_START = "{start:DateTime64(3, 'UTC')}"
_NAMES = ("n", "pv", "conv", "unknown")
_SUMS = ", ".join(f"{sql} AS {name}" for sql, name in zip(VISITOR_SUMS, _NAMES, strict=True))
# When each bucket opens, from the hour of an event (the projection keeps hours, not events).
_OPENS = {
    "hour": _HOUR,
    "day": f"toDateTime(toDate({_HOUR}, {{tz:String}}), {{tz:String}})",
    "week": f"toDateTime(toMonday(toDate({_HOUR}, {{tz:String}})), {{tz:String}})",
    "month": f"toDateTime(toStartOfMonth(toDate({_HOUR}, {{tz:String}})), {{tz:String}})",
}


def _fresh(opens: str) -> str:
    """Whether the event's visitor had no event since before `opens` (or the window's start, if later)."""
    return (f"visitor_age > intDiv(toUnixTimestamp({_HOUR}) - greatest(toUnixTimestamp({opens}), "
            "{start_s:Int64}), 3600) + 1")


def _sessionless(table: str, key: str | None = None) -> str:
    """Visitors of the events without a session (per `key`, or in all)."""
    grouped = ("", "") if key is None else (f"{key} AS k, ", " GROUP BY k")
    return (f"SELECT {grouped[0]}uniqExact(visitor_id) AS visitors FROM {table} PREWHERE session_id = 0 "
            f"WHERE {RANGE_SQL} AND visitor_id != 0{grouped[1]}")


def totals_sql(table: str) -> str:
    """A subquery with one row: the window's `visitors`, and `unknown`, its session events without an age.
    Takes the parameters of `params`."""
    return (
        "(SELECT b.visitors + s.visitors AS visitors, b.unknown AS unknown FROM "
        "(SELECT sumIf(n, fresh) AS visitors, sum(unknown) AS unknown FROM "
        f"(SELECT {_fresh(_START)} AS fresh, {_SUMS} FROM {table} WHERE {HOURS} GROUP BY fresh)) AS b "
        f"CROSS JOIN ({_sessionless(table)}) AS s)"
    )


def params(window: Window) -> dict[str, Any]:
    return window.params() | {"start_s": int(window.start.timestamp())}


def applies(window: Window, filters: list, metrics: list[str], group: str | None, schema_version: int) -> bool:
    return (group in BUCKETS and schema_version >= PATH_SUMS_VERSION and not filters and set(metrics) <= METRICS
            and whole_hours(window))


def series_sql(table: str, window: Window, group: str) -> tuple[str, dict[str, Any]]:
    """Rows per bucket: the key, the columns of aggregate.values, then how many session events in the
    whole window have no age."""
    key = BUCKETS[group].replace("timestamp", _HOUR)  # the same text per bucket, from the hour
    statement = (
        "SELECT k, m.visitors + ifNull(x.visitors, 0) AS visitors, m.pageviews AS pageviews, m.events AS events, "
        "m.conversions AS conversions, toUInt64(0), toInt64(0), toUInt64(0), toUInt64(0), "
        "(CAST([], 'Array(String)'), CAST([], 'Array(Decimal(38, 4))')) AS revenue, sum(m.unknown) OVER () FROM "
        "(SELECT k, sumIf(n, fresh) AS visitors, sum(pv) AS pageviews, sum(n) AS events, sum(conv) AS conversions, "
        f"sum(unknown) AS unknown FROM (SELECT {key} AS k, {_fresh(_OPENS[group])} AS fresh, {_SUMS} "
        f"FROM {table} WHERE {HOURS} GROUP BY k, fresh) GROUP BY k) AS m "
        f"LEFT JOIN ({_sessionless(table, BUCKETS[group])}) AS x USING (k) ORDER BY k"
    )
    return statement, params(window)


async def series(store, table: str, window: Window, metrics: list[str], group: str) -> list[tuple[Any, dict]]:
    """[(bucket, {metric: value})] as Aggregate.run gives them, from sums where every session event has
    its age, else counted."""
    rows = await store.run(store.rows, *series_sql(table, window, group))
    if all(row[-1] == 0 for row in rows):
        return [(row[0], values(row[1:-1], metrics)) for row in rows]
    return await Aggregate(table, window, [], metrics, group=group).run(store)


async def bucketed(store, found, metrics: list[str], group: str) -> list[tuple[Any, dict]]:
    """Rows per bucket for the query `found` (query/common.py scope), summed where this module applies,
    else counted."""
    if applies(found.window, found.filters, metrics, group, found.project.events_schema_version):
        return await series(store, found.table, found.window, metrics, group)
    return await Aggregate(found.table, found.window, found.filters, metrics, group=group).run(store)
