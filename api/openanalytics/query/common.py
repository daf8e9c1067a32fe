"""What every query endpoint shares: the project's events table, its window and filters, buckets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import Query, Request
from pydantic import BaseModel, Field

from openanalytics.auth.dependencies import load_project, stores_of
from openanalytics.errors import BadRequest
from openanalytics.projects.models import Project
from openanalytics.provisioning.events_schema import database_name
from openanalytics.query import filters as filtering
from openanalytics.query.catalog import METRICS
from openanalytics.query.window import Window, window

MetricList = Annotated[str | None, Query(
    description=f"Comma-separated, in the order wanted. Allowed: {', '.join(METRICS)}.",
    examples=["visitors,pageviews,bounce_rate"],
)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Most rows per page.", examples=[10])]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip (from `next_offset`).", examples=[0])]


class QueryEcho(BaseModel):
    """The request as understood, returned with every result."""

    project_id: str
    date_from: date = Field(alias="from", serialization_alias="from")
    date_to: date = Field(alias="to", serialization_alias="to")
    timezone: str = "UTC"
    filters: list[str] = Field(default_factory=list, description="The filters applied, normalised.")

    model_config = {"populate_by_name": True}


@dataclass
class Scope:
    project: Project
    window: Window
    filters: list[filtering.Filter]
    table: str | None  # None: never provisioned, so nothing stored yet

    def echo(self) -> dict[str, Any]:
        return {"project_id": self.project.id, "date_from": self.window.first, "date_to": self.window.last,
                "timezone": self.window.timezone, "filters": [str(f) for f in self.filters]}


async def scope(request: Request, project: Project, first: date, last: date, timezone: str,
                filter_texts: list[str] | None) -> Scope:
    checked = window(first, last, timezone, project.retention_days)
    parsed = filtering.parse(filter_texts)
    if project.events_schema_version == 0:
        project = await load_project(request, project.id, fresh=True)  # the cached row may predate provisioning
    table = f"{database_name(project.id)}.events" if project.events_schema_version > 0 else None
    return Scope(project, checked, parsed, table)


def events_store(request: Request):
    return stores_of(request).events


MAX_HOURLY_DAYS = 31


def check_buckets(interval: str | None, span: Window) -> None:
    if interval == "hour" and span.days > MAX_HOURLY_DAYS:
        raise BadRequest(f"hourly buckets cover at most {MAX_HOURLY_DAYS} days; use day, week or month",
                         "invalid_range")


def bucket_keys(interval: str, span: Window) -> list[str]:
    """Every bucket of the window, as the SQL in catalog.BUCKETS names them."""
    if interval == "hour":
        keys, moment, zone = [], span.start, span.zone
        while moment < span.end:
            keys.append(moment.astimezone(zone).strftime("%Y-%m-%dT%H:00:00%z"))
            moment += timedelta(hours=1)
        return list(dict.fromkeys(keys))
    days = (span.first + timedelta(days=n) for n in range(span.days))
    if interval == "day":
        return [d.isoformat() for d in days]
    if interval == "week":
        return list(dict.fromkeys((d - timedelta(days=d.weekday())).isoformat() for d in days))
    return list(dict.fromkeys(d.replace(day=1).isoformat() for d in days))

