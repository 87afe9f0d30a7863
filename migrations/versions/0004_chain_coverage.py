"""chain coverage: decisions record the job's labels (chain version 2), artifacts are hash-chained

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 14:40:00

`decisions.chain_version` names the canonical format each row was hashed in: existing rows are 1 (they stay
verifiable as written), new rows 2, which also covers the job's labels (`decisions.labels`). `artifacts` gains
`prev_hash` and `row_hash`: existing rows are chained here in id order, and from now on the table is
append-only (triggers as on `decisions`), with one exception: setting the quality score and its metric, which
are computed after the image and are not part of the chain.

Downgrading drops the new columns; decisions of version 2 then no longer verify with the old code.
"""

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64
APPEND_ONLY_MESSAGE = "artifacts is append-only (hash-chained audit log)"
# the columns an UPDATE may change (not covered by the chain)
MUTABLE = ("quality", "quality_metric")
KEPT = (
    "id",
    "job_id",
    "path_index",
    "storage_uri",
    "sha256",
    "size_bytes",
    "width",
    "height",
    "created_at",
    "prev_hash",
    "row_hash",
)

_MUTABLE_JSONB = " - ".join(f"'{c}'" for c in MUTABLE)
PG_UPGRADE = [
    f"""
    CREATE FUNCTION artifacts_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND (to_jsonb(NEW) - {_MUTABLE_JSONB}) = (to_jsonb(OLD) - {_MUTABLE_JSONB}) THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER artifacts_no_update_delete BEFORE UPDATE OR DELETE ON artifacts
    FOR EACH ROW EXECUTE FUNCTION artifacts_append_only()
    """,
    """
    CREATE TRIGGER artifacts_no_truncate BEFORE TRUNCATE ON artifacts
    FOR EACH STATEMENT EXECUTE FUNCTION artifacts_append_only()
    """,
]
PG_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS artifacts_no_truncate ON artifacts",
    "DROP TRIGGER IF EXISTS artifacts_no_update_delete ON artifacts",
    "DROP FUNCTION IF EXISTS artifacts_append_only()",
]
_UNCHANGED = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in KEPT)
SQLITE_UPGRADE = [
    f"""
    CREATE TRIGGER artifacts_no_update BEFORE UPDATE ON artifacts
    WHEN NOT ({_UNCHANGED})
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: UPDATE rejected'); END
    """,
    f"""
    CREATE TRIGGER artifacts_no_delete BEFORE DELETE ON artifacts
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: DELETE rejected'); END
    """,
]
SQLITE_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS artifacts_no_update",
    "DROP TRIGGER IF EXISTS artifacts_no_delete",
]


def _execute_for_dialect(postgresql: list[str], sqlite: list[str]) -> None:
    dialect = op.get_context().dialect.name
    for statement in {"postgresql": postgresql, "sqlite": sqlite}.get(dialect, []):
        op.execute(statement)


def _iso_utc(moment: datetime | str) -> str:
    if isinstance(moment, str):  # SQLite without type information
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _artifact_hash(prev_hash: str, row: sa.Row) -> str:
    """Version 1 of the artifacts' record, frozen here as `audit.chain.artifact_record` writes it."""
    record = {
        "v": 1,
        "job_id": str(uuid.UUID(str(row.job_id))),
        "created_at": _iso_utc(row.created_at),
        "path_index": int(row.path_index),
        "size_bytes": int(row.size_bytes),
        "width": int(row.width),
        "height": int(row.height),
        "storage_uri": row.storage_uri,
        "sha256": row.sha256,
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256((prev_hash + text).encode("utf-8")).hexdigest()


def _chain_existing_artifacts() -> None:
    artifacts = sa.table(
        "artifacts",
        sa.column("id", sa.Integer()),
        sa.column("job_id", sa.Uuid()),
        sa.column("path_index", sa.Integer()),
        sa.column("storage_uri", sa.String()),
        sa.column("sha256", sa.String()),
        sa.column("size_bytes", sa.Integer()),
        sa.column("width", sa.Integer()),
        sa.column("height", sa.Integer()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("prev_hash", sa.String()),
        sa.column("row_hash", sa.String()),
    )
    bind = op.get_bind()
    prev = GENESIS_HASH
    for row in bind.execute(sa.select(artifacts).order_by(artifacts.c.id)).all():
        digest = _artifact_hash(prev, row)
        bind.execute(
            artifacts.update().where(artifacts.c.id == row.id).values(prev_hash=prev, row_hash=digest)
        )
        prev = digest


def upgrade() -> None:
    # ADD COLUMN keeps the table (and its append-only triggers) in place on both databases
    op.add_column("decisions", sa.Column("chain_version", sa.Integer(), server_default="1", nullable=False))
    op.add_column("decisions", sa.Column("labels", sa.JSON(), nullable=True))
    op.add_column("artifacts", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("artifacts", sa.Column("row_hash", sa.String(length=64), nullable=True))
    _chain_existing_artifacts()
    with op.batch_alter_table("artifacts") as batch:
        batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("row_hash", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint(op.f("uq_artifacts_row_hash"), ["row_hash"])
    _execute_for_dialect(PG_UPGRADE, SQLITE_UPGRADE)


def _drop_decisions_column(name: str) -> None:
    # not a batch (copy-and-move) on SQLite, which would lose the decisions' append-only triggers
    op.execute(f"ALTER TABLE decisions DROP COLUMN {name}")


def downgrade() -> None:
    # A version-2 decision's hash covers its labels, which 0003 has no column for: going below 0004 would
    # leave a chain that no longer verifies. Refuse, and lose nothing.
    covered = (
        op.get_bind().execute(sa.text("SELECT count(*) FROM decisions WHERE chain_version >= 2")).scalar()
    )
    if covered:
        raise RuntimeError(
            f"cannot downgrade below 0004: {covered} decision(s) are chain version 2 (their hashes cover labels, "
            "which 0003 cannot store); restore a backup taken before 0004 instead"
        )
    _execute_for_dialect(PG_DOWNGRADE, SQLITE_DOWNGRADE)
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_constraint(op.f("uq_artifacts_row_hash"), type_="unique")
        batch.drop_column("row_hash")
        batch.drop_column("prev_hash")
    _drop_decisions_column("labels")
    _drop_decisions_column("chain_version")
