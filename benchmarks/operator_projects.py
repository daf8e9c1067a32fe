"""500 AnalyticsProjects created at once: time until every one is Ready, and the operator's memory.

    python benchmarks/operator_projects.py [--projects 500]

The real operator process (`openanalytics operator`) runs against the Kubernetes API
emulator (tests/support/kmock_k8s.py, in a process of its own), a throwaway PostgreSQL database, Redis database 15
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
    from tests.support.kmock_k8s import kubeconfig as kubeconfig_for

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
            # The emulator in a process of its own, so its work does not share the measuring loop.
            emulator = subprocess.Popen([sys.executable, "-m", "tests.support.kmock_k8s"], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            url = emulator.stdout.readline().split()[-1]
            try:
                kubeconfig = Path(tmp) / "kubeconfig"
                kubeconfig.write_text(kubeconfig_for(url))
                env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "KUBERNETES_"))}
                env.update(OA_DATABASE_URL=postgres_url, OA_REDIS_URL=redis_url, OA_CLICKHOUSE_URL=clickhouse_url,
                           KUBECONFIG=str(kubeconfig), OA_OPERATOR_DRIFT_SECONDS="3600")
                log = Path(tmp) / "operator.log"
                with log.open("wb") as out:
                    operator = subprocess.Popen(
                        [sys.executable, "-m", "openanalytics.cli", "operator", "--namespace", "default"],
                        env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
                try:
                    async with httpx.AsyncClient(base_url=url, timeout=120) as k8s:

                        async def ready_count() -> int:
                            assert operator.poll() is None, log.read_text()[-3000:]
                            items = (await k8s.get(BASE)).json()["items"]
                            return sum(1 for i in items if i.get("status", {}).get("phase") == "Ready")

                        await k8s.post(BASE, json=_project("warm-up"))  # the operator is up once this is Ready
                        while await ready_count() < 1:
                            await asyncio.sleep(0.5)
                        idle, _ = memory_kib(operator.pid)
                        started = time.perf_counter()
                        await asyncio.gather(*(k8s.post(BASE, json=_project(f"p{n:04d}")) for n in range(args.projects)))
                        created = time.perf_counter() - started
                        while await ready_count() < args.projects + 1:
                            await asyncio.sleep(3)  # listing hundreds of objects costs the emulator too
                        took = time.perf_counter() - started
                        secrets_made = len((await k8s.get("/api/v1/namespaces/default/secrets")).json()["items"]) - 1
                    now, peak = memory_kib(operator.pid)
                finally:
                    operator.send_signal(signal.SIGINT)
                    try:
                        operator.wait(60)
                    except subprocess.TimeoutExpired:
                        operator.kill()
            finally:
                emulator.terminate()
                emulator.wait(10)
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


def _project(name: str) -> dict:
    return {"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject", "metadata": {"name": name},
            "spec": {"plan": "free", "apiKeys": [{"name": "backend"}]}}


if __name__ == "__main__":
    asyncio.run(main())
