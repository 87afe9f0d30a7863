"""webhook secrets: each tenant's webhook secret generation and until when the previous one still signs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_secrets",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("previous_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant", name=op.f("pk_webhook_secrets")),
    )


def downgrade() -> None:
    # Below 0006 every tenant signs with generation 0 again: a secret a rotated tenant replaced (perhaps
    # because it leaked). Refuse while any tenant has rotated, and lose nothing.
    rotated = op.get_bind().execute(sa.text("SELECT count(*) FROM webhook_secrets")).scalar()
    if rotated:
        raise RuntimeError(
            f"cannot downgrade below 0006: {rotated} tenant(s) rotated their webhook secret, and 0005 would sign "
            "their webhooks with the secret they replaced; restore a backup taken before 0006 instead"
        )
    op.drop_table("webhook_secrets")
