"""kopf handlers for AnalyticsProject: read the object, call openanalytics.provisioning.tenants,
keep the key Secrets, report status and Events. Nothing here decides how tenants work.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from openanalytics import telemetry
from openanalytics.config import Settings
from openanalytics.provisioning import tenants
from openanalytics.runtime import Stores
from openanalytics_operator.kube import SecretConflict, Secrets, encoded, secret_value, served

GROUP, VERSION, PLURAL = "openanalytics.io", "v1alpha1", "analyticsprojects"
FINALIZER = "openanalytics.io/finalizer"
ROTATE = "openanalytics.io/rotate-keys"  # set to any new value: every key gets a new secret
GRACE = "openanalytics.io/rotation-grace-seconds"  # how long the old secrets keep working (default 3600)
DEFAULT_GRACE = 3600
DRIFT_SECONDS = float(os.environ.get("OA_OPERATOR_DRIFT_SECONDS", "60"))
WORKERS = int(os.environ.get("OA_OPERATOR_WORKERS", "16"))
MANAGED_BY = {"app.kubernetes.io/managed-by": "openanalytics-operator"}
OWNER = "openanalytics.io/owner-uid"  # on our Secrets: only those are ever changed or deleted
SECRETS = Secrets()  # one client for every handler


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING  # no Event per timer run; our reasons go out via kopf.event
    settings.watching.server_timeout = 60
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    # Objects reconciled at once. Each holds an API connection (kopf opens as many as asked, each
    # with TLS buffers) and waits for the stores' few threads anyway: hundreds of projects created
    # together are Ready no later, with a fraction of the memory.
    settings.queueing.worker_limit = WORKERS
    settings.queueing.idle_timeout = 0.5  # a slot is free again half a second after its object's last event
    # A deletion waits for a drift check under way (it cannot be interrupted in a store call):
    # look again every second, not kopf's default minute.
    settings.background.cancellation_polling = 1
    # No watching of namespaces or CRDs: the namespaces are the ones named (or all), and the CRD
    # must be there at start. Watching them would need cluster-wide permissions a namespaced
    # install does not have, and kopf retries a 403 for about a minute before falling back.
    settings.scanning.disabled = True
    if not await served(GROUP, VERSION, PLURAL):
        raise kopf.PermanentError(f"the API server does not serve {PLURAL}.{GROUP}/{VERSION}: apply the CRD "
                                  "(crds/analyticsproject.yaml) first")
    memo.stores = Stores.open(Settings())


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    stores = getattr(memo, "stores", None)
    if stores is not None:
        await stores.close()
    await SECRETS.close()


@kopf.on.login(retries=3)
def login(logger: logging.Logger, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own ways in (service account in a pod, else kubeconfig), the same as the Secret client's."""
    return kopf.login_with_service_account(logger=logger, **kwargs) or kopf.login_with_kubeconfig(logger=logger, **kwargs)


def _conditions(status: kopf.Status, *wanted: tuple[str, bool, str, str]) -> list[dict[str, str]]:
    """Conditions as Kubernetes has them; a condition that did not change keeps its transition time."""
    before = {c.get("type"): c for c in status.get("conditions") or []}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    found = []
    for kind, ok, reason, message in wanted:
        state = "True" if ok else "False"
        old = before.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == state else None
        found.append({"type": kind, "status": state, "reason": reason, "message": message[:500],
                      "lastTransitionTime": since or now})
    return found


def _note(body, reason: str, message: str) -> None:
    kopf.event(body, type="Normal", reason=reason, message=message)


def _owned(uid: str) -> str:
    return f"app.kubernetes.io/managed-by=openanalytics-operator,{OWNER}={uid}"


def _secret_name(name: str, key: str) -> str:
    return f"{name}-{key}"


async def _store(fn, *args):
    """Run a provisioning function (synchronous, it talks to the stores) off the event loop."""
    return await asyncio.to_thread(fn, *args)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, name: str, namespace: str, uid: str,
                    status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(body, spec, meta, name, namespace, uid, status, patch, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=DRIFT_SECONDS, initial_delay=DRIFT_SECONDS, idle=DRIFT_SECONDS / 2)
async def drift(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, name: str, namespace: str, uid: str,
                status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Repair what was changed by hand: a dropped database, a deleted or edited Secret."""
    if meta.get("deletionTimestamp"):
        return
    project_id = tenants.project_id_for(uid)
    if await _store(tenants.repair_database, memo.stores.db, memo.stores.events, project_id):
        kopf.warn(body, reason="Repaired", message="the project's ClickHouse database was missing; recreated it")
    await _reconcile(body, spec, meta, name, namespace, uid, status, patch, memo, quiet=True)


async def _reconcile(body, spec, meta, name, namespace, uid, status, patch, memo, quiet: bool = False) -> None:
    """One reconcile, traced and counted by outcome (ready, invalid, conflict, pending)."""
    timer = telemetry.Timer()
    trigger = "drift" if quiet else "change"
    with telemetry.span("operator.reconcile", **{"k8s.namespace.name": namespace, "oa.object.name": name,
                                                  "oa.trigger": trigger}) as span:
        outcome = "pending"
        try:
            outcome = await _reconcile_once(body, spec, meta, name, namespace, uid, status, patch, memo, quiet)
        finally:
            if span is not None:
                span.set_attribute("oa.outcome", outcome)
            telemetry.RECONCILES.add(1, {"outcome": outcome, "trigger": trigger})
            telemetry.RECONCILE_DURATION.record(timer.seconds(), {"outcome": outcome})


async def _reconcile_once(body, spec, meta, name, namespace, uid, status, patch, memo, quiet: bool) -> str:
    project_id = tenants.project_id_for(uid)
    patch.status["observedGeneration"] = meta.get("generation")
    try:
        wanted = tenants.TenantSpec.parse(name, dict(spec))
        grace = _grace(meta)
    except tenants.InvalidSpec as exc:
        # The schema should have refused it; retrying cannot help, so say so and stop.
        patch.status.update(phase="Invalid", conditions=_conditions(status, ("Ready", False, "InvalidSpec", str(exc))))
        if not quiet:
            kopf.warn(body, reason="InvalidSpec", message=str(exc))
        return "invalid"
    try:
        done = await _store(tenants.apply, memo.stores.db, memo.stores.events, project_id, wanted)
        secrets = await _keys(memo, body, meta, name, namespace, uid, project_id, done, wanted, status, grace)
    except kopf.TemporaryError:
        raise
    except SecretConflict as exc:  # someone else's Secret has the name: waiting will not help
        patch.status.update(phase="Invalid", conditions=_conditions(status, ("Ready", False, "SecretConflict", str(exc))))
        if not quiet:
            kopf.warn(body, reason="SecretConflict", message=str(exc))
        return "conflict"
    except Exception as exc:  # a store is down: say so, and let kopf retry with backoff
        patch.status.update(phase="Pending", conditions=_conditions(
            status, ("Ready", False, "StoreUnavailable", str(exc)), ("Provisioned", False, "StoreUnavailable", str(exc))))
        raise kopf.TemporaryError(f"provisioning failed: {exc}", delay=10) from exc
    patch.status.update(
        phase="Ready", projectId=done.project_id, siteId=done.site_id, database=done.database, limits=done.limits,
        secrets=secrets, conditions=_conditions(
            status, ("Provisioned", True, "DatabaseReady", f"database {done.database} migrated, TTL set"),
            ("Ready", True, "Reconciled", f"{len(secrets)} key Secret(s) in place")))
    if meta.get("annotations", {}).get(ROTATE):
        patch.status["rotatedFor"] = meta["annotations"][ROTATE]
    if not quiet:
        _note(body, "Provisioned", f"project {done.project_id} ready on plan {wanted.plan}")
    return "ready"


def _grace(meta: kopf.Meta) -> timedelta:
    text = meta.get("annotations", {}).get(GRACE, str(DEFAULT_GRACE))
    if not text.isdigit():
        raise tenants.InvalidSpec(f"{GRACE} must be a whole number of seconds, not {text!r}")
    return timedelta(seconds=int(text))


async def _keys(memo, body, meta, name, namespace, uid, project_id, done, wanted, status, grace) -> list[str]:
    rotation = meta.get("annotations", {}).get(ROTATE)
    rotate = bool(rotation) and rotation != status.get("rotatedFor")
    names = []
    for key in wanted.keys:
        secret_name = _secret_name(name, key.name)
        names.append(secret_name)
        current = secret_value(await SECRETS.get(namespace, secret_name), "apiKey")
        valid = await _store(tenants.key_valid, memo.stores.db, project_id, key, current)
        if valid and not rotate:
            continue
        secret = await _store(tenants.issue, memo.stores.db, project_id, key, grace if rotate and valid else None)
        manifest = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name, "namespace": namespace, "labels": {
                **MANAGED_BY, OWNER: uid, "app.kubernetes.io/instance": name, "openanalytics.io/key": key.name}},
            "data": encoded({"apiKey": secret, "projectId": done.project_id, "siteId": done.site_id}),
        }
        kopf.adopt(manifest, owner=body)  # garbage-collected with the AnalyticsProject
        await SECRETS.put(manifest, (OWNER, uid))
        _note(body, "KeyRotated" if rotate else "KeyIssued",
              f"Secret {secret_name}" + (f"; the old secret works for {grace}" if rotate and valid else ""))
    listed = {k.name for k in wanted.keys}
    await _store(tenants.retire_unlisted, memo.stores.db, project_id, listed)
    for secret_name, labels in (await SECRETS.names(namespace, _owned(uid))).items():
        key_name = labels.get("openanalytics.io/key")
        if key_name and key_name not in listed:
            await SECRETS.delete(namespace, secret_name)
    return names


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, uid: str, memo: kopf.Memo,
                 **_: Any) -> None:
    """Keys stop working, the project is deactivated, and its data kept or dropped per the policy."""
    policy = spec.get("deletionPolicy", "Keep")
    project_id = tenants.project_id_for(uid)
    await _store(tenants.retire, memo.stores.db, memo.stores.events, project_id, policy)
    for secret_name in await SECRETS.names(namespace, _owned(uid)):
        await SECRETS.delete(namespace, secret_name)
    _note(body, "Retired", f"keys revoked; data {'dropped' if policy == 'Delete' else 'kept'}")
