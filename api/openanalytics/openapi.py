"""OpenAPI helpers: every error response documented with the error schema."""

from __future__ import annotations

from typing import Any

from openanalytics.errors import ErrorBody

_DESCRIPTIONS = {
    400: "Validation error.",
    401: "Missing or invalid Bearer token.",
    403: "The API key lacks the required scope.",
    404: "Project or resource not found (also for another tenant's project).",
    429: "Rate limit exceeded.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}
