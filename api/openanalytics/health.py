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
            "examples": [{"status": "ok", "checks": {"database": "ok", "redis": "ok", "clickhouse": "ok"}}]
        }
    )
    status: str = Field(description="ok, degraded (Redis down) or unavailable.")
    checks: dict[str, str] = Field(description="Per store (and worker in standalone): ok or the error's type.")


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
        "503 when PostgreSQL/SQLite or ClickHouse fails (or, in standalone, the worker). A failing Redis "
        "makes the status `degraded` but keeps 200: queries still work, rate limits are not enforced, "
        "server-side events answer 503 and /collect drops hits."
    ),
    response_model=Readiness,
    responses={503: {"description": "Not ready.", "model": Readiness}},
)
async def readyz(request: Request) -> JSONResponse:
    stores = request.app.state.stores
    checks = dict(
        zip(
            ("database", "redis", "clickhouse"),
            await asyncio.gather(
                _check(run_in_threadpool(stores.db.ping)),
                _check(stores.redis.ping()),
                _check(stores.events.run(stores.events.ping)),
            ),
        )
    )
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:  # standalone: the in-process worker is part of being ready
        checks["worker"] = "ok" if worker.healthy else f"error: failing ({worker.failures} attempts)"
    ready = all(value == "ok" for name, value in checks.items() if name != "redis")
    status = "unavailable" if not ready else "ok" if checks["redis"] == "ok" else "degraded"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)
