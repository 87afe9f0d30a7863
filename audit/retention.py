"""Retention: redact old prompts. The text goes; its sha256, length, word count and language stay.

The hash chain covers `prompt_sha256`, never the text, so the chain still verifies after redaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from audit.models import TERMINAL_STATUSES, Job, utcnow


def redact_prompts(session: Session, older_than: timedelta, *, now: datetime | None = None) -> int:
    """Null the prompt and negative prompt of finished jobs created before `now - older_than`; count them.

    Jobs still queued or running keep their text (a worker needs it); they are redacted once they finish.
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
        )
        .values(prompt=None, negative_prompt=None, redacted_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0
