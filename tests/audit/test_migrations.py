"""Migrations: upgrade head and downgrade base on SQLite and PostgreSQL, and no drift from the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from audit import db
from audit.models import Base

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "jobs", "decisions", "reviews", "artifacts", "api_keys", "webhook_deliveries", "replay_runs",
    "webhook_secrets", "secret_fingerprints",
}  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _drift(url: str) -> list:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    db.upgrade(empty_url)
    assert _tables(empty_url) == TABLES
    assert db.current_revision(empty_url) == db.head_revision()

    db.downgrade(empty_url, "base")
    assert _tables(empty_url) == set()
    assert db.current_revision(empty_url) is None

    db.upgrade(
        empty_url
    )  # and back up: the downgrade left nothing behind (functions, triggers) to collide with
    assert _tables(empty_url) == TABLES


def test_autogenerate_finds_no_difference(empty_url: str) -> None:
    db.upgrade(empty_url)
    assert _drift(empty_url) == []


def test_compare_metadata_does_see_a_difference(sqlite_url: str) -> None:
    """The drift check is not vacuous: a column the models lack shows up."""
    db.upgrade(sqlite_url)
    engine = db.make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN extra INTEGER")
    engine.dispose()
    assert [(d[0], d[2], d[3].name) for d in _drift(sqlite_url)] == [("remove_column", "jobs", "extra")]


def test_ensure_schema_migrates_sqlite_by_itself(sqlite_url: str) -> None:
    assert db.current_revision(sqlite_url) is None
    db.ensure_schema(sqlite_url)
    assert db.current_revision(sqlite_url) == db.head_revision()
    assert _tables(sqlite_url) == TABLES


@pytest.mark.postgres
def test_ensure_schema_refuses_unmigrated_postgres(pg_url: str) -> None:
    with pytest.raises(db.SchemaNotReady, match="emoe-gate migrate"):
        db.ensure_schema(pg_url)
    db.upgrade(pg_url)
    db.ensure_schema(pg_url)  # now at head: no error


@pytest.mark.postgres
def test_alembic_ini_takes_the_url_from_settings(pg_url: str) -> None:
    """`alembic upgrade head` at the repository root migrates the database named by EMOE_DATABASE_URL."""
    env = {**os.environ, "EMOE_DATABASE_URL": pg_url.replace("postgresql+psycopg://", "postgresql://")}
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert db.current_revision(pg_url) == db.head_revision()


def _typed_table(name: str, *columns: str) -> sa.TableClause:
    """A lightweight table of the models' column types (only the columns that existed before 0004)."""
    model = Base.metadata.tables[name]
    return sa.table(name, *(sa.column(c, model.c[c].type) for c in columns))


def test_rows_from_before_0004_still_verify(empty_url: str) -> None:
    """Decisions written before the labels were covered keep verifying (chain version 1); artifacts written
    before they were chained are chained by the migration; new decisions are version 2 after them."""
    import hashlib
    import uuid
    from datetime import UTC, datetime

    from audit.chain import GENESIS_HASH, row_hash
    from audit.checkpoint import verify_all
    from audit.models import Decision
    from tests.audit.factories import append_one

    db.upgrade(empty_url, "0003")
    job_id, now = uuid.uuid4(), datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
    prompt = "an old prompt"
    job = {
        "id": job_id, "tenant": "acme", "prompt": prompt, "negative_prompt": "",
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(), "prompt_chars": 13, "prompt_words": 3,
        "language": "en", "labels": {"group": "a"}, "params": {}, "mode": "fast", "status": "completed",
        "attempts": 1, "created_at": now, "updated_at": now,
    }  # fmt: skip
    decision = {
        "job_id": job_id, "created_at": now, "tenant": "acme", "prompt_sha256": job["prompt_sha256"],
        "language": "en", "score": 0.25, "eu": 0.01, "num_experts": 4, "fingerprint": "f" * 64,
        "scoring": {"seed": 0}, "expert_deviation": [0.1], "policy_name": "p", "policy_version": "1",
        "policy_hash": "h" * 64, "policy_mode": "enforce", "flag_at": 1.0, "halt_at": 2.0, "rule": "t",
        "action": "continue", "shadow_action": None, "reason": "", "timings": {}, "prev_hash": GENESIS_HASH,
    }  # fmt: skip
    decision["row_hash"] = row_hash(GENESIS_HASH, {**decision, "chain_version": 1})
    artifact = {
        "job_id": job_id, "path_index": 0, "storage_uri": "file:///a/0.png", "sha256": "a" * 64,
        "size_bytes": 10, "width": 8, "height": 8, "created_at": now,
    }  # fmt: skip
    engine = db.make_engine(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(_typed_table("jobs", *job)), [job])
            conn.execute(sa.insert(_typed_table("decisions", *decision)), [decision])
            conn.execute(sa.insert(_typed_table("artifacts", *artifact)), [artifact])
    finally:
        engine.dispose()

    db.upgrade(empty_url)
    with db.session_scope(empty_url) as session:
        append_one(session, 0.5, prompt="a new prompt")
    with db.session_scope(empty_url) as session:
        reports = verify_all(session)
        versions = session.scalars(sa.select(Decision.chain_version).order_by(Decision.id)).all()
    assert all(r.ok for r in reports), [str(r) for r in reports]
    assert [r.rows for r in reports] == [2, 1, 0]
    assert versions == [1, 2]


def test_downgrade_keeps_rows_and_refuses_to_break_the_chain(empty_url: str) -> None:
    """0005 goes down on a database with decisions in it (on SQLite the rebuilt `jobs` table must not trip
    over the decisions that reference it) and back up with the chain intact; below 0004 a version-2 decision
    could no longer be verified, so that downgrade is refused and changes nothing."""
    from audit.checkpoint import verify_all
    from tests.audit.factories import append_one

    db.upgrade(empty_url)
    with db.session_scope(empty_url) as session:
        append_one(session, 0.5, prompt="kept across the downgrade")
    db.downgrade(empty_url, "0004")
    with pytest.raises(RuntimeError, match="cannot downgrade below 0004: 1 decision"):
        db.downgrade(empty_url, "0003")
    assert db.current_revision(empty_url) == "0004"
    engine = db.make_engine(empty_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one() == 1
            assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 1
    finally:
        engine.dispose()
    db.upgrade(empty_url)
    with db.session_scope(empty_url) as session:
        reports = verify_all(session)
    assert all(r.ok for r in reports), [str(r) for r in reports]


def test_0006_refuses_to_go_down_while_a_tenant_has_rotated(empty_url: str) -> None:
    """Below 0006 every tenant would sign with generation 0 again, the secret a rotated tenant replaced: that
    downgrade is refused and changes nothing; without rotations the table goes and comes back empty."""
    from datetime import timedelta

    from audit.models import WebhookSecret
    from audit.webhook_secrets import generations, rotate

    db.upgrade(empty_url)
    with db.session_scope(empty_url) as session:
        rotate(session, "acme", timedelta(hours=1))
    with pytest.raises(RuntimeError, match="cannot downgrade below 0006: 1 tenant"):
        db.downgrade(empty_url, "0005")
    assert db.current_revision(empty_url) == db.head_revision()
    with db.session_scope(empty_url) as session:
        assert generations(session, "acme").current == 1
        session.query(WebhookSecret).delete()
    db.downgrade(empty_url, "0005")
    assert "webhook_secrets" not in _tables(empty_url)
    assert db.current_revision(empty_url) == "0005"
    db.upgrade(empty_url)
    with db.session_scope(empty_url) as session:
        assert generations(session, "acme").current == 0
