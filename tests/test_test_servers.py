"""The private PostgreSQL and Redis the server-store tests start (tests/support/servers.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis
import sqlalchemy as sa

from tests.conftest import ExternalRedis
from tests.support.servers import RedisServer, start_postgres, start_redis

pytestmark = pytest.mark.server_stores
ROOT = Path(__file__).resolve().parent.parent


def test_a_private_redis_has_a_port_of_its_own_and_a_crash_keeps_what_its_aof_holds(tmp_path):
    with start_redis(tmp_path, aof=True, args=["--appendfsync", "always"]) as server:
        assert server.port != 6379 and server.url(3) == f"redis://127.0.0.1:{server.port}/3"
        assert redis.Redis.from_url(server.url(3)).info("server")["process_id"] == server.process.pid
        redis.Redis.from_url(server.url(3)).set("kept", "yes")
        port = server.port
        server.kill()
        assert not server.ping()
        server.start()
        assert server.port == port and server.ping()
        assert redis.Redis.from_url(server.url(3)).get("kept") == b"yes"
        assert (tmp_path / "appendonlydir").is_dir() and (tmp_path / "redis.log").is_file()
    assert not server.ping()


def test_two_private_redis_servers_at_once_do_not_share_anything(tmp_path):
    with start_redis(tmp_path / "a") as one, start_redis(tmp_path / "b") as two:
        assert one.port != two.port and 6379 not in (one.port, two.port)
        redis.Redis.from_url(one.url()).set("mine", "one")
        assert redis.Redis.from_url(two.url()).get("mine") is None
        two.stop()
        assert one.ping() and not two.ping()


def test_a_redis_started_on_a_thread_that_ended_keeps_running(tmp_path):
    # The kernel kills a child that asked to die with its parent when the *thread* that forked it ends.
    started = []
    thread = threading.Thread(target=lambda: started.append(start_redis(tmp_path)))
    thread.start()
    thread.join()
    with started[0] as server:
        time.sleep(0.2)
        assert server.ping()


def test_servers_die_with_the_python_process_that_started_them(tmp_path):
    script = ("import os, sys; from pathlib import Path; from tests.support.servers import start_redis; "
              "print(start_redis(Path(sys.argv[1])).port, flush=True); os.kill(os.getpid(), 9)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == -9, done.stderr
    port = int(done.stdout)
    deadline = time.monotonic() + 5
    while _answers(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _answers(port), "the orphaned redis-server still runs"


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_private_postgres_has_a_port_of_its_own_and_a_crash_keeps_its_commits(tmp_path):
    server = start_postgres(tmp_path)
    try:
        assert server.port != 5432
        assert server.admin_url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres"
        engine = sa.create_engine(server.admin_url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SHOW port").scalar() == str(server.port)
            assert conn.exec_driver_sql("SHOW data_directory").scalar() == str(server.data_dir)
            conn.exec_driver_sql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
        server.kill()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", connect_timeout=2)
        server.start()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM kept").scalar() == 1
        assert "database system is ready" in (tmp_path / "postgres.log").read_text()
    finally:
        server.close()
    assert not server.data_dir.exists()


def test_the_server_stores_use_private_servers_unless_given_urls(redis_server, redis_url, pg_admin_url):
    if os.environ.get("OA_TEST_REDIS_URL"):
        assert isinstance(redis_server, ExternalRedis)
    else:
        assert isinstance(redis_server, RedisServer) and redis_server.port != 6379
        assert redis_url == f"redis://127.0.0.1:{redis_server.port}/9"
    if not os.environ.get("OA_TEST_PG_ADMIN_URL"):
        assert sa.make_url(pg_admin_url).port not in (None, 5432)


def test_an_external_redis_url_names_the_server_and_the_tests_choose_the_database():
    external = ExternalRedis("redis://:secret@redis.internal:6380/3?socket_timeout=5")
    assert external.url(10) == "redis://:secret@redis.internal:6380/10?socket_timeout=5"
    assert ExternalRedis("redis://127.0.0.1:6379").url(9) == "redis://127.0.0.1:6379/9"
