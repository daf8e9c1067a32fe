"""/collect with the full pipeline against real Redis, beside a bare ASGI app answering 204,
both measured in the same run on the same machine, one server process each.

    python benchmarks/collect_pipeline.py [--seconds 3] [--rounds 5] [--connections 32]

Needs Redis on 127.0.0.1:6379 (database 15 is flushed). Rounds alternate between the two
servers; the median round's requests/s and its p50/p99 latency are reported.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import tempfile
from pathlib import Path

from _load import cli, free_port, http_request, load, load_arguments, start_server

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

    from openanalytics.app import create_app, served
    from openanalytics.config import Settings
    from openanalytics.runtime import Stores

    stores = Stores.open(Settings())
    app = create_app(stores, owns_stores=True)
    gc.collect()
    gc.freeze()  # as the CLI does
    uvicorn.run(served(app), host="127.0.0.1", port=port, log_level="warning", access_log=False, proxy_headers=False)


def collect_request(env: dict) -> bytes:
    """A project without collect limits, and one /collect request for it, as raw HTTP."""
    project = cli(env, "projects", "create", "--name", "bench", "--plan", "business",
                  "--limit", "collect_per_ip_per_minute=1000000000", "--limit", "collect_per_site_per_minute=1000000000")
    body = json.dumps({"site_id": project["site_id"], "url": "https://shop.example/pricing?utm_source=news",
                       "referrer": "https://www.google.com/", "screen_width": 1440, "language": "en-US"}).encode()
    return http_request("POST", "/collect", {"User-Agent": UA, "Accept-Language": "en-US,en;q=0.9",
                                             "Content-Type": "text/plain", "X-Forwarded-For": "81.2.69.160"}, body)


async def main() -> None:
    args = load_arguments(__doc__)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OA_")}
        env.update(OA_DATABASE_URL=f"sqlite:///{Path(tmp) / 'cp.sqlite3'}", OA_REDIS_URL=REDIS_URL,
                   OA_DATA_DIR=str(Path(tmp) / "data"))
        geo = Path(__file__).resolve().parent.parent / ".tools" / "geoip" / "country.mmdb"
        if geo.is_file():
            env["OA_GEOIP_PATH"] = str(geo)
        request = collect_request(env)
        servers = {}
        for label, target in (("bare ASGI 204", "serve_bare"), (FULL, "serve_full")):
            port = free_port()
            servers[label] = (port, start_server(f"import collect_pipeline as m; m.{target}({port})", env, port))
        results: dict[str, list] = {label: [] for label in servers}
        sent = 0  # requests the full pipeline answered: each must end up on the stream
        try:
            for label, (port, _) in servers.items():  # warm-up
                warm = await load(port, request, 0.5, args.connections)
                sent += len(warm.latencies) if label == FULL else 0
            for _ in range(args.rounds):
                for label, (port, _) in servers.items():
                    results[label].append(await load(port, request, args.seconds, args.connections))
                    sent += len(results[label][-1].latencies) if label == FULL else 0
        finally:
            for _, proc in servers.values():
                proc.terminate()  # a graceful stop: the full server stores what it has answered
                proc.wait(30)
        stream = redis.Redis.from_url(REDIS_URL).xlen("oa:events")
    print(f"\n{args.rounds} rounds of {args.seconds:g} s per server, {args.connections} keep-alive connections, "
          f"median round; the full pipeline answered {sent:,} requests and put {stream:,} events on the stream\n")
    print("| server | requests/s | p50 latency (ms) | p99 latency (ms) | share of bare |")
    print("|---|---:|---:|---:|---:|")
    medians = {label: sorted(rounds, key=lambda r: r.rate)[len(rounds) // 2] for label, rounds in results.items()}
    bare = medians["bare ASGI 204"].rate
    for label, median in medians.items():
        print(f"| {label} | {median.rate:,.0f} | {median.percentile(0.5) * 1000:.2f} | "
              f"{median.percentile(0.99) * 1000:.2f} | {median.rate / bare:.0%} |")
    if stream != sent:  # answered but not stored: the rate above was not one the pipeline can keep up
        print(f"\nNOT EVERY HIT WAS STORED: {sent - stream:,} of {sent:,} missing")


if __name__ == "__main__":
    asyncio.run(main())
