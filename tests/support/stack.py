"""The platform as it runs in production, on one machine: its own PostgreSQL, a redis-server with AOF
on its own port and folder, the ClickHouse HTTP test server, and `openanalytics serve` and `worker`
processes, each of which can be killed (-9), stopped and started again.

    with Stack(folder, apis=2, workers=2) as stack:
        project = stack.cli("projects", "create", "--name", "Shop", "--plan", "enterprise")
        stack.redis.kill(); stack.redis.start()     # a Redis crash, reloaded from its AOF
        stack.clickhouse.stop(); ...; stack.clickhouse.start()
        stack.apis[0].kill(); stack.apis[0].start()

Used by the fault suite (tests/fault_suite.py) and the tests of real processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import clickhouse_connect
import httpx
import redis as sync_redis

from openanalytics.provisioning.events_schema import database_name
from tests.support import clickhouse_http
from tests.support.servers import free_port, start_postgres, start_redis

ROOT = Path(__file__).resolve().parents[2]
GROUP = "oa-workers"
STREAM = "oa:events"


class Process:
    """One `openanalytics` command as a child process, logging to a file; started again on the same port."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, port: int | None = None,
                 metrics_port: int | None = None):
        self.name, self.args, self.env, self.log = name, args, env, log
        self.port, self.metrics_port = port, metrics_port
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Process:
        env = {**self.env, **({"OA_PROMETHEUS_PORT": str(self.metrics_port)} if self.metrics_port else {})}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "openanalytics.cli", *self.args], env=env, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if self.port is not None:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start:\n{self.tail()}")

    def kill(self) -> None:
        """kill -9: what it held in memory is gone."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout: float = 30) -> int | None:
        """A graceful stop (SIGTERM, as Kubernetes sends); its exit code."""
        if not self.running:
            return self.proc.returncode if self.proc is not None else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def metric(self, name: str, **labels: str) -> float:
        """A counter's value from the process's Prometheus endpoint (0 if not counted yet)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rindex("}") + 1]))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class ClickHouse:
    """The ClickHouse HTTP test server (chdb) on its own folder; stopped and started on the same URL."""

    def __init__(self, folder: Path):
        self.folder = str(folder)
        self.url, self.proc = clickhouse_http.start(self.folder)
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        clickhouse_http.stop(self.proc)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.log.close()

    def start(self) -> None:
        self.url, self.proc = clickhouse_http.start(self.folder, port=self.port)


class Stack:
    def __init__(self, folder: Path, apis: int = 2, workers: int = 2, **settings: str):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.apis: list[Process] = []
        self.workers: list[Process] = []
        self._cleanup = ExitStack()  # stops what was started, last first
        try:
            self.postgres = self._cleanup.enter_context(start_postgres(folder / "postgres"))
            self.redis = self._cleanup.enter_context(start_redis(folder / "redis", aof=True))
            self.clickhouse = ClickHouse(folder / "clickhouse")
            self._cleanup.callback(lambda: self.clickhouse.stop() if self.clickhouse.running else None)
            self._cleanup.callback(lambda: [process.stop(10) for process in self.processes])
            self._start(apis, workers, settings)
        except BaseException:
            self._cleanup.close()
            raise

    def _start(self, apis: int, workers: int, settings: dict[str, str]) -> None:
        folder = self.folder
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "OTEL_"))}
        self.env = {**env, "OA_DATABASE_URL": self.postgres.admin_url, "OA_REDIS_URL": self.redis.url(0),
                    "OA_CLICKHOUSE_URL": self.clickhouse.url, "OA_DATA_DIR": str(folder / "unused"),
                    "OA_LOG_LEVEL": "INFO", "OA_WORKER_CLAIM_IDLE_MS": "3000", "OA_CACHE_TTL_SECONDS": "1",
                    **settings}
        self.cli("migrate")
        self.apis = [Process(f"api-{n}", ["serve", "--port", str(port)], self.env, folder / f"api-{n}.log",
                             port=port, metrics_port=free_port())
                     for n, port in enumerate(free_port() for _ in range(apis))]
        self.workers = [Process(f"worker-{n}", ["worker"], {**self.env, "OA_WORKER_NAME": f"worker-{n}"},
                                folder / f"worker-{n}.log") for n in range(workers)]
        for process in self.processes:
            process.start()

    @property
    def processes(self) -> list[Process]:
        return [*self.apis, *self.workers]

    def cli(self, *args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "openanalytics.cli", *args, "--json"], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"openanalytics {' '.join(args)}: {done.stderr}")
        return json.loads(done.stdout)

    def hot(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.redis.url(0))

    def events(self):
        return clickhouse_connect.get_client(dsn=self.clickhouse.url, autogenerate_session_id=False)

    def stored(self, project_id: str, column: str = "toString(event_id)", where: str = "1") -> dict[str, int]:
        """How often each value of `column` is stored in the project's events."""
        rows = self.events().query(f"SELECT {column}, count() FROM {database_name(project_id)}.events "
                                   f"WHERE {where} GROUP BY 1").result_rows
        return {value: count for value, count in rows}

    def queued(self) -> int:
        """Events on the stream (waiting, or read and not yet acknowledged)."""
        try:
            return self.hot().xlen(STREAM)
        except sync_redis.RedisError:
            return -1

    def wait_drained(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queued() == 0:
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        self._cleanup.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
