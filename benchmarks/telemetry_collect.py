"""/collect with the full pipeline, telemetry off versus on, measured in the same run.

    python benchmarks/telemetry_collect.py [--seconds 3] [--rounds 5] [--connections 32]

"On" is what the chart configures: OTLP export (http/protobuf here, to a sink process that
accepts and discards), the default sampling (parentbased_traceidratio 0.1; /collect traces
1 in 100 of its requests), metrics exported every 5 s, Redis and SQL clients instrumented. "Off" has no OTEL_* settings.
Needs Redis on 127.0.0.1:6379 (database 15 is flushed). Rounds alternate between the
servers (alternating which goes first, the stream emptied before each run); the median
round of each is reported.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _load import cpu_seconds, free_port, load, load_arguments, run, start_server, wait_stored
from collect_pipeline import REDIS_URL, collect_request, serve_full


async def sink(scope, receive, send) -> None:
    """Stands in for an OpenTelemetry collector: takes OTLP/HTTP exports, keeps nothing."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-protobuf")]})
    await send({"type": "http.response.body", "body": b""})


def serve_sink(port: int) -> None:
    import uvicorn

    uvicorn.run(sink, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve(port: int) -> None:
    """As `openanalytics serve` does it (collect_pipeline.serve_full): telemetry (if configured) first."""
    from openanalytics import telemetry

    _pin(1)
    telemetry.configure("openanalytics-api")
    serve_full(port)


def _pin(cpu: int) -> None:
    """Servers on one CPU, the load generator on the other: less noise from sharing two CPUs."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


async def main() -> None:
    args = load_arguments(__doc__)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    _pin(0)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "OTEL_"))}
        env.update(OA_DATABASE_URL=f"sqlite:///{Path(tmp) / 'cp.sqlite3'}", OA_REDIS_URL=REDIS_URL,
                   OA_DATA_DIR=str(Path(tmp) / "data"), OA_LOG_LEVEL="WARNING")
        request = collect_request(env)
        sink_port = free_port()
        collector = start_server(f"import telemetry_collect as m; m.serve_sink({sink_port})", env, sink_port)
        on = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
              "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_METRIC_EXPORT_INTERVAL": "5000"}
        servers = {}
        results: dict[str, list] = {}
        try:
            for label, server_env in (("telemetry off", env), ("telemetry on (defaults)", on)):
                port = free_port()
                own = {**server_env, "OA_DATA_DIR": str(Path(tmp) / f"data-{port}")}  # chdb: one process per folder
                servers[label] = (port, start_server(f"import telemetry_collect as m; m.serve({port})", own, port))
                results[label] = []
            for label, (port, _) in servers.items():  # warm-up
                await load(port, request, 0.5, args.connections)
            queue = redis.Redis.from_url(REDIS_URL)
            for round_ in range(args.rounds):
                # Alternate which server goes first, and start each run from an empty stream, so
                # neither drift nor a growing stream favours one of them.
                for label in (list(servers) if round_ % 2 == 0 else list(reversed(servers))):
                    queue.delete("oa:events")
                    port, proc = servers[label]
                    before = cpu_seconds(proc.pid)
                    result = await load(port, request, args.seconds, args.connections)
                    # /collect stores after it answers: rate and CPU count until all of it is stored
                    result.rate = result.answered / (result.seconds + await wait_stored(queue, result.answered))
                    result.cpu_us = (cpu_seconds(proc.pid) - before) / result.answered * 1e6
                    results[label].append(result)
        finally:
            for _, proc in [*servers.values(), (None, collector)]:
                proc.terminate()
                proc.wait(10)
    print(f"\n{args.rounds} rounds of {args.seconds:g} s per server, {args.connections} keep-alive connections, "
          f"median round, one server process each\n")
    print("| /collect, full pipeline | requests/s | p50 latency (ms) | p99 latency (ms) | server CPU per request (µs) "
          "| cost in throughput | cost in CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians = {label: sorted(rounds, key=lambda r: r.rate)[len(rounds) // 2] for label, rounds in results.items()}
    cpu = {label: sorted(r.cpu_us for r in rounds)[len(rounds) // 2] for label, rounds in results.items()}
    off = medians["telemetry off"].rate
    for label, median in medians.items():
        print(f"| {label} | {median.rate:,.0f} | {median.p50 * 1000:.2f} | "
              f"{median.p99 * 1000:.2f} | {cpu[label]:.0f} | {1 - median.rate / off:.1%} | "
              f"{cpu[label] / cpu['telemetry off'] - 1:.1%} |")


if __name__ == "__main__":
    run(main())
