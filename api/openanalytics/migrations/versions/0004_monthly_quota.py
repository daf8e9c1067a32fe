"""monthly event quota per project

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The built-in plan quotas at the time of this revision; `migrate` then re-applies the
# configured plans (and overrides) to every project.
QUOTAS = {"free": 100_000, "pro": 1_000_000, "business": 10_000_000, "enterprise": 10_000_000}


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("monthly_events", sa.BigInteger, nullable=False, server_default="100000"))
    projects = sa.table("projects", sa.column("plan", sa.String), sa.column("monthly_events", sa.BigInteger))
    for plan, quota in QUOTAS.items():
        op.execute(projects.update().where(projects.c.plan == plan).values(monthly_events=quota))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("monthly_events")
