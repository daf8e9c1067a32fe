"""Normalising an event into the row that goes on the stream (and later into ClickHouse)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from openanalytics.ingest.schemas import EventIn

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def property_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def url_parts(url: str | None) -> dict[str, str]:
    if not url:
        return {}
    parts = urlsplit(url)
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
        "event_id": str(uuid.uuid4()),
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
    row.update(url_parts(event.url))
    return row
