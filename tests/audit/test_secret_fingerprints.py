"""The operator's webhook secret is the deployment's: `check_operator_secret` on real PostgreSQL records the
first fingerprint, passes the same one, moves the record on a rotation, refuses another secret in one line,
and lets processes that start at once all record the same row."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from audit import db
from audit.models import SecretFingerprint
from audit.webhook_secrets import (
    FROM_HOME,
    FROM_SETTING,
    adopt_operator_secret,
    check_operator_secret,
    recorded_operator_secret,
)
from workers.webhooks import new_secret, secret_fingerprint

pytestmark = pytest.mark.postgres
WHEN = datetime(2026, 12, 3, 8, 10, tzinfo=UTC)
A, B, C = new_secret(), new_secret(), new_secret()


def _check(url: str, secret: str, previous: str | None = None, source: str = FROM_SETTING, host: str = "h"):
    with db.session_scope(url) as session:
        return check_operator_secret(
            session,
            fingerprint=secret_fingerprint(secret),
            previous_fingerprint=secret_fingerprint(previous) if previous else None,
            source=source,
            host=host,
            now=WHEN,
        )


def _rows(url: str) -> list[SecretFingerprint]:
    with db.session_scope(url) as session:
        rows = session.scalars(select(SecretFingerprint)).all()
        session.expunge_all()
        return list(rows)


def test_the_fingerprint_is_keyed_by_the_secret_and_is_not_the_secret() -> None:
    assert secret_fingerprint(A) == secret_fingerprint(A) != secret_fingerprint(B)
    assert len(secret_fingerprint(A)) == 64 and A.removeprefix("whsec_") not in secret_fingerprint(A)
    # the key, not the spelling: `whsec_<base64>` and a raw string of the same bytes are one secret
    assert secret_fingerprint("whsec_" + "YWJj") == secret_fingerprint("abc")


def test_the_first_check_records_and_the_same_secret_passes(migrated_pg_url: str) -> None:
    assert _check(migrated_pg_url, A, host="host-a") is None
    (row,) = _rows(migrated_pg_url)
    assert (row.name, row.fingerprint, row.source, row.recorded_by) == (
        "webhook",
        secret_fingerprint(A),
        FROM_SETTING,
        "host-a",
    )
    assert row.recorded_at == WHEN
    assert all(A not in str(value) for value in vars(row).values())  # never the secret itself
    assert _check(migrated_pg_url, A, source=FROM_HOME, host="host-b") is None
    assert [(r.recorded_by, r.source) for r in _rows(migrated_pg_url)] == [("host-a", FROM_SETTING)]


def test_another_secret_gets_one_line_that_says_what_to_do(migrated_pg_url: str) -> None:
    assert _check(migrated_pg_url, A, host="host-a") is None
    problem = _check(migrated_pg_url, B, source=FROM_HOME, host="host-b")
    assert problem is not None and "\n" not in problem
    assert "generated in EMOE_HOME/webhook_secret" in problem  # where this process's secret came from
    assert "recorded 2026-12-03 08:10 UTC by host-a, from EMOE_WEBHOOK_SECRET" in problem
    assert "set the same EMOE_WEBHOOK_SECRET on every machine" in problem
    assert "EMOE_WEBHOOK_SECRET_PREVIOUS" in problem and "emoe-gate webhooks adopt-secret" in problem
    # a previous secret that is not the recorded one does not help either; nothing was changed
    assert _check(migrated_pg_url, B, previous=C) is not None
    assert [r.fingerprint for r in _rows(migrated_pg_url)] == [secret_fingerprint(A)]


def test_a_rotation_moves_the_record_to_the_new_secret(migrated_pg_url: str) -> None:
    assert _check(migrated_pg_url, A, host="host-a") is None
    assert _check(migrated_pg_url, B, previous=A, host="host-b") is None  # the operator rotates A -> B
    (row,) = _rows(migrated_pg_url)
    assert (row.fingerprint, row.recorded_by) == (secret_fingerprint(B), "host-b")
    assert _check(migrated_pg_url, B, previous=A) is None  # the next process with both settings
    assert _check(migrated_pg_url, B) is None  # and after EMOE_WEBHOOK_SECRET_PREVIOUS is unset
    assert _check(migrated_pg_url, A) is not None  # a machine still on the old secret alone is refused


def test_processes_that_start_at_once_all_pass_and_leave_one_row(migrated_pg_url: str) -> None:
    """The second process's INSERT waits on the first one's uncommitted row, then fails on the key and reads
    the row the first committed: both pass, one row."""
    results: list[str | None] = []
    first = db.get_sessionmaker(migrated_pg_url)()
    try:
        fingerprint = secret_fingerprint(A)
        assert (
            check_operator_secret(
                first, fingerprint=fingerprint, previous_fingerprint=None, source=FROM_SETTING, host="one"
            )
            is None
        )
        second = threading.Thread(target=lambda: results.append(_check(migrated_pg_url, A, host="two")))
        second.start()
        time.sleep(1.0)
        assert second.is_alive() and results == []  # blocked on the first process's row
        first.commit()
    finally:
        first.close()
    second.join(30)
    assert results == [None]
    assert [r.recorded_by for r in _rows(migrated_pg_url)] == ["one"]


def test_many_processes_racing_to_record_leave_one_row(migrated_pg_url: str) -> None:
    barrier = threading.Barrier(6)
    results: list[str | None] = []

    def start(host: str) -> None:
        barrier.wait()
        results.append(_check(migrated_pg_url, A, host=host))

    threads = [threading.Thread(target=start, args=(f"host-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [None] * 6
    with db.session_scope(migrated_pg_url) as session:
        assert session.scalar(select(func.count()).select_from(SecretFingerprint)) == 1


def test_adopting_replaces_whatever_was_recorded(migrated_pg_url: str) -> None:
    with db.session_scope(migrated_pg_url) as session:
        assert (
            adopt_operator_secret(session, fingerprint=secret_fingerprint(A), source=FROM_HOME, host="a")
            is None
        )
    assert _check(migrated_pg_url, B) is not None
    with db.session_scope(migrated_pg_url) as session:
        old = adopt_operator_secret(session, fingerprint=secret_fingerprint(B), source=FROM_HOME, host="b")
        assert old is not None and (old.fingerprint, old.recorded_by) == (secret_fingerprint(A), "a")
    assert _check(migrated_pg_url, B) is None and _check(migrated_pg_url, A) is not None
    with db.session_scope(migrated_pg_url) as session:
        row = recorded_operator_secret(session)
        assert row is not None and (row.recorded_by, row.source) == ("b", FROM_HOME)
