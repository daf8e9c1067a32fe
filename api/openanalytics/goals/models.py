from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from openanalytics.stores.sql import Base, UTCDateTime, utcnow


class Goal(Base):
    __tablename__ = "goals"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_goals_project_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(32), ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    match: Mapped[str] = mapped_column(String(20))  # event_name | event_type | path | any_conversion
    value: Mapped[str] = mapped_column(String(500))  # "" for any_conversion
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
