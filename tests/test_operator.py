"""The operator: provisioning functions against real stores, and the real kopf process against
the Kubernetes API emulator (tests/support/kmock_k8s.py) with the API answering its keys."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
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
BASE = "/apis/openanalytics.io/v1alpha1/namespaces/default/analyticsprojects"
SECRETS = "/api/v1/namespaces/default/secrets"


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


# -- the real operator process against the emulated Kubernetes API --------------------------


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


@pytest.fixture
async def cluster(stores, tmp_path, request):
    """The emulator and the operator (`openanalytics operator`) running against it and the server stores."""
    if stores.events.embedded:
        pytest.skip("the operator process and the test need shared (server) stores")

    async with serve_emulator() as (emulator, url):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_for(url))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "KUBERNETES_"))}
        env.update(server_store_urls(request), KUBECONFIG=str(kubeconfig), OA_OPERATOR_DRIFT_SECONDS="1")
        log = tmp_path / "operator.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "openanalytics.cli", "operator", "--namespace", "default"],
                                    env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            await eventually(lambda: proc.poll() is not None or any(
                r.action == emulator.action.WATCH and r.resource == CR for r in list(emulator)),
                timeout=60, what="the operator to watch AnalyticsProjects")
            assert proc.poll() is None, log.read_text()
            async with httpx.AsyncClient(base_url=url) as k8s:
                yield k8s
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                await eventually(lambda: proc.poll() is not None, timeout=20, what="the operator to stop")
            except AssertionError:
                proc.kill()
                proc.wait()
            print(log.read_text()[-6000:])


async def get(k8s: httpx.AsyncClient, path: str) -> dict | None:
    response = await k8s.get(path)
    return None if response.status_code == 404 else response.raise_for_status().json()


async def merge(k8s: httpx.AsyncClient, path: str, body: dict) -> None:
    response = await k8s.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
    response.raise_for_status()


async def secret_of(k8s, name: str) -> dict[str, str] | None:
    found = await get(k8s, f"{SECRETS}/{name}")
    return {k: base64.b64decode(v).decode() for k, v in found["data"].items()} if found else None


async def test_the_operator_runs_an_analytics_project_through_its_life(cluster, client, stores):
    k8s = cluster
    created = await k8s.post(BASE, json={
        "apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject", "metadata": {"name": "shop"},
        "spec": {"displayName": "The shop", "plan": "free", "domains": ["shop.example"], "deletionPolicy": "Delete",
                 "apiKeys": [{"name": "backend", "scopes": ["projects:read", "events:write"]}]}})
    assert created.status_code in (200, 201), created.text

    async def ready(generation: int):
        found = await get(k8s, f"{BASE}/shop")
        status = (found or {}).get("status", {})
        return found if status.get("phase") == "Ready" and status.get("observedGeneration") == generation else None

    shop = await eventually(lambda: ready(1), what="Ready")
    status = shop["status"]
    assert status["secrets"] == ["shop-backend"] and status["database"] == f"oa_{status['projectId']}"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Provisioned": "True", "Ready": "True"}
    assert "openanalytics.io/finalizer" in shop["metadata"]["finalizers"]
    project_id = status["projectId"]
    secret = await secret_of(k8s, "shop-backend")
    assert secret["projectId"] == project_id and secret["siteId"] == status["siteId"]
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(secret["apiKey"]))).status_code == 200
    assert tenants.database_exists(stores.events, project_id)
    assert stores.events.call(ttl_days, stores.events, project_id) == 90

    await merge(k8s, f"{BASE}/shop", {"spec": {"plan": "pro"}})  # limits and TTL follow the plan
    shop = await eventually(lambda: ready(2), what="the plan change")
    assert shop["status"]["limits"]["retention_days"] == 365
    assert stores.events.call(ttl_days, stores.events, project_id) == 365

    assert (await k8s.delete(f"{SECRETS}/shop-backend")).status_code == 200  # deleted by hand: it comes back
    back = await eventually(lambda: secret_of(k8s, "shop-backend"), what="the Secret to come back")
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(back["apiKey"]))).status_code == 200

    await merge(k8s, f"{BASE}/shop", {"metadata": {"annotations": {
        "openanalytics.io/rotate-keys": "2026-11-26", "openanalytics.io/rotation-grace-seconds": "3"}}})
    rotated = await eventually(lambda: _changed(k8s, back["apiKey"]), what="the rotation")
    for key in (back["apiKey"], rotated["apiKey"]):  # both work during the grace period
        assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(key))).status_code == 200
    await asyncio.sleep(4.5)
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(back["apiKey"]))).status_code == 401
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(rotated["apiKey"]))).status_code == 200

    assert (await k8s.delete(f"{BASE}/shop")).status_code == 200
    await eventually(lambda: _gone(k8s, f"{BASE}/shop"), what="the object to go")
    assert await get(k8s, f"{SECRETS}/shop-backend") is None
    await asyncio.sleep(1.1)  # the key cache's second
    assert (await client.get(f"/v1/projects/{project_id}", headers=bearer(rotated["apiKey"]))).status_code == 401
    assert not tenants.database_exists(stores.events, project_id), "deletionPolicy Delete drops the data"
    events = (await get(k8s, "/api/v1/namespaces/default/events"))["items"]
    assert {"Provisioned", "KeyIssued", "KeyRotated", "Retired"} <= {e["reason"] for e in events}


async def test_kept_data_and_invalid_specs(cluster, stores):
    k8s = cluster
    foreign = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "taken-backend"},
               "data": {"password": base64.b64encode(b"not yours").decode()}}
    assert (await k8s.post(SECRETS, json=foreign)).status_code in (200, 201)
    created = await k8s.post(BASE, json={"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject",
                                         "metadata": {"name": "taken"},
                                         "spec": {"plan": "free", "apiKeys": [{"name": "backend"}]}})
    assert created.status_code in (200, 201), created.text
    taken = await eventually(lambda: _phase(k8s, "taken", "Invalid"), what="taken Invalid")
    assert taken["status"]["conditions"][0]["reason"] == "SecretConflict"
    assert await secret_of(k8s, "taken-backend") == {"password": "not yours"}, "someone else's Secret is untouched"
    for name, spec in (("kept", {"plan": "free", "deletionPolicy": "Keep"}), ("odd", {"plan": "gold"})):
        created = await k8s.post(BASE, json={"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject",
                                             "metadata": {"name": name}, "spec": spec})
        assert created.status_code in (200, 201), created.text
    kept = await eventually(lambda: _phase(k8s, "kept", "Ready"), what="kept Ready")
    odd = await eventually(lambda: _phase(k8s, "odd", "Invalid"), what="odd Invalid")
    assert odd["status"]["conditions"][0]["reason"] == "InvalidSpec" and "plan" in odd["status"]["conditions"][0]["message"]
    assert (await k8s.delete(f"{BASE}/kept")).status_code == 200
    await eventually(lambda: _gone(k8s, f"{BASE}/kept"), what="kept to go")
    assert tenants.database_exists(stores.events, kept["status"]["projectId"]), "deletionPolicy Keep keeps the data"


async def _changed(k8s, old: str):
    found = await secret_of(k8s, "shop-backend")
    return found if found and found["apiKey"] != old else None


async def _gone(k8s, path: str) -> bool:
    return await get(k8s, path) is None


async def _phase(k8s, name: str, phase: str):
    found = await get(k8s, f"{BASE}/{name}")
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


@pytest.mark.parametrize(("spec", "valid"), [
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
])
def test_the_crd_schema_refuses_bad_specs(spec, valid):
    import jsonschema

    body = {"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject", "metadata": {"name": "x"}, "spec": spec}
    schema = crd_schema()
    assert schema["properties"]["spec"]["properties"]["plan"]["default"] == "free"
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(body))
    assert (not errors) is valid, errors
    if valid:
        tenants.TenantSpec.parse("x", spec)  # what the schema lets through, the operator understands


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
