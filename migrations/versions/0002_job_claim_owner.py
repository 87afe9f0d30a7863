"""jobs.claimed_by: the worker process that holds a job's claim

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 12:00:00

A claim whose owner's heartbeat is gone is taken over at once instead of waiting for the lease.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("claimed_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claimed_by")
