"""initial schema: jobs, decisions, artifacts, api keys, webhooks, replay runs

Revision ID: 0001
Revises:
Create Date: 2026-11-26 12:12:07.872069

Also installs the append-only guard on `decisions`: a trigger that rejects UPDATE, DELETE (and, on PostgreSQL,
TRUNCATE). Redaction changes `jobs.prompt`, never a decision, so it needs no exception.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "decisions is append-only (hash-chained audit log)"

PG_UPGRADE = [
    f"""
    CREATE FUNCTION decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER decisions_no_update_delete BEFORE UPDATE OR DELETE ON decisions
    FOR EACH ROW EXECUTE FUNCTION decisions_append_only()
    """,
    """
    CREATE TRIGGER decisions_no_truncate BEFORE TRUNCATE ON decisions
    FOR EACH STATEMENT EXECUTE FUNCTION decisions_append_only()
    """,
]
PG_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS decisions_no_truncate ON decisions",
    "DROP TRIGGER IF EXISTS decisions_no_update_delete ON decisions",
    "DROP FUNCTION IF EXISTS decisions_append_only()",
]
# SQLite has no TRUNCATE. Note: a later batch (copy-and-move) migration of `decisions` must recreate these.
SQLITE_UPGRADE = [
    f"""
    CREATE TRIGGER decisions_no_{verb.lower()} BEFORE {verb} ON decisions
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: {verb} rejected'); END
    """
    for verb in ("UPDATE", "DELETE")
]
SQLITE_DOWNGRADE = ["DROP TRIGGER IF EXISTS decisions_no_update", "DROP TRIGGER IF EXISTS decisions_no_delete"]


def _execute_for_dialect(postgresql: list[str], sqlite: list[str]) -> None:
    dialect = op.get_context().dialect.name  # works offline (--sql) too
    for statement in {"postgresql": postgresql, "sqlite": sqlite}.get(dialect, []):
        op.execute(statement)


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('key_prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_index('ix_api_keys_tenant', 'api_keys', ['tenant'])

    op.create_table('jobs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=True),
    sa.Column('prompt_sha256', sa.String(length=64), nullable=False),
    sa.Column('prompt_chars', sa.Integer(), nullable=False),
    sa.Column('prompt_words', sa.Integer(), nullable=False),
    sa.Column('negative_prompt', sa.Text(), nullable=True),
    sa.Column('language', sa.String(length=16), nullable=True),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('callback_url', sa.String(length=2048), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('redacted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('tenant', 'idempotency_key', name='uq_jobs_tenant_idempotency_key')
    )
    op.create_index('ix_jobs_created_at', 'jobs', ['created_at'])
    op.create_index('ix_jobs_language', 'jobs', ['language'])
    op.create_index('ix_jobs_status', 'jobs', ['status'])
    op.create_index('ix_jobs_tenant_created_at', 'jobs', ['tenant', 'created_at'])

    op.create_table('replay_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('policy_name', sa.String(length=128), nullable=False),
    sa.Column('policy_version', sa.String(length=64), nullable=False),
    sa.Column('policy_hash', sa.String(length=64), nullable=False),
    sa.Column('since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replay_runs'))
    )
    op.create_table('artifacts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('path_index', sa.Integer(), nullable=False),
    sa.Column('storage_uri', sa.String(length=2048), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('quality', sa.Float(), nullable=True),
    sa.Column('quality_metric', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_artifacts_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifacts')),
    sa.UniqueConstraint('job_id', 'path_index', name='uq_artifacts_job_id_path_index')
    )
    op.create_index('ix_artifacts_job_id', 'artifacts', ['job_id'])

    op.create_table('decisions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('prompt_sha256', sa.String(length=64), nullable=False),
    sa.Column('language', sa.String(length=16), nullable=True),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('eu', sa.Float(), nullable=False),
    sa.Column('num_experts', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('scoring', sa.JSON(), nullable=False),
    sa.Column('expert_deviation', sa.JSON(), nullable=False),
    sa.Column('policy_name', sa.String(length=128), nullable=False),
    sa.Column('policy_version', sa.String(length=64), nullable=False),
    sa.Column('policy_hash', sa.String(length=64), nullable=False),
    sa.Column('policy_mode', sa.String(length=16), nullable=False),
    sa.Column('flag_at', sa.Float(), nullable=False),
    sa.Column('halt_at', sa.Float(), nullable=False),
    sa.Column('rule', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=8), nullable=False),
    sa.Column('shadow_action', sa.String(length=8), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_decisions_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_decisions')),
    sa.UniqueConstraint('job_id', name=op.f('uq_decisions_job_id')),
    sa.UniqueConstraint('row_hash', name=op.f('uq_decisions_row_hash'))
    )
    op.create_index('ix_decisions_action', 'decisions', ['action'])
    op.create_index('ix_decisions_created_at', 'decisions', ['created_at'])
    op.create_index('ix_decisions_fingerprint', 'decisions', ['fingerprint'])
    op.create_index('ix_decisions_language', 'decisions', ['language'])
    _execute_for_dialect(PG_UPGRADE, SQLITE_UPGRADE)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('delivered', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_webhook_deliveries_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries'))
    )
    op.create_index('ix_webhook_deliveries_job_id', 'webhook_deliveries', ['job_id'])



def downgrade() -> None:
    _execute_for_dialect(PG_DOWNGRADE, SQLITE_DOWNGRADE)
    op.drop_index('ix_webhook_deliveries_job_id', table_name='webhook_deliveries')

    op.drop_table('webhook_deliveries')
    op.drop_index('ix_decisions_language', table_name='decisions')
    op.drop_index('ix_decisions_fingerprint', table_name='decisions')
    op.drop_index('ix_decisions_created_at', table_name='decisions')
    op.drop_index('ix_decisions_action', table_name='decisions')

    op.drop_table('decisions')
    op.drop_index('ix_artifacts_job_id', table_name='artifacts')

    op.drop_table('artifacts')
    op.drop_table('replay_runs')
    op.drop_index('ix_jobs_tenant_created_at', table_name='jobs')
    op.drop_index('ix_jobs_status', table_name='jobs')
    op.drop_index('ix_jobs_language', table_name='jobs')
    op.drop_index('ix_jobs_created_at', table_name='jobs')

    op.drop_table('jobs')
    op.drop_index('ix_api_keys_tenant', table_name='api_keys')

    op.drop_table('api_keys')
