"""Errors of the authenticated API, all answered as `{"error": code, "message": sentence}`.

    ApiError
    ├── BadRequest        400 validation_error (and more specific codes)
    ├── Unauthorized      401 unauthorized
    ├── Forbidden         403 insufficient_scope
    ├── NotFound          404 not_found
    ├── (429 rate_limited: answered by the /v1 gate, auth/gate.py)
    └── Unavailable       503 unavailable (a store is down; retry with backoff)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from openanalytics.logs import redact_path

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    error: str = Field(description="Machine-readable error code.", examples=["validation_error"])
    message: str = Field(description="Human-readable explanation.", examples=["from must not be after to"])


class ApiError(Exception):
    status = 400
    code = "validation_error"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.headers = headers or {}


class BadRequest(ApiError):
    status, code = 400, "validation_error"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "insufficient_scope"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _describe(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


_STATUS_CODES = {400: "validation_error", 413: "payload_too_large", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limited"}


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    pending = list(app.routes)
    while pending:
        route = pending.pop()
        if hasattr(route, "original_router"):  # FastAPI wraps included routers
            pending.extend(route.original_router.routes)
        elif getattr(route, "methods", None) and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(400, "validation_error", _describe(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; list every method it has.
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return error_response(exc.status_code, code, message, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, redact_path(request.url.path))
        return error_response(500, "internal_error", "The server failed; retrying with backoff is safe.")
