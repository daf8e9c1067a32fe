"""privacy requests retried on a schedule; installation secrets

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from openanalytics.stores.sql import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("privacy_requests") as batch:
        batch.add_column(sa.Column("next_attempt_at", UTCDateTime, nullable=True))
    table = op.create_table(
        "secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    # Errors were exception texts, which could quote a statement with the user id: now codes only.
    requests = sa.table("privacy_requests", sa.column("error", sa.Text))
    op.execute(requests.update().where(requests.c.error.isnot(None)).values(error="internal_error"))
    # The key of the hashes that name deleted users in Redis's tombstones (privacy/tombstones.py).
    op.bulk_insert(table, [{"name": "privacy_tombstones", "value": secrets.token_hex(32), "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("secrets")
    with op.batch_alter_table("privacy_requests") as batch:
        batch.drop_column("next_attempt_at")
