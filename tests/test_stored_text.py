"""Text the control plane stores, and ids in paths: a NUL character or an id that cannot exist is
a clear 400, on SQLite and on PostgreSQL (whose text cannot hold NUL), never a database error."""

from __future__ import annotations

import pytest

from openanalytics.auth.keys import issue_key
from tests.helpers import assert_error

SCOPES = ["goals:manage", "keys:manage", "privacy:delete", "privacy:export", "events:write"]


@pytest.fixture
def headers(stores, tenant) -> dict:
    with stores.db.session() as session:
        return {"Authorization": f"Bearer {issue_key(session, tenant.id, 'all', SCOPES).secret}"}


async def test_nul_in_stored_text_is_a_400(client, tenant, headers):
    base = f"/v1/projects/{tenant.id}"
    for method, url, body, field in [
        ("POST", "/goals", {"name": "a\x00", "match": "any_conversion"}, "name"),
        ("POST", "/goals", {"name": "a", "match": "event_name", "value": "sign\x00up"}, "value"),
        ("POST", "/keys", {"name": "a\x00", "scopes": ["events:write"]}, "name"),
        ("POST", "/events", {"event_type": "identify", "user_id": "u\x00"}, "user_id"),
        ("DELETE", "/privacy/user/u%00", None, "user_id"),
    ]:
        response = await client.request(method, base + url, json=body, headers=headers)
        assert field in assert_error(response, 400, "validation_error")["message"], (method, url)
    export = await client.get(base + "/privacy/user/u%00", headers=headers)  # stores nothing: any id is fine
    assert export.status_code == 200 and export.json()["user_id"] == "u\x00"


async def test_ids_that_cannot_exist_are_a_400_and_unknown_ones_a_404(client, tenant, headers):
    base = f"/v1/projects/{tenant.id}"
    for url, code in [("/goals/goal_0000000000000000", "goal_not_found"), ("/keys/key_0000000000000000", "key_not_found")]:
        assert_error(await client.delete(base + url, headers=headers), 404, code)
        assert_error(await client.delete(base + url[:-1] + "%00", headers=headers), 400, "validation_error")
    assert_error(await client.get(base + "/privacy/requests/prq_0000000000000000", headers=headers), 404)
    assert_error(await client.get(base + "/privacy/requests/prq_x%00", headers=headers), 400, "validation_error")
