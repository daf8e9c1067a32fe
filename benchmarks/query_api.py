"""Query API latency on 10 million events (embedded ClickHouse) beside the raw SQL it runs.

    python benchmarks/query_api.py [--events 10000000] [--runs 15]

Loads one project with generated events over the last 30 days (5 events per session, 3
sessions per visitor, 200 paths, 20 countries), then for stats, a breakdown and a daily
timeseries over those 30 days measures the API (in-process ASGI, auth and all) and the
same statements run directly on the store, alternating, and prints p50/p95 of each.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from _events import embedded_project, event_arguments, percentile

async def main() -> None:
    args = event_arguments(__doc__, runs=15)
    with tempfile.TemporaryDirectory() as tmp:
        stores, project, key, (first, last) = embedded_project(tmp, args.events)
        import httpx

        from openanalytics.app import create_app
        from openanalytics.provisioning.events_schema import database_name
        from openanalytics.query import path_sums, session_sums, visitor_sums
        from openanalytics.query.window import Window

        store = stores.events
        print(f"; {args.runs} runs each, alternating API and SQL\n")
        table, span = f"{database_name(project.id)}.events", Window(first, last, "UTC")
        queries = {
            "stats (all metrics)": ("stats", {}, [session_sums.sql(table, span)]),
            "breakdown by path (visitors, pageviews, bounce rate)": (
                "breakdown", {"dimension": "path", "metrics": "visitors,pageviews,bounce_rate", "limit": 10},
                [path_sums.sql(table, span, ["visitors", "pageviews", "bounce_rate"], 11, 0)]),
            "daily timeseries (visitors, pageviews)": (
                "timeseries", {"interval": "day"}, [visitor_sums.series_sql(table, span, "day")]),
        }
        app = create_app(stores, rate_limits=False)
        headers = {"Authorization": f"Bearer {key.secret}"}
        print("| query | API p50 (ms) | API p95 (ms) | SQL p50 (ms) | SQL p95 (ms) | API / SQL (p50) |")
        print("|---|---:|---:|---:|---:|---:|")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            for label, (endpoint, params, statements) in queries.items():
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
