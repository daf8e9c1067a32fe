"""What each durability setting costs server-side events: requests per second of `POST /v1/.../events`.

Four `openanalytics serve` processes, each on a Redis of its own started here (Debian's redis-server,
tests/support/servers.py), alternate rounds under one load generator in one run:

- no AOF: Redis keeps nothing on disk (the chart's Redis before this release): the baseline;
- AOF everysec: the default: a 202 once Redis has the events, written to its AOF within a second;
- fsync: `OA_EVENTS_WAIT_FSYNC=true` on a Redis with `appendfsync always` (before Redis 7.2, which
  has WAITAOF, that is how a write is on disk before its answer);
- replica: `OA_EVENTS_WAIT_REPLICAS=1`: a 202 once a replica (a second redis-server) has them (WAIT).

    python benchmarks/events_durability.py [--seconds 3] [--rounds 5] [--connections 16] [--batch 1]

The stream is emptied between rounds (no worker runs), so every round starts alike.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import redis

from _load import GENERATORS, ROOT, cli, free_port, http_request, load_arguments, run

sys.path.insert(0, str(ROOT))
from tests.support.servers import start_redis  # noqa: E402
from tests.support.stack import Process  # noqa: E402

SETUPS = {  # name: (redis-server arguments, settings)
    "no AOF": ((), False, {}),
    "AOF everysec (default)": ((), True, {}),
    "fsync (appendfsync always)": (("--appendfsync", "always"), True, {"OA_EVENTS_WAIT_FSYNC": "true"}),
    "replica (WAIT 1)": ((), True, {"OA_EVENTS_WAIT_REPLICAS": "1"}),
}


async def main() -> None:
    args = load_arguments(__doc__, generators=True, batch=1)
    measure = GENERATORS[args.generator]
    rows = []
    with tempfile.TemporaryDirectory(prefix="oa-bench-") as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OA_")}
        env.update(OA_DATABASE_URL=f"sqlite:///{folder / 'cp.sqlite3'}", OA_CACHE_TTL_SECONDS="60", OA_INGEST_MAX_QUEUED="100000000", OA_LOG_LEVEL="WARNING")
        project = cli(env, "projects", "create", "--name", "bench", "--plan", "enterprise",
                      "--limit", "api_requests_per_minute=1000000000")
        secret = cli(env, "keys", "create", "--project", project["id"])["secret"]
        body = json.dumps([{"event_type": "event", "event_name": "signup", "user_id": "u_7f3a",
                            "properties": {"plan": "pro"}}] * args.batch).encode()
        request = http_request("POST", f"/v1/projects/{project['id']}/events",
                               {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}, body)
        servers, stores = {}, []
        try:
            for n, (name, (redis_args, aof, settings)) in enumerate(SETUPS.items()):
                store = start_redis(folder / f"redis-{n}", aof=aof, args=redis_args)
                stores.append(store)
                if "OA_EVENTS_WAIT_REPLICAS" in settings:
                    stores.append(start_redis(folder / f"replica-{n}", aof=aof,
                                              args=["--replicaof", "127.0.0.1", str(store.port)]))
                port = free_port()
                servers[name] = (Process(name, ["serve", "--port", str(port)],
                                         {**env, "OA_REDIS_URL": store.url(), **settings,
                                          "OA_CLICKHOUSE_URL": f"chdb://{folder / f'ch-{n}'}"},  # one per process
                                         folder / f"serve-{n}.log", port=port).start(), store)
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for name, (server, _) in servers.items():  # warm-up
                await measure(server.port, request, 1, args.connections)
            for _ in range(args.rounds):
                for name, (server, store) in servers.items():
                    redis.Redis.from_url(store.url()).delete("oa:events")
                    rates[name].append((await measure(server.port, request, args.seconds, args.connections)).rate)
            base = statistics.median(rates["no AOF"])
            for name, found in rates.items():
                rate = statistics.median(found)
                rows.append((name, rate, rate * args.batch, 1 - rate / base))
        finally:
            for server, _ in servers.values():
                server.stop()
            for store in stores:
                store.close()
    print(f"\n{args.rounds} rounds of {args.seconds:g} s per server, {args.connections} keep-alive connections, "
          f"{args.batch} event(s) a request, {args.generator}, median round\n")
    print("| Redis and setting | requests/s | events/s | cost against no AOF |")
    print("|---|---:|---:|---:|")
    for name, rate, events, cost in rows:
        print(f"| {name} | {rate:,.0f} | {events:,.0f} | {cost:.1%} |")


if __name__ == "__main__":
    run(main())
