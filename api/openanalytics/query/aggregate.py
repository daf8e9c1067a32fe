"""Metrics over the events of a window, totalled or grouped by one dimension or time bucket.

Two levels, in one statement: the matching events are first summed per (group, session,
visitor); those parts are then summed per group. Session metrics (bounce rate, duration,
pages per session) describe the whole sessions those parts belong to, read over all of
the session's events in the window, so a filter picks sessions without cutting them short.
Events without a session (server-side events) count for visitors, pageviews, events and
conversions, never as sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from openanalytics.query.catalog import BUCKETS, EVENT_DIMENSIONS, SESSION_DIMENSIONS, SESSION_METRICS
from openanalytics.query.filters import Filter, where
from openanalytics.query.window import Window

RANGE_SQL = "timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}"

# Outer columns, in the order the statement selects them.
_TOTALS = (
    "uniqExactIf(visitor, visitor != 0) AS visitors, sum(pv) AS pageviews, sum(n) AS events, "
    "sum(conv) AS conversions, countIf(seg.sid != 0) AS sessions, sumIf(bounced, seg.sid != 0) AS bounces, "
    "sumIf(duration_ms, seg.sid != 0) AS duration_total, sumIf(session_pv, seg.sid != 0) AS session_pv_total"
)
_NO_SESSIONS = "toUInt8(0) AS bounced, toUInt64(0) AS duration_ms, toUInt64(0) AS session_pv"
_ORDER = {
    "visitors": "visitors", "pageviews": "pageviews", "sessions": "sessions", "events": "events",
    "conversions": "conversions", "revenue": "conversions",
    "bounce_rate": "if(sessions = 0, 0, bounces / sessions)",
    "session_duration": "if(sessions = 0, 0, duration_total / sessions)",
    "pages_per_session": "if(sessions = 0, 0, session_pv_total / sessions)",
}


@dataclass
class Aggregate:
    table: str
    window: Window
    filters: list[Filter] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    group: str | None = None  # a dimension or a bucket; None for totals
    sessions_only: bool = False  # leave out events outside browser sessions

    def _parts(self) -> tuple[str, str, dict[str, Any]]:
        """(the matching events' WHERE, the sessions subquery, parameters)."""
        conditions, params = where(self.filters, self.table, RANGE_SQL)
        sessions = (
            f"SELECT session_id AS sid, {SESSION_DIMENSIONS['entry_page']} AS entry_page, "
            f"{SESSION_DIMENSIONS['exit_page']} AS exit_page, countIf(event_type = 'pageview') AS session_pv, "
            "toUInt8(countIf(event_type = 'pageview') = 1 AND count() = 1) AS bounced, "
            "toUInt64(dateDiff('millisecond', min(timestamp), max(timestamp))) AS duration_ms "
            f"FROM {self.table} WHERE {RANGE_SQL} AND session_id != 0 GROUP BY sid"
        )
        if self.sessions_only:
            conditions += " AND session_id != 0"
        return f"{RANGE_SQL} AND {conditions}", sessions, {**self.window.params(), **params}

    def _event_key(self) -> str:
        if self.group is None or self.group in SESSION_DIMENSIONS:
            return "''"
        return EVENT_DIMENSIONS.get(self.group) or BUCKETS[self.group]

    def sql(self, limit: int | None = None, offset: int = 0) -> tuple[str, dict[str, Any]]:
        matching, sessions, params = self._parts()
        by_session = self.group in SESSION_DIMENSIONS
        segments = (
            f"SELECT {self._event_key()} AS key, session_id AS sid, visitor_id AS visitor, "
            "countIf(event_type = 'pageview') AS pv, count() AS n, countIf(event_type = 'conversion') AS conv "
            f"FROM {self.table} WHERE {matching} GROUP BY key, sid, visitor"
        )
        if by_session or SESSION_METRICS & set(self.metrics):
            source = f"({segments}) AS seg LEFT JOIN ({sessions}) AS s ON seg.sid = s.sid"
        else:
            source = f"(SELECT *, {_NO_SESSIONS} FROM ({segments})) AS seg"
        key = f"s.{self.group}" if by_session else "seg.key"
        sql = f"SELECT {key} AS k, {_TOTALS} FROM {source}"
        if by_session:
            sql += " WHERE seg.sid != 0"
        sql += " GROUP BY k"
        if limit is not None:
            first = self.metrics[0] if self.metrics else "events"
            sql += f" ORDER BY {_ORDER[first]} DESC, events DESC, k LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}"
            params.update(limit=limit, offset=offset)
        return sql, params

    def revenue_sql(self) -> tuple[str, dict[str, Any]]:
        matching, sessions, params = self._parts()
        if self.group in SESSION_DIMENSIONS:
            sql = (
                f"SELECT s.{self.group} AS k, e.currency, sum(e.revenue) FROM (SELECT session_id AS sid, currency, "
                f"revenue FROM {self.table} WHERE {matching} AND revenue IS NOT NULL AND session_id != 0) AS e "
                f"JOIN ({sessions}) AS s ON e.sid = s.sid GROUP BY k, e.currency"
            )
        else:
            sql = (
                f"SELECT {self._event_key()} AS k, currency, sum(revenue) FROM {self.table} "
                f"WHERE {matching} AND revenue IS NOT NULL GROUP BY k, currency"
            )
        return sql, params

    async def run(self, store, limit: int | None = None, offset: int = 0) -> list[tuple[Any, dict[str, Any]]]:
        """[(group key, {metric: value})], in the statement's order."""
        rows = await store.run(store.rows, *self.sql(limit, offset))
        revenue: dict[Any, dict[str, str]] = {}
        if "revenue" in self.metrics:
            for key, currency, amount in await store.run(store.rows, *self.revenue_sql()):
                revenue.setdefault(key, {})[currency] = _money(amount)
        return [(row[0], values(row[1:], self.metrics, revenue.get(row[0], {}))) for row in rows]


def _money(amount: Decimal) -> str:
    return f"{Decimal(amount).quantize(Decimal('0.0001')):f}"


def values(row: tuple, metrics: list[str], revenue: dict[str, str]) -> dict[str, Any]:
    visitors, pageviews, events, conversions, sessions, bounces, duration_ms, session_pv = row
    every = {
        "visitors": visitors,
        "pageviews": pageviews,
        "sessions": sessions,
        "bounce_rate": round(bounces / sessions, 4) if sessions else 0.0,
        "session_duration": round(duration_ms / sessions / 1000, 1) if sessions else 0.0,
        "pages_per_session": round(session_pv / sessions, 2) if sessions else 0.0,
        "events": events,
        "conversions": conversions,
        "revenue": dict(sorted(revenue.items())),
    }
    return {name: every[name] for name in metrics}


def zero(metrics: list[str]) -> dict[str, Any]:
    return values((0,) * 8, metrics, {})
