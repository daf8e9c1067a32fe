"""`POST /collect` answered in the server's HTTP protocol (ingest/protocol.py): a real uvicorn
server on a local port, spoken to over raw sockets, so keep-alive, pipelining, chunked bodies
and the hand-over to the ASGI app are what a client sees."""

from __future__ import annotations

import asyncio
import socket
from contextlib import nullcontext
from types import SimpleNamespace

import orjson
import pytest
import uvicorn

from openanalytics.app import create_app, http_protocol, served
from openanalytics.ingest import intake as intake_module
from openanalytics.ingest import protocol

from openanalytics import telemetry

from tests.helpers import counted, stream_length

PAGE = "https://shop.example/pricing"


@pytest.fixture
async def server(stores, monkeypatch):
    """The app served as `openanalytics serve` serves it; yields its port and a count of the hits the
    ASGI app answered (the rest the protocol answered itself)."""
    app = create_app(stores)
    asgi, delays = [], {}  # delays: query string -> seconds the app takes over such a hit
    original = intake_module.CollectEndpoint._receive

    async def receive(self, scope, *args, **kwargs):
        asgi.append(1)
        await asyncio.sleep(delays.get(scope["query_string"], 0))
        await original(self, scope, *args, **kwargs)
    monkeypatch.setattr(intake_module.CollectEndpoint, "_receive", receive)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(served(app), host="127.0.0.1", port=port, http=http_protocol(app), log_level="warning",
                            access_log=False, proxy_headers=False, lifespan="off", timeout_keep_alive=1,
                            timeout_graceful_shutdown=3)
    running = uvicorn.Server(config)
    task = asyncio.ensure_future(running.serve())
    while not running.started:
        await asyncio.sleep(0.01)
    try:
        yield SimpleNamespace(port=port, asgi=asgi, app=app, delays=delays, running=running, task=task)
    finally:
        running.should_exit = True
        await task
        await app.state.intake.settle()


def post(site_id: str, *, path: str = "/collect", version: str = "1.1", extra: str = "", chunks: list[bytes] | None = None,
         body: bytes | None = None) -> bytes:
    body = orjson.dumps({"site_id": site_id, "url": PAGE}) if body is None else body
    head = f"POST {path} HTTP/{version}\r\nHost: t\r\nUser-Agent: Mozilla/5.0 Firefox/130.0\r\nContent-Type: text/plain\r\n{extra}"
    if chunks is not None:
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + encoded
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def answers(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The heads of the next `count` responses (each /collect answer has no body; /healthz's is read)."""
    heads = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        heads.append(head)
    return heads


async def until(condition, seconds: float = 5) -> None:
    async def wait():
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), seconds)


def is_204(head: bytes) -> bool:
    lines = head.lower().split(b"\r\n")
    return lines[0] == b"http/1.1 204 no content" and b"access-control-allow-origin: *" in lines


async def test_plain_hits_on_a_keep_alive_connection_are_answered_by_the_protocol(server, stores, tenant):
    port, asgi, app = server.port, server.asgi, server.app
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):
        writer.write(post(tenant.site_id))
        [head] = await answers(reader, 1)
        assert is_204(head), head
        assert b"content-length" not in head.lower() and b"server: uvicorn" in head.lower()
    writer.write(post(tenant.site_id, chunks=[b'{"site_id": "' + tenant.site_id.encode(), b'", "url": "' + PAGE.encode() + b'"}']))
    assert is_204((await answers(reader, 1))[0])
    writer.close()
    await app.state.intake.settle()
    assert asgi == [], "none went through the ASGI app"
    assert await stream_length(stores) == 4


async def test_a_pipelined_hit_waits_its_turn_and_goes_through_the_app(server, stores, tenant):
    port, asgi, app = server.port, server.asgi, server.app
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + post(tenant.site_id) + post(tenant.site_id))
    first, second, third = await answers(reader, 3)
    assert first.startswith(b"HTTP/1.1 200") and is_204(second) and is_204(third)
    writer.close()
    await app.state.intake.settle()
    assert await stream_length(stores) == 2
    assert asgi, "a hit behind a request in flight is answered in order, by the app"


@pytest.mark.parametrize("case", ["query string", "expect 100-continue", "http/1.0", "connection: close",
                                  "queue past high water"])
async def test_hits_that_are_not_plain_go_on_to_the_app(server, stores, tenant, monkeypatch, case):
    port, asgi, app = server.port, server.asgi, server.app
    request = {
        "query string": post(tenant.site_id, path="/collect?x=1"),
        "expect 100-continue": post(tenant.site_id, extra="Expect: 100-continue\r\n"),
        "http/1.0": post(tenant.site_id, version="1.0", extra="Connection: keep-alive\r\n"),
        "connection: close": post(tenant.site_id, extra="Connection: close\r\n"),
        "queue past high water": post(tenant.site_id),
    }[case]
    if case == "queue past high water":
        monkeypatch.setattr(protocol, "HIGH_WATER", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await asyncio.wait_for(reader.read(4096), 5)
    if case == "expect 100-continue" and head.startswith(b"HTTP/1.1 100"):
        head = head.split(b"\r\n\r\n", 1)[1] or await asyncio.wait_for(reader.read(4096), 5)
    assert head.split(b"\r\n")[0].endswith(b"204 No Content"), head
    writer.close()
    await app.state.intake.settle()
    assert asgi == [1]
    assert await stream_length(stores) == 1


async def test_a_body_past_the_limit_is_dropped_and_the_connection_goes_on(server, stores, tenant, monkeypatch):
    port, asgi, app = server.port, server.asgi, server.app
    outcomes = counted(monkeypatch)
    limit = stores.settings.collect_max_body_bytes
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    big = orjson.dumps({"site_id": tenant.site_id, "url": PAGE, "pad": "x" * limit})
    writer.write(post(tenant.site_id, chunks=[big[:limit // 2], big[limit // 2:]]))  # no declared length
    writer.write(post(tenant.site_id, body=big))  # declared
    writer.write(post(tenant.site_id))
    assert all(is_204(head) for head in await answers(reader, 3))
    writer.close()
    await app.state.intake.settle()
    assert asgi == []
    assert outcomes.get("too_large") == 2
    assert await stream_length(stores) == 1


async def test_an_idle_connection_after_a_hit_is_closed_as_after_any_request(server, tenant):
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post(tenant.site_id))
    assert is_204((await answers(reader, 1))[0])
    assert await asyncio.wait_for(reader.read(), 5) == b"", "closed after the keep-alive timeout (1 s here)"
    writer.close()


async def test_a_request_after_a_hit_in_the_same_data_does_not_run_under_the_keep_alive_timer(server, stores, tenant):
    port, asgi = server.port, server.asgi
    server.delays[b"slow"] = 1.5  # the keep-alive timeout is 1 s
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post(tenant.site_id) + post(tenant.site_id, path="/collect?slow"))
    assert all(is_204(head) for head in await answers(reader, 2)), "answered, not cut off by the timer"
    writer.close()
    assert asgi == [1]


async def test_a_client_not_reading_its_answers_is_answered_through_the_app(server, stores, tenant):
    port, asgi, app = server.port, server.asgi, server.app
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post(tenant.site_id))
    assert is_204((await answers(reader, 1))[0])
    [protocol_of_client] = server.running.server_state.connections
    protocol_of_client.flow.pause_writing()  # as the transport does when its buffer is full
    writer.write(post(tenant.site_id))
    await until(lambda: asgi)
    protocol_of_client.flow.resume_writing()
    assert is_204((await answers(reader, 1))[0])
    writer.close()
    await app.state.intake.settle()
    assert asgi == [1] and await stream_length(stores) == 2


async def test_a_hit_is_sampled_for_tracing_once(server, stores, tenant, monkeypatch):
    port, asgi = server.port, server.asgi
    draws, spans = [], []
    monkeypatch.setattr(telemetry, "collect_sampled", lambda: draws.append(1) or len(draws) == 2)
    monkeypatch.setattr(telemetry, "collect_span", lambda **attributes: spans.append(attributes) or nullcontext())
    monkeypatch.setattr(telemetry, "traceparent", lambda: None)
    monkeypatch.setattr(telemetry, "COLLECT_DURATION", SimpleNamespace(record=lambda seconds: None))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):
        writer.write(post(tenant.site_id))
        assert is_204((await answers(reader, 1))[0])
    writer.close()
    assert len(draws) == 3, "one draw per hit, none again in the app"
    assert asgi == [1] and len(spans) == 1, "the sampled one went to the app for its span"


async def test_a_stopping_server_answers_and_stores_a_hit_still_arriving(server, stores, tenant):
    port, app = server.port, server.app
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = post(tenant.site_id)
    writer.write(request[:-10])
    await asyncio.sleep(0.2)
    server.running.should_exit = True
    await asyncio.sleep(0.3)
    writer.write(request[-10:])
    head = (await answers(reader, 1))[0]
    assert is_204(head) and b"connection: close" in head.lower()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await asyncio.wait_for(server.task, 10)
    await app.state.intake.settle()
    assert await stream_length(stores) == 1


async def test_a_client_gone_in_the_middle_of_its_hit_is_counted(server, stores, tenant, monkeypatch):
    outcomes = counted(monkeypatch)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(post(tenant.site_id)[:-10])
    await asyncio.sleep(0.2)
    writer.close()
    await until(lambda: outcomes)
    assert outcomes == {"malformed": 1}
    assert await stream_length(stores) == 0


async def test_a_declared_body_past_the_limit_is_refused_unread(server, stores, tenant, monkeypatch):
    outcomes = counted(monkeypatch)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    limit = stores.settings.collect_max_body_bytes
    writer.write(f"POST /collect HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {limit + 1}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert is_204(head), "no 100 Continue: the body is not asked for"
    writer.close()
    assert outcomes == {"too_large": 1}


def test_on_a_uvicorn_it_was_not_tested_with_the_app_answers_every_hit(stores, monkeypatch):
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    assert http_protocol(create_app(stores)) == "auto"
