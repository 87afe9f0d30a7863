"""The hash chain: appends link up, verification catches altered and deleted rows, writers never fork it."""

from __future__ import annotations

import itertools
import math
import multiprocessing
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from audit import db
from audit.chain import (
    CHAIN_VERSION,
    GENESIS_HASH,
    ChainError,
    append_decision,
    append_decisions,
    canonical_record,
    decision_values,
    row_hash,
    verify_chain,
)
from audit.models import Decision
from policies import DecisionContext, decide
from tests.audit.factories import FakeScore, append_one, make_job, make_policy, write_decisions


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"migrated_{'pg' if request.param == 'postgresql' else 'sqlite'}_url")


def _fill(url: str, n: int) -> list[int]:
    ids = []
    for i in range(n):
        with db.session_scope(url) as session:
            ids.append(append_one(session, 0.6 * i, prompt=f"prompt {i}").id)
    return ids


def _raw(url: str, *statements: str) -> None:
    """Run SQL behind the application's back (no ORM, own connection)."""
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _verify(url: str):
    with db.session_scope(url) as session:
        return verify_chain(session)


def test_appends_link_into_one_chain(db_url: str) -> None:
    ids = _fill(db_url, 5)
    with db.session_scope(db_url) as session:
        rows = session.scalars(sa.select(Decision).order_by(Decision.id)).all()
        assert [r.id for r in rows] == ids
        assert rows[0].prev_hash == GENESIS_HASH
        assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(rows))
        assert [r.action for r in rows] == ["continue", "continue", "flag", "flag", "halt"]
    report = _verify(db_url)
    assert report.ok and report.rows == 5 and report.head_hash == rows[-1].row_hash


def test_canonical_record_survives_the_database_round_trip(db_url: str) -> None:
    """What is hashed at append time is what verify reads back (floats, unicode, nested JSON, time)."""
    awkward = FakeScore(
        0.1 + 0.2,
        eu=5e-324,
        scoring={"guidance": 7.5, "negative_prompt": "chien, 犬", "nested": {"b": [1, 2.0, None, True]}},
        expert_deviation=[1e-300, 1.7976931348623157e308, -0.0, 1 / 3],
    )
    with db.session_scope(db_url) as session:
        job = make_job(session, "ein kleiner roter Kreis — 🔴", language="de")
        decision = decide(awkward, DecisionContext(language="de"), make_policy())
        row = append_decision(session, job, awkward, decision, {"gate_ms": 0.1 + 0.7})
        written, row_id = canonical_record(row), row.id
    with db.session_scope(db_url) as session:
        stored = session.get(Decision, row_id)
        assert canonical_record(stored) == written
    assert _verify(db_url).ok


def test_batched_appends_chain_with_single_appends(db_url: str) -> None:
    """The batch path (COPY on PostgreSQL, executemany on SQLite) and the one-row path make one chain."""
    awkward = FakeScore(
        0.1 + 0.2, scoring={"nested": {"x": [1, 2.5e-8, None]}}, expert_deviation=[1 / 3, 1e-300]
    )
    decision = decide(awkward, DecisionContext(), make_policy())
    with db.session_scope(db_url) as session:
        append_one(session, 0.5)
    with db.session_scope(db_url) as session:
        values = [
            decision_values(make_job(session, f"batch {i}"), awkward, decision, {"i": i}) for i in range(30)
        ]
        head = append_decisions(session, values)
    with db.session_scope(db_url) as session:
        append_one(session, 2.5)
    report = _verify(db_url)
    assert report.ok and report.rows == 32, str(report)
    with db.session_scope(db_url) as session:
        rows = session.scalars(sa.select(Decision).order_by(Decision.id)).all()
    assert rows[30].row_hash == head and rows[31].prev_hash == head
    assert rows[5].expert_deviation == [1 / 3, 1e-300] and rows[5].timings == {"i": 4}


def test_verify_fails_after_a_row_is_altered(db_url: str) -> None:
    ids = _fill(db_url, 4)
    if db_url.startswith("sqlite"):
        _raw(
            db_url,
            "DROP TRIGGER decisions_no_update",
            f"UPDATE decisions SET score = 0.0 WHERE id = {ids[2]}",
        )
    else:
        _raw(
            db_url,
            "ALTER TABLE decisions DISABLE TRIGGER decisions_no_update_delete",
            f"UPDATE decisions SET score = 0.0 WHERE id = {ids[2]}",
        )
    report = _verify(db_url)
    assert not report.ok
    assert report.first_bad_id == ids[2] and report.rows == 2
    assert "altered" in report.problem


def test_verify_fails_after_a_row_is_rewritten_with_a_fresh_hash(db_url: str) -> None:
    """Recomputing the altered row's own hash does not help: the next row no longer links to it."""
    ids = _fill(db_url, 3)
    disable = (
        "DROP TRIGGER decisions_no_update"
        if db_url.startswith("sqlite")
        else "ALTER TABLE decisions DISABLE TRIGGER decisions_no_update_delete"
    )
    _raw(db_url, disable, f"UPDATE decisions SET row_hash = '{'a' * 64}' WHERE id = {ids[1]}")
    report = _verify(db_url)
    assert report.first_bad_id == ids[1] and "altered" in report.problem


@pytest.mark.parametrize("victim", [0, 2])
def test_verify_fails_after_a_row_is_deleted(db_url: str, victim: int) -> None:
    ids = _fill(db_url, 4)
    disable = (
        "DROP TRIGGER decisions_no_delete"
        if db_url.startswith("sqlite")
        else "ALTER TABLE decisions DISABLE TRIGGER decisions_no_update_delete"
    )
    _raw(db_url, disable, f"DELETE FROM decisions WHERE id = {ids[victim]}")
    report = _verify(db_url)
    assert not report.ok
    assert report.first_bad_id == ids[victim + 1]
    assert ("genesis" if victim == 0 else "prev_hash") in report.problem


def test_expected_head_catches_a_cut_off_end(migrated_sqlite_url: str) -> None:
    _fill(migrated_sqlite_url, 3)
    head = _verify(migrated_sqlite_url).head_hash
    with db.session_scope(migrated_sqlite_url) as session:
        assert verify_chain(session, expect_head=head[:12]).ok
    _raw(migrated_sqlite_url, "DROP TRIGGER decisions_no_delete", "DELETE FROM decisions WHERE id = 3")
    assert _verify(migrated_sqlite_url).ok  # the two remaining rows still link up ...
    with db.session_scope(migrated_sqlite_url) as session:
        report = verify_chain(session, expect_head=head)
    assert not report.ok and "expected head" in report.problem  # ... but the recorded head is gone


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    ["UPDATE decisions SET action = 'continue'", "DELETE FROM decisions", "TRUNCATE decisions CASCADE"],
)
def test_postgres_trigger_rejects_rewrites(migrated_pg_url: str, statement: str) -> None:
    _fill(migrated_pg_url, 2)
    with pytest.raises(DBAPIError, match="append-only"):
        _raw(migrated_pg_url, statement)
    assert _verify(migrated_pg_url).rows == 2


@pytest.mark.parametrize("statement", ["UPDATE decisions SET action = 'continue'", "DELETE FROM decisions"])
def test_sqlite_trigger_rejects_rewrites(migrated_sqlite_url: str, statement: str) -> None:
    _fill(migrated_sqlite_url, 2)
    with pytest.raises(DBAPIError, match="append-only"):
        _raw(migrated_sqlite_url, statement)
    assert _verify(migrated_sqlite_url).rows == 2


def test_non_finite_scores_are_refused(migrated_sqlite_url: str) -> None:
    with db.session_scope(migrated_sqlite_url) as session:
        job = make_job(session)
        decision = decide(FakeScore(0.5), DecisionContext(), make_policy())
        with pytest.raises(ChainError, match="expert_deviation"):
            append_decision(session, job, FakeScore(0.5, expert_deviation=[math.nan]), decision)


def test_timestamps_are_utc_and_rise_along_the_chain(db_url: str) -> None:
    _fill(db_url, 3)
    with db.session_scope(db_url) as session:
        times = session.scalars(sa.select(Decision.created_at).order_by(Decision.id)).all()
    assert times == sorted(times)
    assert abs((times[-1].replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()) < 3600


def test_concurrent_writers_leave_one_unbroken_chain(db_url: str) -> None:
    writers, each = 4, 15
    db.dispose_engine(db_url)  # the children open their own connections
    with multiprocessing.get_context("spawn").Pool(writers) as pool:
        written = pool.starmap(write_decisions, [(db_url, w, each) for w in range(writers)])
    assert sum(written) == writers * each
    report = _verify(db_url)
    assert report.ok, str(report)
    assert report.rows == writers * each
    with db.session_scope(db_url) as session:
        prev = session.scalars(sa.select(Decision.prev_hash)).all()
    assert len(set(prev)) == len(prev)  # no two rows claim the same predecessor: no fork


def test_one_decision_per_job(migrated_sqlite_url: str) -> None:
    """A second decision for the same job is rejected by the database; nothing of the transaction stays."""
    decision = decide(FakeScore(0.5), DecisionContext(), make_policy())
    with pytest.raises(sa.exc.IntegrityError), db.session_scope(migrated_sqlite_url) as session:
        job = make_job(session)
        append_decision(session, job, FakeScore(0.5), decision)
        append_decision(session, job, FakeScore(0.5), decision)
    assert _verify(migrated_sqlite_url).rows == 0


def test_new_decisions_cover_the_jobs_labels(db_url: str) -> None:
    with db.session_scope(db_url) as session:
        job = make_job(session, "labelled")
        job.labels = {"group": "b", "region": "eu"}
        row = append_decision(
            session, job, FakeScore(0.5), decide(FakeScore(0.5), DecisionContext(), make_policy())
        )
        assert row.chain_version == CHAIN_VERSION == 2
        assert '"labels":{"group":"b","region":"eu"}' in canonical_record(row)
    assert _verify(db_url).ok


def test_a_chain_version_may_not_go_back(migrated_sqlite_url: str) -> None:
    """Re-hashing a version-2 row as version 1 (which does not cover labels) after a version-2 row is named,
    even though its own link holds."""
    ids = _fill(migrated_sqlite_url, 3)
    engine = db.make_engine(migrated_sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER decisions_no_update")
        conn.exec_driver_sql(f"UPDATE decisions SET chain_version = 1 WHERE id = {ids[2]}")
        row = (
            conn.execute(sa.select(*Decision.__table__.columns).where(Decision.id == ids[2])).mappings().one()
        )
        conn.execute(
            sa.update(Decision.__table__)
            .where(Decision.id == ids[2])
            .values(row_hash=row_hash(row["prev_hash"], row))
        )
    engine.dispose()
    report = _verify(migrated_sqlite_url)
    assert report.first_bad_id == ids[2] and "formats never go back" in report.problem
