"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["Health"])

CHECK_TIMEOUT_SECONDS = 3.0


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})
    status: str


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ok", "checks": {"database": "ok", "redis": "ok", "clickhouse": "ok"},
                          "warnings": [],
                          "ingest": {"queued_events": 12, "max_queued_events": 1000000, "aof": True,
                                     "appendfsync": "everysec", "maxmemory_policy": "noeviction",
                                     "maxmemory": 419430400, "used_memory": 2311520, "memory_share": 0.0055}}]
        }
    )
    status: str = Field(description="ok, degraded (Redis or ClickHouse down: still in service) or unavailable.")
    checks: dict[str, str] = Field(description="Per store (and worker in standalone): ok or the error's type.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What keeps Redis from keeping a 202's promise (AOF off, keys evicted), and a full ingest queue.")
    ingest: dict[str, object] | None = Field(
        default=None, description="The ingest queue and its Redis's durability settings (null in embedded mode "
                                  "or while Redis is down).")


@router.get("/healthz", summary="Liveness: the process answers", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


async def _check(coro) -> str:
    try:
        await asyncio.wait_for(coro, CHECK_TIMEOUT_SECONDS)
        return "ok"
    except Exception as exc:  # the reason is for operators; no secrets are in these errors
        return f"error: {type(exc).__name__}"


@router.get(
    "/readyz",
    summary="Readiness: the stores answer",
    description=(
        "503 when PostgreSQL/SQLite fails (or, in standalone, the worker). A failing Redis or ClickHouse "
        "makes the status `degraded` but keeps 200, so pods stay in service: without ClickHouse events "
        "still queue and queries fail; without Redis queries work, rate limits are not enforced, "
        "server-side events answer 503 and /collect holds hits for a while. `checks` says which store "
        "failed. `warnings` says what keeps Redis from keeping a 202's promise (AOF off, keys evicted) or "
        "that the ingest queue is full. Meant for probes: keep it off the public ingress if its details "
        "should not be public."
    ),
    response_model=Readiness,
    responses={503: {"description": "Not ready.", "model": Readiness}},
)
async def readyz(request: Request) -> JSONResponse:
    stores = request.app.state.stores
    watch, ingest = request.app.state.redis_watch, {}

    async def redis_check() -> None:
        await stores.redis.ping()
        if not watch.embedded:
            facts = await watch.refresh()
            queued = await stores.redis.xlen(stores.settings.stream_key)
            ingest.update(queued_events=queued, max_queued_events=stores.settings.ingest_max_queued, **facts.details())

    checks = dict(
        zip(
            ("database", "redis", "clickhouse"),
            await asyncio.gather(
                _check(run_in_threadpool(stores.db.ping)),
                _check(redis_check()),
                _check(stores.events.run(stores.events.ping)),
            ),
        )
    )
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:  # standalone: the in-process worker is part of being ready
        checks["worker"] = "ok" if worker.healthy else f"error: failing ({worker.failures} attempts)"
    # Only what every request needs decides readiness. Without Redis or ClickHouse a pod still serves
    # what it can (events queue through a ClickHouse outage; queries without Redis): taking every pod
    # out of its Service then would turn one store's outage into the whole API's.
    ready = all(checks[name] == "ok" for name in checks if name not in ("redis", "clickhouse"))
    degraded = checks["redis"] != "ok" or checks["clickhouse"] != "ok"
    status = "unavailable" if not ready else "degraded" if degraded else "ok"
    warnings = watch.facts.warnings() if ingest and watch.facts is not None else []
    if ingest and (ingest["queued_events"] >= ingest["max_queued_events"] or watch.memory_full):
        warnings.append("the ingest queue is full: server-side events are refused (503) and /collect hits dropped "
                        "until the worker catches up")
    body = {"status": status, "checks": checks, "warnings": warnings, "ingest": ingest or None}
    return JSONResponse(body, status_code=200 if ready else 503)
