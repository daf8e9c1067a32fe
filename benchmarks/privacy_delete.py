"""Deleting one user among 10 million events: time to completion, and its effect on the
latency of queries running at the same time (embedded ClickHouse, one process).

    cd benchmarks && python privacy_delete.py [--events 10000000] [--seconds 10]

A daily timeseries over the 30 days is polled without pause: first alone, then while the
worker carries out a deletion request for one user (50 of the events), measured in one run.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from _events import embedded_project, event_arguments, percentile


async def main() -> None:
    args = event_arguments(__doc__, seconds=10.0)
    with tempfile.TemporaryDirectory() as tmp:
        stores, project, key, (first, last) = embedded_project(tmp, args.events)
        print("\n")
        import httpx

        from openanalytics.app import create_app
        from openanalytics.worker.runner import Worker

        app, worker = create_app(stores, rate_limits=False), Worker(stores)
        headers = {"Authorization": f"Bearer {key.secret}"}
        base = f"/v1/projects/{project.id}"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                     headers=headers, timeout=600) as client:
            query = {"from": first.isoformat(), "to": last.isoformat(), "interval": "day"}

            async def poll(latencies: list[float], stop: asyncio.Event) -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    response = await client.get(f"{base}/timeseries", params=query)
                    assert response.status_code == 200, response.text
                    latencies.append((time.perf_counter() - started) * 1000)

            alone: list[float] = []
            stop = asyncio.Event()
            poller = asyncio.create_task(poll(alone, stop))
            await asyncio.sleep(args.seconds)
            stop.set()
            await poller

            user = "user-4242"
            before = (await client.get(f"{base}/privacy/user/{user}")).json()["event_count"]
            requested = (await client.delete(f"{base}/privacy/user/{user}")).json()
            during: list[float] = []
            stop = asyncio.Event()
            poller = asyncio.create_task(poll(during, stop))
            started = time.perf_counter()
            done = await worker.forget()
            took = time.perf_counter() - started
            stop.set()
            await poller
            status = (await client.get(requested["poll_url"])).json()
            after = (await client.get(f"{base}/privacy/user/{user}")).json()["event_count"]
            assert done == [requested["request_id"]] and status["status"] == "completed" and after == 0, status

        print(f"deleting {user} ({status['events_deleted']} of {args.events:,} events; {before} exported before, "
              f"{after} after): completed in {took:.1f} s\n")
        print("| concurrent timeseries queries | count | p50 (ms) | p95 (ms) | max (ms) |")
        print("|---|---:|---:|---:|---:|")
        for label, values in (("alone", alone), ("during the deletion", during)):
            print(f"| {label} | {len(values)} | {statistics.median(values):.0f} | {percentile(values, 0.95):.0f} | "
                  f"{max(values):.0f} |")
        await stores.close()


if __name__ == "__main__":
    asyncio.run(main())
