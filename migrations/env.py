"""Alembic environment: the URL comes from `-x url=...`, else the config's `sqlalchemy.url`, else settings."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from audit.db import is_sqlite, make_engine, resolve_url
from audit.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    return resolve_url(
        context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    )


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=is_sqlite(url),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller (tests) handed us an open connection
        _run(connection, url)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn, url)
    finally:
        engine.dispose()


def _run(connection, url: str) -> None:
    sqlite = is_sqlite(url)
    if sqlite:
        # SQLite drops a column by rebuilding the table (batch mode), and with foreign keys on, dropping the
        # old `jobs` fails while decisions reference it. SQLite's own recipe (lang_altertable.html): keys off
        # outside the transaction, `foreign_key_check` before commit, keys on again.
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,
            compare_type=True,
            # SQLite too: our engine begins every transaction itself (BEGIN IMMEDIATE)
            transactional_ddl=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                raise RuntimeError(f"migration left rows whose foreign keys point nowhere: {broken[:5]}")
    finally:
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
