"""Replay against the log: read stored decisions as `policies.replay` records, and store a `ReplayRun`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import Decision, ReplayRun
from policies import Policy
from policies.replay import ReplayRecord, ReplaySummary


def decision_records(session: Session, since: datetime | None = None) -> Iterator[ReplayRecord]:
    """Every stored decision (optionally only those created at or after `since`), oldest first."""
    query = select(Decision.score, Decision.fingerprint, Decision.language, Decision.action).order_by(
        Decision.id
    )
    if since is not None:
        query = query.where(Decision.created_at >= since)
    for score, fingerprint, language, action in session.execute(query.execution_options(yield_per=5000)):
        yield ReplayRecord(score=score, fingerprint=fingerprint, language=language, action=action)


def store_replay_run(
    session: Session, policy: Policy, summary: ReplaySummary, since: datetime | None = None
) -> ReplayRun:
    """Record a replay (what the dashboard shows as the latest replay)."""
    run = ReplayRun(
        policy_name=policy.name,
        policy_version=policy.version,
        policy_hash=policy.hash,
        since=since,
        summary=summary.to_dict(),
    )
    session.add(run)
    session.flush()
    return run
