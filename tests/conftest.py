"""Fixtures: the same tests run on the embedded stores and on the server stores.

- embedded: SQLite, fakeredis, chdb in-process (one data directory for the session:
  chdb allows one per process; every test uses fresh projects, hence fresh databases).
- server: PostgreSQL (a throwaway database), Redis (database 9, flushed per test) and
  ClickHouse over HTTP (clickhouse-connect's HTTP client against tests/support/clickhouse_http).

The server stores' PostgreSQL and Redis are private servers this session starts on free
loopback ports (tests/support/servers.py) the first time a test needs them, and stops at its
end. To use servers of your own instead, set OA_TEST_PG_ADMIN_URL (a superuser URL, e.g.
postgresql+psycopg://postgres@127.0.0.1:5432/postgres; each session creates and drops a
database there) and OA_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379; the tests FLUSH its
databases 9-12, whatever database the URL names).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
import sqlalchemy as sa

from openanalytics import migrations
from openanalytics.app import create_app
from openanalytics.auth.keys import issue_key
from openanalytics.config import Settings
from openanalytics.projects.service import create_project
from openanalytics.runtime import Stores
from openanalytics.stores.clickhouse import EventStore
from openanalytics.stores.redis import make_redis
from openanalytics.stores.sql import Database
from openanalytics.worker.runner import Worker
from tests.helpers import CollectTransport
from tests.support import clickhouse_http
from tests.support.servers import RedisServer, start_postgres, start_redis
from tests.support.parallel import (  # noqa: F401  the groups' hooks (pytest-xdist)
    pytest_collection_finish, pytest_configure_node, pytest_unconfigure, pytest_xdist_make_scheduler)

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
# The run is split over processes (pytest-xdist; tests/support/parallel.py): one more than the cores,
# as many tests wait on servers and subprocesses more than they compute (on 2 cores the suite took
# 5.8 minutes in 2 processes, 4.8 in 3), at most MAX_XDIST_WORKERS.
MAX_XDIST_WORKERS = 8


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int | None:
    """How many processes `-n auto` (pyproject's addopts) means. None (the run stays in this process)
    with OA_TEST_REDIS_URL, as every process would flush the same databases 9-12 of that Redis.
    PYTEST_XDIST_AUTO_NUM_WORKERS, -n N and -n 0 say otherwise."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist reads it
    if os.environ.get("OA_TEST_REDIS_URL"):
        return 0
    return min(len(os.sched_getaffinity(0)) + 1, MAX_XDIST_WORKERS)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist looks for them
def pytest_collection_modifyitems(items) -> None:
    """The tests that must run in one process, in order (xdist groups):
    - image: the Docker engine is one per process, and only one at a time has the cached data root
      (a second would build the images again, minutes);
    - kube: the real control plane is one per process (three processes, three control planes), and
      what a test leaves there (a namespace) the next one sees;
    - faults: the fault suite's two tests, which each start a whole stack and put it under load,
      one at a time."""
    for item in items:
        if item.get_closest_marker("image"):
            item.add_marker(pytest.mark.xdist_group("image"))
        elif item.get_closest_marker("kube") or "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("kube"))
        elif item.path.name == "test_faults.py":
            item.add_marker(pytest.mark.xdist_group("faults"))


@pytest.fixture(scope="session")
def embedded_backends(tmp_path_factory) -> Iterator[tuple[Database, EventStore]]:
    root = tmp_path_factory.mktemp("embedded")
    db = Database(f"sqlite:///{root / 'control.sqlite3'}")
    migrations.upgrade(db.engine)
    events = EventStore(f"chdb://{root / 'clickhouse'}")
    yield db, events
    events.close()
    db.dispose()


class ExternalRedis:
    """The Redis OA_TEST_REDIS_URL names, standing in for a private RedisServer."""

    def __init__(self, url: str):
        self._parts = urlsplit(url)

    def url(self, db: int = 0) -> str:
        return urlunsplit(self._parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer | ExternalRedis]:
    """The server stores' Redis: `.url(db)`; the tests use databases 9-12 and flush them."""
    if os.environ.get("OA_TEST_REDIS_URL"):
        yield ExternalRedis(os.environ["OA_TEST_REDIS_URL"])
        return
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    """The server stores' Redis database (9)."""
    return redis_server.url(9)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory) -> Iterator[str]:
    """A superuser's URL: OA_TEST_PG_ADMIN_URL, else a private PostgreSQL's."""
    if os.environ.get("OA_TEST_PG_ADMIN_URL"):
        yield os.environ["OA_TEST_PG_ADMIN_URL"]
        return
    with start_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server.admin_url


@pytest.fixture(scope="session")
def postgres_url(pg_admin_url) -> Iterator[str]:
    name = f"oa_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory) -> Iterator[str]:
    url, proc = clickhouse_http.start(str(tmp_path_factory.mktemp("chhttp")))
    yield url
    clickhouse_http.stop(proc)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    """A real Kubernetes control plane (tests/support/kube.py) with the CRD applied and established."""
    from tests.support import kube

    blocker = None if kube.built() else kube.build_blocker()
    if blocker:
        pytest.skip(f"no kube-apiserver in {kube.CACHE} and it cannot be built here: {blocker}")
    with kube.start_control_plane(tmp_path_factory.mktemp("kube")) as plane:
        plane.apply(Path(__file__).resolve().parent.parent / "crds" / "analyticsproject.yaml")
        plane.wait_established("analyticsprojects.openanalytics.io")
        yield plane


@pytest.fixture(scope="session")
def server_backends(postgres_url, clickhouse_url) -> Iterator[tuple[Database, EventStore]]:
    db = Database(postgres_url)
    migrations.upgrade(db.engine)
    events = EventStore(clickhouse_url)
    yield db, events
    events.close()
    db.dispose()


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.server_stores)])
async def stores(request, tmp_path) -> AsyncIterator[Stores]:
    settings = Settings(data_dir=tmp_path, worker_claim_idle_ms=1000, cache_ttl_seconds=1.0)
    if request.param == "embedded":
        db, events = request.getfixturevalue("embedded_backends")
        hot = make_redis(None)
    else:
        db, events = request.getfixturevalue("server_backends")
        redis_url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(redis_url).flushdb()
        hot = make_redis(redis_url)
    yield Stores(settings=settings, db=db, redis=hot, events=events)
    await hot.aclose()


@pytest.fixture
def app(stores):
    return create_app(stores)


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = CollectTransport(app=app, client=("203.0.113.7", 51000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers={"User-Agent": BROWSER}) as http:
        yield http


class Tenant:
    """A project with a key, and helpers to talk to the API as its owner."""

    def __init__(self, stores: Stores, plan: str = "business", domains: list[str] | None = None, scopes=None):
        with stores.db.session() as session:
            self.project = create_project(session, f"tenant {secrets.token_hex(3)}", plan, domains)
            self.key = issue_key(session, self.project.id, "test", scopes)
        self.id = self.project.id
        self.site_id = self.project.site_id
        self.secret = self.key.secret
        self.headers = {"Authorization": f"Bearer {self.secret}"}


@pytest.fixture
def tenant(stores) -> Tenant:
    return Tenant(stores)


@pytest.fixture
def make_tenant(stores):
    return lambda **kwargs: Tenant(stores, **kwargs)


@pytest.fixture
def worker(stores) -> Worker:
    return Worker(stores, consumer="test-worker")
