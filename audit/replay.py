"""Replay against the log: read stored decisions as `policies.replay` records, and store a `ReplayRun`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from audit.models import Decision, Job, ReplayRun
from policies import Policy
from policies.conformal import ReviewedScore
from policies.replay import ReplayRecord, ReplaySummary, replay

DECIDED = ("approved", "rejected")


def decision_records(
    session: Session, since: datetime | None = None, tenant: str | None = None
) -> Iterator[ReplayRecord]:
    """Every stored decision (optionally only those created at or after `since`, or of one tenant), oldest
    first."""
    review = case((Job.review.in_(DECIDED), Job.review), else_=None)  # the reviewers' final verdict
    query = (
        select(Decision.score, Decision.fingerprint, Decision.language, Decision.action, review)
        .join(Job, Job.id == Decision.job_id)
        .order_by(Decision.id)
    )
    if since is not None:
        query = query.where(Decision.created_at >= since)
    if tenant is not None:
        query = query.where(Decision.tenant == tenant)
    for score, fingerprint, language, action, verdict in session.execute(
        query.execution_options(yield_per=5000)
    ):
        yield ReplayRecord(
            score=score, fingerprint=fingerprint, language=language, action=action, review=verdict
        )


def reviewed_scores(
    session: Session, fingerprint: str, *, since: datetime | None = None, tenant: str | None = None
) -> tuple[list[ReviewedScore], int]:
    """The decided reviewed jobs scored under `fingerprint` (score and final verdict), and how many
    decisions under it carry no verdict (continued unreviewed, or still in the queue)."""
    query = select(Decision.score, Job.review, Decision.language).join(Job, Job.id == Decision.job_id)
    query = query.where(Decision.fingerprint == fingerprint)
    if since is not None:
        query = query.where(Decision.created_at >= since)
    if tenant is not None:
        query = query.where(Decision.tenant == tenant)
    reviewed, unreviewed = [], 0
    for score, verdict, language in session.execute(query):
        if verdict in DECIDED:
            reviewed.append(ReviewedScore(score=score, verdict=verdict, language=language))
        else:
            unreviewed += 1
    return reviewed, unreviewed


def store_replay_run(
    session: Session, policy: Policy, summary: ReplaySummary, since: datetime | None = None
) -> ReplayRun:
    """Record a replay (what the dashboard shows as the latest replay), with each tenant's own totals under
    `summary["tenants"]` (the dashboard shows a tenant only its own)."""
    tenants = session.scalars(select(Decision.tenant).distinct().order_by(Decision.tenant))
    by_tenant = {t: replay(decision_records(session, since, t), policy).to_dict() for t in list(tenants)}
    run = ReplayRun(
        policy_name=policy.name,
        policy_version=policy.version,
        policy_hash=policy.hash,
        since=since,
        summary={**summary.to_dict(), "tenants": by_tenant},
    )
    session.add(run)
    session.flush()
    return run
