"""Each project's ClickHouse database: versioned, idempotent migrations and the retention TTL.

One database per project (`oa_<project id>`). Migrations are numbered lists of statements
that are each safe to run twice (IF NOT EXISTS); the database records which versions it
has in `schema_versions`, so a crash halfway is finished by the next run.

The `events` table keeps one row per tracked event. It is partitioned by month, ordered for
per-day per-visitor scans, expires rows by the plan's retention, and deduplicates retried
inserts that carry the same `insert_deduplication_token` (the worker's exactly-once).
"""

from __future__ import annotations

import re

from openanalytics.stores.clickhouse import EventStore

_PROJECT_ID = re.compile(r"^prj_[0-9a-f]{16}$")

EVENT_COLUMNS: dict[str, str] = {
    "event_id": "UUID",
    "event_type": "LowCardinality(String)",
    "event_name": "String",
    "timestamp": "DateTime64(3, 'UTC')",
    "received_at": "DateTime64(3, 'UTC')",
    "origin": "LowCardinality(String)",  # collect | server
    "user_id": "String",
    "visitor_id": "UInt64",
    "session_id": "UInt64",
    "url": "String",
    "hostname": "LowCardinality(String)",
    "path": "String",
    "referrer": "String",
    "referrer_source": "LowCardinality(String)",
    "utm_source": "String",
    "utm_medium": "String",
    "utm_campaign": "String",
    "utm_term": "String",
    "utm_content": "String",
    "country": "LowCardinality(String)",
    "region": "LowCardinality(String)",
    "city": "String",
    "device": "LowCardinality(String)",
    "browser": "LowCardinality(String)",
    "browser_version": "LowCardinality(String)",
    "os": "LowCardinality(String)",
    "os_version": "LowCardinality(String)",
    "screen_width": "UInt16",
    "language": "LowCardinality(String)",
    "properties": "Map(String, String)",
    "revenue": "Nullable(Decimal(18, 4))",
    "currency": "LowCardinality(String)",
    # Where the event stands in its browser session (commit.py): 1 starts it, 0 when not known
    # (no session, or stored before these were kept); the time since the session's previous
    # event; +1 on a first event that is a pageview, -1 on a second event after one. Summed,
    # they give a window's session numbers without grouping events by session (query/session_sums.py).
    "session_seq": "UInt32",
    "session_gap_ms": "UInt32",
    "bounce": "Int8",
    # Per path (commit.py): hours since the visitor's, and the session's, previous event on the same
    # path, plus 1 (65535: none before; 0: not known, as for events without a session or stored
    # before these were kept), and on the event that ends a bounce, the path of the session's first
    # one. Summed, they give a window's visitors, sessions and bounces per path without grouping
    # events by visitor or session (query/path_sums.py).
    "path_visitor_age": "UInt16",
    "path_session_age": "UInt16",
    "bounce_path": "String",
    # The same for the visitor on any path: summed, a window's (or a time bucket's) visitors without
    # hashing visitor ids (query/visitor_sums.py).
    "visitor_age": "UInt16",
}

# The sums of hourly_totals, each as a query must spell it for ClickHouse to read the projection.
HOURLY_SUMS = (
    "count()", "countIf(event_type = 'pageview')", "countIf(event_type = 'conversion')",
    "countIf((session_id != 0) AND (session_seq = 1))", "sumIf(session_gap_ms, session_seq > 1)", "sum(bounce)",
    "countIf((session_id != 0) AND (event_type = 'pageview'))", "countIf((session_id != 0) AND (session_seq = 0))",
    "sum(revenue)",
)
# The sums of hourly_paths and hourly_bounce_paths, spelled as for HOURLY_SUMS.
PATH_SUMS = (
    "count()", "countIf(event_type = 'pageview')", "countIf(event_type = 'conversion')", "countIf(bounce = 1)",
    "countIf(session_id = 0)", "countIf((session_id != 0) AND (path_visitor_age = 0))",
)
BOUNCE_PATH_SUMS = ("countIf(bounce = -1)",)
# The sums of hourly_visitors, spelled as for HOURLY_SUMS.
VISITOR_SUMS = (
    "count()", "countIf(event_type = 'pageview')", "countIf(event_type = 'conversion')",
    "countIf((session_id != 0) AND (visitor_age = 0))",
)

_EVENTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {db}.events (\n"
    + ",\n".join(f"  `{name}` {kind}" for name, kind in EVENT_COLUMNS.items())
    + "\n) ENGINE = MergeTree\n"
    "PARTITION BY toYYYYMM(timestamp)\n"
    "ORDER BY (toDate(timestamp), visitor_id, timestamp, event_id)\n"
    "TTL toDateTime(timestamp) + INTERVAL {retention_days} DAY\n"
    "SETTINGS non_replicated_deduplication_window = 10000"
)

# The columns every query reads, compressed for reading fast: LZ4 decompresses several times
# faster than the ZSTD chdb uses by default, and Delta first makes the sorted timestamps and
# visitor ids small (10M events, 30 days: exact visitors 127 -> 72 ms, per day 208 -> 112).
# Existing parts keep their codec until merged.
_READ_FAST_CODECS = {
    "timestamp": "Delta, LZ4",
    "visitor_id": "Delta, LZ4",
    "session_id": "LZ4",
    "event_type": "LZ4",
    "path": "LZ4",
    "revenue": "LZ4",
    "currency": "LZ4",
}

# Monthly usage counted as events are stored, so a privacy deletion or the retention's expiry
# never lowers it: a materialized view adds each insert's counts (a retried insert the events
# table drops as a duplicate is not counted either). It counts events received from the
# latest moment in `usage_since` on, set a minute ahead so the view exists before any such
# event is stored (the clocks of the API and ClickHouse must agree within that minute);
# events received before it are counted from the events still stored (query/usage.py).
USAGE_MARGIN_SECONDS = 60
_USAGE_TABLES = [
    "CREATE TABLE IF NOT EXISTS {db}.usage (month Date, event_type LowCardinality(String), events UInt64) "
    "ENGINE = SummingMergeTree ORDER BY (month, event_type) SETTINGS non_replicated_deduplication_window = 10000",
    "CREATE TABLE IF NOT EXISTS {db}.usage_since (at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY tuple()",
]
_USAGE_VIEW = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_counter TO {db}.usage AS "
    "SELECT toStartOfMonth(received_at) AS month, event_type, count() AS events FROM {db}.events "
    "WHERE received_at >= (SELECT max(at) FROM {db}.usage_since) GROUP BY month, event_type"
)


def _start_counting_usage(store: EventStore, db: str) -> None:
    """A moment a minute ahead, then the view; both again if a crash came between them. Moments are
    only added, never removed, and the latest counts: two workers doing this at once agree."""
    if store.rows("SELECT 1 FROM system.tables WHERE database = {db:String} AND name = 'usage_counter'", {"db": db}):
        return
    _count_usage_from_now(store, db)


def _count_usage_from_now(store: EventStore, db: str) -> None:
    store.command(f"INSERT INTO {db}.usage_since SELECT now64(3) + toIntervalSecond({USAGE_MARGIN_SECONDS})")
    store.command(_USAGE_VIEW.format(db=db))

# Per hour and currency, the sums a window's totals are made of (query/session_sums.py): about
# 720 rows a month, read instead of every event. ClickHouse keeps it with each part, so a
# privacy deletion or the retention's expiry (both rewrite parts) changes it with the events.
_HOURLY_TOTALS = (
    "ALTER TABLE {db}.events ADD PROJECTION IF NOT EXISTS hourly_totals (SELECT toStartOfHour(timestamp), currency, "
    + ", ".join(HOURLY_SUMS) + " GROUP BY toStartOfHour(timestamp), currency)"
)
# Per hour and path (and how long since the visitor and the session were last on it), per hour and
# bounce path, and per hour and visitor age: what breakdowns by path (query/path_sums.py) and
# visitors in totals and time series (query/visitor_sums.py) are made of.
# One statement: every ALTER costs a provisioning (of each project) a round of its own.
_PATHS_AND_VISITORS = (
    "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS path_visitor_age UInt16, "
    "ADD COLUMN IF NOT EXISTS path_session_age UInt16, ADD COLUMN IF NOT EXISTS bounce_path String, "
    "ADD COLUMN IF NOT EXISTS visitor_age UInt16, "
    "ADD PROJECTION IF NOT EXISTS hourly_paths (SELECT toStartOfHour(timestamp), path, path_visitor_age, "
    "path_session_age, " + ", ".join(PATH_SUMS)
    + " GROUP BY toStartOfHour(timestamp), path, path_visitor_age, path_session_age), "
    "ADD PROJECTION IF NOT EXISTS hourly_bounce_paths (SELECT toStartOfHour(timestamp), bounce_path, "
    + ", ".join(BOUNCE_PATH_SUMS) + " GROUP BY toStartOfHour(timestamp), bounce_path), "
    "ADD PROJECTION IF NOT EXISTS hourly_visitors (SELECT toStartOfHour(timestamp), visitor_age, "
    + ", ".join(VISITOR_SUMS) + " GROUP BY toStartOfHour(timestamp), visitor_age)"
)

# Append only. Each statement must be idempotent; `{db}` and `{retention_days}` are
# filled from validated values, never from user input. A step that needs to look first is a
# function of (store, database name).
MIGRATIONS: list[tuple[int, list]] = [
    (1, [_EVENTS_TABLE]),
    (2, ["ALTER TABLE {db}.events " + ", ".join(
        f"MODIFY COLUMN `{name}` {EVENT_COLUMNS[name]} CODEC({codec})" for name, codec in _READ_FAST_CODECS.items())]),
    (3, [*_USAGE_TABLES, _start_counting_usage]),
    (4, ["ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS session_seq UInt32, "
         "ADD COLUMN IF NOT EXISTS session_gap_ms UInt32, ADD COLUMN IF NOT EXISTS bounce Int8", _HOURLY_TOTALS]),
    (5, [_PATHS_AND_VISITORS]),
]
# A new database gets the current schema at once, the same as MIGRATIONS make it (a test compares
# the two): a few CREATE statements instead of about twenty, ALTERs among them, which is most of
# what provisioning a project costs ClickHouse.
_CURRENT_EVENTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {db}.events (\n"
    + ",\n".join(f"  `{name}` {kind}" + (f" CODEC({_READ_FAST_CODECS[name]})" if name in _READ_FAST_CODECS else "")
                  for name, kind in EVENT_COLUMNS.items())
    + ",\n  PROJECTION hourly_totals (SELECT toStartOfHour(timestamp), currency, " + ", ".join(HOURLY_SUMS)
    + " GROUP BY toStartOfHour(timestamp), currency)"
    + ",\n  PROJECTION hourly_paths (SELECT toStartOfHour(timestamp), path, path_visitor_age, path_session_age, "
    + ", ".join(PATH_SUMS) + " GROUP BY toStartOfHour(timestamp), path, path_visitor_age, path_session_age)"
    + ",\n  PROJECTION hourly_bounce_paths (SELECT toStartOfHour(timestamp), bounce_path, "
    + ", ".join(BOUNCE_PATH_SUMS) + " GROUP BY toStartOfHour(timestamp), bounce_path)"
    + ",\n  PROJECTION hourly_visitors (SELECT toStartOfHour(timestamp), visitor_age, "
    + ", ".join(VISITOR_SUMS) + " GROUP BY toStartOfHour(timestamp), visitor_age)"
    + "\n) ENGINE = MergeTree\n"
    "PARTITION BY toYYYYMM(timestamp)\n"
    "ORDER BY (toDate(timestamp), visitor_id, timestamp, event_id)\n"
    "TTL toDateTime(timestamp) + INTERVAL {retention_days} DAY\n"
    "SETTINGS non_replicated_deduplication_window = 10000"
)
CURRENT_SCHEMA = [_CURRENT_EVENTS_TABLE, *_USAGE_TABLES, _count_usage_from_now]  # into a new database
USAGE_VERSION = 3
PATH_SUMS_VERSION = 5  # the path columns and projections
CURRENT_VERSION = MIGRATIONS[-1][0]


def database_name(project_id: str) -> str:
    if not _PROJECT_ID.match(project_id):
        raise ValueError(f"not a project id: {project_id!r}")
    return f"oa_{project_id}"


def migrate_project(store: EventStore, project_id: str, retention_days: int) -> int:
    """Create or upgrade the project's database and set its TTL. Returns the schema version.

    Synchronous: run it on the store's thread (`store.call` / `store.run`).
    """
    if not isinstance(retention_days, int) or retention_days <= 0:
        raise ValueError("retention_days must be a positive integer")
    db = database_name(project_id)
    # (Tests stand in for an older release by shortening MIGRATIONS: that takes the long way.)
    new = MIGRATIONS[-1][0] == CURRENT_VERSION and not _has_events_table(store, db)
    store.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    store.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_versions (version UInt32, applied_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version"
    )
    if new:
        for statement in CURRENT_SCHEMA:
            _run(store, db, statement, retention_days)
        versions = ", ".join(f"({version})" for version, _ in MIGRATIONS)
        store.command(f"INSERT INTO {db}.schema_versions (version) VALUES {versions}")
        return CURRENT_VERSION
    applied = {row[0] for row in store.rows(f"SELECT version FROM {db}.schema_versions")}
    for version, statements in MIGRATIONS:
        if version in applied:
            continue
        for statement in statements:
            _run(store, db, statement, retention_days)
        store.command(f"INSERT INTO {db}.schema_versions (version) VALUES ({version})")
    set_retention(store, project_id, retention_days)
    return CURRENT_VERSION


def _run(store: EventStore, db: str, statement, retention_days: int) -> None:
    if callable(statement):
        statement(store, db)
    else:
        store.command(statement.format(db=db, retention_days=retention_days))


def _has_events_table(store: EventStore, db: str) -> bool:
    return bool(store.rows("SELECT 1 FROM system.tables WHERE database = {db:String} AND name = 'events'",
                           {"db": db}))


def set_retention(store: EventStore, project_id: str, retention_days: int) -> None:
    db = database_name(project_id)
    store.command(f"ALTER TABLE {db}.events MODIFY TTL toDateTime(timestamp) + INTERVAL {int(retention_days)} DAY")


def ttl_days(store: EventStore, project_id: str) -> int | None:
    """The retention the events table really has, read back from ClickHouse."""
    rows = store.rows(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = 'events'",
        {"db": database_name(project_id)},
    )
    match = re.search(r"TTL toDateTime\(timestamp\) \+ toIntervalDay\((\d+)\)", rows[0][0]) if rows else None
    return int(match.group(1)) if match else None
