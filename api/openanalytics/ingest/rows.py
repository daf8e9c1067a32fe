"""Normalising an event into the row that goes on the stream (and later into ClickHouse)."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import orjson

from openanalytics.ingest.schemas import EventIn
from openanalytics.ingest.urls import split_url

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def property_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


_ID_BATCH = 256  # ids per read of the system's random source: one syscall per id cost as much as the rest
_ready_ids: list[str] = []  # list.pop is atomic: no two threads get the same id


def _uuid4_text(raw: bytearray) -> str:
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_event_id() -> str:
    """A random (version 4) UUID as text, without building a UUID object."""
    try:
        return _ready_ids.pop()
    except IndexError:
        pool = os.urandom(16 * _ID_BATCH)
        _ready_ids.extend(_uuid4_text(bytearray(pool[n:n + 16])) for n in range(0, len(pool), 16))
        return _ready_ids.pop()


def derived_event_id(seed: str) -> str:
    """A version 4 UUID as text made from `seed`, the same every time (a request sent again with its
    Idempotency-Key gets the ids it got the first time)."""
    return _uuid4_text(bytearray(hashlib.blake2b(seed.encode(), digest_size=16, person=b"oa-event-id").digest()))


os.register_at_fork(after_in_child=_ready_ids.clear)  # a forked child must not hand out its parent's ids


def url_parts(url: str | None) -> dict[str, str]:
    return _url_parts(url) if url else {}


@lru_cache(maxsize=4096)
def _url_parts(url: str) -> dict[str, str]:
    """Cached, so callers must not change what they get."""
    parts = split_url(url)
    row = {"url": url, "hostname": (parts.hostname or "").lower(), "path": parts.path or "/"}
    if "utm_" in parts.query:
        query = dict(parse_qsl(parts.query))
        for name in UTM_FIELDS:
            if query.get(name):
                row[name] = query[name][:500]
    return row


def event_row(project_id: str, event: EventIn, received_ms: int, origin: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "project_id": project_id,
        "event_id": new_event_id(),
        "event_type": event.event_type.value,
        "event_name": event.event_name or "",
        "timestamp": event.timestamp if event.timestamp is not None else received_ms,
        "received_at": received_ms,
        "origin": origin,
        "user_id": event.user_id or "",
        "properties": {k: property_text(v) for k, v in event.properties.items()},
    }
    if event.revenue is not None:
        row["revenue"] = str(event.revenue)
        row["currency"] = event.currency
    row.update(url_parts(event.url))  # copies the cached parts
    return row
