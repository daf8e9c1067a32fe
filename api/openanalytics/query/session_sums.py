"""Totals over a window from sums, without grouping its events by session.

Each browser event carries its place in its session (ingest/commit.py): `session_seq` (1 for
the first), `session_gap_ms` (the time since the session's event before) and `bounce` (+1 on a
first event that is a pageview, -1 on a second event after one). For a session that starts in
the window these add up to its numbers over its events in the window, as aggregate.py counts
them: a start is a session, the gaps add up to first-to-last, and a bounce's +1 stands while no
second event came. Sums need no grouping, and ClickHouse keeps them per hour (the events
table's `hourly_totals` projection), so a month of totals reads some 720 rows, not every event.

Only sessions already going on when the window opens need more. Their first event in the window
is not a start, its gap reaches back before the window, and it may carry a second event's -1.
That event comes within the idle time that ends a session after the window opens, and the event
after it within twice that, so those are read from the events themselves and put right.

Visitors are still counted from the events, as exact counts of ids cannot be summed, but only from
those that start a session or come before that edge (and events without a session).

Used for totals without filters over whole UTC hours, when every session event in the window
has its place (events stored before schema 4 do not). Otherwise aggregate.py's per-session
statement answers, with the same numbers.

The sums hold while sessions are stored whole and in order: commit.py keeps a session's events
in order, and a privacy deletion takes whole sessions. Rows lost to the dead-letter stream leave
their sessions short, which grouping counts as short sessions and the sums may not.
"""

from __future__ import annotations

from typing import Any

from openanalytics.ingest.visitor import SESSION_IDLE
from openanalytics.provisioning.events_schema import HOURLY_SUMS, PATH_SUMS_VERSION
from openanalytics.query import visitor_sums
from openanalytics.query.aggregate import RANGE_SQL, Aggregate, values, zero
from openanalytics.query.catalog import SESSION_METRICS
from openanalytics.query.window import Window, whole_hours

SUMS_VERSION = 4  # the events schema that has the columns and the projection
_HOURS = (
    "toStartOfHour(timestamp) >= {start:DateTime64(3, 'UTC')} AND toStartOfHour(timestamp) < {end:DateTime64(3, 'UTC')}"
)
_NAMES = ("events", "pageviews", "conversions", "starts", "gaps", "bounces", "session_pv", "unknown", "amount")
_SUMS = ", ".join(f"{sql} AS {name}" for sql, name in zip(HOURLY_SUMS, _NAMES, strict=True))
_START, _EDGE = "{start:DateTime64(3, 'UTC')}", "{edge:DateTime64(3, 'UTC')}"


def applies(window: Window, filters: list, metrics: list[str], schema_version: int) -> bool:
    """From schema 5 visitors are summed too, so the sums answer any metrics; before, totals without
    session metrics are one pass over the events anyway."""
    wanted = schema_version >= PATH_SUMS_VERSION or bool(SESSION_METRICS & set(metrics))
    return schema_version >= SUMS_VERSION and not filters and wanted and whole_hours(window)


def sql(table: str, window: Window, schema_version: int = PATH_SUMS_VERSION) -> tuple[str, dict[str, Any]]:
    """One row: the columns of aggregate.values, then how many session events in the window have no place
    (or, from schema 5, no visitor age)."""
    params = visitor_sums.params(window)
    params["edge"] = min(window.end, window.start + 2 * SESSION_IDLE)
    if schema_version >= PATH_SUMS_VERSION:
        visitors, unknown = f"CROSS JOIN {visitor_sums.totals_sql(table)} AS v ", "s.unknown + v.unknown"
    else:
        # A visitor's sessions in the window each have a start in it or are going on, with a first event
        # before the edge: the visitors of those events and of sessionless ones are all the visitors,
        # hashed once per session instead of once per event.
        visitors, unknown = (
            f"CROSS JOIN (SELECT uniqExact(visitor_id) AS visitors FROM {table} PREWHERE visitor_id != 0 AND "
            f"(session_id = 0 OR session_seq = 1 OR timestamp < {_EDGE}) WHERE {RANGE_SQL}) AS v ", "s.unknown")
    statement = (
        "SELECT v.visitors, s.pageviews, s.events, s.conversions, s.starts + e.ongoing AS sessions, "
        "toInt64(s.bounces) + e.bounce_fix AS bounces, s.gaps - e.ongoing_gap AS duration_total, s.session_pv, "
        f"s.revenue, {unknown} FROM "
        "(SELECT sum(events) AS events, sum(pageviews) AS pageviews, sum(conversions) AS conversions, "
        "sum(starts) AS starts, sum(gaps) AS gaps, sum(bounces) AS bounces, sum(session_pv) AS session_pv, "
        "sum(unknown) AS unknown, sumMapIf([toString(currency)], [assumeNotNull(amount)], amount IS NOT NULL) AS revenue "
        f"FROM (SELECT currency, {_SUMS} FROM {table} WHERE {_HOURS} GROUP BY currency)) AS s "
        + visitors +
        # Sessions going on when the window opens: each one's first event in the window.
        "CROSS JOIN (SELECT countIf(going) AS ongoing, sumIf(first_gap, going) AS ongoing_gap, "
        "sumIf(toInt64(first_pv AND n = 1) - first_bounce, going) AS bounce_fix FROM "
        "(SELECT min(session_seq) AS first_seq, argMin(timestamp, session_seq) AS first_at, "
        "argMin(session_gap_ms, session_seq) AS first_gap, argMin(event_type = 'pageview', session_seq) AS first_pv, "
        "argMin(bounce, session_seq) AS first_bounce, count() AS n, "
        f"first_seq > 1 AND first_at - toIntervalMillisecond(first_gap) < {_START} AS going FROM {table} "
        f"WHERE timestamp >= {_START} AND timestamp < {_EDGE} AND session_id != 0 "
        "GROUP BY session_id)) AS e"
    )
    return statement, params


async def totals(store, table: str, window: Window, metrics: list[str], schema_version: int) -> dict[str, Any]:
    """The window's totals, from sums where every session event has its place, else per session.

    Events stored before schema 5 have places but no visitor ages: their visitors are counted from the
    events that start sessions instead."""
    for version in dict.fromkeys((schema_version, SUMS_VERSION)):
        rows = await store.run(store.rows, *sql(table, window, version))
        if rows and rows[0][-1] == 0:
            return values(rows[0][:-1], metrics)
    found = await Aggregate(table, window, [], metrics).run(store)
    return found[0][1] if found else zero(metrics)


async def window_totals(store, found, metrics: list[str], window: Window) -> dict[str, Any]:
    """Totals over `window` for the query `found` (query/common.py scope): summed where this module
    applies, else grouped."""
    schema = found.project.events_schema_version
    if applies(window, found.filters, metrics, schema):
        return await totals(store, found.table, window, metrics, schema)
    rows = await Aggregate(found.table, window, found.filters, metrics).run(store)
    return rows[0][1] if rows else zero(metrics)
