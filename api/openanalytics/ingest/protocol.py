"""`POST /collect` answered inside uvicorn's HTTP protocol, before any ASGI.

Nothing about a hit reaches its answer (intake.py), so a plain hit needs no ASGI request
cycle: no scope handed on, no task, no messages. This protocol (uvicorn's httptools one,
which the server runs anyway) takes a `POST /collect` on a keep-alive HTTP/1.1 connection
with nothing else in flight, queues it with the intake and writes the 204 itself. Anything
else goes on to the ASGI app as before, `/collect` included whenever it is not plain (a
query string, `Expect: 100-continue`, a pipelined request, a client not reading its answers,
a queue past its high-water mark, a sampled trace): `intake.CollectEndpoint` answers those.

It leans on uvicorn's protocol internals, so it runs only on the uvicorn versions it was
tested with, and only as the CLI configures the server (no proxy headers, root path or
concurrency limit, which the app path applies and this one would skip).
"""

from __future__ import annotations

import logging

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from openanalytics import telemetry
from openanalytics.ingest.collect import DropReason
from openanalytics.ingest.intake import HIGH_WATER, SAMPLED, Intake, answer_headers

log = logging.getLogger(__name__)

TESTED_UVICORN = ("0.54.",)


def collect_protocol(intake: Intake) -> type[HttpToolsProtocol] | None:
    """uvicorn's httptools protocol, answering plain `/collect` hits for `intake` itself; None on a
    uvicorn it was not tested with."""
    if not uvicorn.__version__.startswith(TESTED_UVICORN):
        log.warning("uvicorn %s: /collect is answered through the ASGI app (tested with %s)",
                    uvicorn.__version__, ", ".join(v + "x" for v in TESTED_UVICORN))
        return None
    limit = intake.collector.settings.collect_max_body_bytes
    answered: list = [None, b""]  # the server's default headers (a new list each second) and the answer with them

    def answer(default_headers: list[tuple[bytes, bytes]], close: bool = False) -> bytes:
        if close:  # the server is stopping
            return _answer([*default_headers, (b"connection", b"close")])
        if answered[0] is not default_headers:
            answered[:] = [default_headers, _answer(default_headers)]
        return answered[1]

    class CollectProtocol(HttpToolsProtocol):
        collecting: list[bytes] | None = None  # the body so far of a hit answered here
        collected = 0
        stopping = False

        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            self.answers = not (config.proxy_headers or config.root_path or config.limit_concurrency)

        def on_message_begin(self) -> None:
            # A hit answered here arms the keep-alive timer in the middle of the data it came in
            # with; a request after it in the same data must not run under that timer.
            self._unset_keepalive_if_required()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self.collecting = None
            if self.url == b"/collect" and self.parser.get_method() == b"POST":
                sampled = telemetry.collect_sampled()
                if not sampled and self._plain():
                    self.collecting, self.collected = [], 0
                    return
                self.scope[SAMPLED] = sampled  # the app does not draw again
            super().on_headers_complete()

        def _plain(self) -> bool:
            return (
                self.answers
                and not self.expect_100_continue
                and self.parser.get_http_version() == "1.1"
                and self.parser.should_keep_alive()
                and not self.parser.should_upgrade()
                and not self.pipeline
                and (self.cycle is None or self.cycle.response_complete)  # answers go out in order
                and not self.flow.write_paused  # a client not reading its answers waits on the app path
                and intake.queued < HIGH_WATER  # past it, answers wait for the processor (CollectEndpoint)
            )

        def on_body(self, body: bytes) -> None:
            if self.collecting is None:
                super().on_body(body)
                return
            self.collected += len(body)
            if self.collected <= limit:  # past it the rest is read and dropped
                self.collecting.append(body)

        def on_message_complete(self) -> None:
            if self.collecting is None:
                super().on_message_complete()
                return
            chunks, self.collecting = self.collecting, None
            body = None if self.collected > limit else chunks[0] if len(chunks) == 1 else b"".join(chunks)
            intake.take(body, self.client[0] if self.client else "", self.headers)
            self.transport.write(answer(self.server_state.default_headers, self.stopping))
            if self.stopping:
                self.transport.close()
            self.on_response_complete()  # counts, reading resumed, keep-alive timer

        def shutdown(self) -> None:
            if self.collecting is None:
                super().shutdown()
            else:  # a hit still arriving is answered, then the connection closes
                self.stopping = True

        def connection_lost(self, exc: Exception | None) -> None:
            if self.collecting is not None:  # the client went away in the middle of its hit
                self.collecting = None
                intake.count_dropped(DropReason.malformed.value)
            super().connection_lost(exc)

    return CollectProtocol


def _answer(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [STATUS_LINE[204]]
    lines += [name + b": " + value + b"\r\n" for name, value in [*default_headers, *answer_headers()]]
    return b"".join(lines) + b"\r\n"
