"""`GET /v1/projects/{id}/realtime`: who is on the site now, from Redis state only.

The /collect commit script (ingest/commit.py) keeps per project: visitors by last-seen time,
pageviews per minute, and pageviews per page and per source per minute. Reading is one
pipelined round trip, cached for a second per process, so polling dashboards cost little.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from openanalytics.auth.dependencies import StatsRead, stores_of
from openanalytics.cache import TTLCache
from openanalytics.ingest.commit import MINUTES, RECENT_MS
from openanalytics.openapi import error_responses

router = APIRouter(tags=["Stats"])
_cache: TTLCache[tuple[str, int, int], Realtime] = TTLCache(1.0, max_items=1000)


class Minute(BaseModel):
    minute: datetime
    pageviews: int


class PageCount(BaseModel):
    path: str
    pageviews: int


class SourceCount(BaseModel):
    source: str = Field(description="The source of the visit the pageview belongs to; \"\" is direct traffic")
    pageviews: int


class Realtime(BaseModel):
    project_id: str
    at: datetime
    visitors: int = Field(description="Distinct visitors with an event in the last 5 minutes.")
    pageviews_per_minute: list[Minute] = Field(description="The last 30 minutes, oldest first, this one included.")
    top_pages: list[PageCount] = Field(description="Most pageviews in this minute and the 4 before it.")
    top_sources: list[SourceCount] = Field(description="Most pageviews in this minute and the 4 before it, by the "
                                                       "source of their visit.")

    model_config = {"json_schema_extra": {"examples": [{
        "project_id": "prj_3f9a1c0b7d2e4a65", "at": "2026-05-12T10:00:07Z", "visitors": 14,
        "pageviews_per_minute": [{"minute": "2026-05-12T09:31:00Z", "pageviews": 3}],
        "top_pages": [{"path": "/pricing", "pageviews": 9}], "top_sources": [{"source": "Google", "pageviews": 6}]}]}}


def _minute(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 60_000 * 60, UTC)


@router.get(
    "/v1/projects/{project_id}/realtime",
    summary="Visitors and pageviews right now",
    description=("Browser traffic through /collect, from Redis. Cheap to poll: answers are cached for a second. "
                 "Kept as counters per minute, so it takes no filters and top lists cover whole minutes."),
    response_model=Realtime,
    responses=error_responses(400, 401, 403, 404, 429),
)
async def get_realtime(
    request: Request, access: StatsRead,
    top: Annotated[int, Query(ge=1, le=100, description="How many pages and sources.", examples=[10])] = 10,
) -> Realtime:
    now = request.app.state.collector.clock()
    now_ms = int(now.timestamp() * 1000)
    project_id = access.project.id
    key = (project_id, top, now_ms // 1000)
    hit, cached = _cache.get(key)
    if hit:
        return cached
    prefix, minute = f"oa:rt:{project_id}", now_ms // 60_000
    minutes = list(range(minute - MINUTES + 1, minute + 1))
    recent = minutes[-(RECENT_MS // 60_000):]
    redis = stores_of(request).redis
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(f"{prefix}:visitors", now_ms - RECENT_MS, "+inf")
        pipe.mget([f"{prefix}:pv:{m}" for m in minutes])
        pipe.zunion([f"{prefix}:pages:{m}" for m in recent], withscores=True)
        pipe.zunion([f"{prefix}:sources:{m}" for m in recent], withscores=True)
        visitors, counts, pages, sources = await pipe.execute()

    def ranked(pairs) -> list[tuple[str, int]]:
        ordered = sorted(((name.decode(), int(score)) for name, score in pairs), key=lambda p: (-p[1], p[0]))
        return ordered[:top]

    answer = Realtime(
        project_id=project_id, at=now, visitors=visitors,
        pageviews_per_minute=[Minute(minute=_minute(m * 60_000), pageviews=int(c or 0)) for m, c in zip(minutes, counts, strict=True)],
        top_pages=[PageCount(path=p, pageviews=n) for p, n in ranked(pages)],
        top_sources=[SourceCount(source=s, pageviews=n) for s, n in ranked(sources)],
    )
    _cache.put(key, answer)
    return answer
