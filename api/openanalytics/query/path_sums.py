"""Breakdowns by path from sums, without grouping events by visitor or session.

Counting the visitors of each path exactly means finding every distinct (path, visitor) pair:
on a month of 10M events some 10M of them, and as many (path, session) pairs for sessions and
bounce rate. Instead each browser event carries, per path (ingest/commit.py), the hours since
its visitor's and its session's previous event on that path, plus 1 (`path_visitor_age`,
`path_session_age`; 65535 when there was none). Such a pair has an event in a window that opens
at hour h exactly when one of its events there came after none since before h: for an event in
hour t, when its age exceeds t - h. Each pair has one such event, its first in the window. So
a path's visitors and sessions in the window are counts of events, and ClickHouse keeps those
per hour, path and age (the `hourly_paths` projection), a few hundred thousand rows a month
instead of every event.

Bounces (sessions whose only event in the window is one pageview, under its path) come from
the `bounce` column of session_sums.py: +1 on a first event that is a pageview, and -1 on the
second, which names the first one's path in `bounce_path` (the `hourly_bounce_paths`
projection). Sessions going on when the window opens are put right from their first events in
it, as session_sums.py does. Events without a session add their visitors' exact count per path
(theirs are user ids, never browser visitors).

Used for breakdowns by path without filters over whole UTC hours, for visitors, pageviews,
events, conversions, sessions and bounce rate, when every session event in the window has its
ages: events stored before schema 5 do not, nor the other events of a visitor whose visits a
privacy deletion took (the ages of theirs may count from a deleted event; privacy/deletion.py
marks them). Otherwise aggregate.py groups, with the same numbers.

As for session_sums.py, the sums hold while sessions are stored whole and in order; rows lost to
the dead-letter stream may also leave a later event of their pair counting from them.
"""

from __future__ import annotations

from typing import Any

from openanalytics.ingest.visitor import SESSION_IDLE
from openanalytics.provisioning.events_schema import BOUNCE_PATH_SUMS, PATH_SUMS, PATH_SUMS_VERSION
from openanalytics.query.aggregate import ORDER_BY, RANGE_SQL, Aggregate, values
from openanalytics.query.window import Window, whole_hours

METRICS = {"visitors", "pageviews", "events", "conversions", "sessions", "bounce_rate"}
_HOURS = (
    "toStartOfHour(timestamp) >= {start:DateTime64(3, 'UTC')} AND toStartOfHour(timestamp) < {end:DateTime64(3, 'UTC')}"
)
_START, _EDGE = "{start:DateTime64(3, 'UTC')}", "{edge:DateTime64(3, 'UTC')}"
# An age above this reaches back before the window. Grouped by (not summed over) ages compared with
# it, the sums are still read from the projection, and in a few hundred groups instead of one per hour.
_NEW = f"dateDiff('hour', {_START}, toStartOfHour(timestamp)) + 1"
_NAMES = ("n", "pv", "conv", "starts", "sessionless", "unknown")
_SUMS = ", ".join(f"{sql} AS {name}" for sql, name in zip(PATH_SUMS, _NAMES, strict=True))


def applies(window: Window, filters: list, metrics: list[str], group: str | None, schema_version: int) -> bool:
    return (group == "path" and schema_version >= PATH_SUMS_VERSION and not filters and set(metrics) <= METRICS
            and whole_hours(window))


def sql(table: str, window: Window, metrics: list[str], limit: int, offset: int) -> tuple[str, dict[str, Any]]:
    """A page of rows: the group key, the columns of aggregate.values, then how many session events in
    the whole window have no ages."""
    params = window.params() | {"limit": limit, "offset": offset}
    params["edge"] = min(window.end, window.start + 2 * SESSION_IDLE)
    first = metrics[0] if metrics else "events"
    statement = (
        "SELECT k, m.visitors + ifNull(x.visitors, 0) AS visitors, m.pageviews AS pageviews, m.events AS events, "
        "m.conversions AS conversions, m.sessions AS sessions, "
        "toInt64(m.starts) - ifNull(b.ends, 0) + ifNull(e.fix, 0) AS bounces, toUInt64(0) AS duration_total, "
        "toUInt64(0) AS session_pv_total, (CAST([], 'Array(String)'), CAST([], 'Array(Decimal(38, 4))')) AS revenue, "
        "sum(m.unknown) OVER () AS unknown_total FROM "
        "(SELECT k, sumIf(n, new_visitor) AS visitors, sumIf(n, new_session) AS sessions, sum(pv) AS pageviews, "
        "sum(n) AS events, sum(conv) AS conversions, sum(starts) AS starts, sum(unknown) AS unknown "
        f"FROM (SELECT path AS k, path_visitor_age > {_NEW} AS new_visitor, path_session_age > {_NEW} AS new_session, "
        f"{_SUMS} FROM {table} WHERE {_HOURS} GROUP BY k, new_visitor, new_session) GROUP BY k) AS m "
        # Bounces ended in the window, under the path they were on.
        f"LEFT JOIN (SELECT bounce_path AS k, {BOUNCE_PATH_SUMS[0]} AS ends FROM {table} WHERE {_HOURS} "
        "GROUP BY k) AS b USING (k) "
        # Sessions going on when the window opens: their first event in it carries no +1 but may carry
        # a -1 for a pageview before the window; it is a bounce if it is one pageview alone in the window.
        "LEFT JOIN (SELECT fixed.1 AS k, sum(fixed.2) AS fix FROM (SELECT arrayJoin([(first_bounce_path, "
        "toInt64(first_bounce = -1)), (first_path, toInt64(first_pv AND n = 1))]) AS fixed FROM "
        "(SELECT argMin(timestamp, session_seq) AS first_at, argMin(session_gap_ms, session_seq) AS first_gap, "
        "argMin(event_type = 'pageview', session_seq) AS first_pv, argMin(bounce, session_seq) AS first_bounce, "
        "argMin(path, session_seq) AS first_path, argMin(bounce_path, session_seq) AS first_bounce_path, "
        f"count() AS n FROM {table} WHERE timestamp >= {_START} AND timestamp < {_EDGE} AND session_id != 0 "
        f"GROUP BY session_id HAVING min(session_seq) > 1 AND first_at - toIntervalMillisecond(first_gap) < {_START})) "
        "GROUP BY k) AS e USING (k) "
        # Events without a session: their visitors, counted.
        f"LEFT JOIN (SELECT path AS k, uniqExact(visitor_id) AS visitors FROM {table} PREWHERE session_id = 0 "
        f"WHERE {RANGE_SQL} AND visitor_id != 0 GROUP BY k) AS x USING (k) "
        f"ORDER BY {ORDER_BY[first]} DESC, events DESC, k LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}"
    )
    return statement, params


async def run(store, table: str, window: Window, metrics: list[str], limit: int,
              offset: int = 0) -> list[tuple[Any, dict[str, Any]]]:
    """[(path, {metric: value})] as Aggregate.run gives them, from sums where every session event has
    its ages, else grouped."""
    rows = await store.run(store.rows, *sql(table, window, metrics, limit, offset))
    if all(row[-1] == 0 for row in rows):
        return [(row[0], values(row[1:-1], metrics)) for row in rows]
    return await Aggregate(table, window, [], metrics, group="path").run(store, limit, offset)


async def grouped(store, found, metrics: list[str], group: str, limit: int | None, offset: int = 0) -> list:
    """Rows by `group` for the query `found` (query/common.py scope), summed where this module applies,
    else grouped."""
    schema = found.project.events_schema_version
    if limit is not None and applies(found.window, found.filters, metrics, group, schema):
        return await run(store, found.table, found.window, metrics, limit, offset)
    return await Aggregate(found.table, found.window, found.filters, metrics, group=group).run(store, limit, offset)
