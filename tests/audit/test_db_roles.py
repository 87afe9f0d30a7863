"""The application's database role on real PostgreSQL: it may add rows to the hash-chained tables and read
them, and nothing more (no UPDATE, DELETE, TRUNCATE, DISABLE TRIGGER); migrations run as the owner. Also the
compose stack's init SQL, run by psql as the postgres image runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from audit import db
from audit.chain import append_artifacts
from audit.models import Artifact, Decision, Job
from cli.main import app
from tests.audit.factories import append_one
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
HOST = PG_ADMIN_URL.rsplit("@", 1)[1].rsplit("/", 1)[0]


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _admin(*statements: str) -> None:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _url(role: str, database: str) -> str:
    return f"postgresql+psycopg://{role}@{HOST}/{database}"


@dataclass
class Roles:
    owner: str
    app: str
    database: str

    @property
    def owner_url(self) -> str:
        return _url(self.owner, self.database)

    @property
    def app_url(self) -> str:
        return _url(self.app, self.database)


def _drop(roles: Roles) -> None:
    for url in (roles.owner_url, roles.app_url):
        db.dispose_engine(url)
    _admin(
        f'DROP DATABASE IF EXISTS "{roles.database}" WITH (FORCE)',
        f'DROP ROLE IF EXISTS "{roles.app}"',
        f'DROP ROLE IF EXISTS "{roles.owner}"',
    )


@pytest.fixture
def roles() -> Iterator[Roles]:
    """An owner role, an application role and a database the owner owns; all dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    made = Roles(f"emoe_owner_{tag}", f"emoe_app_{tag}", f"emoe_roles_{tag}")
    _admin(
        f'CREATE ROLE "{made.owner}" LOGIN',
        f'CREATE ROLE "{made.app}" LOGIN',
        f'CREATE DATABASE "{made.database}" OWNER "{made.owner}"',
    )
    try:
        yield made
    finally:
        _drop(made)


def _as(url: str, *statements: str) -> None:
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _write_as_app(url: str) -> tuple[int, int]:
    """What the application writes: a job, its decision, its image; returns (decision id, artifact id)."""
    with db.session_scope(url) as session:
        decision = append_one(session, 0.5)
        (artifact,) = append_artifacts(
            session,
            [
                Artifact(
                    job_id=decision.job_id,
                    path_index=0,
                    storage_uri="file:///data/artifacts/x/0.png",
                    sha256="a" * 64,
                    size_bytes=10,
                    width=8,
                    height=8,
                )
            ],
        )
        session.get(Job, decision.job_id).status = "completed"  # jobs stay fully writable
        return decision.id, artifact.id


def _refused(url: str, statement: str, message: str) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=message):
        _as(url, statement)


def _check_the_app_role(app_url: str) -> None:
    decision_id, artifact_id = _write_as_app(app_url)
    for statement in (
        f"UPDATE decisions SET action = 'continue' WHERE id = {decision_id}",
        f"DELETE FROM decisions WHERE id = {decision_id}",
        "TRUNCATE decisions CASCADE",
        f"UPDATE artifacts SET storage_uri = 'file:///etc/passwd' WHERE id = {artifact_id}",
        f"DELETE FROM artifacts WHERE id = {artifact_id}",
        "UPDATE reviews SET verdict = 'approve'",
        "DELETE FROM reviews",
    ):
        _refused(app_url, statement, "permission denied")
    for statement in (
        "ALTER TABLE decisions DISABLE TRIGGER decisions_no_update_delete",
        "ALTER TABLE decisions DISABLE TRIGGER ALL",
        "DROP TRIGGER decisions_no_update_delete ON decisions",
        "ALTER TABLE artifacts DISABLE TRIGGER artifacts_no_update_delete",
    ):
        _refused(app_url, statement, "must be owner")
    # outside every chain: an image's quality score
    _as(app_url, f"UPDATE artifacts SET quality = 0.5, quality_metric = 'clip' WHERE id = {artifact_id}")
    with db.session_scope(app_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Decision)) == 1
    result = cli("audit", "verify", "--db", app_url)
    assert result.exit_code == 0 and "audit chain intact: 1 decisions" in result.output, result.output


def test_the_app_role_may_add_rows_but_not_rewrite_them(roles: Roles) -> None:
    result = cli("migrate", "--db", roles.owner_url, "--app-role", roles.app)
    assert result.exit_code == 0, result.output
    assert f"-> {db.head_revision()}" in result.output and f"{roles.app}: SELECT and INSERT" in result.output
    _check_the_app_role(roles.app_url)
    # the owner, by contrast, can disable the guard: only a checkpoint protects against it (test_checkpoint)
    _as(roles.owner_url, "ALTER TABLE decisions DISABLE TRIGGER decisions_no_update_delete")


def test_without_the_grants_the_app_role_cannot_even_read(roles: Roles) -> None:
    """The privileges come from `--app-role`, not from defaults: without it the app role is refused."""
    assert cli("migrate", "--db", roles.owner_url).exit_code == 0
    _refused(roles.app_url, "SELECT count(*) FROM decisions", "permission denied")
    assert (
        cli("migrate", "--db", roles.owner_url, "--app-role", roles.app).exit_code == 0
    )  # again: idempotent
    assert cli("migrate", "--db", roles.owner_url, "--app-role", roles.app).exit_code == 0
    _as(roles.app_url, "SELECT count(*) FROM decisions")


@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("nobody_{tag}", "there is no role"),
        ("postgres", "is a superuser"),
        ("{owner}", "owns the tables"),
        ("x; DROP TABLE jobs", "not a plain role name"),
    ],
)
def test_migrate_refuses_a_bad_app_role_before_migrating(roles: Roles, role: str, message: str) -> None:
    role = role.format(tag=uuid.uuid4().hex[:6], owner=roles.owner)
    result = cli("migrate", "--db", roles.owner_url, "--app-role", role)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert db.current_revision(roles.owner_url) is None


def test_migrate_refuses_an_app_role_on_sqlite(sqlite_url: str) -> None:
    result = cli("migrate", "--db", sqlite_url, "--app-role", "emoe_app")
    assert result.exit_code == 2 and "SQLite has no roles" in result.output
    assert "only a checkpoint" in result.output


@pytest.mark.skipif(shutil.which("psql") is None, reason="needs psql (the postgres image's client)")
def test_the_compose_init_sql_makes_an_owner_and_an_app_role() -> None:
    """docker/postgres-init.sql as the image runs it (psql, superuser, in POSTGRES_DB), then compose's migrate
    (as emoe_owner, --app-role emoe_app) and the application (as emoe_app)."""
    made = Roles("emoe_owner", "emoe_app", f"emoe_init_{uuid.uuid4().hex[:10]}")
    _drop(made)  # left over from an interrupted run
    _admin(f'CREATE DATABASE "{made.database}"')
    try:
        admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
        env = {**os.environ, "DB_OWNER_PASSWORD": "owner-secret", "DB_APP_PASSWORD": "app-secret"}
        proc = subprocess.run(
            ["psql", f"{admin}/{made.database}", "-f", str(ROOT / "docker" / "postgres-init.sql")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        result = cli("migrate", "--db", made.owner_url, "--app-role", made.app)
        assert result.exit_code == 0, result.output
        _check_the_app_role(made.app_url)
        _refused(made.app_url, "CREATE TABLE mine (x int)", "permission denied")
    finally:
        _drop(made)
