"""End to end on a real cluster: kind, the CRD, the operator, the API answering the operator's keys.

Runs where Docker, kind and kubectl exist (`scripts/kind-e2e`); elsewhere it skips and says
why. Two stories: the operator process beside the cluster (its kubeconfig) against the
test's stores; and the whole platform in the cluster, the image built from the Dockerfile
and installed with the Helm chart (helm from scripts/fetch-k8s-tools), the in-release
stores, an AnalyticsProject reconciled by the in-cluster operator and the seed's curl
examples run against the API through a port-forward.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from openanalytics.provisioning import tenants
from tests.helpers import server_store_urls

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = "oa-e2e"


def _missing() -> str | None:
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "the Docker daemon does not answer"
    return None


pytestmark = [pytest.mark.kind, pytest.mark.skipif(_missing() is not None, reason=f"kind end-to-end: {_missing()}")]


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=stdin, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for(check, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory):
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], capture_output=True)
    subprocess.run(["kind", "create", "cluster", "--name", CLUSTER, "--kubeconfig", str(kubeconfig), "--wait", "120s"],
                   check=True, timeout=600)
    try:
        kubectl(kubeconfig, "apply", "-f", str(ROOT / "crds" / "analyticsproject.yaml"))
        kubectl(kubeconfig, "wait", "--for", "condition=Established", "crd/analyticsprojects.openanalytics.io")
        yield kubeconfig
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], capture_output=True, timeout=300)


def test_the_chart_on_kind(kind_cluster, tmp_path):
    """Image, chart, in-release stores, the in-cluster operator and the API: the operator story, in the cluster."""
    from tests.test_processes import free_port, seed_examples

    tools = Path(subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch-k8s-tools")], check=True,
                                capture_output=True, text=True).stdout.strip())
    subprocess.run(["docker", "build", "-t", "openanalytics:e2e", str(ROOT)], check=True, timeout=1800)
    subprocess.run(["kind", "load", "docker-image", "openanalytics:e2e", "--name", CLUSTER], check=True, timeout=600)
    helm = [str(tools / "helm"), "--kubeconfig", str(kind_cluster), "-n", "analytics"]
    subprocess.run([*helm, "install", "oa", str(ROOT / "charts" / "openanalytics"), "--create-namespace",
                    "--set", "image.repository=openanalytics,image.tag=e2e,image.pullPolicy=Never,api.replicas=1",
                    "--set", "stores.postgresql.deploy=true,stores.redis.deploy=true,stores.clickhouse.deploy=true",
                    "--set", "operator.driftSeconds=5",
                    "--wait", "--timeout", "15m"], check=True, timeout=1000)  # waits for the migrate hook too
    subprocess.run([*helm, "test", "oa", "--timeout", "5m"], check=True, timeout=400)

    def ns(*args: str, stdin: str | None = None) -> str:
        return kubectl(kind_cluster, "-n", "analytics", *args, stdin=stdin)

    def shop():
        found = json.loads(ns("get", "oap", "shop", "-o", "json"))
        return found if found.get("status", {}).get("phase") == "Ready" else None

    def key_of(secret: str) -> str:
        return base64.b64decode(json.loads(ns("get", "secret", secret, "-o", "json"))["data"]["apiKey"]).decode()

    manifest = json.loads(_manifest("shop", {"plan": "pro", "deletionPolicy": "Delete", "apiKeys": [{"name": "backend"}]}))
    manifest["metadata"]["namespace"] = "analytics"
    ns("apply", "-f", "-", stdin=json.dumps(manifest))
    status = wait_for(shop, timeout=180, what="the in-cluster operator to make the project Ready")["status"]
    key = key_of("shop-backend")
    port = free_port()
    forward = subprocess.Popen(["kubectl", "--kubeconfig", str(kind_cluster), "-n", "analytics", "port-forward",
                                "svc/oa-openanalytics-api", f"{port}:80"], stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: subprocess.run(["curl", "-sf", f"{base}/readyz"], capture_output=True).returncode == 0,
                 what="the port-forward")
        seed_examples(base, status["projectId"], key)  # the seed's curl examples with the operator's key

        def answers(secret: str) -> int:
            return httpx.get(f"{base}/v1/projects/{status['projectId']}",
                             headers={"Authorization": f"Bearer {secret}"}).status_code

        ns("patch", "oap", "shop", "--type", "merge", "-p", '{"spec": {"plan": "business"}}')
        wait_for(lambda: (shop() or {}).get("status", {}).get("limits", {}).get("retention_days") == 730,
                 what="the business plan's limits")
        ns("delete", "secret", "shop-backend")
        wait_for(lambda: subprocess.run(["kubectl", "--kubeconfig", str(kind_cluster), "-n", "analytics", "get",
                                         "secret", "shop-backend"], capture_output=True).returncode == 0,
                 what="the Secret to come back")
        old = key_of("shop-backend")
        assert answers(old) == 200
        ns("annotate", "oap", "shop", "--overwrite", "openanalytics.io/rotate-keys=1",
           "openanalytics.io/rotation-grace-seconds=600")
        new = wait_for(lambda: (lambda k: k if k != old else None)(key_of("shop-backend")), what="a rotated key")
        assert answers(new) == 200 and answers(old) == 200  # the old key lives through its grace period

        ns("delete", "oap", "shop", "--wait=true", "--timeout=120s")
        wait_for(lambda: answers(new) == 401, timeout=10, what="the keys to stop working")
    finally:
        forward.terminate()
        forward.wait(10)


async def test_the_operator_story_on_kind(kind_cluster, stores, client, tmp_path, request):
    if stores.events.embedded:
        pytest.skip("the operator process and the test need shared (server) stores")

    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_")}
    env.update(server_store_urls(request), KUBECONFIG=str(kind_cluster), OA_OPERATOR_DRIFT_SECONDS="2")
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        operator = subprocess.Popen([sys.executable, "-m", "openanalytics.cli", "operator", "--namespace", "default"],
                                    env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        with pytest.raises(AssertionError):  # admission: the schema refuses a bad plan
            kubectl(kind_cluster, "apply", "-f", "-", stdin=_manifest("bad", {"plan": "gold"}))
        kubectl(kind_cluster, "apply", "-f", "-", stdin=_manifest("shop", {
            "plan": "free", "deletionPolicy": "Delete", "apiKeys": [{"name": "backend"}]}))

        def shop():
            found = json.loads(kubectl(kind_cluster, "get", "analyticsproject", "shop", "-o", "json"))
            return found if found.get("status", {}).get("phase") == "Ready" else None

        status = wait_for(shop, what="Ready")["status"]
        assert "shop" in kubectl(kind_cluster, "get", "oap")  # short name and printer columns
        secret = json.loads(kubectl(kind_cluster, "get", "secret", "shop-backend", "-o", "json"))
        key = base64.b64decode(secret["data"]["apiKey"]).decode()
        headers = {"Authorization": f"Bearer {key}"}
        assert (await client.get(f"/v1/projects/{status['projectId']}", headers=headers)).status_code == 200

        kubectl(kind_cluster, "patch", "analyticsproject", "shop", "--type", "merge", "-p", '{"spec": {"plan": "pro"}}')
        wait_for(lambda: (shop() or {}).get("status", {}).get("limits", {}).get("retention_days") == 365, what="pro")
        kubectl(kind_cluster, "delete", "secret", "shop-backend")
        wait_for(lambda: subprocess.run(["kubectl", "--kubeconfig", str(kind_cluster), "get", "secret", "shop-backend"],
                                        capture_output=True).returncode == 0, what="the Secret to come back")

        kubectl(kind_cluster, "delete", "analyticsproject", "shop", "--wait=true", "--timeout=120s")
        time.sleep(1.1)
        assert (await client.get(f"/v1/projects/{status['projectId']}", headers=headers)).status_code == 401
        assert not tenants.database_exists(stores.events, status["projectId"])
    finally:
        operator.send_signal(signal.SIGINT)
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
        print(log.read_text()[-6000:])


def _manifest(name: str, spec: dict) -> str:
    return json.dumps({"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject",
                       "metadata": {"name": name, "namespace": "default"}, "spec": spec})
