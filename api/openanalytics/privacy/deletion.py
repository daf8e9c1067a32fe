"""Carrying out deletion requests (run by the worker), safely repeatable after a crash.

A request is claimed with a lease; a worker that dies leaves the lease to run out and the
next worker starts the request over. Every step is idempotent:

1. A tombstone (Redis hash `oa:forget:<project>`: user id -> request time) makes the
   flusher drop the user's events received up to the request instead of storing them.
   (The sessions of their events in the stream are noted first, as the flusher may drop
   those events.)
2. Their browser sessions (from the stream, ClickHouse, and what the flusher noted when it
   dropped their events) get tombstones too (`oa:forget:<project>:sessions`: session id ->
   when, visitor and user), which make the flusher drop every event of them, and their realtime
   and session state (the hashes of the visitor ids their events carry, and of the next day's
   visitor for a visit that went on past midnight: paths, session, where it came from) is
   removed, so their visits end.
3. Their events still in the ingest stream are deleted from it, with every event of those
   sessions, and the batches workers hold at that moment (read, perhaps before a tombstone
   existed, but not stored yet) are waited out. Then 2 and 3 go round again until no new
   visit of theirs turns up, in ClickHouse or among what the flusher noted.
4. The same of their stored events are deleted from ClickHouse (a mutation, so the parts are
   rewritten, not just masked), waited for by watching their rows.
5. Nothing received up to the request may remain in ClickHouse or the stream; otherwise
   the attempt fails and the request is tried again.

Only then is the request completed. The user id is then cleared from the request row:
the audit trail keeps its hash, the counts and the times.

A failed attempt (a store down, a mutation not done in time) is retried with backoff, 1 s
doubling up to a minute, for `OA_PRIVACY_RETRY_SECONDS` (a day by default) from the first
attempt; only then does the request end `failed`. Its `error` is a code of failures.py, never
an exception's text.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from redis.exceptions import ResponseError
from sqlalchemy import func, or_, select, update

from openanalytics import telemetry
from openanalytics.ingest.buffer import FIELD
from openanalytics.privacy.failures import DeletionFailed, code_of
from openanalytics.privacy.models import PrivacyRequest
from openanalytics.privacy.tombstones import (
    forget_sessions, forget_user, forgotten, prune_tombstones, tombstone_key, user_tag,
)
from openanalytics.projects.models import Project
from openanalytics.provisioning.events_schema import PATH_SUMS_VERSION, database_name
from openanalytics.runtime import Stores

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0  # a store back from an outage is used again within a minute
SCAN_CHUNK = 1000
MUTATION_POLL_SECONDS = 0.2
MUTATION_SECONDS = 600  # then the attempt fails and is retried
IN_FLIGHT_SECONDS = 30
RECOVERY_COUNT = 100_000  # pending entries read at once
SESSIONS_PER_STATEMENT = 1000


def _statements(theirs: str, params: dict, sessions: list[int]) -> list[tuple[str, dict]]:
    """Conditions (with their parameters) for the user's rows and their sessions' rows, at most
    SESSIONS_PER_STATEMENT session ids each: parameters travel in the URL over HTTP."""
    statements = [(theirs, dict(params))]
    for n, first in enumerate(range(0, len(sessions), SESSIONS_PER_STATEMENT)):
        chunk = {"sessions": sessions[first:first + SESSIONS_PER_STATEMENT]}
        if n == 0:
            statements[0] = (f"({theirs}) OR session_id IN {{sessions:Array(UInt64)}}", {**params, **chunk})
        else:
            statements.append(("session_id IN {sessions:Array(UInt64)}", chunk))
    return statements


@dataclass
class Claimed:
    id: str
    project_id: str
    user_id: str
    requested_ms: int
    attempt: int  # fences the outcome: a worker whose lease ran out must not overwrite a later one


def retry_delay(attempt: int) -> float:
    """Seconds before the attempt after `attempt` (1, 2, 4 ... up to MAX_RETRY_SECONDS)."""
    return min(FIRST_RETRY_SECONDS * 2 ** min(attempt - 1, 16), MAX_RETRY_SECONDS)


class Deleter:
    def __init__(self, stores: Stores, lease: timedelta = LEASE):
        self.stores = stores
        self.lease = lease
        self.retry_for = timedelta(seconds=stores.settings.privacy_retry_seconds)

    # -- the request row ---------------------------------------------------------

    def _claim(self) -> Claimed | None:
        now = datetime.now(UTC)
        with self.stores.db.session() as session:
            due = session.scalars(select(PrivacyRequest).where(or_(
                (PrivacyRequest.status == "queued")
                & or_(PrivacyRequest.next_attempt_at.is_(None), PrivacyRequest.next_attempt_at <= now),
                (PrivacyRequest.status == "running") & (PrivacyRequest.lease_until < now),
            )).order_by(PrivacyRequest.created_at).limit(10)).all()
            for row in due:
                # Optimistic: whoever changes the row from the attempt it read owns it (so nothing here
                # overwrites another worker's claim made meanwhile).
                read = (PrivacyRequest.id == row.id) & (PrivacyRequest.attempts == row.attempts) \
                    & (PrivacyRequest.status == row.status)
                interrupted = row.status == "running"  # its worker died: that attempt failed
                if interrupted and now >= (row.started_at or row.created_at) + self.retry_for:
                    session.execute(update(PrivacyRequest).where(read).values(
                        status="failed", error="interrupted", completed_at=now, lease_until=None,
                        next_attempt_at=None, user_id=None))
                    continue
                attempt = row.attempts + 1
                taken = session.execute(update(PrivacyRequest).where(read).values(
                    status="running", lease_until=now + self.lease, attempts=attempt, next_attempt_at=None,
                    started_at=func.coalesce(PrivacyRequest.started_at, now),
                    **({"error": "interrupted"} if interrupted else {})))
                if taken.rowcount == 1:
                    return Claimed(row.id, row.project_id, row.user_id or "", int(row.created_at.timestamp() * 1000),
                                   attempt)
        return None

    def _mine(self, session, claimed: Claimed) -> PrivacyRequest | None:
        row = session.get(PrivacyRequest, claimed.id)
        return row if row is not None and row.status == "running" and row.attempts == claimed.attempt else None

    def _renew(self, claimed: Claimed) -> None:
        with self.stores.db.session() as session:
            row = self._mine(session, claimed)
            if row is None:
                raise DeletionFailed("interrupted")  # taken over: its lease ran out
            row.lease_until = datetime.now(UTC) + self.lease

    def _finish(self, claimed: Claimed, stored: int, queued: int) -> None:
        with self.stores.db.session() as session:
            row = self._mine(session, claimed)
            if row is None:
                return
            row.status, row.completed_at, row.lease_until = "completed", datetime.now(UTC), None
            row.events_deleted, row.queued_events_deleted, row.error, row.user_id = stored, queued, None, None

    def _given_up(self, row: PrivacyRequest, now: datetime) -> bool:
        """End the request `failed` if it has been retried long enough (the audit trail keeps no user id)."""
        if now < (row.started_at or row.created_at) + self.retry_for:
            return False
        row.status, row.completed_at, row.lease_until, row.next_attempt_at, row.user_id = \
            "failed", now, None, None, None
        return True

    def _failed(self, claimed: Claimed, code: str) -> tuple[str, float]:
        """Record the failure; returns the status it leaves (failed for good, or queued again) and the
        seconds until the next attempt."""
        now = datetime.now(UTC)
        with self.stores.db.session() as session:
            row = self._mine(session, claimed)
            if row is None:
                return "superseded", 0.0  # a later attempt owns the request now
            row.error = code
            if self._given_up(row, now):
                return "failed", 0.0
            delay = retry_delay(row.attempts)
            row.status, row.lease_until, row.next_attempt_at = "queued", None, now + timedelta(seconds=delay)
            return "requeued", delay

    # -- the work ----------------------------------------------------------------

    async def run_once(self) -> str | None:
        """Claim one due request and carry it out. Returns its id, or None when none was due."""
        claimed = await asyncio.to_thread(self._claim)
        if claimed is None:
            return None
        with telemetry.span("privacy.delete", **{"oa.project.id": claimed.project_id, "oa.request.id": claimed.id,
                                                 "oa.attempt": claimed.attempt}) as span:
            try:
                stored, queued = await self.delete_user(claimed)
            except Exception as exc:  # its text may hold the user id or a store's URL: only its code goes on
                code = code_of(exc)
                status, delay = await asyncio.to_thread(self._failed, claimed, code)
                where = "".join(traceback.format_tb(exc.__traceback__)) if code == "internal_error" else None
                log.warning("privacy request %s: attempt %d failed (%s, %s); %s", claimed.id, claimed.attempt, code,
                            type(exc).__name__, f"retrying in {delay:.0f} s" if status == "requeued" else status,
                            extra={"stack": where} if where else None)
            else:
                await asyncio.to_thread(self._finish, claimed, stored, queued)
                status = "completed"
                log.info("privacy request %s completed", claimed.id, extra={"project_id": claimed.project_id})
                if span is not None:
                    span.set_attributes({"oa.events.deleted": stored, "oa.events.deleted_queued": queued})
            telemetry.PRIVACY_REQUESTS.add(1, {"kind": "delete", "status": status})
            if span is not None:
                span.set_attribute("oa.status", status)
        return claimed.id

    async def delete_user(self, claimed: Claimed) -> tuple[int, int]:
        """(stored events deleted, queued events deleted). Raises if anything remains.

        Only events received up to the request count: a user who goes on using the product
        afterwards is not a failed deletion. But every event of a browser session one of theirs
        is in goes, whenever received and whether or not it names them: the visit is theirs (and
        what is left of a session would make its numbers wrong, see query/session_sums.py).
        """
        redis, project_id, user_id = self.stores.redis, claimed.project_id, claimed.user_id
        if not user_id:
            raise DeletionFailed("missing_user_id")
        key = await tombstone_key(self.stores.db)
        tag = user_tag(key, project_id, user_id)
        await prune_tombstones(redis, project_id)
        # Their sessions in the stream, before the tombstone lets the flusher drop their events there.
        _, visitors, sessions = await self._in_stream(project_id, user_id, claimed.requested_ms)
        await forget_user(redis, project_id, tag, claimed.requested_ms)
        table, _ = await asyncio.to_thread(self._table, project_id)
        store = self.stores.events
        params = {"user": user_id, "until": datetime.fromtimestamp(claimed.requested_ms / 1000, UTC)}
        theirs = "user_id = {user:String} AND received_at <= {until:DateTime64(3, 'UTC')}"
        queued: set[bytes] = set()
        ended_sessions: set[int] = set()
        ended_visitors: set[int] = set()
        looked = False  # the stream at least once, for their events without a session
        while True:
            # Their visits so far: noted here, dropped by the flusher (also in an earlier attempt), stored.
            noted = (await forgotten(redis, key, project_id)).sessions
            sessions.update({sid: visitor for sid, (whose, visitor) in noted.items() if whose == tag})
            if table is not None:
                sql = f"SELECT DISTINCT session_id, visitor_id FROM {table} WHERE {theirs}"
                rows = await store.run(store.rows, sql, params)
                sessions.update(rows)
                visitors |= {visitor for _, visitor in rows}  # server-side events' too (no session)
            sessions.pop(0, None)
            visitors |= set(sessions.values())
            visitors.discard(0)
            if looked and set(sessions) <= ended_sessions and visitors <= ended_visitors:
                break
            # Tombstones for their sessions, and their visits end: from now on no event of them is
            # stored and no later event joins one. Then those still queued leave the stream, and
            # batches a worker read before that are waited out; a visit found meanwhile goes round again.
            await forget_sessions(redis, project_id, tag,
                                  {sid: visitor for sid, visitor in sessions.items() if sid not in ended_sessions})
            await self._forget_visitors(project_id, visitors - ended_visitors)
            ended_sessions |= set(sessions)
            ended_visitors |= visitors
            ids, more_visitors, more_sessions = await self._in_stream(project_id, user_id, claimed.requested_ms,
                                                                      set(sessions))
            if ids:
                await redis.xdel(self.stores.settings.stream_key, *ids)
                queued.update(ids)
            visitors |= more_visitors
            sessions.update(more_sessions)
            looked = True
            await self._read_batches_stored()
            await asyncio.to_thread(self._renew, claimed)  # a round can take a while with a long stream
        stored = 0
        if table is not None:
            # First, so no query sums over ages counting from deleted events meanwhile (the version again:
            # the project may have been upgraded during the rounds).
            if (await asyncio.to_thread(self._table, project_id))[1] >= PATH_SUMS_VERSION:
                await self._unknown_ages(claimed, table, ended_visitors)
            for where, values in _statements(theirs, params, sorted(ended_sessions)):
                stored += await self._mutate(claimed, table, "DELETE", where, values)
        # Their own events must be gone; events of their visits still arriving are the tombstones' to drop.
        again, _, _ = await self._in_stream(project_id, user_id, claimed.requested_ms)
        if again:
            raise DeletionFailed("events_still_queued")
        return stored, len(queued)

    async def _read_batches_stored(self) -> None:
        """Wait until the entries workers hold now, read but not yet stored, are stored (or dropped):
        a batch read before a tombstone was written could otherwise land after the deletion."""
        from openanalytics.worker.flush import GROUP

        redis, stream = self.stores.redis, self.stores.settings.stream_key
        deadline = asyncio.get_running_loop().time() + IN_FLIGHT_SECONDS
        held = None
        while True:
            try:
                pending = await redis.xpending_range(stream, GROUP, "-", "+", RECOVERY_COUNT)
            except ResponseError:  # no stream or no group yet: nothing in flight
                return
            ids = {entry["message_id"] for entry in pending}
            held = ids if held is None else held & ids
            if not held:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise DeletionFailed("batches_in_flight")
            await asyncio.sleep(0.2)

    async def _mutate(self, claimed: Claimed, table: str, action: str, where: str, values: dict) -> int:
        """`ALTER TABLE <table> <action> WHERE <where>` if any row matches, waited for by watching those rows
        (not system.mutations, where another stuck mutation would hold this one up), renewing the lease
        meanwhile. Returns how many rows matched."""
        store, count = self.stores.events, f"SELECT count() FROM {table} WHERE {where}"
        ((matched,),) = await store.run(store.rows, count, values)
        if not matched:
            return 0
        await store.run(store.command, f"ALTER TABLE {table} {action} WHERE {where}", values)
        deadline = asyncio.get_running_loop().time() + MUTATION_SECONDS
        while True:
            ((left,),) = await store.run(store.rows, count, values)
            if not left:
                return matched
            if asyncio.get_running_loop().time() > deadline:
                raise DeletionFailed("rows_still_present")
            await asyncio.to_thread(self._renew, claimed)
            await asyncio.sleep(MUTATION_POLL_SECONDS)

    async def _unknown_ages(self, claimed: Claimed, table: str, visitors: set[int]) -> None:
        """The ages of their visitors' other events may count from a deleted event: mark them not known,
        so queries over them group events instead of summing (query/path_sums.py, visitor_sums.py)."""
        where = "session_id != 0 AND (path_visitor_age != 0 OR visitor_age != 0) AND visitor_id IN {visitors:Array(UInt64)}"
        ids = sorted(visitors)
        for first in range(0, len(ids), SESSIONS_PER_STATEMENT):  # ids travel in the URL, as in _statements
            await self._mutate(claimed, table, "UPDATE path_visitor_age = 0, path_session_age = 0, visitor_age = 0",
                               where, {"visitors": ids[first:first + SESSIONS_PER_STATEMENT]})

    def _table(self, project_id: str) -> tuple[str | None, int]:
        """The project's events table (None before it is provisioned) and its schema version."""
        with self.stores.db.session() as session:
            project = session.get(Project, project_id)
            version = project.events_schema_version if project is not None else 0
        return (f"{database_name(project_id)}.events" if version > 0 else None), version

    async def _in_stream(self, project_id: str, user_id: str, until_ms: int, sessions: set[int] = frozenset(),
                         ) -> tuple[list[bytes], set[int], dict[int, int]]:
        """The stream entries in the project of the user received up to `until_ms`, or of `sessions`;
        and the visitor ids of the user's, and their sessions with each one's visitor."""
        redis, stream = self.stores.redis, self.stores.settings.stream_key
        found, visitors, theirs, start = [], set(), {}, "-"
        while True:
            entries = await redis.xrange(stream, min=start, max="+", count=SCAN_CHUNK)
            for entry_id, fields in entries:
                try:
                    row = orjson.loads(fields[FIELD])
                except Exception:
                    continue  # the flusher dead-letters what it cannot read
                if row.get("project_id") != project_id:
                    continue
                session, visitor = int(row.get("session_id") or 0), int(row.get("visitor_id") or 0)
                if row.get("user_id") == user_id and row.get("received_at", 0) <= until_ms:
                    found.append(entry_id)
                    visitors.add(visitor)
                    theirs[session] = visitor
                elif session in sessions:
                    found.append(entry_id)
            if len(entries) < SCAN_CHUNK:
                theirs.pop(0, None)
                return found, visitors, theirs
            start = "(" + entries[-1][0].decode()

    async def _forget_visitors(self, project_id: str, visitors: set[int]) -> None:
        if not visitors:
            return
        redis = self.stores.redis
        keyed = {str(v) for v in visitors}
        # A visit that went on past midnight is named in the new day's visitor's hash, which the
        # visitor its events carry names under 'n' (ingest/commit.py).
        async with redis.pipeline(transaction=False) as pipe:
            for visitor in keyed:
                pipe.hget(f"oa:vp:{project_id}:{visitor}", "n")
            keyed |= {following.decode() for following in await pipe.execute() if following}
        # The release before kept sessions in keys of their own, which live an hour after its last
        # hit; a visit past midnight lived on under the new day's visitor's key, whose value
        # ("sid:seen:visitor:...") names the visitor its events carry.
        prefix = f"oa:sess:{project_id}:"
        found = [key async for key in redis.scan_iter(match=prefix + "*", count=SCAN_CHUNK)]
        for first in range(0, len(found), SCAN_CHUNK):
            chunk = found[first:first + SCAN_CHUNK]
            for key, value in zip(chunk, await redis.mget(chunk), strict=True):
                parts = value.split(b":") if value else []
                if len(parts) >= 3 and parts[2].decode() in keyed:
                    keyed.add(key.decode()[len(prefix):])
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zrem(f"oa:rt:{project_id}:visitors", *[str(v) for v in visitors])
            # their paths, sessions and where those came from (commit.py), and the release before's
            pipe.delete(*[f"oa:{kind}:{project_id}:{v}" for v in keyed for kind in ("vp", "sess", "acq")])
            await pipe.execute()
