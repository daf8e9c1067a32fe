"""Key management over the API: create (secret once), list (never secrets), revoke (everywhere, fast)."""

from __future__ import annotations

import asyncio
import time

from tests.helpers import assert_error

ALL = ["events:write", "keys:manage", "privacy:delete", "privacy:export", "projects:read", "stats:read"]


async def test_create_list_revoke(client, make_tenant):
    admin = make_tenant(scopes=ALL)
    created = await client.post(f"/v1/projects/{admin.id}/keys", json={"name": "backend", "scopes": ["events:write"]},
                                headers=admin.headers)
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["secret"].startswith("oa_live_") and key["prefix"] == key["secret"][:12]
    assert key["scopes"] == ["events:write"] and key["revoked_at"] is None and key["name"] == "backend"

    listed = await client.get(f"/v1/projects/{admin.id}/keys", headers=admin.headers)
    assert listed.status_code == 200
    assert key["secret"] not in listed.text and "key_hash" not in listed.text
    assert {k["id"] for k in listed.json()["keys"]} == {admin.key.key.id, key["id"]}

    new_key = {"Authorization": f"Bearer {key['secret']}"}
    sent = await client.post(f"/v1/projects/{admin.id}/events", json={"event_type": "pageview"}, headers=new_key)
    assert sent.status_code == 202
    revoked = await client.delete(f"/v1/projects/{admin.id}/keys/{key['id']}", headers=admin.headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    # Revoked in this process at once (the cache is emptied), and idempotent.
    assert_error(await client.get("/v1/projects", headers=new_key), 401)
    again = await client.delete(f"/v1/projects/{admin.id}/keys/{key['id']}", headers=admin.headers)
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


async def test_default_scopes_and_last_used(client, make_tenant):
    admin = make_tenant(scopes=ALL)
    key = (await client.post(f"/v1/projects/{admin.id}/keys", json={}, headers=admin.headers)).json()
    assert key["scopes"] == ["events:write", "projects:read", "stats:read"] and key["name"] == "default"
    await client.get("/v1/projects", headers={"Authorization": f"Bearer {key['secret']}"})
    listed = (await client.get(f"/v1/projects/{admin.id}/keys", headers=admin.headers)).json()["keys"]
    assert next(k for k in listed if k["id"] == key["id"])["last_used_at"] is not None


async def test_a_key_cannot_grant_more_than_it_has(client, make_tenant, stores):
    manager = make_tenant(scopes=["keys:manage", "stats:read"])
    response = await client.post(f"/v1/projects/{manager.id}/keys", json={"scopes": ["privacy:delete"]}, headers=manager.headers)
    body = assert_error(response, 403, "insufficient_scope")
    assert "privacy:delete" in body["message"]


async def test_bad_key_requests(client, make_tenant):
    admin = make_tenant(scopes=ALL)
    other = make_tenant(scopes=ALL)
    bad_scope = await client.post(f"/v1/projects/{admin.id}/keys", json={"scopes": ["everything"]}, headers=admin.headers)
    assert_error(bad_scope, 400, "validation_error")
    extra = await client.post(f"/v1/projects/{admin.id}/keys", json={"name": "x", "admin": True}, headers=admin.headers)
    assert_error(extra, 400)
    # Another project's key id is not found, and stays valid.
    foreign = await client.delete(f"/v1/projects/{admin.id}/keys/{other.key.key.id}", headers=admin.headers)
    assert_error(foreign, 404, "key_not_found")
    assert (await client.get("/v1/projects", headers=other.headers)).status_code == 200
    assert_error(await client.get(f"/v1/projects/{other.id}/keys", headers=admin.headers), 404, "project_not_found")


async def test_revocation_from_elsewhere_is_seen_within_a_second(client, tenant, stores):
    """A revocation written by another process (the CLI, another pod) is picked up within a second."""
    from openanalytics.auth.keys import revoke_key

    assert (await client.get("/v1/projects", headers=tenant.headers)).status_code == 200
    with stores.db.session() as session:
        revoke_key(session, tenant.key.key.id)
    deadline = time.monotonic() + 1.0 + 0.1
    while (await client.get("/v1/projects", headers=tenant.headers)).status_code == 200:
        assert time.monotonic() < deadline, "revoked key still accepted"
        await asyncio.sleep(0.05)


async def test_empty_scopes_and_revoking_a_broader_key_are_refused(client, make_tenant, stores):
    from openanalytics.auth.keys import issue_key

    manager = make_tenant(scopes=["keys:manage", "projects:read"])
    assert_error(await client.post(f"/v1/projects/{manager.id}/keys", json={"scopes": []}, headers=manager.headers), 400)
    with stores.db.session() as session:
        broad = issue_key(session, manager.id, "broad", ALL).key
    refused = await client.delete(f"/v1/projects/{manager.id}/keys/{broad.id}", headers=manager.headers)
    assert "privacy:delete" in assert_error(refused, 403, "insufficient_scope")["message"]
