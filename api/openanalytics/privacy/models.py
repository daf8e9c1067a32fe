from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from openanalytics.stores.sql import Base, UTCDateTime, utcnow


class PrivacyRequest(Base):
    """One deletion request and its outcome: the audit trail. The user id itself is kept only
    while the work is pending; afterwards the hash still matches repeated requests."""

    __tablename__ = "privacy_requests"
    __table_args__ = (
        Index("uq_privacy_requests_open", "project_id", "user_hash", unique=True,
              postgresql_where=text("status IN ('queued', 'running')"),
              sqlite_where=text("status IN ('queued', 'running')")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(32), ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20), default="delete")
    user_hash: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued | running | completed | failed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    events_deleted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    queued_events_deleted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # a code of privacy/failures.py
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Secret(Base):
    """Random keys of this installation, made by the migration that needs each (0005)."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def user_hash(key: bytes, project_id: str, user_id: str) -> str:
    """What the audit trail keeps of a user: a hash keyed with this installation's secret (see
    tombstones.py), so a guessable id (an email's hash, say) cannot be found by trying candidates."""
    return hashlib.blake2b(f"{project_id}\x1f{user_id}".encode(), key=key, digest_size=32, person=b"oa-audit").hexdigest()
