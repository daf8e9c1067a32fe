"""Why a deletion attempt failed, as a stable code and a sentence that holds nothing personal.

A request's `error` is one of these codes; the API shows it with its sentence. Exception texts
never reach the request, the API or the logs: a ClickHouse error can quote the statement with
its parameters (the user id) and the server's URL.
"""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

SENTENCES = {
    "events_store_unreachable": "The events store (ClickHouse) could not be reached.",
    "events_store_error": "The events store (ClickHouse) refused a statement of the deletion.",
    "hot_state_unreachable": "The hot-state store (Redis) could not be reached.",
    "control_plane_unreachable": "The control plane database could not be reached.",
    "events_still_queued": "Events of the user were still waiting in the ingest queue after they were removed.",
    "batches_in_flight": "Events read by a worker before the request were still being stored.",
    "rows_still_present": "The events store had not finished removing the user's rows in time.",
    "interrupted": "The worker carrying out the request stopped before it finished.",
    "missing_user_id": "The request no longer holds the user id it was made for.",
    "internal_error": "The deletion failed unexpectedly.",
}


class DeletionFailed(Exception):
    """A failure the deletion itself recognises, by its code."""

    def __init__(self, code: str):
        assert code in SENTENCES, code
        super().__init__(code)
        self.code = code


def code_of(exc: BaseException) -> str:
    if isinstance(exc, DeletionFailed):
        return exc.code
    if isinstance(exc, RedisError):  # before OSError: redis-py's timeouts are both
        return "hot_state_unreachable"
    if isinstance(exc, SQLAlchemyError):
        return "control_plane_unreachable"
    if isinstance(exc, OperationalError) or _is_connection_error(exc):
        return "events_store_unreachable"
    if isinstance(exc, DatabaseError):
        return "events_store_error"
    return "internal_error"


def known(code: str | None) -> str | None:
    """A stored error as the API shows it: a code of SENTENCES (anything else, as older rows held, is
    internal_error: its text may hold what must not be shown)."""
    return code if code is None or code in SENTENCES else "internal_error"


def _is_connection_error(exc: BaseException) -> bool:
    """The HTTP client's own failures to reach ClickHouse (urllib3's, raised through clickhouse-connect)."""
    return isinstance(exc, (ConnectionError, OSError)) or type(exc).__module__.startswith("urllib3")


def sentence(code: str | None, final: bool) -> str | None:
    """What the API says of a request's error: retried, or given up for good."""
    if code is None:
        return None
    text = SENTENCES.get(code, SENTENCES["internal_error"])
    return text + (" The request was retried until OA_PRIVACY_RETRY_SECONDS ran out." if final
                   else " The deletion is retried with backoff.")
