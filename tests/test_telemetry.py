"""Traces, metrics and logs, read back from in-memory exporters.

The SDK is installed once per process; this module installs it with every trace sampled
(`always_on`) so each step is visible. Processes that configure nothing get nothing: that
is checked in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import kopf
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from openanalytics import logs, telemetry
from openanalytics.app import create_app
from openanalytics.config import Settings
from openanalytics.ingest.intake import HELD_OVERHEAD
from openanalytics.projects.models import Project
from openanalytics.runtime import Stores
from openanalytics.stores.sql import Database
from tests.conftest import BROWSER
from tests.helpers import HeldRedis
from tests.test_events_api import SEED_EVENT
from tests.test_processes import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
SPANS = InMemorySpanExporter()
METRICS = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def telemetry_on():
    previous = os.environ.get("OTEL_TRACES_SAMPLER")
    os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    try:
        assert telemetry.configure("openanalytics-test", Settings(collect_trace_ratio=1),
                                   span_exporter=SPANS, metric_readers=[METRICS])
    finally:
        if previous is None:
            os.environ.pop("OTEL_TRACES_SAMPLER")
        else:
            os.environ["OTEL_TRACES_SAMPLER"] = previous
    yield


@pytest.fixture
def spans():
    """The spans finished during the test."""
    SPANS.clear()

    def read():
        trace.get_tracer_provider().force_flush()
        return SPANS.get_finished_spans()

    return read


@pytest.fixture
def app(stores):
    """Built after the SDK is installed, as the CLI does: an instrumented app and a fresh engine."""
    fresh = Stores(stores.settings, Database(stores.db.engine.url.render_as_string(hide_password=False)),
                   stores.redis, stores.events)
    yield create_app(fresh)
    fresh.db.dispose()


def points(name: str) -> list:
    """Data points of one metric, all attribute sets."""
    found = []
    data = METRICS.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def total(name: str, **attributes) -> float:
    """Counter sum (or histogram count) over the points carrying these attributes."""
    value = 0.0
    for point in points(name):
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            value += getattr(point, "value", None) if hasattr(point, "value") else point.count
    return value


def named(spans, name: str) -> list:
    return [s for s in spans if s.name == name]


async def test_a_collect_request(client, tenant, spans):
    before = total("oa.collect.events", outcome="accepted")
    bots = total("oa.collect.events", outcome="bot")
    body = {"site_id": tenant.site_id, "url": "https://shop.example/pricing"}
    assert (await client.post("/collect", json=body)).status_code == 204
    assert (await client.post("/collect", json=body, headers={"User-Agent": "Googlebot/2.1"})).status_code == 204
    assert (await client.post("/collect", json={"site_id": "site_0000000000000000"})).status_code == 204
    assert total("oa.collect.events", outcome="accepted") == before + 1
    assert total("oa.collect.events", outcome="bot") == bots + 1
    assert total("oa.collect.events", outcome="unknown_site") >= 1
    assert total("oa.collect.duration") >= 3
    collect = named(spans(), "collect")
    assert len(collect) == 3 and collect[0].attributes["http.route"] == "/collect"
    server = {s.context.span_id: s for s in spans() if s.kind == trace.SpanKind.SERVER}
    assert all(c.parent.span_id in server for c in collect)  # under the app's server span here


async def test_a_server_side_event_and_its_flush(client, tenant, worker, spans, stores):
    accepted = total("oa.events.server", outcome="accepted")
    sent = await client.post(f"/v1/projects/{tenant.id}/events", headers=tenant.headers, json=SEED_EVENT)
    assert sent.status_code == 202
    assert total("oa.events.server", outcome="accepted") == accepted + 1
    rejected = total("oa.events.server", outcome="rejected")
    bad = await client.post(f"/v1/projects/{tenant.id}/events", headers=tenant.headers, json=[{}, {}])
    assert bad.status_code == 400
    assert total("oa.events.server", outcome="rejected") == rejected + 2

    request = next(s for s in spans() if s.kind == trace.SpanKind.SERVER
                   and s.attributes.get("http.response.status_code") == 202)
    assert request.attributes.get("http.route") == "/v1/projects/{project_id}/events"
    redis_calls = [s for s in spans() if s.attributes.get("db.system") == "redis"
                   and s.context.trace_id == request.context.trace_id]
    assert redis_calls, "the XADD to the ingest stream is a child span of the request"

    sizes = total("oa.flush.size")
    await worker.flusher.ensure_group()
    assert await worker.flusher.run_once() >= 1
    flush = named(spans(), "ingest.flush")[-1]
    assert flush.attributes["oa.batch.size"] >= 1 and flush.attributes["oa.batch.projects"] >= 1
    assert request.context.trace_id in {link.context.trace_id for link in flush.links}  # back to the request
    inserts = [s for s in spans() if s.name == "clickhouse insert" and s.parent
               and s.parent.span_id == flush.context.span_id]
    assert inserts and inserts[0].attributes["db.system.name"] == "clickhouse" and inserts[0].attributes["oa.rows"] >= 1
    assert total("oa.flush.size") > sizes and total("oa.flush.duration") >= 1 and total("oa.ingest.lag") >= 1
    assert all(p.min >= 0 for p in points("oa.ingest.lag"))


async def test_a_query_is_traced_to_clickhouse_with_its_latency_by_route(client, tenant, worker, spans):
    await worker.provision()
    answer = await client.get(f"/v1/projects/{tenant.id}/stats?from=2026-11-01&to=2026-11-02", headers=tenant.headers)
    assert answer.status_code == 200
    server = next(s for s in spans() if s.kind == trace.SpanKind.SERVER and "stats" in s.name)
    queries = [s for s in spans() if s.name == "clickhouse rows" and s.context.trace_id == server.context.trace_id]
    assert queries and "SELECT" in queries[0].attributes["db.query.text"]
    sql = [s for s in spans() if s.attributes.get("db.system") in ("sqlite", "postgresql")
           and s.context.trace_id == server.context.trace_id]
    assert sql, "the key lookup reaches the control plane inside the request's trace"
    latency = [p for p in points("http.server.request.duration")
               if p.attributes.get("http.route") == "/v1/projects/{project_id}/stats"]
    assert latency and any(p.attributes.get("http.response.status_code") == 200 for p in latency)


async def test_rate_limit_rejections_by_plan(client, make_tenant, stores):
    tenant = make_tenant(plan="pro")
    with stores.db.session() as session:
        session.get(Project, tenant.id).api_requests_per_minute = 1
    before = total("oa.api.rate_limited", plan="pro")
    statuses = [(await client.get("/v1/projects", headers=tenant.headers)).status_code for _ in range(2)]
    assert statuses == [200, 429]
    assert total("oa.api.rate_limited", plan="pro") == before + 1


async def test_a_privacy_deletion(client, make_tenant, worker, spans):
    tenant = make_tenant(scopes=["privacy:delete", "events:write"])
    await worker.provision()
    queued = total("oa.privacy.requests", kind="delete", status="queued")
    done = total("oa.privacy.requests", kind="delete", status="completed")
    # An id a path can carry (encoded) whose decoded form has what ends a URL or a word: none of it may show.
    answer = await client.request("DELETE", f"/v1/projects/{tenant.id}/privacy/user/u-42%2Fo%27neil%20x%3Fy%23z",
                                  headers=tenant.headers)
    assert answer.status_code == 202, answer.text
    assert await worker.forget()
    # forget() also carries out requests other tests left queued in the shared control plane.
    assert total("oa.privacy.requests", kind="delete", status="queued") == queued + 1
    assert total("oa.privacy.requests", kind="delete", status="completed") >= done + 1
    deletion = next(s for s in named(spans(), "privacy.delete") if s.attributes["oa.project.id"] == tenant.id)
    assert deletion.attributes["oa.status"] == "completed"
    everything = json.dumps([{"name": s.name, **dict(s.attributes)} for s in spans()])
    for personal in ("u-42", "neil", "x?y", "y#z", "203.0.113.7", BROWSER):  # user id, client address, User-Agent
        assert personal not in everything, everything[max(0, everything.find(personal) - 300):][:600]
    assert "/privacy/user/{user_id}" in everything
    children = {s.name.split()[0] for s in spans() if s.parent and s.parent.span_id == deletion.context.span_id}
    assert {"clickhouse", "redis"} <= {name.lower() for name in children} | {
        "redis" for s in spans() if s.attributes.get("db.system") == "redis"
        and s.parent and s.parent.span_id == deletion.context.span_id}, children


async def test_a_failing_store_call_is_traced_by_its_error_type_not_its_text(stores, spans):
    """An exception's text can quote a statement's parameters (a user id) or a server's URL."""
    with pytest.raises(ValueError):
        with telemetry.span("privacy.delete"):
            raise ValueError("param_user=u-43 at http://default:pw@ch.internal:8123/")
    failed = named(spans(), "privacy.delete")[-1]
    assert failed.attributes["error.type"] == "ValueError" and failed.status.status_code == trace.StatusCode.ERROR
    everything = json.dumps([{"name": s.name, **dict(s.attributes), "events": [dict(e.attributes) for e in s.events],
                              "status": s.status.description} for s in spans()])
    assert "u-43" not in everything and "ch.internal" not in everything


async def test_an_operator_reconcile(stores, spans, monkeypatch):
    from openanalytics_operator import handlers

    memo = kopf.Memo(stores=stores)
    body = {"apiVersion": "openanalytics.io/v1alpha1", "kind": "AnalyticsProject",
            "metadata": {"name": "shop", "namespace": "web", "uid": "0f5c3d0e-6a53-4a5e-9d5b-31f0c2a4e111",
                         "generation": 1}}
    before = total("oa.operator.reconciles", outcome="invalid")
    patch = kopf.Patch()
    await handlers._reconcile(body, {"plan": "gold"}, body["metadata"], "shop", "web", body["metadata"]["uid"], {},
                              patch, memo, quiet=True)
    assert patch["status"]["phase"] == "Invalid"
    assert total("oa.operator.reconciles", outcome="invalid", trigger="drift") == before + 1
    span = named(spans(), "operator.reconcile")[-1]
    assert span.attributes["oa.outcome"] == "invalid" and span.attributes["k8s.namespace.name"] == "web"

    def down(*args, **kwargs):
        raise ConnectionError("control plane unreachable")

    monkeypatch.setattr(handlers.tenants, "apply", down)  # a store outage, as the operator meets it
    with pytest.raises(kopf.TemporaryError):
        await handlers._reconcile(body, {"plan": "pro"}, body["metadata"], "shop", "web", body["metadata"]["uid"], {},
                                  kopf.Patch(), memo, quiet=True)
    assert total("oa.operator.reconciles", outcome="pending", trigger="drift") >= 1
    assert total("oa.operator.reconcile.duration", outcome="pending") >= 1


async def test_the_stream_length_gauge_comes_from_the_worker(stores, worker):
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(1.5)
    stop.set()
    await task
    lengths = points("oa.ingest.stream.length")
    assert any(p.attributes.get("stream") == stores.settings.stream_key for p in lengths)


async def test_the_collect_queue_gauges_show_what_waits(app, tenant, monkeypatch):
    held = HeldRedis(monkeypatch)
    body = orjson.dumps({"site_id": tenant.site_id, "url": "https://shop.example/"})
    transport = httpx.ASGITransport(app=app, client=("198.51.100.4", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers={"User-Agent": BROWSER}) as http:
        for _ in range(3):
            await http.post("/collect", content=body)
        [held_bytes] = points("oa.collect.held")
        assert held_bytes.value == 3 * (len(body) + HELD_OVERHEAD), "three requests held while Redis is slow"
        held.release.set()
        await app.state.intake.settle()
    [queued], [held_bytes] = points("oa.collect.queued"), points("oa.collect.held")
    assert queued.value == 0 and held_bytes.value == 0


# -- logs --------------------------------------------------------------------------------------


@contextmanager
def captured(logger: logging.Logger) -> Iterator[io.StringIO]:
    """What `logger` writes through the product's JSON handler."""
    out = io.StringIO()
    handler = logs.handler("json", out)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_log_lines_are_json_with_the_trace_and_no_key():
    logger = logging.getLogger("openanalytics.test")
    with captured(logger) as out, telemetry.span("work") as current:
        logger.warning("key %s leaked", "oa_live_abcdefghijklmnopqrstuv", extra={"project_id": "prj_1"})
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["message"] == "key oa_live_[redacted] leaked"
    assert line["level"] == "WARNING" and line["logger"] == "openanalytics.test" and line["project_id"] == "prj_1"
    assert line["trace_id"] == f"{current.get_span_context().trace_id:032x}"
    assert line["span_id"] == f"{current.get_span_context().span_id:016x}"


def test_kopf_object_log_lines_stay_json():
    """kopf's object loggers attach their settings (not serialisable) and object reference."""
    logger = logging.getLogger("kopf.objects.test")
    with captured(logger) as out:
        logger.info("Handler succeeded", extra={"settings": kopf.OperatorSettings(), "k8s_skip": False,
                                                "k8s_ref": {"name": "shop"}})
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["message"] == "Handler succeeded" and "settings" not in line


async def test_no_key_ip_or_user_agent_in_any_log_line(client, make_tenant, worker, stores, caplog):
    """A day in the life at DEBUG level, every line captured and grepped."""
    tenant = make_tenant(scopes=["keys:manage", "privacy:delete", "events:write", "stats:read", "projects:read"])
    caplog.set_level(logging.DEBUG)
    secret_user_agent = "Mozilla/5.0 (X11; Linux x86_64) SecretBrowser/9.9.9"
    with captured(logging.getLogger()) as out:
        made = await client.post(f"/v1/projects/{tenant.id}/keys", headers=tenant.headers, json={"name": "extra"})
        new_key = made.json().get("secret", "")
        await client.post("/collect", json={"site_id": tenant.site_id, "url": "https://shop.example/"},
                          headers={"User-Agent": secret_user_agent})
        await client.get("/v1/projects", headers={"Authorization": "Bearer oa_live_WrongWrongWrongWrongWrong"})
        await client.post(f"/v1/projects/{tenant.id}/events", headers=tenant.headers, json=SEED_EVENT)
        await client.post(f"/v1/projects/{tenant.id}/events", headers=tenant.headers, content=b"{not json")
        await client.request("DELETE", f"/v1/projects/{tenant.id}/privacy/user/u-7", headers=tenant.headers)
        await worker.flusher.ensure_group()
        await worker.flusher.run_once()
        await worker.forget()
    text = out.getvalue() + "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert text.strip(), "nothing was logged: the check would prove nothing"
    for secret in (tenant.secret, new_key, "oa_live_WrongWrongWrongWrongWrong", "203.0.113.7", secret_user_agent,
                   "SecretBrowser", BROWSER):
        assert secret and secret not in text, f"{secret[:16]}... appears in the logs"


# -- processes: nothing configured, and the Prometheus option ---------------------------------


def test_nothing_configured_means_nothing_installed():
    code = (
        "import os\n"
        "from openanalytics import telemetry\n"
        "from openanalytics.app import create_app\n"
        "from openanalytics.config import Settings\n"
        "from openanalytics.runtime import Stores\n"
        "from opentelemetry import trace, metrics\n"
        "from opentelemetry.instrumentation.redis import RedisInstrumentor\n"
        "assert not telemetry.configure('x')\n"
        "app = create_app(Stores.open(Settings()))\n"
        "assert not getattr(app, '_is_instrumented_by_opentelemetry', False)\n"
        "assert not RedisInstrumentor().is_instrumented_by_opentelemetry\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "os.environ['OTEL_EXPORTER_OTLP_ENDPOINT'] = 'http://127.0.0.1:9'\n"
        "os.environ['OTEL_SDK_DISABLED'] = 'true'\n"
        "assert not telemetry.configure('x')\n"
        "print('off')\n"
    )
    env = {k: v for k, v in clean_env().items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], env={**env, "OA_DATA_DIR": "/tmp/oa-telemetry-off"},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "off", done.stderr
    assert "Traceback" not in done.stderr and "rror" not in done.stderr


def test_prometheus_scrape_endpoint(tmp_path):
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in clean_env().items() if not k.startswith("OTEL_")}
    env.update(OA_DATA_DIR=str(tmp_path / "data"), OA_PROMETHEUS_PORT=str(metrics_port), OA_PROMETHEUS_HOST="127.0.0.1")
    log = tmp_path / "standalone.log"
    proc = subprocess.Popen([sys.executable, "-m", "openanalytics.cli", "standalone", "--port", str(port)], env=env,
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        httpx.post(f"http://127.0.0.1:{port}/collect", json={"site_id": "site_0000000000000000"})
        counted = re.compile(r'^oa_collect_events_total\{[^}]*outcome="unknown_site"[^}]*\} 1\.0$', re.M)
        deadline = time.monotonic() + 10  # /collect answers first and counts when the hit is processed
        while not counted.search(scraped := httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text):
            assert time.monotonic() < deadline, [line for line in scraped.splitlines() if line.startswith("oa_")]
            time.sleep(0.05)
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert any(line["message"] == "telemetry on" for line in lines)  # JSON lines, from the start
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize(("protocol", "module"), [("grpc", "grpc"), ("http/protobuf", "http")])
def test_otlp_protocol_from_the_environment(monkeypatch, protocol, module):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    for signal in ("traces", "metrics"):
        exporter = telemetry._otlp(signal)
        assert f"opentelemetry.exporter.otlp.proto.{module}." in type(exporter).__module__
        exporter.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(ValueError, match="unsupported"):
        telemetry._otlp("traces")


def test_bad_telemetry_settings_are_refused_by_name():
    from pydantic import ValidationError

    for bad in ({"collect_trace_ratio": 2}, {"collect_trace_ratio": -0.1}, {"prometheus_port": 0}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            Settings(**bad)
