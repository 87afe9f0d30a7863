"""The audit commands end to end: migrate, audit verify (exit code, bad row named), audit redact, replay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from audit import db
from audit.models import Job, ReplayRun, utcnow
from cli.main import app
from policies import dump_policy, parse_policy
from tests.audit.factories import FINGERPRINT, append_one

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _tamper_pg(url: str, decision_id: int) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE decisions DISABLE TRIGGER decisions_no_update_delete")
        conn.exec_driver_sql(f"UPDATE decisions SET reason = 'nothing to see' WHERE id = {decision_id}")
    engine.dispose()


@pytest.mark.postgres
def test_migrate_then_verify_then_tamper(pg_url: str) -> None:
    result = cli("audit", "verify", "--db", pg_url)
    assert result.exit_code == 2 and "emoe-gate migrate" in result.output

    result = cli("migrate", "--db", pg_url)
    assert result.exit_code == 0 and f"-> {db.head_revision()}" in result.output

    ids = []
    for i in range(3):
        with db.session_scope(pg_url) as session:
            ids.append(append_one(session, float(i)).id)
    result = cli("audit", "verify", "--db", pg_url)
    assert result.exit_code == 0 and "intact: 3 decisions" in result.output

    _tamper_pg(pg_url, ids[1])
    result = cli("audit", "verify", "--db", pg_url)
    assert result.exit_code == 1
    assert f"decision id {ids[1]}" in result.output and "altered" in result.output


def test_redact_command(migrated_sqlite_url: str) -> None:
    with db.session_scope(migrated_sqlite_url) as session:
        append_one(session, 0.5, prompt="old", created_at=utcnow() - timedelta(days=10))
        append_one(session, 0.5, prompt="new")
    result = cli("audit", "redact", "--older-than", "7", "--db", migrated_sqlite_url)
    assert result.exit_code == 0, result.output
    assert "redacted the prompts of 1 jobs" in result.output and "intact: 2 decisions" in result.output
    with db.session_scope(migrated_sqlite_url) as session:
        assert sorted(str(p) for p in session.scalars(sa.select(Job.prompt))) == ["None", "new"]

    result = cli("audit", "redact", "--older-than", "-1", "--db", migrated_sqlite_url)
    assert result.exit_code == 2 and "--older-than" in result.output


def test_sqlite_commands_migrate_an_existing_database(sqlite_url: str) -> None:
    db.upgrade(sqlite_url, "0001")  # a database from before the latest migration
    result = cli("audit", "verify", "--db", sqlite_url)
    assert result.exit_code == 0 and "intact: 0 decisions" in result.output
    assert db.current_revision(sqlite_url) == db.head_revision()


@pytest.mark.parametrize(
    "command",
    [
        ("audit", "verify"),
        ("report", "--format", "json", "--out", "OUT"),
        ("replay", "--policy", "BUNDLED"),
        ("eval", "quality"),
    ],
)
def test_read_commands_refuse_a_missing_database(command: tuple[str, ...], tmp_path: Path) -> None:
    from policies import bundled_policy_path

    missing = tmp_path / "tyop.db"
    stand_in = {"BUNDLED": str(bundled_policy_path()), "OUT": str(tmp_path / "report.json")}
    args = [stand_in.get(a, a) for a in command]
    result = cli(*args, "--db", f"sqlite:///{missing}")
    assert result.exit_code != 0
    assert f"no such database: {missing}" in result.output
    assert not missing.exists()  # nothing created, so nothing reports success on an empty audit log


def test_verify_expect_head(migrated_sqlite_url: str) -> None:
    with db.session_scope(migrated_sqlite_url) as session:
        head = append_one(session, 0.5).row_hash
    assert cli("audit", "verify", "--db", migrated_sqlite_url, "--expect-head", head[:10]).exit_code == 0
    result = cli("audit", "verify", "--db", migrated_sqlite_url, "--expect-head", "deadbeef00")
    assert result.exit_code == 1 and "expected head hash deadbeef00" in result.output
    result = cli("audit", "verify", "--db", migrated_sqlite_url, "--expect-head", "abc")
    assert result.exit_code == 2 and "--expect-head" in result.output


def test_replay_command_prints_tables_and_stores_the_run(migrated_sqlite_url: str, tmp_path: Path) -> None:
    with db.session_scope(migrated_sqlite_url) as session:
        for score, language in [(0.5, "en"), (1.5, "en"), (2.5, "de"), (0.9, "de")]:
            append_one(session, score, language=language)  # stored under flag_at 1, halt_at 2
    policy = parse_policy(
        {"name": "stricter", "version": "2", "fingerprint": FINGERPRINT, "flag_at": 0.8, "halt_at": 1.4}
    )
    path = tmp_path / "stricter.yaml"
    path.write_text(dump_policy(policy))

    result = cli("replay", "--policy", str(path), "--db", migrated_sqlite_url)
    assert result.exit_code == 0, result.output
    assert "4 of 4 stored decisions replayed, 2 would change" in result.output
    with db.session_scope(migrated_sqlite_url) as session:
        run = session.scalars(sa.select(ReplayRun)).one()
        assert (run.policy_name, run.policy_hash) == ("stricter", policy.hash)
        assert run.summary["after"] == {"continue": 1, "flag": 1, "halt": 2}
        assert run.summary["transitions"]["continue"] == {"continue": 1, "flag": 1}

    future = (utcnow() + timedelta(days=1)).date().isoformat()
    result = cli("replay", "--policy", str(path), "--db", migrated_sqlite_url, "--since", future, "--json")
    assert result.exit_code == 0 and '"total": 0' in result.output

    result = cli("replay", "--policy", str(path), "--db", migrated_sqlite_url, "--since", "last week")
    assert result.exit_code == 2 and "--since" in result.output
    path.write_text("name: x\n")
    result = cli("replay", "--policy", str(path), "--db", migrated_sqlite_url)
    assert result.exit_code == 2 and "version: missing" in result.output
