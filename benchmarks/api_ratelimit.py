"""Throughput of authenticated GET and POST with the rate-limit check on and off, in one run.

Two API servers (uvicorn, one process each) run side by side on the same stores, one with
the check and one without; a small keep-alive HTTP load generator (raw sockets, so it
costs the machine little) alternates rounds between them, and the median round counts.

    python benchmarks/api_ratelimit.py [--seconds 3] [--rounds 5] [--connections 32] [--stores redis,embedded]

The "redis" rows need Redis on 127.0.0.1:6379 (database 15 is flushed); "embedded" uses
the in-process fakeredis of each server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from _load import cli, free_port, http_request, load, run, start_server

REDIS_URL = "redis://127.0.0.1:6379/15"  # the tests use 9-12
def serve(port: int, limits: bool) -> None:
    """Run one API server (called in a child process)."""
    import uvicorn

    from openanalytics.app import create_app
    from openanalytics.config import Settings
    from openanalytics.runtime import Stores

    stores = Stores.open(Settings())
    app = create_app(stores, owns_stores=True, rate_limits=limits)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, proxy_headers=False)


def start(env: dict, port: int, limits: bool):
    return start_server(f"import api_ratelimit as m; m.serve({port}, {limits})", env, port)


async def measure(kind: str, args, workdir: Path) -> list[tuple]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_")}
    env["OA_DATABASE_URL"] = f"sqlite:///{workdir / f'{kind}.sqlite3'}"
    if kind == "redis":
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        env["OA_REDIS_URL"] = REDIS_URL
    project = cli(env, "projects", "create", "--name", "bench", "--plan", "enterprise", "--limit", "api_requests_per_minute=1000000000")
    secret = cli(env, "keys", "create", "--project", project["id"])["secret"]
    auth = {"Authorization": f"Bearer {secret}"}
    servers = {}
    for label, limits in (("off", False), ("on", True)):
        port = free_port()
        server_env = {**env, "OA_DATA_DIR": str(workdir / f"{kind}-{label}"), "OA_CACHE_TTL_SECONDS": "60"}
        servers[label] = (port, start(server_env, port, limits))
    event = json.dumps({"event_type": "pageview", "url": "https://a.example/"}).encode()
    cases = [
        ("GET /v1/projects/{id}", http_request("GET", f"/v1/projects/{project['id']}", auth)),
        ("POST /v1/projects/{id}/events", http_request("POST", f"/v1/projects/{project['id']}/events",
                                                       {**auth, "Content-Type": "application/json"}, event)),
    ]
    rows = []
    try:
        for name, request in cases:
            rates = {"off": [], "on": []}
            for label in ("off", "on"):  # warm-up
                await load(servers[label][0], request, 0.5, args.connections)
            for _ in range(args.rounds):
                for label in ("off", "on"):
                    rates[label].append((await load(servers[label][0], request, args.seconds, args.connections)).rate)
            off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
            rows.append((name, kind, off, on, 1 - on / off))
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(10)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--stores", default="redis,embedded", help="comma-separated: redis, embedded")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            rows += await measure(kind, args, Path(tmp))
    print(f"\n{args.rounds} rounds of {args.seconds:g} s per server, {args.connections} keep-alive connections, median round\n")
    print("| endpoint | hot store | check off (req/s) | check on (req/s) | cost of the check |")
    print("|---|---|---:|---:|---:|")
    for name, kind, off, on, cost in rows:
        print(f"| `{name}` | {kind} | {off:,.0f} | {on:,.0f} | {cost:.1%} |")


if __name__ == "__main__":
    run(main())
