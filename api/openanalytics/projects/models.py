from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from openanalytics.stores.sql import Base, UTCDateTime, utcnow


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    site_id: Mapped[str] = mapped_column(String(32), unique=True)
    plan: Mapped[str] = mapped_column(String(20))
    domains: Mapped[list[str]] = mapped_column(JSON, default=list)
    overrides: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # Effective limits (plan defaults + overrides), stored so API pods only read them.
    api_requests_per_minute: Mapped[int] = mapped_column(Integer)
    retention_days: Mapped[int] = mapped_column(Integer)
    collect_per_ip_per_minute: Mapped[int] = mapped_column(Integer)
    collect_per_site_per_minute: Mapped[int] = mapped_column(Integer)
    monthly_events: Mapped[int] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Version of the project's ClickHouse schema; behind CURRENT means provisioning is due.
    events_schema_version: Mapped[int] = mapped_column(Integer, default=0)
    # Retention the ClickHouse TTL was last set to (differs from retention_days → update due).
    events_ttl_days: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
