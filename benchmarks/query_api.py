"""Query API latency on 10 million events (embedded ClickHouse) beside the raw SQL it runs.

    python benchmarks/query_api.py [--events 10000000] [--runs 15]

Loads one project with generated events over the last 30 days (5 events per session, 3
sessions per visitor, 200 paths, 20 countries), then for stats, a breakdown and a daily
timeseries over those 30 days measures the API (in-process ASGI, auth and all) and the
same statements run directly on the store, alternating, and prints p50/p95 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta

LOAD_SQL = """
INSERT INTO {db}.events (event_id, event_type, event_name, timestamp, received_at, origin, visitor_id, session_id,
                         url, hostname, path, referrer_source, country, device, browser, os, revenue, currency)
SELECT generateUUIDv4(number), t, if(t = 'pageview', '', 'signup'), ts, ts, 'collect', intDiv(number, 15) + 1,
       intDiv(number, 5) + 1, concat('https://shop.example', p), 'shop.example', p,
       ['', 'Google', 'Twitter', 'Bing'][number % 4 + 1], c, ['desktop', 'mobile', 'tablet'][number % 3 + 1],
       ['Chrome', 'Firefox', 'Safari'][number % 3 + 1], ['Windows', 'Mac OS X', 'iOS', 'Android'][number % 4 + 1],
       if(t = 'conversion', toDecimal64(19.99, 4), NULL), if(t = 'conversion', 'EUR', '')
FROM (
  SELECT number,
         multiIf(number % 50 = 49, 'conversion', number % 10 = 9, 'event', 'pageview') AS t,
         toDateTime64({start:DateTime}, 3) + toIntervalSecond((intDiv(number, 5) * 7919) % {span:UInt32} + (number % 5) * 40) AS ts,
         concat('/p/', toString((number * 31) % 200)) AS p,
         ['NL', 'DE', 'US', 'GB', 'FR', 'ES', 'IT', 'SE', 'PL', 'BE', 'AT', 'CH', 'DK', 'NO', 'FI', 'IE', 'PT', 'CZ', 'JP', 'BR'][intDiv(number, 15) % 20 + 1] AS c
  FROM numbers({events:UInt64})
)
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in [k for k in os.environ if k.startswith("OA_")]:
            del os.environ[name]
        os.environ.update(OA_DATA_DIR=tmp, OA_DATABASE_URL=f"sqlite:///{tmp}/q.sqlite3")
        import httpx

        from openanalytics import migrations
        from openanalytics.app import create_app
        from openanalytics.auth.keys import issue_key
        from openanalytics.config import Settings
        from openanalytics.projects.service import create_project
        from openanalytics.provisioning.events_schema import database_name
        from openanalytics.provisioning.projects import provision_project
        from openanalytics.query.aggregate import Aggregate
        from openanalytics.query.window import Window
        from openanalytics.runtime import Stores

        stores = Stores.open(Settings())
        migrations.upgrade(stores.db.engine)
        with stores.db.session() as session:
            project = create_project(session, "bench", "business", [])
            key = issue_key(session, project.id, "bench", None)
            session.flush()
            session.expunge(project)
        store = stores.events
        store.call(provision_project, stores.db, store, project)
        today = datetime.now(UTC).date()
        first, last = today - timedelta(days=29), today
        started = time.perf_counter()
        store.call(store.command, LOAD_SQL.replace("{db}", database_name(project.id)), {
            "start": datetime.combine(first, datetime.min.time()), "span": 30 * 86400 - 300, "events": args.events})
        store.call(store.command, f"OPTIMIZE TABLE {database_name(project.id)}.events FINAL")
        loaded = time.perf_counter() - started
        (count,) = store.call(store.rows, f"SELECT count() FROM {database_name(project.id)}.events")[0]
        print(f"\nloaded {count:,} events in {loaded:.0f} s; {args.runs} runs each, alternating API and SQL\n")

        table, span = f"{database_name(project.id)}.events", Window(first, last, "UTC")
        queries = {
            "stats (all metrics)": ("stats", {}, [Aggregate(table, span, [], [
                "visitors", "pageviews", "sessions", "bounce_rate", "session_duration", "pages_per_session",
                "events", "conversions", "revenue"])]),
            "breakdown by path (visitors, pageviews, bounce rate)": (
                "breakdown", {"dimension": "path", "metrics": "visitors,pageviews,bounce_rate", "limit": 10},
                [Aggregate(table, span, [], ["visitors", "pageviews", "bounce_rate"], group="path")]),
            "daily timeseries (visitors, pageviews)": (
                "timeseries", {"interval": "day"}, [Aggregate(table, span, [], ["visitors", "pageviews"], group="day")]),
        }
        app = create_app(stores, rate_limits=False)
        headers = {"Authorization": f"Bearer {key.secret}"}
        print("| query | API p50 (ms) | API p95 (ms) | SQL p50 (ms) | SQL p95 (ms) | API / SQL (p50) |")
        print("|---|---:|---:|---:|---:|---:|")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            for label, (endpoint, params, aggregates) in queries.items():
                statements = []
                for aggregate in aggregates:
                    limit = params.get("limit")
                    statements.append(aggregate.sql(limit + 1 if limit else None, 0))
                api, sql = [], []
                url = f"/v1/projects/{project.id}/{endpoint}"
                query = {"from": first.isoformat(), "to": last.isoformat(), **params}
                for run in range(args.runs + 2):
                    t = time.perf_counter()
                    response = await client.get(url, params=query, headers=headers)
                    took = time.perf_counter() - t
                    assert response.status_code == 200, response.text
                    t2 = time.perf_counter()
                    for statement, values in statements:
                        await store.run(store.rows, statement, values)
                    took_sql = time.perf_counter() - t2
                    if run >= 2:  # warm-up
                        api.append(took * 1000)
                        sql.append(took_sql * 1000)
                print(f"| {label} | {statistics.median(api):.0f} | {percentile(api, 0.95):.0f} | "
                      f"{statistics.median(sql):.0f} | {percentile(sql, 0.95):.0f} | "
                      f"{statistics.median(api) / statistics.median(sql):.2f} |")
        await stores.close()


if __name__ == "__main__":
    asyncio.run(main())
