"""privacy requests

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

from openanalytics.stores.sql import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "privacy_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("events_deleted", sa.Integer, nullable=True),
        sa.Column("queued_events_deleted", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_privacy_requests_project_id", "privacy_requests", ["project_id"])
    op.create_index("ix_privacy_requests_user_hash", "privacy_requests", ["user_hash"])
    # At most one open request per user: a second DELETE returns the first.
    open_only = sa.text("status IN ('queued', 'running')")
    op.create_index("uq_privacy_requests_open", "privacy_requests", ["project_id", "user_hash"], unique=True,
                    postgresql_where=open_only, sqlite_where=open_only)


def downgrade() -> None:
    op.drop_index("uq_privacy_requests_open", "privacy_requests")
    op.drop_index("ix_privacy_requests_user_hash", "privacy_requests")
    op.drop_index("ix_privacy_requests_project_id", "privacy_requests")
    op.drop_table("privacy_requests")
