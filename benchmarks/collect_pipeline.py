"""/collect with the full pipeline against real Redis, beside a bare ASGI app answering 204,
both measured in the same run on the same machine, one server process each.

    python benchmarks/collect_pipeline.py [--seconds 3] [--rounds 5] [--connections 32] [--visitors 2000] [--parts 1]
                                          [--generator wrk|python] [--aof 1]

Needs Redis on 127.0.0.1:6379 (database 15 is flushed); with `--aof 1` it starts a redis-server of its
own with an append-only file (`appendfsync everysec`), as production runs it, instead. The load comes from wrk (`apt-get install
wrk`) where it is installed, else from the Python generator in _load.py, which takes about 8 µs of
CPU per request where wrk takes 5, on the same cores as the servers (each is one process). The
requests come from `--visitors` different addresses (behind a trusted proxy, as with an ingress)
with some 60 different browsers, on 50 pages, so the caches see a realistic mix; `--visitors 1`
sends one request over and over. Rounds alternate between the two servers; the median round's requests/s and
its p50/p99 latency are reported. /collect answers before it stores, so a full round's rate
counts until every hit it answered is on the stream, and the run fails if any is missing
(or more were stored than sent).
`--parts 1` adds two servers that leave part of the work out (see serve_part), to show where the time goes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _load import GENERATORS, cli, cpu_seconds, free_port, http_request, load_arguments, run, start_server, wait_stored

REDIS_URL = "redis://127.0.0.1:6379/15"  # the tests use 9-12
FULL = "full /collect pipeline"
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"


async def bare_app(scope, receive, send) -> None:
    """The baseline: reads the body and answers 204, nothing else."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_full(port: int) -> None:
    import uvicorn

    from openanalytics.app import create_app, http_protocol, served, settle_heap
    from openanalytics.config import Settings
    from openanalytics.runtime import Stores

    stores = Stores.open(Settings())
    app = create_app(stores, owns_stores=True)
    settle_heap()  # as the CLI does
    uvicorn.run(served(app), host="127.0.0.1", port=port, log_level="warning", access_log=False, proxy_headers=False,
                http=http_protocol(app))


PARTS = {"queue": "answers and queues only (no steps)", "steps": "steps, no Redis call"}


def serve_part(port: int, part: str) -> None:
    """The full server with part of its work left out, to show where the time goes (`--parts 1`):
    "queue" answers and queues each request but runs no steps, "steps" runs them (sites and salts
    still come from Redis, once per batch) but stores nothing."""
    from openanalytics.ingest.intake import Intake

    if part == "queue":
        async def no_steps(self, batch):
            return [], ["skipped"] * len(batch)
        Intake.prepare_batch = no_steps
    else:
        async def not_stored(self, fields, others, held=0):
            self._held -= held
        Intake.store = not_stored
    serve_full(port)


async def wait_idle(pid: int, quiet: float = 0.05) -> float:
    """Seconds until a server stops using CPU: a part server stores nothing to wait for, but may
    still be running the steps over what it answered."""
    started = time.perf_counter()
    while True:
        before = cpu_seconds(pid)
        await asyncio.sleep(quiet)
        if cpu_seconds(pid) == before:
            return max(0.0, time.perf_counter() - started - quiet)


def redis_cpu(client) -> float:
    """Seconds of CPU the Redis server has used: it runs on the same machine, and its share of
    /collect's work is the commit script."""
    cpu = client.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def user_agents() -> list[str]:
    """Some 60 real-world User-Agent strings: the browsers, versions and systems of a normal site."""
    chrome = "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 {m}Safari/537.36"
    agents = []
    for v in range(120, 132):
        agents.append(f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {chrome.format(v=v, m='')}")
        agents.append(f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {chrome.format(v=v, m='')}")
        agents.append(f"Mozilla/5.0 (Linux; Android 14; Pixel {v % 4 + 6}) {chrome.format(v=v, m='Mobile ')}")
        agents.append(f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0")
    for minor in range(6):
        agents.append(f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_{minor} like Mac OS X) AppleWebKit/605.1.15 "
                      f"(KHTML, like Gecko) Version/17.{minor} Mobile/15E148 Safari/604.1")
        agents.append(f"Mozilla/5.0 (iPad; CPU OS 17_{minor} like Mac OS X) AppleWebKit/605.1.15 "
                      f"(KHTML, like Gecko) Version/17.{minor} Mobile/15E148 Safari/604.1")
    return agents


def public_address(rng: random.Random) -> str:
    """A random public address: four in five IPv4, the rest IPv6 in RIPE's 2a00::/12."""
    while True:
        if rng.random() < 0.8:
            address = ipaddress.ip_address(rng.getrandbits(32))
        else:
            address = ipaddress.ip_address((0x2a0 << 116) | rng.getrandbits(116) & ~((1 << 64) - 1))
        if address.is_global:
            return str(address)


def collect_requests(env: dict, visitors: int = 2000, count: int = 8192) -> list[bytes]:
    """A project without collect limits, and `count` /collect requests for it from `visitors` clients,
    as raw HTTP (the client address in X-Forwarded-For, from a trusted proxy)."""
    project = cli(env, "projects", "create", "--name", "bench", "--plan", "business",
                  "--limit", "collect_per_ip_per_minute=1000000000", "--limit", "collect_per_site_per_minute=1000000000")
    rng = random.Random(7)
    agents = user_agents()
    clients = [(UA, "81.2.69.160")] if visitors == 1 else [(rng.choice(agents), public_address(rng)) for _ in range(visitors)]
    requests = []
    for n in range(count if visitors > 1 else 1):
        agent, address = clients[rng.randrange(len(clients))]
        page = f"/p/{rng.randrange(50)}?utm_source=news" if rng.random() < 0.2 else f"/p/{rng.randrange(50)}"
        body = json.dumps({"site_id": project["site_id"], "url": f"https://shop.example{page}",
                           "referrer": rng.choice(["https://www.google.com/", "", "https://news.example/a"]),
                           "screen_width": 1440, "language": "en-US"}).encode()
        requests.append(http_request("POST", "/collect", {
            "User-Agent": agent, "Accept-Language": "en-US,en;q=0.9", "Content-Type": "text/plain",
            "X-Forwarded-For": address}, body))
    return requests


def collect_request(env: dict) -> bytes:
    """One /collect request, sent over and over (the telemetry benchmark's load)."""
    return collect_requests(env, visitors=1)[0]


@contextmanager
def private_redis(folder: Path, aof: bool) -> Iterator[str]:
    """The URL to measure against: the machine's Redis, or with `aof` one started here with an AOF."""
    if not aof:
        yield REDIS_URL
        return
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.servers import start_redis

    with start_redis(folder / "redis", aof=True) as server:
        yield server.url(15)


async def main() -> None:
    args = load_arguments(__doc__, generators=True, visitors=2000, parts=0, aof=0)
    load = GENERATORS[args.generator]
    import redis

    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp), args.aof) as redis_url:
        redis.Redis.from_url(redis_url).flushdb()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OA_")}
        env.update(OA_DATABASE_URL=f"sqlite:///{Path(tmp) / 'cp.sqlite3'}", OA_REDIS_URL=redis_url,
                   OA_DATA_DIR=str(Path(tmp) / "data"), OA_TRUSTED_PROXIES="127.0.0.1/32")
        geo = Path(__file__).resolve().parent.parent / ".tools" / "geoip" / "country.mmdb"
        if geo.is_file():
            env["OA_GEOIP_PATH"] = str(geo)
        request = collect_requests(env, args.visitors)
        servers = {}
        targets = [("bare ASGI 204", "serve_bare({port})"), (FULL, "serve_full({port})")]
        targets += [(label, f"serve_part({{port}}, {part!r})") for part, label in PARTS.items()] if args.parts else []
        for n, (label, target) in enumerate(targets):
            port = free_port()
            own = dict(env, OA_DATA_DIR=str(Path(tmp) / f"data-{n}"))  # an embedded store each
            servers[label] = (port, start_server(f"import collect_pipeline as m; m.{target.format(port=port)}", own, port))
        results: dict[str, list] = {label: [] for label in servers}
        answered = sent = 0  # by the full pipeline: each answered hit must end up on the stream, and no more than were sent
        stream = redis.Redis.from_url(redis_url)
        try:
            for label, (port, _) in servers.items():  # warm-up
                warm = await load(port, request, 1, args.connections)
                if label == FULL:
                    answered, sent = answered + warm.answered, sent + warm.sent
            for _ in range(args.rounds):
                for label, (port, proc) in servers.items():
                    before, redis_before = cpu_seconds(proc.pid), redis_cpu(stream)
                    result = await load(port, request, args.seconds, args.connections)
                    if label == FULL:  # the rate counts until the last answered hit is on the stream
                        answered, sent = answered + result.answered, sent + result.sent
                        result.rate = result.answered / (result.seconds + await wait_stored(stream, answered))
                    elif label in PARTS.values():  # ...or until the server is done with what it answered
                        result.rate = result.answered / (result.seconds + await wait_idle(proc.pid))
                    result.cpu_us = (cpu_seconds(proc.pid) - before) / result.answered * 1e6
                    result.redis_us = (redis_cpu(stream) - redis_before) / result.answered * 1e6
                    results[label].append(result)
        finally:
            for _, proc in servers.values():
                proc.terminate()  # a graceful stop: the full server stores what it has answered
                proc.wait(30)
        stored = stream.xlen("oa:events")
    print(f"\n{args.rounds} rounds of {args.seconds:g} s per server, {args.connections} keep-alive connections "
          f"({args.generator}), {args.visitors:,} visitors, "
          f"median round; the full pipeline answered {answered:,} requests and put {stored:,} events on the stream\n")
    print("| server | requests/s | p50 latency (ms) | p99 latency (ms) | server CPU per request (µs) "
          "| Redis CPU per request (µs) | share of bare |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians = {label: sorted(rounds, key=lambda r: r.rate)[len(rounds) // 2] for label, rounds in results.items()}
    bare = medians["bare ASGI 204"].rate
    for label, median in medians.items():
        cpu, redis_us = (sorted(getattr(r, name) for r in results[label])[len(results[label]) // 2]
                         for name in ("cpu_us", "redis_us"))
        print(f"| {label} | {median.rate:,.0f} | {median.p50 * 1000:.2f} | "
              f"{median.p99 * 1000:.2f} | {cpu:.0f} | {redis_us:.0f} | {median.rate / bare:.0%} |")
    if not answered <= stored <= sent:  # wrk does not know which of the last requests it sent arrived
        raise SystemExit(f"\nSTORED {stored:,} EVENTS FOR {answered:,} ANSWERED AND {sent:,} SENT REQUESTS")


if __name__ == "__main__":
    run(main())
