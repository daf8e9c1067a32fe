"""AnalyticsProjects created at once on a real API server: time until every one is Ready, and the
operator's memory.

    python benchmarks/operator_projects.py [--projects 500] [--profile]

Everything runs here, on loopback: a real control plane (etcd, kube-apiserver and
kube-controller-manager; tests/support/kube.py builds it once), a private PostgreSQL and Redis
(tests/support/servers.py) and the chdb-backed ClickHouse HTTP server of the tests. The operator
(`openanalytics operator`) runs as the chart's own ServiceAccount and Role, in one namespace, as
the chart installs it. Each project has one API key, so each becomes a database, its table and
TTL, a control-plane row and a Secret. --profile samples the operator with py-spy (if installed)
and prints where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NAMESPACE = "tenants"


def memory_kib(pid: int) -> tuple[int, int]:
    """(resident now, peak resident) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=500)
    parser.add_argument("--profile", action="store_true", help="sample the operator with py-spy")
    args = parser.parse_args()
    import httpx
    import sqlalchemy as sa

    from openanalytics import migrations
    from openanalytics.stores.sql import Database
    from tests.support import clickhouse_http
    from tests.support.kube import start_control_plane
    from tests.support.servers import start_postgres, start_redis

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with start_postgres(tmp / "pg") as pg, start_redis(tmp / "redis") as redis_server, \
                start_control_plane(tmp / "kube") as plane:
            admin = sa.create_engine(pg.admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql('CREATE DATABASE "bench"')
            admin.dispose()
            postgres_url = pg.admin_url.rsplit("/", 1)[0] + "/bench"
            db = Database(postgres_url)
            migrations.upgrade(db.engine)
            db.dispose()
            clickhouse_url, clickhouse = clickhouse_http.start(str(tmp / "ch"))
            try:
                plane.apply(ROOT / "crds" / "analyticsproject.yaml")
                plane.wait_established("analyticsprojects.openanalytics.io")
                kubeconfig = plane.install_operator_account(NAMESPACE, tmp / "operator.kubeconfig")
                env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "KUBERNETES_"))}
                env.update(OA_DATABASE_URL=postgres_url, OA_REDIS_URL=redis_server.url(0),
                           OA_CLICKHOUSE_URL=clickhouse_url, KUBECONFIG=str(kubeconfig),
                           OA_OPERATOR_DRIFT_SECONDS="3600", OA_OPERATOR_NAMESPACES=NAMESPACE)
                log = tmp / "operator.log"
                with log.open("wb") as out:
                    operator = subprocess.Popen([sys.executable, "-m", "openanalytics.cli", "operator"],
                                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
                result = await _measure(plane, operator, log, args, tmp, clickhouse.pid)
            finally:
                if "operator" in locals():
                    operator.send_signal(signal.SIGINT)
                    try:
                        operator.wait(60)
                    except subprocess.TimeoutExpired:
                        operator.kill()
                clickhouse_http.stop(clickhouse)
            apiserver_pid = plane.apiserver.process.pid
    _report(args, *result, apiserver_pid)


async def _measure(plane, operator, log, args, tmp: Path, clickhouse_pid: int):
    import httpx

    base = f"/apis/openanalytics.io/v1alpha1/namespaces/{NAMESPACE}/analyticsprojects"
    context = ssl.create_default_context(cafile=str(plane.ca))
    pids = {"operator": operator.pid, "kube-apiserver": plane.apiserver.process.pid, "ClickHouse test server":
            clickhouse_pid}
    async with httpx.AsyncClient(base_url=plane.url, verify=context, timeout=120,
                                 headers={"Authorization": f"Bearer {plane.admin_token}"}) as k8s:

        async def ready_count() -> int:
            assert operator.poll() is None, log.read_text()[-3000:]
            items = (await k8s.get(base)).json()["items"]
            return sum(1 for i in items if i.get("status", {}).get("phase") == "Ready")

        await k8s.post(base, json=_project("warm-up"))  # the operator is up once this is Ready
        while await ready_count() < 1:
            await asyncio.sleep(0.2)
        idle, _ = memory_kib(operator.pid)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        spy = None
        py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if args.profile and py_spy:
            spy = subprocess.Popen([py_spy, "record", "--pid", str(operator.pid), "--format", "raw", "--rate", "50",
                                    "--output", str(tmp / "profile.txt"), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.perf_counter()
        limits = asyncio.Semaphore(50)

        async def post(n: int) -> None:
            async with limits:
                answer = await k8s.post(base, json=_project(f"p{n:04d}"))
                answer.raise_for_status()

        await asyncio.gather(*(post(n) for n in range(args.projects)))
        created = time.perf_counter() - started
        while await ready_count() < args.projects + 1:
            await asyncio.sleep(1)
        took = time.perf_counter() - started
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        secrets_made = len((await k8s.get(f"/api/v1/namespaces/{NAMESPACE}/secrets",
                                          params={"labelSelector": "app.kubernetes.io/managed-by=openanalytics-operator"}
                                          )).json()["items"]) - 1
    now, peak = memory_kib(operator.pid)
    profile = None
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        profile = tmp / "profile.txt"
        profile = profile.read_text() if profile.exists() else None
    forbidden = log.read_text().count("Forbidden")
    return created, took, secrets_made, idle, now, peak, cpu, forbidden, profile


def _report(args, created, took, secrets_made, idle, now, peak, cpu, forbidden, profile, _apiserver_pid) -> None:
    print(f"\n{args.projects} AnalyticsProjects posted in {created:.1f} s; {secrets_made} Secrets made; "
          f"'Forbidden' in the operator's log: {forbidden}\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| time until all are Ready | {took:.1f} s |")
    print(f"| projects per second | {args.projects / took:.1f} |")
    print(f"| operator memory idle (RSS) | {idle / 1024:.0f} MiB |")
    print(f"| operator memory after (RSS) | {now / 1024:.0f} MiB |")
    print(f"| operator memory peak (VmHWM) | {peak / 1024:.0f} MiB |")
    for name, seconds in cpu.items():
        print(f"| CPU of the {name} | {seconds:.1f} s ({100 * seconds / took:.0f}% of a core) |")
    if profile:
        _print_profile(profile)


# What an operator thread was doing, by the first of these found in its stack (py-spy's frames
# name the file): the store calls run on threads, kopf and the Secret client on the event loop.
ACTIVITIES = (
    ("ClickHouse calls (clickhouse-connect)", "clickhouse_connect"),
    ("PostgreSQL calls (SQLAlchemy, psycopg)", "sqlalchemy"),
    ("Secret calls (kubernetes_asyncio)", "kubernetes_asyncio"),
    ("kopf's API calls and watch streams", "kopf/_cogs/clients"),
    ("kopf's handling of objects", "kopf/"),
)


def _print_profile(raw: str) -> None:
    """py-spy's raw (collapsed) stacks, counted by what each sampled thread was busy with."""
    total, by = 0, collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        by[next((name for name, mark in ACTIVITIES if mark in stack), "other (asyncio, logging, imports)")] += int(count)
    print(f"\n| operator busy with (py-spy, {total} samples) | share |\n|---|---:|")
    for name, count in by.most_common():
        print(f"| {name} | {100 * count / total:.0f}% |")


def _project(name: str) -> dict:
    return {"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject", "metadata": {"name": name},
            "spec": {"plan": "free", "apiKeys": [{"name": "backend"}]}}


if __name__ == "__main__":
    asyncio.run(main())
