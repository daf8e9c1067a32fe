"""500 AnalyticsProjects created at once: time until every one is Ready, and the operator's memory.

    python benchmarks/operator_projects.py [--projects 500]

The real operator process (`openanalytics operator`) runs against the Kubernetes API
emulator (tests/support/kmock_k8s.py), a throwaway PostgreSQL database, Redis database 15
and the chdb-backed ClickHouse HTTP server of the tests. Each project has one API key, so
each becomes a database, its table and TTL, a control-plane row and a Secret.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = "/apis/openanalytics.io/v1alpha1/namespaces/default/analyticsprojects"
PG_ADMIN = os.environ.get("OA_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def memory_kib(pid: int) -> tuple[int, int]:
    """(resident now, peak resident) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=500)
    args = parser.parse_args()
    import httpx
    import redis
    import sqlalchemy as sa

    from openanalytics import migrations
    from openanalytics.stores.sql import Database
    from tests.support import clickhouse_http
    from tests.support.kmock_k8s import CR, serve_emulator

    name = f"oa_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    postgres_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    db = Database(postgres_url)
    migrations.upgrade(db.engine)
    db.dispose()
    redis_url = "redis://127.0.0.1:6379/15"
    redis.Redis.from_url(redis_url).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        clickhouse_url, clickhouse = clickhouse_http.start(str(Path(tmp) / "ch"))
        try:
            async with serve_emulator() as (emulator, url):
                kubeconfig = Path(tmp) / "kubeconfig"
                kubeconfig.write_text(
                    "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
                    f"clusters: [{{name: kmock, cluster: {{server: '{url}'}}}}]\n"
                    "users: [{name: bench, user: {token: bench}}]\n"
                    "contexts: [{name: kmock, context: {cluster: kmock, user: bench, namespace: default}}]\n")
                env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "KUBERNETES_"))}
                env.update(OA_DATABASE_URL=postgres_url, OA_REDIS_URL=redis_url, OA_CLICKHOUSE_URL=clickhouse_url,
                           KUBECONFIG=str(kubeconfig), OA_OPERATOR_DRIFT_SECONDS="600")
                log = Path(tmp) / "operator.log"
                with log.open("wb") as out:
                    operator = subprocess.Popen(
                        [sys.executable, "-m", "openanalytics.cli", "operator", "--namespace", "default"],
                        env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
                try:
                    while not any(r.action == emulator.action.WATCH and r.resource == CR for r in list(emulator)):
                        assert operator.poll() is None, log.read_text()[-3000:]
                        await asyncio.sleep(0.1)
                    idle, _ = memory_kib(operator.pid)
                    async with httpx.AsyncClient(base_url=url, timeout=60) as k8s:
                        started = time.perf_counter()
                        await asyncio.gather(*(k8s.post(BASE, json={
                            "apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject",
                            "metadata": {"name": f"p{n:04d}"},
                            "spec": {"plan": "free", "apiKeys": [{"name": "backend"}]}}) for n in range(args.projects)))
                        created = time.perf_counter() - started
                        ready, peak_seen = 0, 0
                        while ready < args.projects:
                            assert operator.poll() is None, log.read_text()[-3000:]
                            items = (await k8s.get(BASE)).json()["items"]
                            ready = sum(1 for i in items if i.get("status", {}).get("phase") == "Ready")
                            peak_seen = max(peak_seen, memory_kib(operator.pid)[0])
                            await asyncio.sleep(3)  # listing 500 objects costs the emulator too
                        took = time.perf_counter() - started
                        secrets_made = len((await k8s.get("/api/v1/namespaces/default/secrets")).json()["items"])
                    now, peak = memory_kib(operator.pid)
                finally:
                    operator.send_signal(signal.SIGINT)
                    try:
                        operator.wait(60)
                    except subprocess.TimeoutExpired:
                        operator.kill()
        finally:
            clickhouse_http.stop(clickhouse)
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"\n{args.projects} AnalyticsProjects posted in {created:.1f} s; {secrets_made} Secrets made\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| time until all are Ready | {took:.1f} s |")
    print(f"| projects per second | {args.projects / took:.1f} |")
    print(f"| operator memory idle (RSS) | {idle / 1024:.0f} MiB |")
    print(f"| operator memory after (RSS) | {now / 1024:.0f} MiB |")
    print(f"| operator memory peak (VmHWM) | {peak / 1024:.0f} MiB |")


if __name__ == "__main__":
    asyncio.run(main())
