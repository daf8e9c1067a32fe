"""The gate in front of `/v1`: who is calling, and whether their budget allows it.

A pure ASGI middleware, so every `/v1` response (errors included, whoever produced them)
gets the `X-RateLimit-*` headers. With a valid key they describe the key's budget for the
minute; without one, the client IP's allowance of failed authentications: past it, failed
attempts from that IP get 429 until the window ends. Requests without a valid key are
answered here, before any body is read, and bodies are capped for everyone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openanalytics import telemetry
from openanalytics.auth.principals import Principals
from openanalytics.auth.ratelimit import Budget, RateLimiter, client_tag
from openanalytics.ingest.client_ip import Network, client_ip
from openanalytics.ingest.visitor import Salts, day_of
from openanalytics.logs import redact_path

log = logging.getLogger(__name__)


def _header(scope: Scope, name: bytes) -> str | None:
    """The header's value; repeated lines are joined with commas, as HTTP defines."""
    values = [value.decode("latin-1") for key, value in scope["headers"] if key == name]
    return ", ".join(values) if values else None


def bearer_secret(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, secret = value.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


class BodyTooLarge(Exception):
    pass


class ApiGate:
    def __init__(
        self, app: ASGIApp, principals: Principals, limiter: RateLimiter | None, trusted: tuple[Network, ...],
        max_body_bytes: int, salts: Salts,
    ):
        self.app = app
        self.principals = principals
        self.limiter = limiter  # None: budgets off (benchmarks compare against this)
        self.trusted = trusted
        self.max_body = max_body_bytes
        self.salts = salts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.principals.resolve(bearer_secret(scope))
        except Exception:
            log.exception("the control plane is unreachable")
            await _answer(send, 503, "unavailable", "The service cannot check API keys right now; retry with backoff.",
                          [(b"retry-after", b"5")])
            return
        scope.setdefault("state", {})["principal"] = principal
        budget = None
        if self.limiter is not None:
            peer = scope["client"][0] if scope.get("client") else ""
            if principal is not None:
                budget = await self.limiter.spend(principal.key_id, principal.requests_per_minute)
            else:
                ip = client_ip(peer, _header(scope, b"x-forwarded-for"), self.trusted)
                budget = await self.limiter.fail(client_tag(ip, await self._salt()))
            if not budget.allowed:
                telemetry.RATE_LIMITED.add(1, {"plan": principal.plan if principal else "unauthenticated"})
                await self._refuse(budget, send)
                return
        extra = budget.headers() if budget is not None else []
        if principal is None:
            # Answered here, before any body is read: nobody unauthenticated gets to upload.
            await _answer(send, 401, "unauthorized",
                          "Send a valid, unrevoked API key as 'Authorization: Bearer oa_live_...'.",
                          [(b"www-authenticate", b'Bearer realm="openanalytics"'), *extra])
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _answer(send, 413, "payload_too_large", f"the body is larger than {self.max_body} bytes", extra)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge()
            return message

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await _answer(send, 413, "payload_too_large", f"the body is larger than {self.max_body} bytes", extra)
        except Exception:
            # Answered here, not by Starlette's outer error middleware, so a 500 has the headers too.
            log.exception("unhandled error on %s %s", scope["method"], redact_path(scope["path"]))
            if not started:
                await _answer(send, 500, "internal_error", "The server failed; retrying with backoff is safe.", extra)

    async def _salt(self) -> bytes:
        try:
            return await self.salts.for_day(day_of(datetime.now(UTC)))
        except Exception:
            return b""  # Redis is down: the limiter fails open anyway

    @staticmethod
    async def _refuse(budget: Budget, send: Send) -> None:
        message = f"Too many requests; retry in {budget.reset_seconds} seconds."
        extra = [(b"retry-after", str(budget.reset_seconds).encode()), *budget.headers()]
        await _answer(send, 429, "rate_limited", message, extra)


async def _answer(send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = orjson.dumps({"error": code, "message": message})
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*base, *headers]})
    await send({"type": "http.response.body", "body": body})
