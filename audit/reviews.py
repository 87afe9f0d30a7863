"""Human review: the queue of jobs awaiting a verdict, and verdicts appended to their own hash chain.

A job enters review at its decision (policy `on_flag: hold` for a flagged job, `on_halt: review` for a halted
one; `audit.jobs.record_decision`): `jobs.review` is `pending`. A verdict moves it:

| verdict  | a job with images (flagged, rendered) | a job without (halted)                   |
|----------|---------------------------------------|------------------------------------------|
| approve  | completed (images served)             | rendering (the caller enqueues a render) |
| reject   | rejected (images never served)        | halted                                   |
| escalate | held (still in the queue)             | halted (still in the queue)              |

A verdict on a decided job (approved or rejected) is refused unless it is an explicit override with a reason.
Each verdict is a `reviews` row in a chain of its own, `row_hash = sha256(prev_hash ‖ canonical record)`,
serialised like the decisions' chain (PostgreSQL: advisory lock; SQLite: `BEGIN IMMEDIATE`). The record
covers the note's sha256, not its text (redaction nulls the text), and the hash of the decision it reviews.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session, selectinload

from audit.chain import GENESIS_HASH, _iso_utc
from audit.models import VERDICTS, Decision, Job, Review, utcnow

REVIEW_CHAIN_VERSION = 1
# pg_advisory_xact_lock key of the reviews chain (ASCII "emoerevw").
REVIEW_LOCK_KEY = int.from_bytes(b"emoerevw", "big") & 0x7FFF_FFFF_FFFF_FFFF
OPEN = ("pending", "escalated")
DECIDED = ("approved", "rejected")
REVIEWABLE_STATUSES = ("held", "halted", "completed", "rejected")
_TEXT_FIELDS = ("tenant", "verdict", "previous", "outcome", "reviewer", "note_sha256", "decision_hash")
_OUTCOME = {"approve": "approved", "reject": "rejected", "escalate": "escalated"}


class ReviewRefused(ValueError):
    """A verdict that cannot be recorded; `conflict`: the job's state refuses it (409), not the request."""

    def __init__(self, message: str, *, conflict: bool = True) -> None:
        super().__init__(message)
        self.conflict = conflict


@dataclass(frozen=True)
class Verdict:
    """A recorded verdict and what the caller must do next (`render`: enqueue the approved halted job)."""

    review: Review
    job: Job
    render: bool


# --- the chain ----------------------------------------------------------------------------------------------


def canonical_record(row: Review | Any) -> str:
    """The exact text a review row's hash covers (`row`: a `Review` or a mapping of its column values)."""
    get = row.__getattribute__ if isinstance(row, Review) else row.__getitem__
    record: dict[str, Any] = {
        "v": REVIEW_CHAIN_VERSION,
        "job_id": str(uuid.UUID(str(get("job_id")))),
        "decision_id": int(get("decision_id")),
        "created_at": _iso_utc(get("created_at")),
        "override": bool(get("override")),
    }
    for name in _TEXT_FIELDS:
        record[name] = get(name)
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(prev_hash: str, row: Review | Any) -> str:
    return hashlib.sha256((prev_hash + canonical_record(row)).encode("utf-8")).hexdigest()


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REVIEW_LOCK_KEY})


def chain_head(session: Session) -> str:
    head = session.scalar(select(Review.row_hash).order_by(Review.id.desc()).limit(1))
    return head or GENESIS_HASH


@dataclass(frozen=True)
class ReviewChainReport:
    ok: bool
    rows: int
    head_hash: str
    first_bad_id: int | None = None
    problem: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"review chain intact: {self.rows} verdicts, head {self.head_hash}"
        return (
            f"review chain BROKEN at review id {self.first_bad_id}: {self.problem} "
            f"({self.rows} rows verified before it)"
        )


def verify_reviews(session: Session) -> ReviewChainReport:
    """Walk the verdicts in id order and recompute every link; stop at the first bad row."""
    prev, rows = GENESIS_HASH, 0
    query = select(*Review.__table__.columns).order_by(Review.id)
    for row in session.execute(query).mappings():
        bad = None
        if row["prev_hash"] != prev:
            bad = (
                "prev_hash does not match the previous row's row_hash (a verdict was deleted, added or moved)"
            )
        elif row["row_hash"] != row_hash(prev, row):
            bad = "row_hash does not match the row's content (altered)"
        elif row["note"] is not None and _sha256(row["note"]) != row["note_sha256"]:
            bad = "the note does not match its recorded sha256 (altered)"
        if bad:
            return ReviewChainReport(False, rows, prev, row["id"], bad)
        prev, rows = row["row_hash"], rows + 1
    return ReviewChainReport(True, rows, prev)


# --- verdicts -----------------------------------------------------------------------------------------------


def _locked_job(session: Session, job_id: uuid.UUID, tenant: str) -> Job | None:
    query = select(Job).where(Job.id == job_id, Job.tenant == tenant)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()  # two reviewers of one job: the second waits, then sees the first
    job = session.scalar(query)
    if job is not None:
        session.refresh(job, ["decision", "artifacts"])
    return job


def _next(job: Job, verdict: str) -> tuple[str, str]:
    """(review state, job status) after `verdict` (see the module's table)."""
    rendered = bool(job.artifacts)
    if verdict == "approve":
        return "approved", "completed" if rendered else "rendering"
    if verdict == "reject":
        return "rejected", "rejected" if rendered else "halted"
    return "escalated", "held" if rendered else "halted"


def record_verdict(
    session: Session,
    job_id: uuid.UUID,
    tenant: str,
    *,
    verdict: str,
    reviewer: str,
    note: str | None = None,
    override: bool = False,
) -> Verdict | None:
    """Apply a reviewer's verdict to a job of `tenant` and append it to the chain (the caller commits soon);
    None if there is no such job. Raises `ReviewRefused` when the job is not reviewable now."""
    if verdict not in VERDICTS:
        raise ReviewRefused(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}", conflict=False)
    job = _locked_job(session, job_id, tenant)
    if job is None:
        return None
    previous = job.review
    if previous is None or job.decision is None:
        raise ReviewRefused(f"job {job_id} was not sent to review (status {job.status})")
    if job.status not in REVIEWABLE_STATUSES:
        raise ReviewRefused(f"job {job_id} is {job.status}; it can be reviewed once it is held or halted")
    if previous in DECIDED:
        if not override:
            raise ReviewRefused(
                f"job {job_id} was already {previous}; send override: true with a note saying why"
            )
        if not (note or "").strip():
            raise ReviewRefused("note: an override needs a reason", conflict=False)
        if _OUTCOME[verdict] == previous:
            raise ReviewRefused(f"job {job_id} is already {previous}: nothing to override")
    review_state, status = _next(job, verdict)
    now = utcnow()
    job.review, job.status, job.updated_at = review_state, status, now
    if status == "rendering":
        job.started_at, job.attempts, job.claimed_by, job.finished_at = None, 0, None, None
    else:
        job.finished_at = now
    row = Review(
        job_id=job.id,
        decision_id=job.decision.id,
        decision_hash=job.decision.row_hash,
        tenant=tenant,
        verdict=verdict,
        previous=previous,
        outcome=review_state,
        override=previous in DECIDED,
        reviewer=reviewer[:16],
        note=note or None,
        note_sha256=_sha256(note) if note else None,
    )
    _lock_chain(session)
    session.flush()
    row.prev_hash = chain_head(session)
    row.created_at = utcnow()  # under the lock, so times rise along the chain
    row.row_hash = row_hash(row.prev_hash, row)
    session.add(row)
    session.flush()
    return Verdict(row, job, render=status == "rendering")


def verdicts_of(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Review]]:
    """Each job's verdicts, oldest first."""
    found: dict[uuid.UUID, list[Review]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        for row in session.scalars(select(Review).where(Review.job_id.in_(job_ids)).order_by(Review.id)):
            found[row.job_id].append(row)
    return found


# --- the queue ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queue:
    jobs: list[Job]
    total: int
    oldest: datetime | None


def review_queue(
    session: Session,
    tenant: str,
    *,
    state: str = "open",
    language: str | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    label: tuple[str, str] | None = None,
    limit: int = 50,
) -> Queue:
    """The tenant's jobs in review: `open` (pending first, then escalated, oldest first; only jobs ready to
    judge, i.e. held or halted), `decided` (most recently decided first) or `all` (like decided)."""
    where = [Job.tenant == tenant]
    if state == "open":
        where += [Job.review.in_(OPEN), Job.status.in_(("held", "halted"))]
    elif state == "decided":
        where.append(Job.review.in_(DECIDED))
    else:
        where.append(Job.review.is_not(None))
    if language:
        where.append(Job.language == language)
    if min_score is not None:
        where.append(Decision.score >= min_score)
    if max_score is not None:
        where.append(Decision.score <= max_score)
    if label is not None:
        where.append(Job.labels[label[0]].as_string() == label[1])
    base = select(Job).join(Decision, Decision.job_id == Job.id).where(*where)
    if state == "open":
        order = [case((Job.review == "pending", 0), else_=1), Job.created_at, Job.id]
    else:
        order = [Job.updated_at.desc(), Job.id.desc()]
    loads = (selectinload(Job.decision), selectinload(Job.artifacts))
    query = base.order_by(*order).limit(limit).options(*loads)
    total, oldest = session.execute(
        select(func.count(), func.min(Job.created_at)).select_from(Job).join(Decision).where(*where)
    ).one()
    return Queue(list(session.scalars(query)), total or 0, oldest)


def open_count(session: Session, tenant: str | None = None) -> int:
    """How many jobs wait for a verdict (all tenants unless one is given)."""
    query = (
        select(func.count()).select_from(Job).where(Job.review.in_(OPEN), Job.status.in_(("held", "halted")))
    )
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    return session.scalar(query) or 0
