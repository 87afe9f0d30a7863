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

Leases: opening a job for review (`take_lease`, `lease_next`) records who reviews it until when
(`jobs.review_lease_by`/`review_lease_until`); while the lease runs, another reviewer's lease or verdict is
refused (`LeaseHeld`, naming the holder and the end). The holder's verdict releases it; an expired lease is
free to take. `bulk_verdict` decides a filtered selection at once, one chain row per job, and only if the
selection still holds the number of jobs the client saw. The queue, `lease_next` and bulk verdicts take
their filters as one `QueueFilter`, which checks its bounds itself (`BadFilter` names the field).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


class LeaseHeld(ReviewRefused):
    """Another reviewer holds the job's review lease (409)."""

    def __init__(self, job_id: uuid.UUID, holder: str, until: datetime) -> None:
        super().__init__(
            f"job {job_id} is under review by {holder} until {_iso_z(until)}; "
            "take another job, or retry once the lease has ended"
        )
        self.job_id, self.holder, self.until = job_id, holder, until


class UnknownJob(LookupError):
    """No job with this id for this tenant (404)."""


class SelectionChanged(ReviewRefused):
    """A bulk verdict whose selection no longer holds the number of jobs the client confirmed (409)."""

    def __init__(self, found: int, confirm: int) -> None:
        super().__init__(
            f"confirm: the selection now holds {found} job(s), not the {confirm} confirmed; "
            "list it again and confirm the new count"
        )
        self.found, self.confirm = found, confirm


@dataclass(frozen=True)
class Lease:
    """A reviewer's lease on a job: `holder` (the key prefix) reviews it until `until`."""

    job: Job
    holder: str
    until: datetime


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


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
        if self.first_bad_id is None:
            return f"review chain BROKEN: {self.problem} ({self.rows} rows verified, head {self.head_hash})"
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
    _check_lease(job, reviewer[:16], utcnow())
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
    job.review_lease_by = job.review_lease_until = None  # a verdict ends the lease
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


class BadFilter(ReviewRefused):
    """A queue filter with a bound out of range or below its minimum (422); `field` names it."""

    def __init__(self, field: str, value: float, problem: str) -> None:
        super().__init__(f"{field}: {value} {problem}", conflict=False)
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class QueueFilter:
    """The review queue's filters (None: any), bounds checked once here; `label`: (key, value)."""

    language: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    label: tuple[str, str] | None = None
    min_age_s: float | None = None
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_score", "max_score", "min_age_s", "max_age_s"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise BadFilter(name, value, "is not a finite number")
        for name in ("min_age_s", "max_age_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise BadFilter(name, value, "is below 0")
        for low, high in (("min_score", "max_score"), ("min_age_s", "max_age_s")):
            lowest, highest = getattr(self, low), getattr(self, high)
            if lowest is not None and highest is not None and lowest > highest:
                raise BadFilter(high, highest, f"is below {low} {lowest}")


def _queue_filters(tenant: str, *, state: str = "open", filters: QueueFilter = QueueFilter()) -> list[Any]:
    """The WHERE clauses of the queue's filters (over `jobs` joined to `decisions`); a job's age counts from
    its submission."""
    where: list[Any] = [Job.tenant == tenant]
    if state == "open":
        where += [Job.review.in_(OPEN), Job.status.in_(("held", "halted"))]
    elif state == "decided":
        where.append(Job.review.in_(DECIDED))
    else:
        where.append(Job.review.is_not(None))
    if filters.language:
        where.append(Job.language == filters.language)
    if filters.min_score is not None:
        where.append(Decision.score >= filters.min_score)
    if filters.max_score is not None:
        where.append(Decision.score <= filters.max_score)
    if filters.label is not None:
        where.append(Job.labels[filters.label[0]].as_string() == filters.label[1])
    now = datetime.now(UTC)
    if filters.min_age_s is not None:
        where.append(Job.created_at <= now - timedelta(seconds=filters.min_age_s))
    if filters.max_age_s is not None:
        where.append(Job.created_at >= now - timedelta(seconds=filters.max_age_s))
    return where


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
    filters: QueueFilter = QueueFilter(),
    limit: int = 50,
) -> Queue:
    """The tenant's jobs in review: `open` (pending first, then escalated, oldest first; only jobs ready to
    judge, i.e. held or halted), `decided` (most recently decided first) or `all` (like decided)."""
    where = _queue_filters(tenant, state=state, filters=filters)
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


# --- leases -------------------------------------------------------------------------------------------------


def lease_of(job: Job, now: datetime | None = None) -> tuple[str, datetime] | None:
    """(holder, until) of the job's running lease; None when there is none or it has expired."""
    until = job.review_lease_until
    if job.review_lease_by is None or until is None or until <= (now or utcnow()):
        return None
    return job.review_lease_by, until


def _check_lease(job: Job, reviewer: str, now: datetime) -> None:
    held = lease_of(job, now)
    if held is not None and held[0] != reviewer:
        raise LeaseHeld(job.id, *held)


def _open_for_review(job: Job) -> None:
    if job.review not in OPEN or job.status not in ("held", "halted"):
        state = f"review {job.review}" if job.review else "not sent to review"
        raise ReviewRefused(f"job {job.id} is not awaiting a verdict (status {job.status}, {state})")


def _grant(job: Job, reviewer: str, seconds: float, now: datetime) -> Lease:
    if seconds <= 0:
        raise ReviewRefused(f"seconds: a lease must last more than 0 s, got {seconds!r}", conflict=False)
    job.review_lease_by, job.review_lease_until = reviewer, now + timedelta(seconds=seconds)
    return Lease(job, reviewer, job.review_lease_until)


def take_lease(
    session: Session,
    job_id: uuid.UUID,
    tenant: str,
    *,
    reviewer: str,
    seconds: float,
    now: datetime | None = None,
) -> Lease | None:
    """Lease a job awaiting a verdict to `reviewer` for `seconds` (renewing the reviewer's own lease); None
    if there is no such job. Raises `LeaseHeld` while another reviewer's lease runs, `ReviewRefused` when
    the job awaits no verdict. The caller commits."""
    job = _locked_job(session, job_id, tenant)
    if job is None:
        return None
    _open_for_review(job)
    now = now or utcnow()
    _check_lease(job, reviewer[:16], now)
    return _grant(job, reviewer[:16], seconds, now)


def release_lease(session: Session, job_id: uuid.UUID, tenant: str, *, reviewer: str) -> bool:
    """End `reviewer`'s lease on a job early; False if the reviewer held none (raises `LeaseHeld` if
    another reviewer's lease runs, `UnknownJob` if the tenant has no such job)."""
    job = _locked_job(session, job_id, tenant)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    held = lease_of(job)
    if held is None:
        return False
    _check_lease(job, reviewer[:16], utcnow())
    job.review_lease_by = job.review_lease_until = None
    return True


def lease_next(
    session: Session,
    tenant: str,
    *,
    reviewer: str,
    seconds: float,
    filters: QueueFilter = QueueFilter(),
    skip: uuid.UUID | None = None,
    now: datetime | None = None,
) -> Lease | None:
    """Lease the first job of the open queue (pending first, oldest first, with the queue's filters) that no
    other reviewer holds; the reviewer's own running lease comes first. None when there is none. `skip`: a
    job the reviewer just handed back, not to be leased to them again at once."""
    now = now or utcnow()
    who = reviewer[:16]
    where = _queue_filters(tenant, state="open", filters=filters)
    if skip is not None:
        where.append(Job.id != skip)
    free = (Job.review_lease_by.is_(None)) | (Job.review_lease_until <= now) | (Job.review_lease_by == who)
    mine_first = case((Job.review_lease_by == who, 0), else_=1)
    query = (
        select(Job.id)
        .join(Decision, Decision.job_id == Job.id)
        .where(*where, free)
        .order_by(mine_first, case((Job.review == "pending", 0), else_=1), Job.created_at, Job.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        # a row another reviewer is leasing right now is skipped, not waited for
        query = query.with_for_update(of=Job, skip_locked=True)
    job_id = session.scalar(query)
    if job_id is None:
        return None
    return take_lease(session, job_id, tenant, reviewer=who, seconds=seconds, now=now)


# --- bulk verdicts ------------------------------------------------------------------------------------------

BULK_VERDICTS = ("approve", "reject")
BULK_MAX = 1000


def bulk_selection(
    session: Session,
    tenant: str,
    *,
    filters: QueueFilter = QueueFilter(),
    lock: bool = False,
) -> list[uuid.UUID]:
    """The ids of the open jobs a bulk verdict with these filters decides (in id order; `lock`: FOR UPDATE
    on PostgreSQL, so the selection cannot change before the verdicts are written)."""
    where = _queue_filters(tenant, state="open", filters=filters)
    query = select(Job.id).join(Decision, Decision.job_id == Job.id).where(*where).order_by(Job.id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=Job)
    return list(session.scalars(query))


def bulk_verdict(
    session: Session,
    tenant: str,
    *,
    verdict: str,
    reviewer: str,
    confirm: int,
    note: str | None = None,
    filters: QueueFilter = QueueFilter(),
) -> list[Verdict]:
    """Approve or reject every open job the filters select (what `GET /v1/reviews` lists with them), each
    with its own verdict row in the chain. All or nothing: raises `SelectionChanged` when the selection does
    not hold exactly `confirm` jobs, `LeaseHeld` when another reviewer holds one of them."""
    if verdict not in BULK_VERDICTS:
        raise ReviewRefused(
            f"verdict: a bulk verdict is one of {', '.join(BULK_VERDICTS)}, not {verdict!r}", conflict=False
        )
    if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 1:
        raise ReviewRefused(
            f"confirm: must be the positive number of jobs selected, got {confirm!r}", conflict=False
        )
    if confirm > BULK_MAX:
        raise ReviewRefused(f"confirm: at most {BULK_MAX} jobs at once; narrow the filters", conflict=False)
    ids = bulk_selection(session, tenant, filters=filters, lock=True)
    if len(ids) != confirm:
        raise SelectionChanged(len(ids), confirm)
    results = []
    for job_id in ids:
        result = record_verdict(session, job_id, tenant, verdict=verdict, reviewer=reviewer, note=note)
        assert result is not None  # the job was selected (and locked) in this transaction
        results.append(result)
    return results
