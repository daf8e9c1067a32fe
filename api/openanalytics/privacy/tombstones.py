"""Tombstones: what the flusher must not store because a deletion request asked for it.

Two Redis hashes per project, both kept a day after their last write (far longer than any
event waits in the stream):

- `oa:forget:<project>`: a user's tag -> the request's time (ms). Events of that user received
  up to then are dropped.
- `oa:forget:<project>:sessions`: a session id -> "set at (ms):visitor:user's tag". Every event of
  that session is dropped, whenever received (the visit is the user's).

A user is named by a tag, a keyed hash of the project and the user id, never by the id itself:
Redis (and its AOF on disk) holds no id of a person who asked to be forgotten. The key is this
installation's secret `privacy_tombstones` in the control plane (migration 0005), which every
worker reads once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.exc import IntegrityError

from openanalytics.privacy.models import Secret
from openanalytics.stores.sql import Database

TOMBSTONE_SECONDS = 24 * 3600  # far longer than any event waits in the stream
KEY_NAME = "privacy_tombstones"


def forget_key(project_id: str) -> str:
    return f"oa:forget:{project_id}"


def forget_sessions_key(project_id: str) -> str:
    return f"oa:forget:{project_id}:sessions"


def user_tag(key: bytes, project_id: str, user_id: str) -> str:
    """The name of a user in the tombstones."""
    return hashlib.blake2b(f"{project_id}\x1f{user_id}".encode(), key=key, digest_size=16).hexdigest()


_keys: dict[str, bytes] = {}


def _read_key(db: Database) -> bytes:
    import secrets

    with db.session() as session:
        found = session.get(Secret, KEY_NAME)
        if found is not None:
            return bytes.fromhex(found.value)
    try:  # a control plane migrated without it (a test's own tables): made once, by whoever comes first
        with db.session() as session:
            session.add(Secret(name=KEY_NAME, value=secrets.token_hex(32)))
    except IntegrityError:
        pass
    with db.session() as session:
        return bytes.fromhex(session.get(Secret, KEY_NAME).value)


async def tombstone_key(db: Database) -> bytes:
    """This installation's tombstone key, read from the control plane once per process and database."""
    key = _keys.get(db.url)
    if key is None:
        key = _keys[db.url] = await asyncio.to_thread(_read_key, db)
    return key


@dataclass
class Forgotten:
    """A project's tombstones: events of these users (tags) received up to their request time (ms), and
    every event of these sessions (with whose they are: user tag, visitor id), must not be stored."""

    key: bytes
    project_id: str
    users: dict[str, int]
    sessions: dict[int, tuple[str, int]]
    _tags: dict[str, str] = field(default_factory=dict, repr=False)

    def tag(self, user_id: str) -> str:
        found = self._tags.get(user_id)
        if found is None:
            found = self._tags[user_id] = user_tag(self.key, self.project_id, user_id)
        return found

    @cached_property
    def visitors(self) -> set[int]:
        return {visitor for _, visitor in self.sessions.values()}

    def covers(self, row: dict) -> bool:
        user = row.get("user_id")
        if user and self.users:
            until = self.users.get(self.tag(user))
            if until is not None and row.get("received_at", 0) <= until:
                return True
        return int(row.get("session_id") or 0) in self.sessions

    def shares_visitor(self, row: dict, noted: dict[str, dict[int, int]]) -> bool:
        """Whether the row's visitor had a session deleted (or `noted` for deletion)."""
        visitor = int(row.get("visitor_id") or 0)
        return visitor in self.visitors or any(visitor in sessions.values() for sessions in noted.values())


async def forgotten(redis, key: bytes, project_id: str) -> Forgotten:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(forget_key(project_id))
        pipe.hgetall(forget_sessions_key(project_id))
        users, sessions = await pipe.execute()
    return Forgotten(key, project_id, {k.decode(): int(v) for k, v in (users or {}).items()},
                     {int(k): _whose(v.decode()) for k, v in (sessions or {}).items()})


def _whose(value: str) -> tuple[str, int]:
    """A session tombstone's value, "set at (ms):visitor:user's tag": (tag, visitor). The flusher reads
    these for every batch: a value of another form must not stop it (it still drops the session)."""
    parts = value.split(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[2], int(parts[1])
    return "", 0


def _set_at(value: bytes) -> int:
    """When a session tombstone was set (0, so pruned, for a value of another form)."""
    first = value.split(b":", 1)[0]
    return int(first) if first.isdigit() else 0


def _now_ms() -> int:
    return int(time.time() * 1000)


async def forget_user(redis, project_id: str, tag: str, until_ms: int) -> None:
    """The user's tombstone: their events received up to `until_ms` are not stored any more."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(forget_key(project_id), tag, until_ms)
        pipe.expire(forget_key(project_id), TOMBSTONE_SECONDS)
        await pipe.execute()


async def forget_sessions(redis, project_id: str, tag: str, sessions: dict[int, int]) -> None:
    """Tombstones for these sessions of the user (session id -> its visitor), so no event of them is
    stored any more. A session some other deletion already holds stays its."""
    if sessions:
        key, now = forget_sessions_key(project_id), _now_ms()
        async with redis.pipeline(transaction=False) as pipe:
            for sid, visitor in sessions.items():
                pipe.hsetnx(key, str(sid), f"{now}:{visitor}:{tag}")
            pipe.expire(key, TOMBSTONE_SECONDS)
            await pipe.execute()


async def prune_tombstones(redis, project_id: str) -> int:
    """Remove the project's tombstones older than TOMBSTONE_SECONDS; returns how many. Each write
    renews the hashes' lifetime, so with a deletion a day they would otherwise only grow (and the
    flusher reads them for every batch)."""
    cutoff = _now_ms() - TOMBSTONE_SECONDS * 1000
    removed = 0
    for key, moment in ((forget_key(project_id), int), (forget_sessions_key(project_id), _set_at)):
        old = [name for name, value in (await redis.hgetall(key)).items() if moment(value) < cutoff]
        if old:
            removed += await redis.hdel(key, *old)
    return removed
