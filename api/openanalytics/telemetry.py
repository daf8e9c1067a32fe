"""OpenTelemetry: traces, metrics and log correlation, set up from the standard OTEL_* variables.

Nothing is set up unless an exporter is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the
per-signal `..._TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`) or `OA_PROMETHEUS_PORT` is set,
and never with `OTEL_SDK_DISABLED=true`: then the instruments below are the API's no-ops
and no library is instrumented. Sampling defaults to parentbased_traceidratio at 0.1
(`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` change it); /collect traces 1 in 100 of
its requests, or at most what the sampler keeps (`OA_COLLECT_TRACE_RATIO` sets it).
"""

from __future__ import annotations

import logging
import os
import random
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from openanalytics.logs import redact_path

log = logging.getLogger(__name__)

TRACER = trace.get_tracer("openanalytics")
METER = metrics.get_meter("openanalytics")
DEFAULT_SAMPLE_RATIO = 0.1
# /collect is most of the traffic and its traces all look alike: 1 in 100 is plenty, and
# exporting 1 in 10 costs it about a tenth of its throughput (benchmarks/telemetry_collect.py).
COLLECT_SAMPLE_RATIO = 0.01
MAX_LINKS = 128  # links from one flush span to the requests it stores

# -- the metrics (names and units are documented in the README) ---------------------------

# /collect counts in a plain dict (the hot path pays a dict increment), reported at export.
collect_outcomes: dict[str, int] = {}


def count_collect(outcomes: list[str]) -> None:
    for outcome in outcomes:
        collect_outcomes[outcome] = collect_outcomes.get(outcome, 0) + 1


def _observe_collect(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(n, {"outcome": outcome}) for outcome, n in list(collect_outcomes.items())]


METER.create_observable_counter(
    "oa.collect.events", callbacks=[_observe_collect], unit="{event}",
    description="Browser events at /collect by outcome (accepted or the reason).")
COLLECT_DURATION = METER.create_histogram(
    "oa.collect.duration", unit="s", description="Time to read, queue and answer a /collect request (the sampled ones).")
SERVER_EVENTS = METER.create_counter(
    "oa.events.server", unit="{event}", description="Server-side events by outcome (accepted, replayed, rejected, unavailable, overloaded, unconfirmed).")
INGEST_LAG = METER.create_histogram(
    "oa.ingest.lag", unit="s", description="From an event's arrival to its insert into ClickHouse.")
FLUSH_SIZE = METER.create_histogram("oa.flush.size", unit="{event}", description="Events per project insert.")
FLUSH_DURATION = METER.create_histogram("oa.flush.duration", unit="s", description="Time to store one batch.")
CLICKHOUSE_INSERT_ERRORS = METER.create_counter(
    "oa.clickhouse.insert.errors", unit="{error}", description="Failed ClickHouse inserts (refused: ClickHouse said no).")
RATE_LIMITED = METER.create_counter(
    "oa.api.rate_limited", unit="{request}", description="API requests refused with 429, by plan.")
PRIVACY_REQUESTS = METER.create_counter(
    "oa.privacy.requests", unit="{request}", description="Privacy requests by kind and status reached.")
RECONCILES = METER.create_counter(
    "oa.operator.reconciles", unit="{reconcile}", description="Operator reconciles by outcome.")
RECONCILE_DURATION = METER.create_histogram(
    "oa.operator.reconcile.duration", unit="s", description="Time of one operator reconcile.")

_stream_length: dict[str, int] = {}


def set_stream_length(stream: str, length: int) -> None:
    """The worker's latest reading, reported by the observable gauge."""
    _stream_length[stream] = length


def _observe_stream(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(length, {"stream": stream}) for stream, length in _stream_length.items()]


METER.create_observable_gauge(
    "oa.ingest.stream.length", callbacks=[_observe_stream], unit="{event}",
    description="Events waiting in the ingest stream (read by the worker).")

_intakes: weakref.WeakSet = weakref.WeakSet()  # this process's /collect intakes (tests make several)


def watch_collect_intake(intake) -> None:
    """Report `intake`'s queue (its `queued` requests and `held` bytes) while it lives."""
    _intakes.add(intake)


METER.create_observable_gauge(
    "oa.collect.queued", callbacks=[lambda options: [Observation(sum(i.queued for i in list(_intakes)))]],
    unit="{request}", description="/collect requests answered and waiting for the processor, in this process.")
METER.create_observable_gauge(
    "oa.collect.held", callbacks=[lambda options: [Observation(sum(i.held for i in list(_intakes)))]],
    unit="By", description="Bytes of /collect requests answered but not yet stored, in this process.")

# -- set-up ----------------------------------------------------------------------------------

_enabled = False
_kept_tracer = None  # keeps every span it starts: for /collect's own picks and linked flushes
_collect_ratio = 0.0
_tracing = False  # a span exporter is configured (not only Prometheus)
_random = random.random


def enabled() -> bool:
    return _enabled


def wanted(settings) -> bool:
    """Whether the environment asks for telemetry."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return settings.prometheus_port is not None or _signal_configured("traces") or _signal_configured("metrics")


def _otlp(signal: str):
    protocol = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
                              os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc import metric_exporter, trace_exporter
    elif protocol in ("http/protobuf", "http/json"):
        from opentelemetry.exporter.otlp.proto.http import metric_exporter, trace_exporter
    else:
        raise ValueError(f"unsupported OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: use grpc or http/protobuf")
    return trace_exporter.OTLPSpanExporter() if signal == "traces" else metric_exporter.OTLPMetricExporter()


def configure(service: str, settings=None, *, span_exporter=None, metric_readers: list | None = None) -> bool:
    """Install the SDK for this process once; exporters from the environment unless given (tests).

    Returns whether telemetry is on."""
    global _enabled, _kept_tracer, _collect_ratio, _tracing
    if _enabled:
        return True
    if settings is None:
        from openanalytics.config import get_settings

        settings = get_settings()
    if span_exporter is None and metric_readers is None and not wanted(settings):
        return False
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    # The stable HTTP conventions: http.server.request.duration in seconds by http.route.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    resource = Resource.create(attributes)
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(TraceIdRatioBased(DEFAULT_SAMPLE_RATIO))
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    readers = list(metric_readers or [])
    if span_exporter is None and metric_readers is None:
        if _signal_configured("traces"):
            span_exporter = _otlp("traces")
        if _signal_configured("metrics"):
            readers.append(PeriodicExportingMetricReader(_otlp("metrics")))
        if settings.prometheus_port is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server

            start_http_server(settings.prometheus_port, addr=settings.prometheus_host)
            readers.append(PrometheusMetricReader())
    # /collect decides its sampling itself, before any OpenTelemetry call: an unsampled hit pays
    # one random() and no span. Its sampled spans go through a provider that keeps them all.
    _collect_ratio = settings.collect_trace_ratio
    if _collect_ratio is None:
        _collect_ratio = min(_root_ratio(tracer_provider.sampler), COLLECT_SAMPLE_RATIO)
    kept_provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
    for provider in (tracer_provider, kept_provider):
        provider.add_span_processor(Redact())  # before export: no client address, User-Agent or user id
    if span_exporter is not None:
        processor = BatchSpanProcessor(span_exporter)
        tracer_provider.add_span_processor(processor)
        kept_provider.add_span_processor(processor)
    _tracing = span_exporter is not None
    _kept_tracer = kept_provider.get_tracer("openanalytics")
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    _instrument_clients()
    _enabled = True
    log.info("telemetry on", extra={"service": service, "metric_readers": len(readers),
                                    "traces": span_exporter is not None})
    return True


def _root_ratio(sampler) -> float:
    """The share of root spans `sampler` keeps (browsers send no trace context to /collect)."""
    from opentelemetry.sdk.trace.sampling import ParentBased, StaticSampler, TraceIdRatioBased

    root = getattr(sampler, "_root", sampler) if isinstance(sampler, ParentBased) else sampler
    if isinstance(root, TraceIdRatioBased):
        return root.rate
    if isinstance(root, StaticSampler):
        return 1.0 if root.get_description() == "AlwaysOnSampler" else 0.0
    return DEFAULT_SAMPLE_RATIO


def collect_sampled() -> bool:
    """Whether this /collect request gets a span (and its duration recorded)."""
    return _tracing and _random() < _collect_ratio


@contextmanager
def _span(tracer, name: str, **options: Any) -> Iterator[Any]:
    """A current span that records a failure by its type only: an exception's text can quote a statement's
    parameters or a server's URL (a privacy request's user id, say), which no trace may carry."""
    with tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False,
                                      **options) as current:
        try:
            yield current
        except Exception as exc:
            current.set_attribute("error.type", type(exc).__qualname__)
            current.set_status(Status(StatusCode.ERROR))
            raise


def collect_span(**attributes: Any):
    return _span(_kept_tracer, "collect", kind=SpanKind.SERVER, attributes=attributes)


def linked_span(name: str, parents: list[str], **attributes: Any):
    """A span linked to the requests it serves, kept whenever any of them was sampled (their
    traces would otherwise point nowhere), else sampled like any root span."""
    found = links(parents)
    tracer = _kept_tracer if found else TRACER
    return _span(tracer, name, links=found, attributes=attributes)


def _signal_configured(signal: str) -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"))


def _instrument_clients() -> None:
    """Client spans for every Redis call and for SQL on engines created from now on (the CLI
    configures telemetry before it opens the stores); ClickHouse calls are spanned by EventStore."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    RedisInstrumentor().instrument()
    # Its declared range stops at SQLAlchemy 2.0; it hooks engine events, which 2.1 keeps (tested).
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True)


def instrument_app(app) -> None:
    """HTTP server spans and latency by route and status for the FastAPI app (if telemetry is on)."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # The hook runs after the middleware set its attributes: the scrubbing is the last word.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz", server_request_hook=scrub)


# -- helpers for the code paths ------------------------------------------------------------


def traceparent() -> str | None:
    """The current span as a W3C traceparent, if it is sampled (carried in stream entries)."""
    if not _tracing:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-01"


def links(parents: Iterable[str]) -> list[Link]:
    """Links to the (sampled) requests whose traceparents are given, at most MAX_LINKS."""
    found = []
    for parent in parents:
        try:
            _, trace_id, span_id, _ = parent.split("-")
            found.append(Link(SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                          trace_flags=TraceFlags(TraceFlags.SAMPLED))))
        except (ValueError, AttributeError):
            continue
        if len(found) == MAX_LINKS:
            break
    return found


@contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Iterator[Any]:
    """A span when telemetry is on; nothing (not even the API's no-op) when it is off."""
    if not _enabled:
        yield None
        return
    with _span(TRACER, name, kind=kind, attributes=attributes) as current:
        yield current


_PERSONAL = ("client.address", "client.port", "net.peer.ip", "http.client_ip", "user_agent.original",
             "http.user_agent", "network.peer.address")
_PATHS = ("url.path", "http.target", "http.url", "url.full")


def scrub(span, scope=None) -> None:
    """Replace personal attributes of a (recording) span; also the ASGI server hook's signature."""
    if not span.is_recording():
        return
    attributes = span.attributes or {}
    for key in _PERSONAL:
        if key in attributes:
            span.set_attribute(key, "redacted")
    for key in _PATHS:  # decoded paths (the ASGI instrumentation builds even URLs from them): all of the rest
        value = attributes.get(key)
        if isinstance(value, str) and "/privacy/user/" in value:
            span.set_attribute(key, redact_path(value))
    if "/privacy/user/" in span.name:
        span.update_name(redact_path(span.name))


class Redact(SpanProcessor):
    """Keeps personal data out of traces: the client's address and User-Agent, and the user
    id in privacy URLs (ids a deletion request asked us to forget)."""

    def on_start(self, span, parent_context=None) -> None:
        scrub(span)

    def on_end(self, span) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class Timer:
    """Seconds since creation, for the duration histograms."""

    __slots__ = ("start",)

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
