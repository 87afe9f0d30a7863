"""Engines and sessions: one engine per URL, SQLite pragmas, URL from settings, rollback on error."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit import db
from audit.models import Job
from settings import get_settings
from tests.audit.factories import make_job


def test_one_engine_per_url(sqlite_url: str, tmp_path: Path) -> None:
    assert db.get_engine(sqlite_url) is db.get_engine(sqlite_url)
    assert db.get_engine(sqlite_url) is not db.get_engine(f"sqlite:///{tmp_path / 'other.db'}")


def test_sqlite_pragmas(migrated_sqlite_url: str) -> None:
    with db.get_engine(migrated_sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_sqlite_enforces_foreign_keys(migrated_sqlite_url: str) -> None:
    with (
        pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"),
        db.session_scope(migrated_sqlite_url) as s,
    ):
        s.execute(
            sa.text(
                "INSERT INTO artifacts (job_id, path_index, storage_uri, sha256, size_bytes, width, height, "
                "created_at, prev_hash, row_hash) "
                "VALUES (:j, 0, 'file:///x', 'x', 1, 1, 1, '2026-01-01', 'p', 'r')"
            ),
            {"j": uuid.uuid4().hex},
        )


def test_session_scope_commits_or_rolls_back(migrated_sqlite_url: str) -> None:
    with pytest.raises(RuntimeError), db.session_scope(migrated_sqlite_url) as session:
        make_job(session, "rolled back")
        raise RuntimeError("boom")
    with db.session_scope(migrated_sqlite_url) as session:
        make_job(session, "kept")
    with db.session_scope(migrated_sqlite_url) as session:
        assert session.scalars(sa.select(Job.prompt)).all() == ["kept"]


def test_url_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert db.resolve_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db.resolve_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db.resolve_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    monkeypatch.setenv("EMOE_HOME", str(tmp_path))
    monkeypatch.delenv("EMOE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert db.resolve_url() == f"sqlite:///{tmp_path / 'emoe.db'}"
        monkeypatch.setenv("EMOE_DATABASE_URL", "postgresql://someone@db/emoe")
        get_settings.cache_clear()
        assert db.resolve_url() == "postgresql+psycopg://someone@db/emoe"
    finally:
        get_settings.cache_clear()


def test_every_time_reads_back_aware_utc(migrated_sqlite_url: str) -> None:
    """`UtcDateTime`: SQLite keeps naive text; a time written in another zone is stored as UTC and every
    time comes back aware (ORM objects, Core rows and aggregates alike)."""
    from datetime import UTC, datetime, timedelta, timezone

    berlin = datetime(2026, 3, 1, 13, 30, tzinfo=timezone(timedelta(hours=1)))
    with db.session_scope(migrated_sqlite_url) as session:
        job_id = make_job(session, "zoned", created_at=berlin).id
    with db.get_engine(migrated_sqlite_url).connect() as conn:
        stored = conn.exec_driver_sql("SELECT created_at FROM jobs").scalar()
    assert stored.startswith("2026-03-01 12:30:00")
    with db.session_scope(migrated_sqlite_url) as session:
        assert session.get(Job, job_id).created_at == datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
        (earliest,) = session.execute(sa.select(sa.func.min(Job.created_at))).one()
        assert earliest.tzinfo is UTC and earliest == berlin
