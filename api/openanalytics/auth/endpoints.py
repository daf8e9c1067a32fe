"""Managing a project's API keys over the API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool

from openanalytics.auth.dependencies import KeysManage, stores_of
from openanalytics.auth.keys import DEFAULT_SCOPES, issue_key, list_keys, revoke_key
from openanalytics.auth.models import ApiKey
from openanalytics.auth.principals import announce_change
from openanalytics.auth.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from openanalytics.errors import Forbidden, NotFound
from openanalytics.ids import id_pattern
from openanalytics.openapi import error_responses
from openanalytics.stores.sql import utcnow

router = APIRouter(tags=["API keys"])


@router.post(
    "/v1/projects/{project_id}/keys",
    status_code=201,
    summary="Create an API key",
    description="Returns the secret once. A key can only hand out scopes it has itself.",
    response_model=KeyCreated,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def create_api_key(request: Request, access: KeysManage, body: KeyCreate) -> KeyCreated:
    scopes = [s.value for s in body.scopes] if body.scopes else [s.value for s in DEFAULT_SCOPES]
    beyond = sorted(set(scopes) - access.principal.scopes)
    if beyond:
        raise Forbidden(f"This API key cannot grant scopes it lacks: {', '.join(beyond)}.")

    def create():
        with stores_of(request).db.session() as session:
            issued = issue_key(session, access.project.id, body.name, scopes)
            return KeyCreated(**KeyOut.of(issued.key).model_dump(), secret=issued.secret)

    return await run_in_threadpool(create)


@router.get(
    "/v1/projects/{project_id}/keys",
    summary="List API keys",
    description="Display prefixes, scopes and dates; never the secrets.",
    response_model=KeyList,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def list_api_keys(request: Request, access: KeysManage) -> KeyList:
    def read():
        with stores_of(request).db.session() as session:
            return KeyList(keys=[KeyOut.of(k) for k in list_keys(session, access.project.id)])

    return await run_in_threadpool(read)


@router.delete(
    "/v1/projects/{project_id}/keys/{key_id}",
    summary="Revoke an API key",
    description="Every API process refuses the key within a second. Revoking twice is harmless. "
    "A key can only revoke keys whose scopes it has itself.",
    response_model=KeyOut,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def revoke_api_key(
    request: Request,
    access: KeysManage,
    key_id: Annotated[str, Path(pattern=id_pattern("key"), description="The key's id (not its secret).", examples=["key_5e0c2a9b1f3d4e76"])],
) -> KeyOut:
    def revoke():
        with stores_of(request).db.session() as session:
            key = session.get(ApiKey, key_id)
            if key is None or key.project_id != access.project.id:
                return None, False
            beyond = sorted(set(key.scopes) - access.principal.scopes)
            if beyond:
                raise Forbidden(f"This API key cannot revoke a key with scopes it lacks: {', '.join(beyond)}.")
            changed = key.revoked_at is None or key.revoked_at > utcnow()
            return KeyOut.of(revoke_key(session, key_id)), changed

    revoked, changed = await run_in_threadpool(revoke)
    if revoked is None:
        raise NotFound("No such API key.", "key_not_found")
    if changed:
        request.app.state.principals.cache.clear()
        await announce_change(stores_of(request).redis)
    return revoked
