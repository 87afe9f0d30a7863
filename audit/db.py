"""Engines and sessions per database URL, and the schema check (SQLite migrates itself, PostgreSQL not).

SQLite: WAL journal, foreign keys on, and every transaction starts with `BEGIN IMMEDIATE`, so two processes
appending to the hash chain are serialised by the database instead of forking it. PostgreSQL: psycopg 3;
appends are serialised with an advisory transaction lock (see `audit.chain`).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}
_schema_ok: set[str] = set()
_lock = threading.Lock()


class SchemaNotReady(RuntimeError):
    """The database is not at the migrations' head revision."""


def resolve_url(url: str | None = None) -> str:
    """The URL to use: `url`, else settings' `EMOE_DATABASE_URL`, else the embedded SQLite file.

    `postgresql://` and `postgres://` are read as psycopg 3 (`postgresql+psycopg://`).
    """
    if url is None:
        from settings import get_settings

        url = get_settings().resolved_database_url
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str) -> Engine:
    """A new engine for `url` with this project's connection settings (used by `get_engine` and Alembic)."""
    url = resolve_url(url)
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that the "begin" hook below decides how to begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: no other writer can slip in between reading the chain head
        # and appending after it.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: from settings)."""
    url = resolve_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engine(url: str | None = None) -> None:
    """Close and forget the engine of `url` (tests call this before dropping a database)."""
    url = resolve_url(url)
    with _lock:
        engine = _engines.pop(url, None)
        _sessionmakers.pop(url, None)
        _schema_ok.discard(url)
    if engine is not None:
        engine.dispose()


def _forget_engines_after_fork() -> None:
    # A forked child must not share its parent's pooled connections.
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _sessionmakers.clear()


os.register_at_fork(after_in_child=_forget_engines_after_fork)


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    url = resolve_url(url)
    engine = get_engine(url)
    with _lock:
        maker = _sessionmakers.get(url)
        if maker is None:
            maker = _sessionmakers[url] = sessionmaker(engine, expire_on_commit=False)
        return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back if it raises."""
    with transaction(get_sessionmaker(url)) as session:
        yield session


@contextmanager
def transaction(maker: Callable[[], Session]) -> Iterator[Session]:
    """A new session from `maker` that commits when the block ends and rolls back if it raises."""
    session = maker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- migrations ---------------------------------------------------------------------------------------------


def alembic_config(url: str | None = None) -> Any:
    """An Alembic `Config` for the migrations shipped with the package, pointed at `url`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", resolve_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Run the migrations up to `revision` (what `emoe-gate migrate` does)."""
    from alembic import command

    url = resolve_url(url)
    command.upgrade(alembic_config(url), revision)
    with _lock:
        _schema_ok.discard(url)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    url = resolve_url(url)
    command.downgrade(alembic_config(url), revision)
    with _lock:
        _schema_ok.discard(url)


# --- the application's role (PostgreSQL) --------------------------------------------------------------------

# The hash-chained tables: the application may add rows and read them, nothing more, except the columns
# outside every chain that it still sets (an image's quality score; nulling a review note, which the
# append-only trigger allows).
CHAINED_TABLES = ("decisions", "artifacts", "reviews")
APP_COLUMN_UPDATES = {"artifacts": ("quality", "quality_metric"), "reviews": ("note",)}
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class RoleError(ValueError):
    """An application role that cannot be granted to (bad name, missing, the owner itself)."""


def app_role_grants(role: str, tables: list[str]) -> list[str]:
    """The SQL that leaves `role` with exactly the application's privileges on `tables` (the schema's)."""
    if not _ROLE_NAME.fullmatch(role):
        raise RoleError(f"--app-role: {role!r} is not a plain role name (letters, digits, _)")
    quoted = f'"{role}"'
    statements = [f"GRANT USAGE ON SCHEMA public TO {quoted}"]
    for table in sorted(tables):
        statements.append(f'REVOKE ALL ON TABLE "{table}" FROM {quoted}')
        if table == "alembic_version":
            statements.append(f'GRANT SELECT ON TABLE "{table}" TO {quoted}')
        elif table in CHAINED_TABLES:
            statements.append(f'GRANT SELECT, INSERT ON TABLE "{table}" TO {quoted}')
            if table in APP_COLUMN_UPDATES:
                columns = ", ".join(APP_COLUMN_UPDATES[table])
                statements.append(f'GRANT UPDATE ({columns}) ON TABLE "{table}" TO {quoted}')
        else:
            statements.append(f'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "{table}" TO {quoted}')
    statements.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}")
    return statements


def check_app_role(url: str | None, role: str) -> None:
    """Raise `RoleError` unless `role` can be the application's role on `url`: PostgreSQL, a plain name, an
    existing role, neither a superuser nor (a member of) the role connected as (which owns the tables)."""
    url = resolve_url(url)
    if is_sqlite(url):
        raise RoleError(
            "--app-role: SQLite has no roles (on SQLite only a checkpoint, `emoe-gate audit checkpoint`, "
            "protects the audit log against an edited file)"
        )
    if not _ROLE_NAME.fullmatch(role):
        raise RoleError(f"--app-role: {role!r} is not a plain role name (letters, digits, _)")
    with get_engine(url).connect() as conn:
        found = conn.execute(
            text(
                "SELECT rolsuper, pg_has_role(rolname, current_user, 'MEMBER') FROM pg_roles "
                "WHERE rolname = :role"
            ),
            {"role": role},
        ).one_or_none()
    if found is None:
        raise RoleError(
            f"--app-role: there is no role {role!r} (create it first, e.g. docker/postgres-init.sql)"
        )
    superuser, owner = found
    if superuser or owner:
        what = "a superuser" if superuser else "(a member of) the role that owns the tables"
        raise RoleError(f"--app-role: {role!r} is {what}; the application needs a role of its own")


def grant_app_role(url: str | None, role: str) -> list[str]:
    """Grant the application's role its privileges on every table, as the tables' owner after migrating
    (`emoe-gate migrate --app-role NAME`); returns the statements run. PostgreSQL only."""
    check_app_role(url, role)
    with get_engine(url).begin() as conn:
        tables = list(
            conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
        )
        statements = app_role_grants(role, tables)
        for statement in statements:
            conn.exec_driver_sql(statement)
    return statements


def ensure_schema(url: str | None = None) -> None:
    """Make sure the database is at head: SQLite upgrades itself; PostgreSQL raises `SchemaNotReady`."""
    url = resolve_url(url)
    if url in _schema_ok:
        return
    head = head_revision()
    if is_sqlite(url):
        if current_revision(url) != head:
            upgrade(url)
    else:
        current = current_revision(url)
        if current != head:
            shown = make_url(url).render_as_string(hide_password=True)
            raise SchemaNotReady(
                f"database {shown} is at revision {current or 'none (empty)'}, the code needs {head}: "
                "run `emoe-gate migrate` (or `alembic upgrade head`) first"
            )
    with _lock:
        _schema_ok.add(url)
