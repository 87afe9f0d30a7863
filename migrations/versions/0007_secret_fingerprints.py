"""secret fingerprints: the fingerprint of the operator's webhook secret, so that a process started with
another secret (another machine's EMOE_HOME, a lost one) refuses to start instead of signing differently

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 08:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "secret_fingerprints",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("recorded_by", sa.String(length=255), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_secret_fingerprints")),
    )


def downgrade() -> None:
    # only a fingerprint is lost: the next start at 0007 records this machine's secret again
    op.drop_table("secret_fingerprints")
