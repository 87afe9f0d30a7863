"""Retention: redact old prompts and reviewers' notes. The text goes; its sha256 (and a prompt's length,
word count and language) stay.

The hash chains cover `prompt_sha256` and `note_sha256`, never the text, so they still verify after redaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from audit.models import TERMINAL_STATUSES, Job, Review, utcnow


def redact_prompts(session: Session, older_than: timedelta, *, now: datetime | None = None) -> int:
    """Null the prompt and negative prompt of finished jobs created before `now - older_than`; count them.

    Jobs still queued or running keep their text (a worker needs it); they are redacted once they finish. So
    do jobs awaiting a review verdict (a reviewer reads it; an approved halted job is rendered from it).
    """
    if older_than < timedelta(0):
        raise ValueError(f"older_than: must not be negative, got {older_than}")
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.created_at < now - older_than,
            Job.redacted_at.is_(None),
            Job.status.in_(sorted(TERMINAL_STATUSES)),
            or_(Job.review.is_(None), Job.review.not_in(("pending", "escalated"))),
        )
        .values(prompt=None, negative_prompt=None, redacted_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def redact_notes(session: Session, older_than: timedelta, *, now: datetime | None = None) -> int:
    """Null the notes of review verdicts recorded before `now - older_than` (the only change the reviews'
    append-only guard allows); count them."""
    if older_than < timedelta(0):
        raise ValueError(f"older_than: must not be negative, got {older_than}")
    now = now or utcnow()
    result = session.execute(
        update(Review)
        .where(Review.created_at < now - older_than, Review.note.is_not(None))
        .values(note=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0
