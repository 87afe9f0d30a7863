"""Job repository: create (idempotently), read per tenant, list, cancel; the workers' state machine.

A job's state lives here, not in the broker. A worker *claims* a job for a stage (scoring or
rendering) by moving it there, bumping `attempts`, stamping `started_at` and naming itself in `claimed_by`;
the claim is its token. Every later write checks the token (compare-and-set on status and attempts), so a
redelivered or stale task can never write a second decision or image.

A claim is taken over (attempts counted) when its lease ran out, when its owner is no longer alive (the
caller says who is, from the workers' heartbeats), or when the owner itself asks again: a worker process
runs one stage at a time, so its own earlier claim on the job is one it abandoned (an error, a time limit).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from audit.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Decision, Job

STAGES = ("scoring", "rendering")


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different request."""


def request_fingerprint(fields: dict[str, Any]) -> str:
    """A stable hash of what a request asked for, to tell a true retry from a reused key."""
    import json

    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class NewJob:
    """What a submission asks for: the fields `create_job` / `create_jobs` turn into a queued job."""

    tenant: str
    prompt: str
    negative_prompt: str
    mode: str
    params: dict[str, Any]
    labels: dict[str, str]
    language: str | None
    callback_url: str | None
    idempotency_key: str | None = None

    def request_hash(self) -> str:
        return request_fingerprint(
            {
                "prompt": self.prompt,
                "negative_prompt": self.negative_prompt,
                "mode": self.mode,
                "params": self.params,
                "labels": self.labels,
                "callback_url": self.callback_url,
            }
        )

    def values(self, request_hash: str) -> dict[str, Any]:
        """The new row's column values (every column a new job sets, defaults included)."""
        now = _now()
        return {
            "id": uuid.uuid4(),
            "tenant": self.tenant,
            "idempotency_key": self.idempotency_key,
            "prompt": self.prompt,
            "prompt_sha256": prompt_sha256(self.prompt),
            "prompt_chars": len(self.prompt),
            "prompt_words": len(self.prompt.split()),
            "negative_prompt": self.negative_prompt,
            "language": self.language,
            "labels": self.labels,
            "params": {**self.params, "request_sha256": request_hash},
            "mode": self.mode,
            "callback_url": self.callback_url,
            "status": "queued",
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }

    def to_job(self, request_hash: str) -> Job:
        return _new_job(self.values(request_hash))


def _new_job(values: dict[str, Any]) -> Job:
    job = Job(**values)
    # a new job has no decision or images yet: say so, so that reading them costs no query
    set_committed_value(job, "decision", None)
    set_committed_value(job, "artifacts", [])
    return job


def create_job(
    session: Session,
    *,
    tenant: str,
    prompt: str,
    negative_prompt: str,
    mode: str,
    params: dict[str, Any],
    labels: dict[str, str],
    language: str | None,
    callback_url: str | None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job; with an Idempotency-Key already used by this tenant, return (that job, False)."""
    new = NewJob(
        tenant, prompt, negative_prompt, mode, params, labels, language, callback_url, idempotency_key
    )
    if idempotency_key is None:
        job = new.to_job(new.request_hash())
        session.add(job)
        session.flush()
        return job, True
    return _create_keyed(session, new)


def create_jobs(session: Session, requests: list[NewJob]) -> list[tuple[Job, bool] | IdempotencyConflict]:
    """`create_job` for many submissions in one transaction: the ones without an Idempotency-Key go in one
    multi-row INSERT; each keyed one gets a savepoint (so a duplicate, even within `requests`, returns the
    first job). A reused key with a different request yields its IdempotencyConflict in place of a result."""
    results: list[tuple[Job, bool] | IdempotencyConflict | None] = [None] * len(requests)
    rows = []
    for i, new in enumerate(requests):
        if new.idempotency_key is None:
            values = new.values(new.request_hash())
            rows.append(values)
            results[i] = (_new_job(values), True)
    if rows:
        # one Core executemany (no unit of work: the rows are complete); the returned jobs stay detached
        session.execute(Job.__table__.insert(), rows)
    for i, new in enumerate(requests):
        if new.idempotency_key is not None:
            try:
                results[i] = _create_keyed(session, new)
            except IdempotencyConflict as exc:
                results[i] = exc
    return results  # type: ignore[return-value]


def _create_keyed(session: Session, new: NewJob) -> tuple[Job, bool]:
    request_hash = new.request_hash()
    key = new.idempotency_key or ""
    existing = _by_idempotency_key(session, new.tenant, key)
    if existing is not None:
        return _same_request(existing, request_hash), False
    job = new.to_job(request_hash)
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        # a concurrent request with the same key won the race
        existing = _by_idempotency_key(session, new.tenant, key)
        if existing is None:
            raise
        return _same_request(existing, request_hash), False
    return job, True


def _by_idempotency_key(session: Session, tenant: str, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.tenant == tenant, Job.idempotency_key == key).options(*_job_loads())
    )


def _same_request(job: Job, request_hash: str) -> Job:
    if (job.params or {}).get("request_sha256") != request_hash:
        raise IdempotencyConflict("Idempotency-Key was already used with a different request")
    return job


def _job_loads() -> list[Any]:
    return [selectinload(Job.decision), selectinload(Job.artifacts)]


def get_job(session: Session, job_id: uuid.UUID, tenant: str | None = None) -> Job | None:
    """The job with its decision and artifacts; None if it does not exist or belongs to another tenant."""
    query = select(Job).where(Job.id == job_id).options(*_job_loads())
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    return session.scalar(query)


def get_jobs(session: Session, job_ids: Iterable[uuid.UUID]) -> list[Job]:
    ids = list(job_ids)
    rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)).options(*_job_loads()))}
    return [rows[i] for i in ids if i in rows]


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raise ValueError on a cursor this module did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|")
        return datetime.fromisoformat(stamp), uuid.UUID(job_id)
    except Exception as exc:
        raise ValueError("cursor is not one this API returned") from exc


def list_jobs(
    session: Session,
    tenant: str,
    *,
    status: str | None = None,
    action: str | None = None,
    language: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """A tenant's jobs, newest first, filtered, one page at a time (keyset pagination)."""
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    if language:
        query = query.where(Job.language == language)
    if since:
        query = query.where(Job.created_at >= since)
    if until:
        query = query.where(Job.created_at < until)
    if action:
        query = query.join(Decision, Decision.job_id == Job.id).where(Decision.action == action)
    if cursor:
        stamp, last_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < stamp, and_(Job.created_at == stamp, Job.id < last_id)))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1).options(*_job_loads())
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, _encode_cursor(rows[-1]) if more and rows else None)


def cancel_job(session: Session, job_id: uuid.UUID, tenant: str) -> Job | None:
    """Cancel a job that has not finished; returns the job (its status tells whether it was cancelled)."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant == tenant).with_for_update())
    if job is None:
        return None
    if job.status not in TERMINAL_STATUSES:
        job.status = "cancelled"
        job.finished_at = _now()
        job.claimed_by = None  # a running render sees its claim gone and stops at its next step
    session.flush()
    return get_job(session, job_id, tenant)


def queue_depth(session: Session) -> int:
    """Jobs waiting for a gate worker."""
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0


def status_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: count for status, count in rows}


# --- the workers' state machine -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job for one stage; `attempt` is the token every later write checks."""

    job_id: uuid.UUID
    stage: str
    attempt: int


@dataclass(frozen=True)
class ClaimRefused:
    """Why not claimed: gone, done (past this stage), busy (a live claim), dead (attempts exhausted)."""

    reason: str
    retry_in_s: float = 0.0


def _claimable(
    job: Job,
    stage: str,
    lease_s: float,
    now: datetime,
    owner: str | None,
    owner_alive: Callable[[str], bool] | None,
) -> ClaimRefused | None:
    waiting = "queued" if stage == "scoring" else "rendering"
    if job.status == waiting and (stage == "scoring" or job.started_at is None):
        return None
    if job.status == stage:
        started = job.started_at
        if started is None:
            return None
        holder = job.claimed_by
        if holder is not None and owner is not None and holder == owner:
            return None  # this process abandoned it (it runs one stage at a time): take it back
        if holder is not None and owner_alive is not None and not owner_alive(holder):
            return None  # the holder's heartbeat is gone (killed, OOM, lost machine): take over now
        age = (now - started).total_seconds()
        if age >= lease_s:
            return None  # alive but stuck past its lease: take over
        return ClaimRefused("busy", retry_in_s=max(0.5, min(5.0, lease_s - age)))
    return ClaimRefused("done")


def _lock(query: Any, session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True, of=Job)  # the job rows, not a joined subquery's
    return query


def claim(
    session: Session,
    job_id: uuid.UUID,
    stage: str,
    *,
    lease_s: float,
    max_attempts: int,
    owner: str | None = None,
    owner_alive: Callable[[str], bool] | None = None,
) -> Claim | ClaimRefused:
    """Claim a job for `stage` for `owner`, or say why not; past `max_attempts` the job is dead-lettered
    (failed). `owner_alive(holder)` tells whether another process's claim is still held by a live worker."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    now = _now()
    job = session.scalar(_lock(select(Job).where(Job.id == job_id), session))
    if job is None:
        exists = session.scalar(select(Job.status).where(Job.id == job_id))
        return ClaimRefused("gone" if exists is None else "busy", retry_in_s=1.0)
    refused = _claimable(job, stage, lease_s, now, owner, owner_alive)
    if refused is not None:
        return refused
    if job.attempts >= max_attempts:
        _dead_letter(job, stage, now)
        return ClaimRefused("dead")
    claimed = _take(job, stage, now, owner)
    session.flush()
    return claimed


def _take(job: Job, stage: str, now: datetime, owner: str | None) -> Claim:
    """The claim itself: the job moves to `stage`, its attempt is counted and its owner named."""
    job.status = stage
    job.attempts += 1
    job.started_at = now
    job.claimed_by = owner
    return Claim(job.id, stage, job.attempts)


def _dead_letter(job: Job, stage: str, now: datetime) -> None:
    """A job out of attempts fails, naming the stage it gave up at and its last error."""
    job.status = "failed"
    job.error = f"gave up after {job.attempts} attempt(s) at {stage}" + (
        f": {job.error}" if job.error else ""
    )
    job.finished_at = now
    job.claimed_by = None


def _fair_order(candidates: Any, limit: int) -> Any:
    """The first `limit` jobs among `candidates` (a filtered select of Job) in fair-share order: each tenant's
    oldest job first, then each tenant's second oldest, and so on (oldest first within a round), so that a
    tenant with a backlog cannot keep another tenant's job out of every batch."""
    turns = candidates.with_only_columns(
        Job.id,
        func.row_number().over(partition_by=Job.tenant, order_by=(Job.created_at, Job.id)).label("turn"),
    ).subquery()
    return (
        select(Job)
        .join(turns, turns.c.id == Job.id)
        .order_by(turns.c.turn, Job.created_at, Job.id)
        .limit(limit)
    )


def claim_waiting(
    session: Session,
    *,
    limit: int,
    max_attempts: int,
    exclude: Iterable[uuid.UUID] = (),
    owner: str | None = None,
) -> list[Claim]:
    """Claim up to `limit` more queued jobs for scoring (cross-request gate batching), in fair-share order:
    every tenant's oldest waiting job before any tenant's second."""
    if limit <= 0:
        return []
    query = select(Job).where(Job.status == "queued", Job.attempts < max_attempts)
    excluded = list(exclude)
    if excluded:
        query = query.where(Job.id.not_in(excluded))
    query = _lock(_fair_order(query, limit), session)
    now = _now()
    claims = [_take(job, "scoring", now, owner) for job in session.scalars(query)]
    session.flush()
    return claims


def claim_render_batch(
    session: Session,
    first: Claim,
    *,
    limit: int,
    defaults: dict[str, float],
    max_attempts: int,
    owner: str | None = None,
) -> list[Claim]:
    """Claim up to `limit` more jobs waiting to be rendered that can share `first`'s denoising loop: the same
    mode and, for each name of `defaults` (steps, guidance, height, width: what lets jobs share one loop), the
    same value (a job's param, or the default where it has none). The database finds them, in fair-share
    order (every tenant's oldest before any tenant's second), however many others wait ahead of them."""
    if limit <= 0:
        return []
    held = session.get(Job, first.job_id)
    if held is None:
        return []
    params = held.params or {}
    query = select(Job).where(
        Job.status == "rendering",
        Job.started_at.is_(None),
        Job.attempts < max_attempts,
        Job.id != first.job_id,
        Job.mode == held.mode,
        *(
            func.coalesce(Job.params[name].as_float(), float(default))
            == float(params[name] if params.get(name) is not None else default)
            for name, default in defaults.items()
        ),
    )
    query = _lock(_fair_order(query, limit), session)
    now = _now()
    claims = [_take(job, "rendering", now, owner) for job in session.scalars(query)]
    session.flush()
    return claims


def holds(session: Session, claim_: Claim) -> Job | None:
    """The job, locked, if `claim_` still holds it; None if it was cancelled, finished or taken over."""
    job = session.scalar(
        select(Job)
        .where(Job.id == claim_.job_id, Job.status == claim_.stage, Job.attempts == claim_.attempt)
        .with_for_update()
    )
    return job


def still_held(session: Session, claims: Iterable[Claim]) -> set[uuid.UUID]:
    """The jobs of `claims` that their claim still holds, in one query (a batch asks this to stop early)."""
    wanted = {c.job_id: (c.stage, c.attempt) for c in claims}
    if not wanted:
        return set()
    rows = session.execute(select(Job.id, Job.status, Job.attempts).where(Job.id.in_(list(wanted)))).all()
    return {job_id for job_id, status, attempts in rows if wanted[job_id] == (status, attempts)}


def move(session: Session, claim_: Claim, status: str, *, error: str | None = None) -> bool:
    """Compare-and-set the claimed job to `status`; False if the claim no longer holds."""
    values: dict[str, Any] = {"status": status, "updated_at": _now()}
    if status in TERMINAL_STATUSES:
        values["finished_at"] = _now()
    if status == "rendering":
        values.update(started_at=None, attempts=0, claimed_by=None)  # attempts count per stage
    if status in TERMINAL_STATUSES:
        values["claimed_by"] = None
    if error is not None:
        values["error"] = error
    result = session.execute(
        update(Job)
        .where(Job.id == claim_.job_id, Job.status == claim_.stage, Job.attempts == claim_.attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def fail(session: Session, claim_: Claim, error: str) -> bool:
    """The claimed job cannot be done (its request is at fault, no retry helps): failed with `error`. False
    if the claim no longer holds."""
    return move(session, claim_, "failed", error=error)


def record_decision(
    job: Job,
    action: str,
    *,
    on_flag: str = "release",
    on_halt: str = "final",
    language: str | None = None,
) -> str:
    """Move a claimed, just-scored job (locked by `holds`) on by the gate's action: halted, completed
    (score_only) or rendering (its render stage's attempts start from zero). Returns the new status.

    With the policy's `on_flag="hold"` a flagged job is marked for review (rendered, then `held` by
    `complete`); with `on_halt="review"` a halted job waits in the review queue. A score_only job has no
    images to hold and never enters review. `language`: the one the gate detected, for a job stored
    without one."""
    if job.language is None and language is not None:
        job.language = language
    if job.mode != "score_only" and (
        (action == "flag" and on_flag == "hold") or (action == "halt" and on_halt == "review")
    ):
        job.review = "pending"
    if action == "halt":
        job.status = "halted"
    elif job.mode == "score_only":
        job.status = "completed"
    else:
        job.status = "rendering"
    if job.status in TERMINAL_STATUSES:
        job.finished_at = _now()
    else:
        job.started_at = None
        job.attempts = 0  # attempts count per stage
    job.claimed_by = None
    return job.status


def complete(job: Job) -> str:
    """Mark a claimed, rendered job (locked by `holds`) completed, or `held` while it awaits review (a job
    a reviewer approved before it was rendered completes). Returns the new status."""
    job.status = "held" if job.review in ("pending", "escalated") else "completed"
    job.finished_at = _now()
    job.claimed_by = None
    return job.status


def release(session: Session, claim_: Claim, error: str) -> bool:
    """Give a claim back after an error so that a retry can take it (attempts stay counted)."""
    waiting = "queued" if claim_.stage == "scoring" else "rendering"
    result = session.execute(
        update(Job)
        .where(Job.id == claim_.job_id, Job.status == claim_.stage, Job.attempts == claim_.attempt)
        .values(status=waiting, started_at=None, claimed_by=None, error=error[:2000], updated_at=_now())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def withdraw(session: Session, job_ids: Iterable[uuid.UUID]) -> int:
    """Delete just-committed jobs that are still queued, because the broker refused their messages (so no
    orphan row waits for a task that never comes). Commits; returns how many went."""
    withdrawn = 0
    for job_id in job_ids:
        job = session.get(Job, job_id)
        if job is not None and job.status == "queued":
            session.delete(job)
            withdrawn += 1
    session.commit()
    return withdrawn


def requeue_unfinished(session: Session) -> list[tuple[uuid.UUID, str]]:
    """At the start of a worker that is the only one (embedded mode): every claim is one a dead process left,
    so scoring jobs go back to queued and rendering ones wait again. Returns (job id, "gate" or "render")
    for every unfinished job, oldest first, to enqueue."""
    rows = session.scalars(
        select(Job).where(Job.status.in_(ACTIVE_STATUSES)).order_by(Job.created_at).with_for_update()
    ).all()
    found = []
    for job in rows:
        if job.status in STAGES:
            job.started_at = None
            job.claimed_by = None
            if job.status == "scoring":
                job.status = "queued"
        found.append((job.id, "render" if job.status == "rendering" else "gate"))
    session.flush()
    return found


@dataclass(frozen=True)
class Stalled:
    """A job the recovery sweep should re-enqueue on `queue`; `claimed`: a lost claim (its owner is gone or
    its lease ran out), else a waiting job whose broker message may be lost."""

    job_id: uuid.UUID
    queue: str
    claimed: bool


def stalled(
    session: Session,
    *,
    older_than_s: float,
    lease_s: float,
    live_owners: set[str] | None = None,
    limit: int = 500,
) -> list[Stalled]:
    """Jobs a lost broker message or a lost worker may have orphaned: queued or rendering jobs waiting longer
    than `older_than_s`, claims whose lease ran out, and (given the set of live worker identities) claims
    whose owner is not among them."""
    now = _now()
    old = now - timedelta(seconds=older_than_s)
    stale = now - timedelta(seconds=lease_s)
    claimed = and_(Job.status.in_(STAGES), Job.started_at.is_not(None))
    lost = and_(claimed, Job.started_at < stale)
    if live_owners is not None:
        orphaned = and_(claimed, Job.claimed_by.is_not(None))
        if live_owners:
            orphaned = and_(orphaned, Job.claimed_by.not_in(sorted(live_owners)))
        lost = or_(lost, orphaned)
    rows = session.execute(
        select(Job.id, Job.status, Job.started_at.is_not(None))
        .where(
            or_(
                and_(Job.status == "queued", Job.updated_at < old),
                and_(Job.status == "rendering", Job.started_at.is_(None), Job.updated_at < old),
                lost,
            )
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [
        Stalled(job_id, "gate" if status in ("queued", "scoring") else "render", bool(started))
        for job_id, status, started in rows
    ]


def touch(session: Session, job_ids: Iterable[uuid.UUID]) -> None:
    """Mark jobs as just re-enqueued (so the recovery sweep leaves them alone for a while)."""
    ids = list(job_ids)
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(updated_at=_now())
            .execution_options(synchronize_session=False)
        )
