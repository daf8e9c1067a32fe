"""API keys: `oa_live_` secrets, stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from openanalytics.auth.models import ApiKey
from openanalytics.ids import new_id, random_base62
from openanalytics.stores.sql import utcnow

KEY_PREFIX = "oa_live_"
SECRET_LENGTH = 40  # base62: ~238 bits, unguessable
DISPLAY_LENGTH = len(KEY_PREFIX) + 4


class Scope(StrEnum):
    projects_read = "projects:read"
    stats_read = "stats:read"
    events_write = "events:write"
    privacy_export = "privacy:export"
    privacy_delete = "privacy:delete"
    keys_manage = "keys:manage"
    goals_manage = "goals:manage"


# A key created without explicit scopes can do what the seed's three examples do.
DEFAULT_SCOPES = (Scope.projects_read, Scope.stats_read, Scope.events_write)


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str  # shown once, never stored


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_key(secret: str) -> bool:
    return secret.startswith(KEY_PREFIX) and len(secret) == len(KEY_PREFIX) + SECRET_LENGTH and secret.isascii()


def parse_scopes(scopes: list[str] | None) -> list[str]:
    if not scopes:
        return sorted(s.value for s in DEFAULT_SCOPES)
    known = {s.value for s in Scope}
    unknown = sorted(set(scopes) - known)
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return sorted(set(scopes))


def issue_key(session: Session, project_id: str, name: str = "default", scopes: list[str] | None = None) -> IssuedKey:
    secret = KEY_PREFIX + random_base62(SECRET_LENGTH)
    key = ApiKey(
        id=new_id("key"),
        project_id=project_id,
        name=name,
        prefix=secret[:DISPLAY_LENGTH],
        key_hash=hash_secret(secret),
        scopes=parse_scopes(scopes),
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return IssuedKey(key, secret)


def find_active_key(session: Session, secret: str) -> ApiKey | None:
    """The unrevoked key whose secret this is, or None."""
    if not looks_like_key(secret):
        return None
    digest = hash_secret(secret)
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The lookup is by hash of a high-entropy secret; the comparison is constant time anyway.
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        return None
    # A revocation time in the future is a rotated key's grace period: still valid until then.
    if key.revoked_at is not None and key.revoked_at <= utcnow():
        return None
    return key


def list_keys(session: Session, project_id: str) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.created_at, ApiKey.id)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    key = session.get(ApiKey, key_id)
    if key is not None and (key.revoked_at is None or key.revoked_at > utcnow()):  # also ends a grace period
        key.revoked_at = utcnow()
        session.flush()
    return key


def touch_key(session: Session, key_id: str) -> None:
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))
