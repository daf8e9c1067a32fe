"""The date range of a query: inclusive dates read in an IANA timezone, checked against retention."""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Query
from pydantic import BeforeValidator

from openanalytics.errors import BadRequest

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day(value: Any) -> Any:
    """Only YYYY-MM-DD: no Unix times, no date-times (whose offset would be dropped silently)."""
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


DateFrom = Annotated[date, BeforeValidator(_day), Query(alias="from", description="First day, YYYY-MM-DD (in `timezone`).", examples=["2026-05-01"])]
DateTo = Annotated[date, BeforeValidator(_day), Query(alias="to", description="Last day, YYYY-MM-DD (in `timezone`), inclusive.", examples=["2026-05-12"])]
Timezone = Annotated[str, Query(max_length=64, description="IANA timezone the dates and time buckets are read in.", examples=["Europe/Amsterdam"])]


@dataclass(frozen=True)
class Window:
    first: date
    last: date
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time.min, self.zone).astimezone(UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time.min, self.zone).astimezone(UTC)

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def params(self) -> dict:
        return {"start": self.start, "end": self.end, "tz": self.timezone}

    def previous(self) -> Window:
        """The period of the same length just before this one."""
        return Window(self.first - timedelta(days=self.days), self.first - timedelta(days=1), self.timezone)


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    """IANA names only: not folders, not the leap-second `right/` copies ClickHouse lacks, not
    `localtime`, which may name different zones on the API's and ClickHouse's hosts."""
    names = zoneinfo.available_timezones()
    return frozenset(n for n in names if not n.startswith(("right/", "posix/")) and n not in ("localtime", "Factory"))


def zone(name: str) -> str:
    if name not in _zones():
        raise BadRequest(f"unknown timezone {name[:64]!r}: use an IANA name such as Europe/Amsterdam or UTC",
                         "invalid_timezone")
    return name


def window(first: date, last: date, timezone: str, retention_days: int) -> Window:
    """A checked range: not reversed, not in the future, not older than the retention keeps."""
    tz = zone(timezone)
    if first > last:
        raise BadRequest("from must not be after to", "invalid_range")
    today = datetime.now(ZoneInfo(tz)).date()
    if last > today + timedelta(days=1):
        raise BadRequest("to must not be more than a day after today", "invalid_range")
    oldest = oldest_day(ZoneInfo(tz), retention_days)
    if first < oldest:
        raise BadRequest(
            f"from is beyond this project's retention of {retention_days} days (oldest: {oldest.isoformat()})",
            "range_beyond_retention",
        )
    return Window(first, last, tz)


def oldest_day(zone: ZoneInfo, retention_days: int) -> date:
    """The first day in `zone` the retention still keeps whole: events expire once older than
    `retention_days` days, so the day that moment falls in is already partly gone."""
    cutoff = (datetime.now(UTC) - timedelta(days=retention_days)).astimezone(zone)
    return cutoff.date() if cutoff.time() == time.min else cutoff.date() + timedelta(days=1)


def previous_window(span: Window, retention_days: int) -> Window:
    """The period of the same length before `span`, if the retention still keeps it: a comparison
    with days whose events have expired would show a fall that never happened."""
    before = span.previous()
    oldest = oldest_day(span.zone, retention_days)
    if before.first < oldest:
        raise BadRequest(
            f"the previous period ({before.first.isoformat()} to {before.last.isoformat()}) is beyond this "
            f"project's retention of {retention_days} days (oldest: {oldest.isoformat()}): choose a later from "
            "or leave out compare", "range_beyond_retention",
        )
    return before


def whole_hours(window: Window) -> bool:
    """Whether every day of the window starts and ends on a whole UTC hour: not so in zones offset by
    a half hour, nor in one whose summer time moves it by half an hour (Australia/Lord_Howe)."""
    return _whole_hour_days(window.timezone, window.first, window.last)


@lru_cache(maxsize=1024)
def _whole_hour_days(timezone: str, first: date, last: date) -> bool:
    zone = ZoneInfo(timezone)
    return all(datetime.combine(first + timedelta(days=n), time.min, zone).utcoffset().total_seconds() % 3600 == 0
               for n in range((last - first).days + 2))
