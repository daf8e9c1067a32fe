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
    413: "The body is too large.",
    429: "Rate limit exceeded.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}


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
        app.openapi_schema = schema
    return app.openapi_schema
