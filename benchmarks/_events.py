"""Generated events for benchmarks: one project in a fresh embedded store set, loaded inside
ClickHouse (INSERT ... SELECT from numbers()), so 10 million rows take seconds, not hours."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

# 5 events per session (each with its session's source), 3 sessions per visitor, 200 paths,
# 20 countries, 30 days; one event in ten a custom event, one in fifty a conversion; user ids
# on every event, 50 events each; each event's place in its session and its ages (per path,
# and since its visitor's event before) as the pipeline records them (every session opens with a pageview; a visitor's 15 events are on 15
# different paths).
# Visitor and session ids are 63-bit hashes, as the pipeline makes them: counting ids gives
# the same answers, but sequential ids would compress (and read) unrealistically well.
LOAD_SQL = """
INSERT INTO {db}.events (event_id, event_type, event_name, timestamp, received_at, origin, visitor_id, session_id,
                         url, hostname, path, referrer_source, country, device, browser, os, revenue, currency, user_id,
                         session_seq, session_gap_ms, bounce, path_visitor_age, path_session_age, bounce_path,
                         visitor_age)
SELECT generateUUIDv4(number), t, if(t = 'pageview', '', 'signup'), ts, ts, 'collect',
       bitShiftRight(sipHash64(intDiv(number, 15)), 1) + 1, bitShiftRight(sipHash64(intDiv(number, 5), 7), 1) + 1,
       concat('https://shop.example', p), 'shop.example', p,
       ['', 'Google', 'Twitter', 'Bing'][intDiv(number, 5) % 4 + 1], c, ['desktop', 'mobile', 'tablet'][number % 3 + 1],
       ['Chrome', 'Firefox', 'Safari'][number % 3 + 1], ['Windows', 'Mac OS X', 'iOS', 'Android'][number % 4 + 1],
       if(t = 'conversion', toDecimal64(19.99, 4), NULL), if(t = 'conversion', 'EUR', ''),
       concat('user-', toString(intDiv(number, 15) % 200000)),
       number % 5 + 1, if(number % 5 = 0, 0, 40000), multiIf(number % 5 = 0, 1, number % 5 = 1, -1, 0),
       65535, 65535, if(number % 5 = 1, concat('/p/', toString(((number - 1) * 31) % 200)), ''),
       if(prev IS NULL, 65535, least(65534, dateDiff('hour', toStartOfHour(assumeNotNull(prev)), toStartOfHour(ts)) + 1))
FROM (
SELECT *, lagInFrame(toNullable(ts)) OVER (PARTITION BY intDiv(number, 15) ORDER BY ts, number
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS prev
FROM (
  SELECT number,
         multiIf(number % 50 = 49, 'conversion', number % 10 = 9, 'event', 'pageview') AS t,
         toDateTime64({start:DateTime}, 3) + toIntervalSecond((intDiv(number, 5) * 7919) % {span:UInt32} + (number % 5) * 40) AS ts,
         concat('/p/', toString((number * 31) % 200)) AS p,
         ['NL', 'DE', 'US', 'GB', 'FR', 'ES', 'IT', 'SE', 'PL', 'BE', 'AT', 'CH', 'DK', 'NO', 'FI', 'IE', 'PT', 'CZ', 'JP', 'BR'][intDiv(number, 15) % 20 + 1] AS c
  FROM numbers({events:UInt64})
))
"""


def event_arguments(doc: str, **more: float):
    """--events (how many to load), the option of the query benchmarks, and `more` options with
    their defaults (typed like the default)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    for name, default in more.items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    return parser.parse_args()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def embedded_project(tmp: str, events: int):
    """(stores, project, issued key, (first day, last day)) with `events` generated events."""
    for name in [k for k in os.environ if k.startswith("OA_")]:
        del os.environ[name]
    os.environ.update(OA_DATA_DIR=tmp, OA_DATABASE_URL=f"sqlite:///{tmp}/bench.sqlite3")
    from openanalytics import migrations
    from openanalytics.auth.keys import issue_key
    from openanalytics.config import Settings
    from openanalytics.projects.service import create_project
    from openanalytics.provisioning.events_schema import database_name
    from openanalytics.provisioning.projects import provision_project
    from openanalytics.runtime import Stores

    stores = Stores.open(Settings())
    migrations.upgrade(stores.db.engine)
    with stores.db.session() as session:
        project = create_project(session, "bench", "business", [])
        key = issue_key(session, project.id, "bench", ["stats:read", "privacy:export", "privacy:delete"])
        session.flush()
        session.expunge(project)
    store = stores.events
    store.call(provision_project, stores.db, store, project)
    last = datetime.now(UTC).date()
    first = last - timedelta(days=29)
    started = time.perf_counter()
    store.call(store.command, LOAD_SQL.replace("{db}", database_name(project.id)), {
        "start": datetime.combine(first, datetime.min.time()), "span": 30 * 86400 - 300, "events": events})
    store.call(store.command, f"OPTIMIZE TABLE {database_name(project.id)}.events FINAL")
    (count,) = store.call(store.rows, f"SELECT count() FROM {database_name(project.id)}.events")[0]
    print(f"\nloaded {count:,} events in {time.perf_counter() - started:.0f} s", end="")
    return stores, project, key, (first, last)

