"""human review: jobs.review and the hash-chained, append-only `reviews` table of verdicts

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 13:00:00

Like `decisions`, `reviews` is guarded by triggers that reject UPDATE and DELETE (and, on PostgreSQL,
TRUNCATE), with one exception: setting `note` to NULL (redaction; the chain covers the note's sha256).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "reviews is append-only (hash-chained audit log)"
# every column but `note`: an UPDATE that changes none of them and nulls the note is a redaction
KEPT = (
    "id",
    "job_id",
    "decision_id",
    "decision_hash",
    "created_at",
    "tenant",
    "verdict",
    "previous",
    "outcome",
    "override",
    "reviewer",
    "note_sha256",
    "prev_hash",
    "row_hash",
)

PG_UPGRADE = [
    f"""
    CREATE FUNCTION reviews_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.note IS NULL AND (to_jsonb(NEW) - 'note') = (to_jsonb(OLD) - 'note') THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER reviews_no_update_delete BEFORE UPDATE OR DELETE ON reviews
    FOR EACH ROW EXECUTE FUNCTION reviews_append_only()
    """,
    """
    CREATE TRIGGER reviews_no_truncate BEFORE TRUNCATE ON reviews
    FOR EACH STATEMENT EXECUTE FUNCTION reviews_append_only()
    """,
]
PG_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS reviews_no_truncate ON reviews",
    "DROP TRIGGER IF EXISTS reviews_no_update_delete ON reviews",
    "DROP FUNCTION IF EXISTS reviews_append_only()",
]
_UNCHANGED = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in KEPT)
SQLITE_UPGRADE = [
    f"""
    CREATE TRIGGER reviews_no_update BEFORE UPDATE ON reviews
    WHEN NOT (NEW.note IS NULL AND {_UNCHANGED})
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: UPDATE rejected'); END
    """,
    f"""
    CREATE TRIGGER reviews_no_delete BEFORE DELETE ON reviews
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: DELETE rejected'); END
    """,
]
SQLITE_DOWNGRADE = ["DROP TRIGGER IF EXISTS reviews_no_update", "DROP TRIGGER IF EXISTS reviews_no_delete"]


def _execute_for_dialect(postgresql: list[str], sqlite: list[str]) -> None:
    dialect = op.get_context().dialect.name
    for statement in {"postgresql": postgresql, "sqlite": sqlite}.get(dialect, []):
        op.execute(statement)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("review", sa.String(length=16), nullable=True))
    op.create_index(op.f("ix_jobs_review"), "jobs", ["review"], unique=False)
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "reviews",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("decision_id", big_id, nullable=False),
        sa.Column("decision_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("previous", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("override", sa.Boolean(), nullable=False),
        sa.Column("reviewer", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("note_sha256", sa.String(length=64), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["decisions.id"], name=op.f("fk_reviews_decision_id_decisions")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_reviews_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
        sa.UniqueConstraint("row_hash", name=op.f("uq_reviews_row_hash")),
    )
    op.create_index(op.f("ix_reviews_created_at"), "reviews", ["created_at"], unique=False)
    op.create_index(op.f("ix_reviews_job_id"), "reviews", ["job_id"], unique=False)
    _execute_for_dialect(PG_UPGRADE, SQLITE_UPGRADE)


def downgrade() -> None:
    _execute_for_dialect(PG_DOWNGRADE, SQLITE_DOWNGRADE)
    op.drop_index(op.f("ix_reviews_job_id"), table_name="reviews")
    op.drop_index(op.f("ix_reviews_created_at"), table_name="reviews")
    op.drop_table("reviews")
    op.drop_index(op.f("ix_jobs_review"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("review")
