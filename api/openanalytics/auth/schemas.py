from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from openanalytics.auth.keys import Scope
from openanalytics.auth.models import ApiKey
from openanalytics.text import StoredText


KEY_EXAMPLE = {
    "id": "key_5e0c2a9b1f3d4e76",
    "project_id": "prj_3f9a1c0b7d2e4a65",
    "name": "backend",
    "prefix": "oa_live_Ab3x",
    "scopes": ["events:write"],
    "created_at": "2026-11-26T14:35:50.034703Z",
    "last_used_at": None,
    "revoked_at": None,
}


class KeyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [KEY_EXAMPLE]})

    id: str = Field(examples=["key_5e0c2a9b1f3d4e76"])
    project_id: str
    name: str
    prefix: str = Field(description="The first characters of the secret, for recognising it.", examples=["oa_live_Ab3x"])
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> "KeyOut":
        return cls(
            id=key.id, project_id=key.project_id, name=key.name, prefix=key.prefix, scopes=list(key.scopes),
            created_at=key.created_at, last_used_at=key.last_used_at, revoked_at=key.revoked_at,
        )


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid", "json_schema_extra": {"examples": [{"name": "backend", "scopes": ["events:write"]}]}}

    name: Annotated[str, StoredText] = Field(default="default", min_length=1, max_length=200)
    scopes: list[Scope] | None = Field(
        default=None,
        min_length=1,
        description="At most the calling key's own scopes. Default: projects:read, stats:read, events:write.",
    )


class KeyCreated(KeyOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**KEY_EXAMPLE, "secret": "oa_live_Ab3xQ9mT2kLp7VwZ4nR8sY1cE6hJ0dF5gU3bN7aK"}]}
    )

    secret: str = Field(description="The key itself. Shown this once; only its hash is stored.",
                        examples=["oa_live_Ab3xQ9mT2kLp7VwZ4nR8sY1cE6hJ0dF5gU3bN7aK"])


class KeyList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"keys": [KEY_EXAMPLE]}]})

    keys: list[KeyOut]
