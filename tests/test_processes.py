"""The platform as a user runs it: real processes, the CLI, and HTTP on localhost."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.test_events_api import SEED_EVENT

ROOT = Path(__file__).resolve().parent.parent
PAGEVIEWS = "/v1/projects/{}/pageviews?from=2025-05-01&to=2025-05-12&group_by=path"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_")}
    return {**env, **extra}


def server_env(postgres_url: str, clickhouse_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """Settings for processes on the server stores, with an empty Redis database of their own."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return clean_env(OA_DATABASE_URL=postgres_url, OA_REDIS_URL=redis_url, OA_CLICKHOUSE_URL=clickhouse_url, **extra)


def cli(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "openanalytics.cli", *args, "--json"], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "openanalytics.cli", *args], env=env, cwd=ROOT,
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready: {log.read_text()}")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def wait_for_events(base: str, project_id: str, headers: dict, expected: int, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(base + PAGEVIEWS.format(project_id), headers=headers, timeout=10).json()
        if body["totals"]["events"] == expected or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def seed_examples(base: str, project_id: str, secret: str) -> None:
    """The seed's three curl examples, against localhost."""
    headers = {"Authorization": f"Bearer {secret}"}
    listed = httpx.get(f"{base}/v1/projects", headers=headers)
    assert listed.status_code == 200 and [p["id"] for p in listed.json()["projects"]] == [project_id]
    sent = httpx.post(f"{base}/v1/projects/{project_id}/events", headers=headers, json=SEED_EVENT)
    assert sent.status_code == 202 and sent.json()["queued"] is True
    body = wait_for_events(base, project_id, headers, 1)
    assert body["results"] == [{"path": "/thanks", "pageviews": 0, "visitors": 1, "events": 1}], body


def test_standalone_with_the_cli_beside_it(tmp_path):
    env = clean_env(OA_DATA_DIR=str(tmp_path / "data"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "standalone.log"
    proc = start(env, "standalone", "--port", str(port), log=log)
    try:
        wait_ready(base, proc, log)
        # The CLI writes the control plane while standalone holds the embedded ClickHouse.
        project = cli(env, "projects", "create", "--name", "Shop", "--plan", "business", "--domain", "example.com")
        key = cli(env, "keys", "create", "--project", project["id"], "--name", "ci")
        assert key["secret"].startswith("oa_live_") and key["prefix"] == key["secret"][:12]
        seed_examples(base, project["id"], key["secret"])
        assert key["secret"] not in json.dumps(cli(env, "keys", "list", "--project", project["id"]))

        cli(env, "keys", "revoke", key["id"])
        time.sleep(1.2)
        assert httpx.get(f"{base}/v1/projects", headers={"Authorization": f"Bearer {key['secret']}"}).status_code == 401
        assert stop(proc) == 0

        # Everything survives a restart on the same data directory.
        key2 = cli(env, "keys", "create", "--project", project["id"])
        proc = start(env, "standalone", "--port", str(port), log=log)
        wait_ready(base, proc, log)
        body = wait_for_events(base, project["id"], {"Authorization": f"Bearer {key2['secret']}"}, 1, timeout=2)
        assert body["totals"]["events"] == 1
    finally:
        if proc.poll() is None:
            stop(proc)


def test_embedded_migrate_refuses_while_standalone_holds_the_store(tmp_path):
    env = clean_env(OA_DATA_DIR=str(tmp_path / "data"))
    port = free_port()
    log = tmp_path / "standalone.log"
    proc = start(env, "standalone", "--port", str(port), log=log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        done = subprocess.run([sys.executable, "-m", "openanalytics.cli", "migrate"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "standalone" in done.stderr
    finally:
        stop(proc)


@pytest.mark.server_stores
def test_serve_and_worker_against_server_stores(tmp_path, postgres_url, clickhouse_url, redis_server):
    env = server_env(postgres_url, clickhouse_url, redis_server.url(10), OA_DATA_DIR=str(tmp_path / "unused"))
    project = cli(env, "projects", "create", "--name", "Server mode", "--plan", "pro")
    key = cli(env, "keys", "create", "--project", project["id"])
    assert project["id"] in cli(env, "migrate")["provisioned"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start(env, "serve", "--port", str(port), log=tmp_path / "serve.log")
    worker = start(env, "worker", log=tmp_path / "worker.log")
    try:
        wait_ready(base, api, tmp_path / "serve.log")
        # A Pro project keeps 365 days, so the seed's May 2025 timestamp is replaced by now.
        headers = {"Authorization": f"Bearer {key['secret']}"}
        event = {**SEED_EVENT, "timestamp": int(time.time() * 1000)}
        assert httpx.post(f"{base}/v1/projects/{project['id']}/events", headers=headers, json=event).status_code == 202
        today = time.strftime("%Y-%m-%d", time.gmtime())
        deadline = time.monotonic() + 15
        while True:
            body = httpx.get(f"{base}/v1/projects/{project['id']}/pageviews", params={"from": today, "to": today},
                             headers=headers).json()
            if body["totals"]["events"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert body["totals"]["events"] == 1, body
        assert not (tmp_path / "unused").exists(), "server mode must not create embedded stores"
    finally:
        assert stop(worker) == 0, (tmp_path / "worker.log").read_text()
        assert stop(api) == 0, (tmp_path / "serve.log").read_text()


@pytest.mark.server_stores
def test_worker_killed_between_insert_and_ack_stores_exactly_once(tmp_path, postgres_url, clickhouse_url,
                                                                  redis_server):
    import redis

    from openanalytics.provisioning.events_schema import database_name

    env = server_env(postgres_url, clickhouse_url, redis_server.url(11), OA_WORKER_NAME="worker-0")
    project = cli(env, "projects", "create", "--name", "Crash", "--plan", "pro")
    key = cli(env, "keys", "create", "--project", project["id"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start(env, "serve", "--port", str(port), log=tmp_path / "serve.log")
    try:
        wait_ready(base, api, tmp_path / "serve.log")
        events = [{"event_type": "pageview", "url": f"https://a.example/{i}"} for i in range(25)]
        sent = httpx.post(f"{base}/v1/projects/{project['id']}/events", json=events,
                          headers={"Authorization": f"Bearer {key['secret']}"})
        assert sent.status_code == 202
    finally:
        assert stop(api) == 0, (tmp_path / "serve.log").read_text()

    died = subprocess.run([sys.executable, "-m", "tests.support.dying_worker"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert died.returncode == 137, died.stderr

    import clickhouse_connect

    count = f"SELECT count() FROM {database_name(project['id'])}.events"
    client = clickhouse_connect.get_client(dsn=clickhouse_url, autogenerate_session_id=False)
    assert client.command(count) == 25, "the dying worker inserted before it died"

    worker = start(env, "worker", log=tmp_path / "worker.log")  # restarted under the same name
    try:
        hot = redis.Redis.from_url(env["OA_REDIS_URL"])
        deadline = time.monotonic() + 60  # a restarted worker on a loaded machine: imports, stores, then the claim
        while hot.xpending("oa:events", "oa-workers")["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hot.xpending("oa:events", "oa-workers")["pending"] == 0
    finally:
        assert stop(worker) == 0
    assert client.command(count) == 25


@pytest.mark.server_stores
def test_two_api_processes_share_one_budget_and_see_revocations(tmp_path, postgres_url, clickhouse_url,
                                                                redis_server):
    # A long cache lifetime: only the Redis announcement can make the revocation this fast.
    env = server_env(postgres_url, clickhouse_url, redis_server.url(12), OA_CACHE_TTL_SECONDS="30")
    project = cli(env, "projects", "create", "--name", "Shared budget", "--plan", "free")
    admin = cli(env, "keys", "create", "--project", project["id"], "--scope", "keys:manage", "--scope", "projects:read")
    reader = cli(env, "keys", "create", "--project", project["id"], "--scope", "projects:read")
    ports = [free_port(), free_port()]
    procs = [start(env, "serve", "--port", str(p), log=tmp_path / f"serve{p}.log") for p in ports]
    try:
        for port, proc in zip(ports, procs):
            wait_ready(f"http://127.0.0.1:{port}", proc, tmp_path / f"serve{port}.log")
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        headers = {"Authorization": f"Bearer {reader['secret']}"}
        for n in range(60):
            response = httpx.get(f"{bases[n % 2]}/v1/projects", headers=headers)
            assert response.status_code == 200, (n, response.text)
            assert response.headers["x-ratelimit-remaining"] == str(59 - n)
        for base in bases:
            assert httpx.get(f"{base}/v1/projects", headers=headers).status_code == 429

        admin_headers = {"Authorization": f"Bearer {admin['secret']}"}
        victim = httpx.post(f"{bases[0]}/v1/projects/{project['id']}/keys", headers=admin_headers,
                            json={"scopes": ["projects:read"]}).json()
        victim_headers = {"Authorization": f"Bearer {victim['secret']}"}
        assert httpx.get(f"{bases[1]}/v1/projects", headers=victim_headers).status_code == 200  # cached there now
        revoked_at = time.monotonic()
        assert httpx.delete(f"{bases[0]}/v1/projects/{project['id']}/keys/{victim['id']}",
                            headers=admin_headers).status_code == 200
        while httpx.get(f"{bases[1]}/v1/projects", headers=victim_headers).status_code == 200:
            assert time.monotonic() - revoked_at < 1.0, "the other process still accepts the revoked key"
            time.sleep(0.02)
    finally:
        for port, proc in zip(ports, procs):
            assert stop(proc) == 0, (tmp_path / f"serve{port}.log").read_text()
