"""review leases: who is reviewing a job (jobs.review_lease_by) and until when (jobs.review_lease_until)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("review_lease_by", sa.String(length=16), nullable=True))
    op.add_column("jobs", sa.Column("review_lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("review_lease_until")
        batch.drop_column("review_lease_by")
