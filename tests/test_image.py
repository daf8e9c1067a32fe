"""The container image: built from the work tree (Dockerfile) on a private Docker engine and run as
the chart runs it: uid 10001, read-only root with a tmpfs /tmp, no capabilities; on the host's
network, as the engine has no bridge (tests/support/docker_engine.py).

Two variants: the slim image (the default build: serve, worker, operator, migrate against a
ClickHouse server) and the embedded one (--build-arg EXTRAS=embedded: chdb inside, so
`standalone` too). Without chdb, asking for the embedded engine fails at once with how to get it.
"""

from __future__ import annotations

import time

import httpx
import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from openanalytics.config import get_settings
from openanalytics.stores import clickhouse
from tests.helpers import server_store_urls
from tests.support import docker_engine
from tests.support.servers import free_port

SLIM_IMAGE_BUDGET = 400_000_000  # bytes, as `docker image inspect` counts them
MISSING = "the embedded engine is not installed: pip install 'openanalytics[embedded]'"

# The image tests allow for a cold cache: the base images' stand-ins and both variants are built
# first (about 5 minutes; scripts/test does it before pytest).
COLD_BUILD_TIMEOUT = 600


# Without the image: what a slim install says --------------------------------------------------

@pytest.fixture
def without_chdb(monkeypatch, tmp_path):
    monkeypatch.setattr(clickhouse, "embedded_engine_installed", lambda: False)
    for name in ("OA_CLICKHOUSE_URL", "OA_DATABASE_URL", "OA_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OA_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("command", [["standalone"], ["serve"], ["worker"], ["migrate"],
                                     ["operator", "--namespace", "web"]])
def test_commands_needing_the_embedded_engine_say_how_to_install_it(without_chdb, command):
    from openanalytics.cli import main

    done = CliRunner().invoke(main, command)
    assert done.exit_code == 1, done.output
    assert MISSING in done.output and "OA_CLICKHOUSE_URL" in done.output


def test_the_events_store_refuses_a_chdb_url_without_chdb(without_chdb, tmp_path):
    with pytest.raises(clickhouse.EmbeddedEngineMissing, match=r"pip install 'openanalytics\[embedded\]'"):
        clickhouse.EventStore(f"chdb://{tmp_path / 'clickhouse'}")


# The images --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker(tmp_path_factory) -> docker_engine.DockerEngine:
    reason = docker_engine.blocker()
    if reason:
        pytest.skip(f"no private Docker engine here: {reason}")
    return docker_engine.engine(tmp_path_factory.mktemp("docker"))


@pytest.fixture(scope="session")
def slim_image(docker, tmp_path_factory) -> str:
    return docker_engine.built_image(tmp_path_factory.mktemp("docker-slim"))


@pytest.fixture(scope="session")
def embedded_image(docker, tmp_path_factory) -> str:
    return docker_engine.built_image(tmp_path_factory.mktemp("docker-embedded"), embedded=True)


def wait_ready(container: docker_engine.Container, base: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{base}/readyz", timeout=2)
            if answer.status_code == 200:
                return answer.json()
        except httpx.HTTPError:
            pass
        assert container.running, f"the container stopped:\n{container.logs()}"
        time.sleep(0.2)
    raise AssertionError(f"{base}/readyz not ready after {timeout:.0f} s:\n{container.logs()}")


@pytest.mark.image
@pytest.mark.timeout(COLD_BUILD_TIMEOUT)
@pytest.mark.parametrize("variant", ["slim_image", "embedded_image"])
def test_image_runs_as_non_root_by_default(request, docker, variant):
    name = request.getfixturevalue(variant)
    assert docker.docker("image", "inspect", "--format", "{{.Config.User}}", name).stdout.strip() == "10001:10001"
    done = docker.run_once(name, "-c", "import os; print(os.getuid(), os.getgid())", user=None,
                           options=("--entrypoint", "python"))
    assert (done.returncode, done.stdout.split()) == (0, ["10001", "10001"]), done.stderr


# Every module's bytecode is in the image and valid (the root is read-only: nothing stale is
# compiled again at each start): the dependencies' checked against their sources' mtime and size,
# the project's unchecked (compiled with --invalidation-mode unchecked-hash).
BYTECODE_CHECK = """
import importlib.util, pathlib, sys
stale = []
for source in pathlib.Path(sys.argv[1]).rglob("*.py"):
    cached = pathlib.Path(importlib.util.cache_from_source(str(source)))
    header = cached.read_bytes()[:16] if cached.exists() else b""
    flags, stat = int.from_bytes(header[4:8], "little"), source.stat()
    if len(header) < 16 or (not flags & 1 and (int.from_bytes(header[8:12], "little"), int.from_bytes(header[12:16], "little"))
                            != (int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF)):
        stale.append(str(source))
print(len(stale), *stale[:10])
"""


@pytest.mark.image
@pytest.mark.timeout(COLD_BUILD_TIMEOUT)
def test_slim_image_has_its_bytecode_compiled(docker, slim_image):
    done = docker.run_once(slim_image, "-c", BYTECODE_CHECK, "/opt/openanalytics/lib",
                           options=("--entrypoint", "python"))
    assert done.returncode == 0 and done.stdout.split()[:1] == ["0"], done.stdout + done.stderr


@pytest.mark.image
@pytest.mark.timeout(COLD_BUILD_TIMEOUT)
def test_slim_image_is_small_and_refuses_standalone_with_how_to_get_it(docker, slim_image):
    size = docker.image_size(slim_image)
    assert size < SLIM_IMAGE_BUDGET, f"{slim_image} is {size / 1e6:.0f} MB"
    done = docker.run_once(slim_image, "-c", "import importlib.util as u; print(u.find_spec('chdb'))",
                           options=("--entrypoint", "python"))
    assert done.stdout.strip() == "None", done.stdout + done.stderr
    done = docker.run_once(slim_image, "standalone", "--host", "127.0.0.1", "--port", str(free_port()))
    assert done.returncode == 1, done.stdout + done.stderr
    assert MISSING in done.stderr and "EXTRAS=embedded" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.image
@pytest.mark.timeout(COLD_BUILD_TIMEOUT)
def test_embedded_image_runs_standalone_on_a_read_only_root(docker, embedded_image):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    container = docker.start_container(embedded_image, "standalone", "--host", "127.0.0.1", "--port", str(port))
    try:
        ready = wait_ready(container, base)
        assert ready["status"] == "ok", ready
        assert set(ready["checks"]) == {"database", "redis", "clickhouse", "worker"}
        tracker = httpx.get(f"{base}/oa.js", timeout=10)
        assert tracker.status_code == 200
        assert tracker.headers["content-type"].startswith("text/javascript") and "data-site-id" in tracker.text
    finally:
        container.remove()


@pytest.mark.image
@pytest.mark.server_stores
@pytest.mark.timeout(COLD_BUILD_TIMEOUT)
def test_slim_image_migrates_and_serves_on_server_stores(docker, slim_image, pg_admin_url, clickhouse_url,
                                                          redis_server, tmp_path):
    database = f"oa_image_{free_port()}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    redis.Redis.from_url(redis_server.url(10)).flushdb()
    env = {"OA_DATABASE_URL": pg_admin_url.rsplit("/", 1)[0] + f"/{database}", "OA_CLICKHOUSE_URL": clickhouse_url,
           "OA_REDIS_URL": redis_server.url(10)}
    port = free_port()
    container = None
    try:
        migrated = docker.run_once(slim_image, "migrate", "--json", env=env)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert '"control_plane": "head"' in migrated.stdout
        container = docker.start_container(slim_image, "serve", "--host", "127.0.0.1", "--port", str(port), env=env)
        ready = wait_ready(container, f"http://127.0.0.1:{port}")
        assert ready["checks"] == {"database": "ok", "redis": "ok", "clickhouse": "ok"}, ready
    finally:
        if container is not None:
            container.remove()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


@pytest.mark.image
@pytest.mark.kube
@pytest.mark.server_stores
@pytest.mark.timeout(COLD_BUILD_TIMEOUT)
def test_slim_images_operator_reconciles_a_project_on_a_real_api_server(docker, slim_image, control_plane,
                                                                        server_backends, request, tmp_path):
    """`operator` from the image, as the chart's ServiceAccount (tests/support/kube.py), with the stores."""
    namespace = f"image-{free_port()}"
    kubeconfig = control_plane.install_operator_account(namespace, tmp_path / "operator.kubeconfig")
    kubeconfig.chmod(0o644)  # for uid 10001, through a read-only bind mount
    env = {**server_store_urls(request), "KUBECONFIG": "/etc/openanalytics/kubeconfig",
           "OA_OPERATOR_NAMESPACES": namespace}
    container = docker.start_container(slim_image, "operator", env=env,
                                       options=("-v", f"{kubeconfig}:/etc/openanalytics/kubeconfig:ro"))
    try:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=(
            "apiVersion: openanalytics.io/v1alpha1\nkind: AnalyticsProject\nmetadata: {name: shop}\n"
            "spec: {plan: free, apiKeys: [{name: backend}]}\n"))
        deadline = time.monotonic() + 60
        while control_plane.kubectl("get", "analyticsproject", "shop", "-n", namespace, "-o",
                                    "jsonpath={.status.phase}").stdout != "Ready":
            assert container.running and time.monotonic() < deadline, container.logs()[-3000:]
            time.sleep(0.5)
        secret = control_plane.kubectl("get", "secret", "shop-backend", "-n", namespace, "-o",
                                       "jsonpath={.data.apiKey}").stdout
        assert secret, "the key's Secret"
        assert docker.docker("exec", container.id, "id", "-u").stdout.strip() == "10001"
        assert "Forbidden" not in container.logs()
    finally:
        container.remove()


def test_every_base_image_of_the_dockerfile_has_a_stand_in():
    assert docker_engine.base_images() and set(docker_engine.base_images()) <= set(docker_engine.STAND_INS)
    assert (docker_engine.ROOT / "Dockerfile").is_file()
