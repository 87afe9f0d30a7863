"""Shared fixtures: a fresh database per test (`sqlite_url`, `pg_url`). Keep this file small."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def create_pg_database(prefix: str = "emoe_test") -> str:
    """Create an empty PostgreSQL database named `<prefix>_<random>` and return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    """Drop a database made by `create_pg_database`, ending its sessions first."""
    name = url.rsplit("/", 1)[1]
    try:
        from audit.db import dispose_engine

        dispose_engine(url)
    except ImportError:
        pass
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database (127.0.0.1:5432), dropped after the test."""
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """URL of a SQLite file in the test's tmp_path (created on first connect)."""
    return f"sqlite:///{tmp_path / 'emoe.db'}"


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str) -> str:
    """`sqlite_url` with the schema at the migrations' head."""
    from audit.db import ensure_schema

    ensure_schema(sqlite_url)
    return sqlite_url


@pytest.fixture
def migrated_pg_url(pg_url: str) -> str:
    """`pg_url` with the schema at the migrations' head (`emoe-gate migrate`)."""
    from audit.db import upgrade

    upgrade(pg_url)
    return pg_url
