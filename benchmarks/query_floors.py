"""What the query API's statements cannot beat: the parts of its work, each alone, on the same
10 million events as query_api.py (embedded ClickHouse, this machine's cores).

    python benchmarks/query_floors.py [--events 10000000] [--runs 5]

Each line is one statement's p50. If a part alone takes longer than a target, no rewrite of
the full statement meets that target; only less work (rollups, approximate uniques) can.
The last line tries one such rollup: each session's numbers per hour (built from the events
here; a materialized view would keep it), still grouped by session at query time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import datetime, timedelta

from _events import embedded_project, event_arguments

RANGE = "timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}"
PV = "event_type = 'pageview'"
PARTS = {
    "read the window (count)": "SELECT count() FROM {t} WHERE {r}",
    "exact visitors (uniqExact)": "SELECT uniqExact(visitor_id) FROM {t} WHERE {r}",
    "approximate visitors (uniq)": "SELECT uniq(visitor_id) FROM {t} WHERE {r}",
    "visitors, pageviews, events, conversions": (
        "SELECT uniqExact(visitor_id), countIf({pv}), count(), countIf(event_type = 'conversion') FROM {t} WHERE {r}"),
    "per-session numbers alone (GROUP BY session)": (
        "SELECT count(), sum(pv), sum(b), sum(d) FROM (SELECT session_id, countIf({pv}) AS pv, "
        "toUInt8(countIf({pv}) = 1 AND count() = 1) AS b, "
        "toUInt64(dateDiff('millisecond', min(timestamp), max(timestamp))) AS d FROM {t} WHERE {r} GROUP BY session_id)"),
    "exact visitors and pageviews per day": (
        "SELECT toDate(timestamp) AS k, uniqExact(visitor_id), countIf({pv}) FROM {t} WHERE {r} GROUP BY k"),
    "exact visitors and pageviews per path, top 10": (
        "SELECT path, uniqExact(visitor_id) AS v, countIf({pv}) FROM {t} WHERE {r} GROUP BY path ORDER BY v DESC LIMIT 10"),
}


ROLLUP = (
    "CREATE TABLE {t} (hour DateTime('UTC'), session_id UInt64, visitor_id UInt64, "
    "first SimpleAggregateFunction(min, DateTime64(3, 'UTC')), last SimpleAggregateFunction(max, DateTime64(3, 'UTC')), "
    "n SimpleAggregateFunction(sum, UInt64), pv SimpleAggregateFunction(sum, UInt64)) "
    "ENGINE = AggregatingMergeTree ORDER BY (hour, session_id, visitor_id)"
)
FILL = ("INSERT INTO {t} SELECT toStartOfHour(timestamp), session_id, visitor_id, min(timestamp), max(timestamp), "
        "count(), countIf({pv}) FROM {events} GROUP BY 1, 2, 3")
FROM_ROLLUP = (
    "SELECT count(), sum(spv), sum(b), sum(d) FROM (SELECT session_id, sum(h.pv) AS spv, "
    "toUInt8(spv = 1 AND sum(h.n) = 1) AS b, toUInt64(dateDiff('millisecond', min(first), max(last))) AS d "
    "FROM {t} AS h WHERE hour >= {{start:DateTime64(3, 'UTC')}} AND hour < {{end:DateTime64(3, 'UTC')}} "
    "GROUP BY session_id)"
)


def main() -> None:
    args = event_arguments(__doc__, runs=5)
    with tempfile.TemporaryDirectory() as tmp:
        stores, project, _, (first, last) = embedded_project(tmp, args.events)
        from openanalytics.provisioning.events_schema import database_name

        store = stores.events
        params = {"start": datetime.combine(first, datetime.min.time()),
                  "end": datetime.combine(last + timedelta(days=1), datetime.min.time())}
        print(f"; {args.runs} runs each\n\n| part of the work | p50 (ms) |\n|---|---:|")
        for label, sql in PARTS.items():
            statement = sql.format(t=f"{database_name(project.id)}.events", r=RANGE, pv=PV)
            store.call(store.rows, statement, params)  # warm-up
            took = []
            for _ in range(args.runs):
                started = time.perf_counter()
                store.call(store.rows, statement, params)
                took.append((time.perf_counter() - started) * 1000)
            print(f"| {label} | {statistics.median(took):.0f} |")
        rollup = f"{database_name(project.id)}.sessions_hourly"
        store.call(store.command, ROLLUP.format(t=rollup))
        store.call(store.command, FILL.format(t=rollup, events=f"{database_name(project.id)}.events", pv=PV))
        statement = FROM_ROLLUP.format(t=rollup)
        store.call(store.rows, statement, params)
        took = []
        for _ in range(args.runs):
            started = time.perf_counter()
            store.call(store.rows, statement, params)
            took.append((time.perf_counter() - started) * 1000)
        rows = store.call(store.rows, f"SELECT count() FROM {rollup}")[0][0]
        print(f"| per-session numbers from an hourly session rollup ({rows:,} rows) | {statistics.median(took):.0f} |")


if __name__ == "__main__":
    main()
