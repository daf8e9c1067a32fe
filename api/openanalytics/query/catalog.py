"""What a query may name: dimensions, time buckets and metrics, each mapped to fixed SQL.

Names from a request are only ever looked up here; values from a request are only ever
bound parameters. So no input can change the shape of the SQL.
"""

from __future__ import annotations

from collections.abc import Iterable

from openanalytics.errors import BadRequest

# Dimensions read from each event.
EVENT_DIMENSIONS: dict[str, str] = {
    "path": "path",
    "hostname": "hostname",
    "referrer": "referrer",
    "source": "referrer_source",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "utm_term": "utm_term",
    "utm_content": "utm_content",
    "country": "country",
    "region": "region",
    "city": "city",
    "device": "device",
    "browser": "browser",
    "os": "os",
    "event_name": "event_name",
    "event_type": "event_type",
}
# Dimensions of a whole session (its first and last pageview), over the session's events in the range.
SESSION_DIMENSIONS: dict[str, str] = {
    "entry_page": "argMinIf(path, timestamp, event_type = 'pageview')",
    "exit_page": "argMaxIf(path, timestamp, event_type = 'pageview')",
}
# Time buckets in the query's timezone ({tz:String} is bound), as text: an hour is local time with
# its UTC offset, so the two 01:00 hours of a DST change stay apart; weeks start on Monday.
BUCKETS: dict[str, str] = {
    "hour": "formatDateTime(toStartOfHour(timestamp, {tz:String}), '%Y-%m-%dT%H:00:00%z', {tz:String})",
    "day": "toString(toDate(timestamp, {tz:String}))",
    "week": "toString(toMonday(toDate(timestamp, {tz:String})))",
    "month": "toString(toStartOfMonth(toDate(timestamp, {tz:String})))",
}
DIMENSIONS = [*EVENT_DIMENSIONS, *SESSION_DIMENSIONS]

METRICS = [
    "visitors",  # unique visitor ids among the matching events
    "pageviews",
    "sessions",  # sessions with at least one matching event
    "bounce_rate",  # share of those sessions with one pageview and nothing else (0-1)
    "session_duration",  # their mean duration, first to last event, in seconds
    "pages_per_session",  # their mean pageviews
    "events",  # every matching event
    "conversions",
    "revenue",  # per currency
]
SESSION_METRICS = {"sessions", "bounce_rate", "session_duration", "pages_per_session"}


def _listed(kind: str, allowed: Iterable[str]) -> str:
    return f"unknown {kind}; allowed: {', '.join(allowed)}"


def dimension(name: str, buckets: bool = False) -> str:
    allowed = [*DIMENSIONS, *BUCKETS] if buckets else DIMENSIONS
    if name not in allowed:
        raise BadRequest(f"{_listed('dimension ' + repr(name[:50]), allowed)}", "unknown_dimension")
    return name


def metrics(text: str | None, default: list[str]) -> list[str]:
    """A comma-separated metric list, in the order given, each once."""
    if text is None or not text.strip():
        return list(default)
    wanted = []
    for name in (part.strip() for part in text.split(",")):
        if name not in METRICS:
            raise BadRequest(_listed(f"metric {name[:50]!r}", METRICS), "unknown_metric")
        if name not in wanted:
            wanted.append(name)
    return wanted
