"""Events store: ClickHouse over HTTP, or the same engine in-process through chdb.

clickhouse-connect's client is synchronous (and chdb has no async client), so calls run
in a thread pool; chdb allows one engine per process, so its calls are serialised on one
thread. chdb is the optional extra `embedded` (server deployments go without it); it is
imported only when a chdb:// URL is opened.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from openanalytics import telemetry

T = TypeVar("T")

EMBEDDED_MISSING = "the embedded engine is not installed: pip install 'openanalytics[embedded]'"


class EmbeddedEngineMissing(RuntimeError):
    """A chdb:// URL (the default without OA_CLICKHOUSE_URL) where chdb is not installed."""

    def __init__(self) -> None:
        super().__init__(f"{EMBEDDED_MISSING} (the container image: built with --build-arg EXTRAS=embedded), "
                         "or set OA_CLICKHOUSE_URL to a ClickHouse server's http(s):// URL")


def embedded_engine_installed() -> bool:
    return importlib.util.find_spec("chdb") is not None


def as_utc(moment: datetime) -> datetime:
    """The driver hands DateTime64(3, 'UTC') back naive on some paths."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def money(amount: Decimal) -> str:
    """A stored Decimal(18, 4) amount (or a sum of them) as exact text: "12.5000"."""
    return f"{Decimal(amount).quantize(Decimal('0.0001')):f}"


class EventStore:
    def __init__(self, url: str):
        self.url = url
        self.embedded = url.startswith("chdb:")
        if self.embedded and not embedded_engine_installed():
            raise EmbeddedEngineMissing()
        if self.embedded:
            self.client: Client = clickhouse_connect.get_client(dsn=url)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        else:
            # No server sessions: concurrent queries on one client must not share one.
            # Parameters in the body, not the URL: a failed request's error quotes its URL.
            self.client = clickhouse_connect.get_client(
                dsn=url, autogenerate_session_id=False, connect_timeout=5, send_receive_timeout=60,
                form_encode_query_params=True,
            )
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="clickhouse")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        if not telemetry.enabled():
            return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))
        operation = getattr(fn, "__name__", "call")
        attributes: dict[str, Any] = {"db.system.name": "clickhouse", "db.operation.name": operation}
        if args and isinstance(args[0], str) and operation in ("rows", "command"):
            attributes["db.query.text"] = args[0]  # parameterised: values travel apart
        elif operation == "insert":
            attributes.update({"db.namespace": args[0], "db.collection.name": args[1], "oa.rows": len(args[2])})
        with telemetry.span(f"clickhouse {operation}", telemetry.SpanKind.CLIENT, **attributes):
            return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Synchronous call on the store's own thread (chdb must not run on two at once)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    # -- synchronous primitives, meant to run through run()/call() --

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.client.command(sql, parameters=parameters)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        return self.client.query(sql, parameters=parameters).result_rows

    def insert(
        self, database: str, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], token: str
    ) -> None:
        # The token makes a retried insert of the same batch a no-op (see events_schema.py).
        # Server-side events may span every month of a long retention: no partition cap.
        settings = {"insert_deduplication_token": token, "max_partitions_per_insert_block": 0,
                    # a retry after the events were stored but not their usage count: counted once
                    "deduplicate_blocks_in_dependent_materialized_views": 1}
        self.client.insert(table, rows, column_names=list(columns), database=database, settings=settings)

    def ping(self) -> None:
        """Raises unless the engine answers (clickhouse-connect's own ping answers False instead)."""
        if self.embedded:
            self.rows("SELECT 1")
        elif not self.client.ping():
            raise ConnectionError("ClickHouse did not answer its ping")

    def close(self) -> None:
        self._pool.submit(self.client.close).result()
        self._pool.shutdown(wait=True)
