"""Retention: old finished prompts lose their text, keep hash, length and language; the chain verifies."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa

from audit import db
from audit.chain import append_decision, verify_chain
from audit.models import Decision, Job, utcnow
from audit.retention import redact_prompts
from policies import DecisionContext, decide
from tests.audit.factories import FakeScore, append_one, make_job, make_policy


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"migrated_{'pg' if request.param == 'postgresql' else 'sqlite'}_url")


def test_redaction_keeps_hash_length_language_and_the_chain(db_url: str) -> None:
    now = utcnow()
    with db.session_scope(db_url) as session:
        append_one(
            session, 0.5, prompt="old and finished", language="fr", created_at=now - timedelta(days=40)
        )
        append_one(
            session, 1.5, prompt="old but still queued", status="queued", created_at=now - timedelta(days=40)
        )
        append_one(session, 2.5, prompt="recent", created_at=now - timedelta(days=5))
    with db.session_scope(db_url) as session:
        before = {
            j.prompt: (j.prompt_sha256, j.prompt_chars, j.prompt_words, j.language)
            for j in session.scalars(sa.select(Job))
        }

    with db.session_scope(db_url) as session:
        assert redact_prompts(session, timedelta(days=30), now=now) == 1
    with db.session_scope(db_url) as session:
        jobs = {j.prompt_sha256: j for j in session.scalars(sa.select(Job))}
        old = jobs[before["old and finished"][0]]
        assert old.prompt is None and old.negative_prompt is None and old.redacted_at is not None
        assert (old.prompt_sha256, old.prompt_chars, old.prompt_words, old.language) == before[
            "old and finished"
        ]
        assert jobs[before["old but still queued"][0]].prompt == "old but still queued"
        assert jobs[before["recent"][0]].prompt == "recent"
        report = verify_chain(session)
    assert report.ok and report.rows == 3

    with db.session_scope(db_url) as session:  # idempotent
        assert redact_prompts(session, timedelta(days=30), now=now) == 0


def test_the_log_never_holds_negative_prompt_text(migrated_sqlite_url: str) -> None:
    score = FakeScore(0.5, scoring={"seed": 0, "negative_prompt": "blurry, watermark"})
    with db.session_scope(migrated_sqlite_url) as session:
        job = make_job(session)
        append_decision(session, job, score, decide(score, DecisionContext(), make_policy()))
    with db.session_scope(migrated_sqlite_url) as session:
        scoring = session.scalars(sa.select(Decision.scoring)).one()
    assert scoring == {"seed": 0, "negative_prompt_sha256": hashlib.sha256(b"blurry, watermark").hexdigest()}


def test_negative_age_is_refused(migrated_sqlite_url: str) -> None:
    with db.session_scope(migrated_sqlite_url) as session, pytest.raises(ValueError, match="older_than"):
        redact_prompts(session, timedelta(days=-1))
