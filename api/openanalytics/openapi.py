"""OpenAPI helpers: every error response documented with the error schema."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from openanalytics.errors import ErrorBody

_DESCRIPTIONS = {
    400: "Validation error.",
    401: "Missing or invalid Bearer token.",
    403: "The API key lacks the required scope.",
    404: "Project or resource not found (also for another tenant's project).",
    409: "It exists already.",
    413: "The body is too large.",
    429: "Rate limit exceeded (see Retry-After).",
    503: "A store is unreachable; nothing was done. Retry with backoff.",
}


_EXAMPLES = {
    400: ("validation_error", "from must not be after to"),
    401: ("unauthorized", "Send a valid, unrevoked API key as 'Authorization: Bearer oa_live_...'."),
    403: ("insufficient_scope", "This API key lacks the 'stats:read' scope."),
    404: ("project_not_found", "No such project."),
    409: ("goal_exists", "This project already has a goal named 'Signups'."),
    413: ("payload_too_large", "the body is larger than 5242880 bytes"),
    429: ("rate_limited", "Too many requests; retry in 42 seconds."),
    503: ("unavailable", "The ingest buffer is unreachable; nothing was queued. Retry with backoff."),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "model": ErrorBody,
            "description": _DESCRIPTIONS[status],
            "content": {"application/json": {"example": dict(zip(("error", "message"), _EXAMPLES[status]))}},
        }
        for status in statuses
    }


RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": "Requests allowed per minute: the key's budget, or without a valid key the client "
    "IP's allowance of failed authentications.",
    "X-RateLimit-Remaining": "Requests left in the current window.",
    "X-RateLimit-Reset": "Seconds until the current window ends and the budget is full again.",
}
RETRY_AFTER = "Seconds to wait before retrying."


def _document_rate_limits(schema: dict) -> None:
    components = schema["components"].setdefault("headers", {})
    for name, text in {**RATE_LIMIT_HEADERS, "Retry-After": RETRY_AFTER}.items():
        components[name] = {"description": text, "schema": {"type": "integer", "minimum": 0}}
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1"):
            continue
        for operation in operations.values():
            for status, response in operation["responses"].items():
                names = [*RATE_LIMIT_HEADERS, *(["Retry-After"] if status in ("429", "503") else [])]
                response["headers"] = {n: {"$ref": f"#/components/headers/{n}"} for n in names}


def build_openapi(app: FastAPI, models: list[type[BaseModel]], patches: dict[tuple[str, str], dict]) -> dict:
    """The app's spec, once: validation errors are answered 400 here (documented per route), not
    FastAPI's 422; `models` used only in hand-written request bodies are added to the components;
    `patches` replace parts of single operations ((path, method) -> fields)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for model in models:
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        for (path, method), fields in patches.items():
            schema["paths"][path][method].update(fields)
        _document_rate_limits(schema)
        app.openapi_schema = schema
    return app.openapi_schema
