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
TABLES = {"jobs", "decisions", "reviews", "artifacts", "api_keys", "webhook_deliveries", "replay_runs"}


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
