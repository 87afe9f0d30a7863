"""Human review for review keys: `GET /v1/reviews` (the queue) and `POST /v1/jobs/{id}/review` (a verdict)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from audit import reviews as repo
from audit.db import transaction
from audit.models import Review
from gateway.auth import AUTH_RESPONSES, ReviewTenant
from gateway.errors import field_error
from gateway.routers.jobs import job_out
from gateway.schemas import JobOut, ReviewedJob, ReviewQueue, ReviewRequest, ReviewResult, VerdictOut

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["reviews"], responses=AUTH_RESPONSES)


def verdict_out(row: Review) -> VerdictOut:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return VerdictOut(
        id=row.id,
        verdict=row.verdict,
        previous=row.previous,
        outcome=row.outcome,
        override=row.override,
        reviewer=row.reviewer,
        note=row.note,
        created_at=created,
        row_hash=row.row_hash,
    )


def _age_s(moment: datetime | None, now: datetime) -> float | None:
    if moment is None:
        return None
    return max(0.0, (now - (moment if moment.tzinfo else moment.replace(tzinfo=UTC))).total_seconds())


def _label(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    key, sep, wanted = value.partition(":")
    if not sep or not key:
        raise field_error(["query", "label"], "must be key:value (e.g. region:eu)")
    return key, wanted


@router.get(
    "/reviews", response_model=ReviewQueue, summary="Jobs in human review: pending first, oldest first."
)
def list_reviews(
    tenant: ReviewTenant,
    request: Request,
    state: Annotated[
        Literal["open", "decided", "all"],
        Query(
            description="open: awaiting a verdict (pending, then escalated); decided: approved or rejected."
        ),
    ] = "open",
    language: Annotated[str | None, Query(pattern=r"^[a-z]{2,3}$", description="ISO 639-1 code.")] = None,
    min_score: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    max_score: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    label: Annotated[
        str | None, Query(max_length=330, pattern=r"^[A-Za-z0-9_.:-]+:.*$", description="key:value")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ReviewQueue:
    if min_score is not None and max_score is not None and min_score > max_score:
        raise field_error(["query", "max_score"], f"is below min_score {min_score}")
    wanted = _label(label)
    with transaction(request.app.state.sessionmaker) as session:
        queue = repo.review_queue(
            session,
            tenant,
            state=state,
            language=language,
            min_score=min_score,
            max_score=max_score,
            label=wanted,
            limit=limit,
        )
        history = repo.verdicts_of(session, [j.id for j in queue.jobs])
        now = datetime.now(UTC)
        items = [
            ReviewedJob(
                job=job_out(job),
                waiting_s=_age_s(job.created_at, now) or 0.0,
                verdicts=[verdict_out(r) for r in history[job.id]],
            )
            for job in queue.jobs
        ]
    return ReviewQueue(total=queue.total, oldest_waiting_s=_age_s(queue.oldest, now), items=items)


@router.post(
    "/jobs/{job_id}/review",
    response_model=ReviewResult,
    responses={
        404: {"description": "No such job for this tenant."},
        409: {"description": "The job is not awaiting review, or was decided already (send an override)."},
    },
    summary="Record a verdict on a job in review: approve, reject or escalate.",
)
async def review_job(
    job_id: uuid.UUID, body: ReviewRequest, tenant: ReviewTenant, request: Request
) -> ReviewResult:
    reviewer = getattr(request.state, "key_prefix", "") or "unknown"
    result, job, verdict = await run_in_threadpool(_record, request, job_id, tenant, body, reviewer)
    dispatcher = request.app.state.dispatcher
    try:  # after the commit: the render of an approved halted job, then the webhook
        if result.render:
            dispatcher.render(job_id)
        if result.job.callback_url:
            dispatcher.hook(job_id, f"review.{verdict.outcome}")
    except Exception:  # the recovery sweep re-enqueues a render whose message was lost
        log.exception("could not enqueue the follow-up of review %d of job %s", verdict.id, job_id)
    return ReviewResult(job=job, verdict=verdict)


def _record(
    request: Request, job_id: uuid.UUID, tenant: str, body: ReviewRequest, reviewer: str
) -> tuple[repo.Verdict, JobOut, VerdictOut]:
    with transaction(request.app.state.sessionmaker) as session:
        try:
            result = repo.record_verdict(
                session,
                job_id,
                tenant,
                verdict=body.verdict,
                reviewer=reviewer,
                note=body.note,
                override=body.override,
            )
        except repo.ReviewRefused as exc:
            if exc.conflict:
                raise HTTPException(status_code=409, detail=str(exc)) from exc
            raise field_error(["body", "note"], str(exc)) from exc
        if result is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return result, job_out(result.job), verdict_out(result.review)
