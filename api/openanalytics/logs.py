"""Logs as JSON lines (or text), each carrying the current trace and span ids.

A last line of defence scrubs anything shaped like an API key from every line; the code
itself never logs keys, client IPs or User-Agents (a test greps for them).
"""

from __future__ import annotations

import logging
import re
import sys

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_KEY = re.compile(r"oa_live_[A-Za-z0-9_\-]+")
# A privacy route's user id: to the end of a decoded path (it may hold '/', '?', spaces), or to the
# query or fragment of a URL as sent (where they are percent-encoded).
_USER_IN_PATH = re.compile(r"(/privacy/user/).*", re.DOTALL)
_USER_IN_TEXT = re.compile(r"(/privacy/user/)(?:[^\"\\\n]|\\.)*")  # in a line: to its end or a JSON string's
# A statement's parameters, as clickhouse-connect puts them in a URL (an error's text may quote it).
_PARAMETER = re.compile(r"(\bparam_\w+=)[^&\s\"']*")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def redact_path(path: str) -> str:
    """A request path fit for logs and traces: a privacy route's user id replaced."""
    return _USER_IN_PATH.sub(r"\1{user_id}", path)


def scrub(text: str) -> str:
    """A log line without keys, privacy routes' user ids or statement parameters (the last line of
    defence: the code logs none of them)."""
    text = _USER_IN_TEXT.sub(r"\1{user_id}", _KEY.sub("oa_live_[redacted]", text))
    return _PARAMETER.sub(r"\1[redacted]", text)


class TraceIds(logging.Filter):
    """Puts trace_id and span_id of the current span (if any) on the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True


class JsonLines(JsonFormatter):
    def __init__(self) -> None:
        # kopf's object loggers attach their settings and object reference: not for the line.
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         reserved_attrs=[*RESERVED_ATTRS, "settings", "k8s_ref", "k8s_skip"], json_default=str)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def handler(fmt: str = "json", stream=None) -> logging.Handler:
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(JsonLines() if fmt == "json" else Text(TEXT_FORMAT))
    out.addFilter(TraceIds())
    return out


def setup(level: str = "INFO", fmt: str = "json") -> None:
    """One handler on the root logger; uvicorn's and kopf's loggers propagate to it."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(fmt))
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "kopf"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
