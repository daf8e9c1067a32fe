"""The operator: provisioning functions against real stores, and the real kopf process against
the Kubernetes API emulator (tests/support/kmock_k8s.py) with the API answering its keys."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from openanalytics.projects.models import Project
from openanalytics.provisioning import tenants
from openanalytics.provisioning.events_schema import ttl_days
from tests.helpers import server_store_urls
from tests.support.kmock_k8s import CR, serve_emulator
from tests.support.kmock_k8s import kubeconfig as kubeconfig_for

ROOT = Path(__file__).resolve().parent.parent


# -- provisioning, shared by the operator and the CLI ------------------------------------


@pytest.mark.parametrize(("spec", "fragment"), [
    ({"plan": "gold"}, "plan"),
    ({"plan": "pro", "domains": ["not a domain"]}, "domain"),
    ({"plan": "pro", "limits": {"retentionDays": 0}}, "positive"),
    ({"plan": "pro", "limits": {"speed": 3}}, "unknown limit"),
    ({"plan": "pro", "apiKeys": [{"name": "Bad_Name"}]}, "key name"),
    ({"plan": "pro", "apiKeys": [{"name": "a"}, {"name": "a"}]}, "key name"),
    ({"plan": "pro", "apiKeys": [{"name": "a", "scopes": ["root"]}]}, "scope"),
    ({"plan": "pro", "deletionPolicy": "Shred"}, "deletionPolicy"),
])
def test_invalid_specs_are_named(spec, fragment):
    with pytest.raises(tenants.InvalidSpec, match=fragment):
        tenants.TenantSpec.parse("shop", spec)


async def test_apply_is_idempotent_and_follows_the_plan(stores):
    project_id = tenants.project_id_for("uid-apply")
    spec = tenants.TenantSpec.parse("shop", {"plan": "free", "domains": ["Shop.Example"], "limits": {"retentionDays": 30}})
    first = await asyncio.to_thread(tenants.apply, stores.db, stores.events, project_id, spec)
    again = await asyncio.to_thread(tenants.apply, stores.db, stores.events, project_id, spec)
    assert first == again and first.limits["retention_days"] == 30
    assert stores.events.call(ttl_days, stores.events, project_id) == 30
    pro = tenants.TenantSpec.parse("shop", {"plan": "pro"})
    moved = await asyncio.to_thread(tenants.apply, stores.db, stores.events, project_id, pro)
    assert moved.limits == {"api_requests_per_minute": 600, "retention_days": 365, "collect_per_ip_per_minute": 600,
                            "collect_per_site_per_minute": 30_000, "monthly_events": 1_000_000}
    assert stores.events.call(ttl_days, stores.events, project_id) == 365
    with stores.db.session() as session:
        assert session.get(Project, project_id).domains == []


async def test_keys_rotate_with_a_grace_period_and_retire(stores, client):
    project_id = tenants.project_id_for("uid-keys")
    spec = tenants.TenantSpec.parse("shop", {"plan": "pro", "apiKeys": [{"name": "ci", "scopes": ["projects:read"]}]})
    await asyncio.to_thread(tenants.apply, stores.db, stores.events, project_id, spec)
    (key,) = spec.keys
    old = tenants.issue(stores.db, project_id, key)
    assert tenants.key_valid(stores.db, project_id, key, old)
    assert not tenants.key_valid(stores.db, project_id, tenants.KeySpec("ci", ("stats:read",)), old), "scopes changed"
    new = tenants.issue(stores.db, project_id, key, retire_others_after=timedelta(seconds=1))
    for secret in (old, new):
        assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(secret))).status_code == 200
    await asyncio.sleep(2.1)  # the grace period, and the key cache's second
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(old))).status_code == 401
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(new))).status_code == 200
    assert tenants.retire_unlisted(stores.db, project_id, set()) == ["ci"]
    assert not tenants.key_valid(stores.db, project_id, key, new)


async def test_retire_keeps_or_drops_the_data(stores):
    for policy, kept in (("Keep", True), ("Delete", False)):
        project_id = tenants.project_id_for(f"uid-retire-{policy}")
        spec = tenants.TenantSpec.parse("shop", {"plan": "free", "apiKeys": [{"name": "a"}]})
        await asyncio.to_thread(tenants.apply, stores.db, stores.events, project_id, spec)
        secret = tenants.issue(stores.db, project_id, spec.keys[0])
        await asyncio.to_thread(tenants.retire, stores.db, stores.events, project_id, policy)
        assert tenants.database_exists(stores.events, project_id) is kept
        assert not tenants.key_valid(stores.db, project_id, spec.keys[0], secret)
        with stores.db.session() as session:
            assert session.get(Project, project_id).active is False


async def test_a_dropped_database_is_repaired(stores):
    project_id = tenants.project_id_for("uid-repair")
    await asyncio.to_thread(tenants.apply, stores.db, stores.events, project_id, tenants.TenantSpec.parse("s", {"plan": "free"}))
    assert tenants.repair_database(stores.db, stores.events, project_id) is False
    stores.events.call(stores.events.command, f"DROP DATABASE oa_{project_id}")
    assert tenants.repair_database(stores.db, stores.events, project_id) is True
    assert tenants.database_exists(stores.events, project_id)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# -- the real operator process, on kmock's emulator and on a real API server ------------------


async def eventually(check, timeout: float = 30.0, what: str = "condition"):
    """Poll without blocking: the emulator is served by this same event loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        result = await result if asyncio.iscoroutine(result) else result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Cluster:
    k8s: httpx.AsyncClient
    namespace: str
    real: bool  # a real kube-apiserver and controller-manager, the operator as the chart's ServiceAccount
    started: float  # when the operator process was started (monotonic)

    @property
    def base(self) -> str:
        return f"/apis/openanalytics.io/v1alpha1/namespaces/{self.namespace}/analyticsprojects"

    @property
    def secrets(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets"


def start_operator(kubeconfig: Path, namespace: str | None, log: Path, request) -> subprocess.Popen:
    """`openanalytics operator` as the chart runs it: its namespace from OA_OPERATOR_NAMESPACES, or all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "KUBERNETES_"))}
    env.update(server_store_urls(request), KUBECONFIG=str(kubeconfig), OA_OPERATOR_DRIFT_SECONDS="1")
    if namespace:
        env["OA_OPERATOR_NAMESPACES"] = namespace
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "openanalytics.cli", "operator",
                                 *([] if namespace else ["--all-namespaces"])],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


async def stop_operator(proc: subprocess.Popen, log: Path) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        await eventually(lambda: proc.poll() is not None, timeout=20, what="the operator to stop")
    except AssertionError:
        proc.kill()
        proc.wait()
    text = log.read_text()
    print(text[-6000:])
    return text


@pytest.fixture(params=["kmock", pytest.param("kube-apiserver", marks=pytest.mark.kube),
                        pytest.param("kube-apiserver-all-namespaces", marks=pytest.mark.kube)])
async def cluster(request, stores, tmp_path):
    """The operator process against kmock's emulator, or against a real control plane as it ships."""
    if stores.events.embedded:
        pytest.skip("the operator process and the test need shared (server) stores")
    if request.param == "kmock":
        async with serve_emulator() as (emulator, url):
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(kubeconfig_for(url))
            log = tmp_path / "operator.log"
            proc = start_operator(kubeconfig, "default", log, request)
            started = time.monotonic()
            try:
                await eventually(lambda: proc.poll() is not None or any(
                    r.action == emulator.action.WATCH and r.resource == CR for r in list(emulator)),
                    timeout=60, what="the operator to watch AnalyticsProjects")
                assert proc.poll() is None, log.read_text()
                async with httpx.AsyncClient(base_url=url) as k8s:
                    yield Cluster(k8s, "default", real=False, started=started)
            finally:
                await stop_operator(proc, log)
        return

    plane = request.getfixturevalue("control_plane")
    namespace = f"t-{secrets.token_hex(4)}"
    everywhere = request.param.endswith("all-namespaces")
    kubeconfig = plane.install_operator_account(namespace, tmp_path / "operator.kubeconfig", all_namespaces=everywhere)
    log = tmp_path / "operator.log"
    proc = start_operator(kubeconfig, None if everywhere else namespace, log, request)
    started = time.monotonic()
    try:
        await asyncio.sleep(1)  # a project created one second after the start must be Ready in ten
        async with httpx.AsyncClient(base_url=plane.url, verify=ssl.create_default_context(cafile=str(plane.ca)),
                                     headers={"Authorization": f"Bearer {plane.admin_token}"}) as k8s:
            yield Cluster(k8s, namespace, real=True, started=started)
        assert proc.poll() is None, "the operator exited"
    finally:
        text = await stop_operator(proc, log)
    assert "Forbidden" not in text and " 403" not in text, "the chart's RBAC is short of what the operator does"


async def get(k8s: httpx.AsyncClient, path: str) -> dict | None:
    response = await k8s.get(path)
    return None if response.status_code == 404 else response.raise_for_status().json()


async def merge(k8s: httpx.AsyncClient, path: str, body: dict) -> None:
    response = await k8s.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
    response.raise_for_status()


async def secret_of(cluster: Cluster, name: str) -> dict[str, str] | None:
    found = await get(cluster.k8s, f"{cluster.secrets}/{name}")
    return {k: base64.b64decode(v).decode() for k, v in found["data"].items()} if found else None


def project(name: str, spec: dict) -> dict:
    return {"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject", "metadata": {"name": name},
            "spec": spec}


async def test_the_operator_runs_an_analytics_project_through_its_life(cluster, client, stores):
    k8s, base = cluster.k8s, cluster.base
    created = await k8s.post(base, json=project("shop", {
        "displayName": "The shop", "plan": "free", "domains": ["shop.example"], "deletionPolicy": "Delete",
        "apiKeys": [{"name": "backend", "scopes": ["projects:read", "events:write"]}]}))
    assert created.status_code in (200, 201), created.text
    created_at = time.monotonic()

    async def ready(generation: int):
        found = await get(k8s, f"{base}/shop")
        status = (found or {}).get("status", {})
        return found if status.get("phase") == "Ready" and status.get("observedGeneration") == generation else None

    shop = await eventually(lambda: ready(1), what="Ready")
    if cluster.real:  # created a second after the operator started, with only the chart's permissions
        assert created_at - cluster.started < 2.5 and time.monotonic() - created_at < 10, "Ready within 10 s"
    status = shop["status"]
    assert status["secrets"] == ["shop-backend"] and status["database"] == f"oa_{status['projectId']}"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Provisioned": "True", "Ready": "True"}
    assert "openanalytics.io/finalizer" in shop["metadata"]["finalizers"]
    project_id = status["projectId"]
    secret = await secret_of(cluster, "shop-backend")
    assert secret["projectId"] == project_id and secret["siteId"] == status["siteId"]
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(secret["apiKey"]))).status_code == 200
    assert tenants.database_exists(stores.events, project_id)
    assert stores.events.call(ttl_days, stores.events, project_id) == 90
    if cluster.real:
        owners = (await get(k8s, f"{cluster.secrets}/shop-backend"))["metadata"]["ownerReferences"]
        assert owners == [{"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject", "name": "shop",
                           "uid": shop["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        table = (await k8s.get(base, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})).json()
        assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Plan", "Phase", "Site ID", "Age"]
        assert table["rows"][0]["cells"][:4] == ["shop", "free", "Ready", status["siteId"]]

    await merge(k8s, f"{base}/shop", {"spec": {"plan": "pro"}})  # limits and TTL follow the plan
    shop = await eventually(lambda: ready(2), what="the plan change")
    assert shop["status"]["limits"]["retention_days"] == 365
    assert stores.events.call(ttl_days, stores.events, project_id) == 365

    assert (await k8s.delete(f"{cluster.secrets}/shop-backend")).status_code == 200  # deleted by hand: it comes back
    back = await eventually(lambda: secret_of(cluster, "shop-backend"), what="the Secret to come back")
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(back["apiKey"]))).status_code == 200

    await merge(k8s, f"{base}/shop", {"metadata": {"annotations": {
        "openanalytics.io/rotate-keys": "2026-11-26", "openanalytics.io/rotation-grace-seconds": "3"}}})
    rotated = await eventually(lambda: _changed(cluster, back["apiKey"]), what="the rotation")
    for key in (back["apiKey"], rotated["apiKey"]):  # both work during the grace period
        assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(key))).status_code == 200
    await asyncio.sleep(4.5)
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(back["apiKey"]))).status_code == 401
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(rotated["apiKey"]))).status_code == 200

    assert (await k8s.delete(f"{base}/shop")).status_code == 200
    await eventually(lambda: _gone(k8s, f"{base}/shop"), what="the object to go")
    assert await get(k8s, f"{cluster.secrets}/shop-backend") is None
    await asyncio.sleep(1.1)  # the key cache's second
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(rotated["apiKey"]))).status_code == 401
    assert not tenants.database_exists(stores.events, project_id), "deletionPolicy Delete drops the data"
    events = (await get(k8s, f"/api/v1/namespaces/{cluster.namespace}/events"))["items"]
    assert {"Provisioned", "KeyIssued", "KeyRotated", "Retired"} <= {e["reason"] for e in events}


async def test_kept_data_and_invalid_specs(cluster, stores):
    k8s, base = cluster.k8s, cluster.base
    foreign = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "taken-backend"},
               "data": {"password": base64.b64encode(b"not yours").decode()}}
    assert (await k8s.post(cluster.secrets, json=foreign)).status_code in (200, 201)
    created = await k8s.post(base, json=project("taken", {"plan": "free", "apiKeys": [{"name": "backend"}]}))
    assert created.status_code in (200, 201), created.text
    taken = await eventually(lambda: _phase(cluster, "taken", "Invalid"), what="taken Invalid")
    assert taken["status"]["conditions"][0]["reason"] == "SecretConflict"
    assert await secret_of(cluster, "taken-backend") == {"password": "not yours"}, "someone else's Secret is untouched"
    kept = await k8s.post(base, json=project("kept", {"plan": "free", "deletionPolicy": "Keep"}))
    assert kept.status_code in (200, 201), kept.text
    kept = await eventually(lambda: _phase(cluster, "kept", "Ready"), what="kept Ready")
    if not cluster.real:  # a real API server refuses it at admission (test_a_real_api_server_refuses_bad_specs)
        odd = await k8s.post(base, json=project("odd", {"plan": "gold"}))
        assert odd.status_code in (200, 201), odd.text
        odd = await eventually(lambda: _phase(cluster, "odd", "Invalid"), what="odd Invalid")
        reason = odd["status"]["conditions"][0]
        assert reason["reason"] == "InvalidSpec" and "plan" in reason["message"]
    assert (await k8s.delete(f"{base}/kept")).status_code == 200
    await eventually(lambda: _gone(k8s, f"{base}/kept"), what="kept to go")
    assert tenants.database_exists(stores.events, kept["status"]["projectId"]), "deletionPolicy Keep keeps the data"


async def _changed(cluster: Cluster, old: str):
    found = await secret_of(cluster, "shop-backend")
    return found if found and found["apiKey"] != old else None


async def _gone(k8s, path: str) -> bool:
    return await get(k8s, path) is None


async def _phase(cluster: Cluster, name: str, phase: str):
    found = await get(cluster.k8s, f"{cluster.base}/{name}")
    return found if (found or {}).get("status", {}).get("phase") == phase else None


# -- the CRD's schema and the handler's failure reporting ------------------------------------


def crd_schema() -> dict:
    import yaml

    crd = yaml.safe_load((ROOT / "crds" / "analyticsproject.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Plan", "Phase", "Site ID", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["oap"]
    return version["schema"]["openAPIV3Schema"]


SPECS = [
    ({"plan": "pro", "domains": ["shop.example", "blog.shop.example"], "limits": {"retentionDays": 400},
      "apiKeys": [{"name": "backend", "scopes": ["events:write"]}], "deletionPolicy": "Delete"}, True),
    ({"plan": "free"}, True),
    ({"plan": "gold"}, False),
    ({"plan": "pro", "domains": ["Shop.Example"]}, False),
    ({"plan": "pro", "domains": ["https://shop.example"]}, False),
    ({"plan": "pro", "limits": {"apiRequestsPerMinute": 0}}, False),
    ({"plan": "pro", "limits": {"retentionDays": -1}}, False),
    ({"plan": "pro", "apiKeys": [{"name": "Back_End"}]}, False),
    ({"plan": "pro", "apiKeys": [{"name": "a", "scopes": ["admin"]}]}, False),
    ({"plan": "pro", "deletionPolicy": "Shred"}, False),
    ({}, True),  # the API server fills in the default plan
]


@pytest.mark.parametrize(("spec", "valid"), SPECS)
def test_the_crd_schema_refuses_bad_specs(spec, valid):
    import jsonschema

    body = {"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject", "metadata": {"name": "x"}, "spec": spec}
    schema = crd_schema()
    assert schema["properties"]["spec"]["properties"]["plan"]["default"] == "free"
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(body))
    assert (not errors) is valid, errors
    if valid:
        tenants.TenantSpec.parse("x", spec)  # what the schema lets through, the operator understands


@pytest.mark.kube
def test_a_real_api_server_refuses_bad_specs_at_admission(control_plane):
    base = "/apis/openanalytics.io/v1alpha1/namespaces/default/analyticsprojects"
    with httpx.Client(base_url=control_plane.url, verify=ssl.create_default_context(cafile=str(control_plane.ca)),
                      headers={"Authorization": f"Bearer {control_plane.admin_token}"}) as k8s:
        for number, (spec, valid) in enumerate(SPECS):
            answer = k8s.post(f"{base}?dryRun=All", json=project(f"spec-{number}", spec))
            assert answer.status_code == (201 if valid else 422), (spec, answer.text)
            if valid:
                assert answer.json()["spec"].get("plan", "free") == spec.get("plan", "free")
            else:
                assert answer.json()["reason"] == "Invalid" and "spec." in answer.json()["message"], answer.text
        defaulted = k8s.post(f"{base}?dryRun=All", json=project("defaults", {})).json()
        assert defaulted["spec"]["plan"] == "free" and defaulted["spec"]["deletionPolicy"] == "Keep"


async def test_a_store_outage_shows_in_status_and_is_retried(stores):
    import kopf

    from openanalytics.runtime import Stores
    from openanalytics.stores.sql import Database
    from openanalytics_operator import handlers

    down = Stores(settings=stores.settings, db=Database("postgresql+psycopg://oa@127.0.0.1:1/none"),
                  redis=stores.redis, events=stores.events)
    patch, memo = kopf.Patch(), kopf.Memo(stores=down)
    with pytest.raises(kopf.TemporaryError):
        await handlers._reconcile({}, {"plan": "free"}, {"generation": 3}, "shop", "default", "uid-down", {}, patch,
                                  memo)
    assert patch["status"]["phase"] == "Pending" and patch["status"]["observedGeneration"] == 3
    assert {c["reason"] for c in patch["status"]["conditions"]} == {"StoreUnavailable"}


def test_the_operator_command_takes_its_namespaces_from_the_environment(monkeypatch):
    """The chart passes the pod's own namespace as OA_OPERATOR_NAMESPACES (downward API)."""
    import kopf
    from click.testing import CliRunner

    from openanalytics.cli import main

    runs = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: runs.append(kwargs))  # not the loop itself, only its arguments
    done = CliRunner().invoke(main, ["operator"], env={"OA_OPERATOR_NAMESPACES": "team-a team-b"})
    assert done.exit_code == 0, done.output
    assert runs[-1]["namespaces"] == ("team-a", "team-b") and runs[-1]["clusterwide"] is False
    done = CliRunner().invoke(main, ["operator", "--namespace", "web"], env={"OA_OPERATOR_NAMESPACES": "team-a"})
    assert runs[-1]["namespaces"] == ("web",)
    refused = CliRunner().invoke(main, ["operator"], env={"OA_OPERATOR_NAMESPACES": ""})
    assert refused.exit_code == 2 and "--all-namespaces" in refused.output
