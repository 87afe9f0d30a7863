"""Anchors outside the database: a signed checkpoint catches a chain rewritten by someone who can write the
database (triggers dropped or disabled, rows edited, deleted, re-hashed); verify catches edited artifacts and
jobs; a bad checkpoint file or key is one line and a non-zero exit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from audit import db
from audit.chain import append_artifacts, row_hash
from audit.models import Artifact, Decision
from cli.main import app
from settings import get_settings
from tests.audit.factories import append_one

runner = CliRunner()
KEY = "k" * 8 + "-audit-key-for-tests-0123456789"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"migrated_{'pg' if request.param == 'postgresql' else 'sqlite'}_url")


@pytest.fixture
def audit_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("EMOE_AUDIT_KEY", KEY)
    monkeypatch.delenv("EMOE_AUDIT_KEY_FILE", raising=False)
    get_settings.cache_clear()
    yield KEY
    get_settings.cache_clear()


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _fill(url: str, scores: list[float]) -> list[int]:
    ids = []
    for i, score in enumerate(scores):
        with db.session_scope(url) as session:
            ids.append(append_one(session, score, prompt=f"prompt {i}").id)
    return ids


def _raw(url: str, *statements: str) -> None:
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _rewrite_sqlite_chain(url: str, decision_id: int) -> None:
    """The attack of issue 12, as its own script: drop the triggers, turn a halt into a continue, re-hash the
    whole chain so that every link holds again."""
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER decisions_no_update")
            conn.exec_driver_sql("DROP TRIGGER decisions_no_delete")
            conn.exec_driver_sql(f"UPDATE decisions SET action = 'continue' WHERE id = {decision_id}")
            rows = conn.execute(sa.select(*Decision.__table__.columns).order_by(Decision.id)).mappings().all()
            prev = "0" * 64
            for row in rows:
                digest = row_hash(prev, row)
                conn.execute(
                    sa.update(Decision.__table__)
                    .where(Decision.__table__.c.id == row["id"])
                    .values(prev_hash=prev, row_hash=digest)
                )
                prev = digest
    finally:
        engine.dispose()


def _one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_rewritten_sqlite_chain_fools_verify_but_not_the_checkpoint(
    migrated_sqlite_url: str, audit_key: str, tmp_path: Path
) -> None:
    url = migrated_sqlite_url
    ids = _fill(url, [0.5, 2.5, 0.5])
    with db.session_scope(url) as session:
        assert session.get(Decision, ids[1]).action == "halt"
    out = tmp_path / "checkpoint.json"
    made = cli("audit", "checkpoint", "--out", str(out), "--db", url)
    assert made.exit_code == 0 and "decisions 3 rows" in made.output, made.output
    _fill(url, [0.5])  # the log grows after the checkpoint: it still extends it
    assert cli("audit", "verify", "--db", url, "--checkpoint", str(out)).exit_code == 0

    _rewrite_sqlite_chain(url, ids[1])
    with db.session_scope(url) as session:
        assert session.get(Decision, ids[1]).action == "continue"
    alone = cli("audit", "verify", "--db", url)
    assert alone.exit_code == 0 and "audit chain intact: 4 decisions" in alone.output  # fooled
    anchored = cli("audit", "verify", "--db", url, "--checkpoint", str(out))
    assert anchored.exit_code == 1
    assert "row 3 has hash" in anchored.output and "the log does NOT extend it" in anchored.output


def test_verify_prints_every_chains_count_and_head(db_url: str) -> None:
    _fill(db_url, [0.5, 1.5])
    result = cli("audit", "verify", "--db", db_url)
    assert result.exit_code == 0, result.output
    with db.session_scope(db_url) as session:
        head = session.scalar(sa.select(Decision.row_hash).order_by(Decision.id.desc()).limit(1))
    assert f"audit chain intact: 2 decisions, head {head}" in result.output
    assert f"artifact chain intact: 0 artifacts, head {'0' * 64}" in result.output
    assert "review chain intact: 0 verdicts" in result.output
    data = json.loads(cli("audit", "verify", "--db", db_url, "--json").output)
    assert (data["rows"], data["head_hash"], data["artifacts"]["rows"]) == (2, head, 0)


@pytest.mark.postgres
def test_disabled_trigger_and_deleted_rows_on_postgres_are_caught(
    migrated_pg_url: str, audit_key: str, tmp_path: Path
) -> None:
    url = migrated_pg_url
    ids = _fill(url, [0.5, 2.5, 0.5, 1.5])
    out = tmp_path / "checkpoint.json"
    assert cli("audit", "checkpoint", "--out", str(out), "--db", url).exit_code == 0
    # the table's owner disables the guard and deletes the newest row: the chain alone still links up
    _raw(
        url,
        "ALTER TABLE decisions DISABLE TRIGGER decisions_no_update_delete",
        f"DELETE FROM decisions WHERE id = {ids[3]}",
    )
    assert cli("audit", "verify", "--db", url).exit_code == 0  # fooled
    anchored = cli("audit", "verify", "--db", url, "--checkpoint", str(out))
    assert anchored.exit_code == 1
    assert "the checkpoint recorded 4 rows, the log has 3" in anchored.output
    # and a row in the middle: the chain itself breaks
    _raw(url, f"DELETE FROM decisions WHERE id = {ids[1]}")
    alone = cli("audit", "verify", "--db", url)
    assert alone.exit_code == 1 and f"decision id {ids[2]}" in alone.output


def _with_artifact(url: str) -> int:
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
                    size_bytes=100,
                    width=64,
                    height=64,
                )
            ],
        )
        return artifact.id


def _unguarded(url: str, table: str, statement: str) -> None:
    if url.startswith("sqlite"):
        _raw(url, f"DROP TRIGGER {table}_no_update", statement)
    else:
        _raw(url, f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_update_delete", statement)


@pytest.mark.parametrize(
    "edit", ["storage_uri = 'file:///etc/passwd'", f"sha256 = '{'b' * 64}'", "size_bytes = 7"]
)
def test_an_edited_artifact_row_is_caught(db_url: str, edit: str) -> None:
    artifact_id = _with_artifact(db_url)
    assert cli("audit", "verify", "--db", db_url).exit_code == 0
    _unguarded(db_url, "artifacts", f"UPDATE artifacts SET {edit} WHERE id = {artifact_id}")
    result = cli("audit", "verify", "--db", db_url)
    assert result.exit_code == 1
    assert f"artifact chain BROKEN at artifact id {artifact_id}" in result.output
    assert "altered" in result.output


def test_artifacts_are_append_only_but_for_their_quality_score(db_url: str) -> None:
    artifact_id = _with_artifact(db_url)
    _raw(db_url, f"UPDATE artifacts SET quality = 0.25, quality_metric = 'clip' WHERE id = {artifact_id}")
    for statement in (
        f"UPDATE artifacts SET storage_uri = 'file:///etc/passwd' WHERE id = {artifact_id}",
        f"DELETE FROM artifacts WHERE id = {artifact_id}",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="artifacts is append-only"):
            _raw(db_url, statement)
    assert cli("audit", "verify", "--db", db_url).exit_code == 0


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ("language = 'fr'", "the job's language differs"),
        ('labels = \'{"group": "b"}\'', "the job's labels differ"),
        (f"prompt_sha256 = '{'c' * 64}'", "the job's prompt_sha256 differs"),
        ("prompt = 'another prompt'", "the job's prompt does not match its recorded sha256"),
    ],
)
def test_an_edited_job_is_caught_by_its_decision(db_url: str, edit: str, problem: str) -> None:
    ids = _fill(db_url, [0.5, 0.5])
    with db.session_scope(db_url) as session:
        job_id = session.get(Decision, ids[0]).job_id
    where = f"'{job_id.hex}'" if db_url.startswith("sqlite") else f"'{job_id}'"
    _raw(db_url, f"UPDATE jobs SET {edit} WHERE id = {where}")
    result = cli("audit", "verify", "--db", db_url)
    assert result.exit_code == 1 and f"decision id {ids[0]}" in result.output and problem in result.output


def test_a_bad_checkpoint_file_or_key_is_one_line_and_exit_2(
    migrated_sqlite_url: str, audit_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = migrated_sqlite_url
    _fill(url, [0.5])
    good = tmp_path / "good.json"
    assert cli("audit", "checkpoint", "--out", str(good), "--db", url).exit_code == 0

    def verify(path: Path):
        return cli("audit", "verify", "--db", url, "--checkpoint", str(path))

    missing = verify(tmp_path / "nope.json")
    assert missing.exit_code == 2 and "no such file" in _one_error_line(missing)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert verify(garbage).exit_code == 2 and "not JSON" in _one_error_line(verify(garbage))
    edited = tmp_path / "edited.json"
    data = json.loads(good.read_text())
    data["chains"]["decisions"]["rows"] = 2
    data["chains"]["decisions"]["head"] = "d" * 64
    edited.write_text(json.dumps(data))
    result = verify(edited)
    assert result.exit_code == 2 and "the signature does not match" in _one_error_line(result)

    monkeypatch.setenv("EMOE_AUDIT_KEY", "another-key-of-enough-length")
    get_settings.cache_clear()
    result = verify(good)
    assert result.exit_code == 2 and "signed with another key" in _one_error_line(result)

    monkeypatch.delenv("EMOE_AUDIT_KEY")
    get_settings.cache_clear()
    result = verify(good)
    assert result.exit_code == 2 and "no audit key" in _one_error_line(result)
    result = cli("audit", "checkpoint", "--out", str(tmp_path / "x.json"), "--db", url)
    assert result.exit_code == 2 and "no audit key" in _one_error_line(result)

    key_file = tmp_path / "audit.key"
    key_file.write_text(audit_key + "\n")
    monkeypatch.setenv("EMOE_AUDIT_KEY_FILE", str(key_file))
    get_settings.cache_clear()
    assert verify(good).exit_code == 0  # the same key, from a file
    monkeypatch.setenv("EMOE_AUDIT_KEY_FILE", str(tmp_path / "no.key"))
    get_settings.cache_clear()
    result = verify(good)
    assert result.exit_code == 2 and "cannot read" in _one_error_line(result)


def test_no_checkpoint_of_a_broken_chain(migrated_sqlite_url: str, audit_key: str, tmp_path: Path) -> None:
    ids = _fill(migrated_sqlite_url, [0.5, 0.5])
    _raw(
        migrated_sqlite_url,
        "DROP TRIGGER decisions_no_update",
        f"UPDATE decisions SET score = 0.0 WHERE id = {ids[0]}",
    )
    out = tmp_path / "checkpoint.json"
    result = cli("audit", "checkpoint", "--out", str(out), "--db", migrated_sqlite_url)
    assert result.exit_code == 1 and "a chain is broken" in result.output and not out.exists()


def test_new_key_is_random_and_long_enough() -> None:
    first, second = (cli("audit", "new-key").output.strip() for _ in range(2))
    assert first != second and len(first) >= 32


def _rehash(url: str, table: str, link, drop: str, edit: str) -> None:
    """Drop a chain's guard, edit a row and re-hash the whole chain so that every link holds again."""
    from audit.models import Base

    rows_table = Base.metadata.tables[table]
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(drop)
            conn.exec_driver_sql(edit)
            prev = "0" * 64
            for row in conn.execute(sa.select(rows_table).order_by(rows_table.c.id)).mappings().all():
                digest = link(prev, row)
                conn.execute(
                    sa.update(rows_table)
                    .where(rows_table.c.id == row["id"])
                    .values(prev_hash=prev, row_hash=digest)
                )
                prev = digest
    finally:
        engine.dispose()


def test_the_checkpoint_covers_the_artifacts_and_reviews_chains(
    migrated_sqlite_url: str, audit_key: str, tmp_path: Path
) -> None:
    from audit.chain import artifact_hash
    from audit.models import Job
    from audit.reviews import record_verdict
    from audit.reviews import row_hash as review_hash

    url = migrated_sqlite_url
    artifact_id = _with_artifact(url)
    with db.session_scope(url) as session:
        decision = append_one(session, 1.5, prompt="held for review", status="held")
        session.get(Job, decision.job_id).review = "pending"
    with db.session_scope(url) as session:
        record_verdict(session, decision.job_id, "acme", verdict="reject", reviewer="rk_reviewer")
    out = tmp_path / "checkpoint.json"
    made = cli("audit", "checkpoint", "--out", str(out), "--db", url)
    assert made.exit_code == 0 and "artifacts 1 rows" in made.output and "reviews 1 rows" in made.output

    _rehash(
        url,
        "artifacts",
        artifact_hash,
        "DROP TRIGGER artifacts_no_update",
        f"UPDATE artifacts SET storage_uri = 'file:///etc/passwd' WHERE id = {artifact_id}",
    )
    assert cli("audit", "verify", "--db", url).exit_code == 0  # fooled
    anchored = cli("audit", "verify", "--db", url, "--checkpoint", str(out))
    assert anchored.exit_code == 1 and "artifact chain BROKEN" in anchored.output

    original = "UPDATE artifacts SET storage_uri = 'file:///data/artifacts/x/0.png'"
    _rehash(url, "artifacts", artifact_hash, "SELECT 1", original)  # put back: the chain extends it again
    _rehash(
        url,
        "reviews",
        review_hash,
        "DROP TRIGGER reviews_no_update",
        "UPDATE reviews SET verdict = 'approve', outcome = 'approved'",
    )
    assert cli("audit", "verify", "--db", url).exit_code == 0  # fooled
    anchored = cli("audit", "verify", "--db", url, "--checkpoint", str(out))
    assert anchored.exit_code == 1
    assert "review chain BROKEN" in anchored.output and "verdict 1 has hash" in anchored.output
    assert "artifact chain intact: 1 artifacts" in anchored.output
