"""Human review for review keys: `GET /v1/reviews` (the queue), `POST /v1/jobs/{id}/review` (a verdict),
leases (`POST /v1/reviews/next`, `POST`/`DELETE /v1/reviews/{id}/lease`) and `POST /v1/reviews/bulk`."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from audit import reviews as repo
from audit.db import transaction
from audit.models import Review
from gateway.auth import AUTH_RESPONSES, ReviewTenant
from gateway.errors import field_error
from gateway.schemas import (
    JobOut,
    ReviewedJob,
    ReviewQueue,
    ReviewRequest,
    ReviewResult,
    Strict,
    Text,
    VerdictOut,
    job_out,
)
from workers.dispatch import follow_up_reviews

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["reviews"], responses=AUTH_RESPONSES)


def verdict_out(row: Review) -> VerdictOut:
    return VerdictOut.model_validate(row)


def _age_s(moment: datetime | None, now: datetime) -> float | None:
    if moment is None:
        return None
    return max(0.0, (now - moment).total_seconds())


MinAge = Annotated[
    float | None, Query(ge=0, allow_inf_nan=False, description="Waiting at least this long (seconds).")
]
MaxAge = Annotated[
    float | None, Query(ge=0, allow_inf_nan=False, description="Waiting at most this long (seconds).")
]


def _queue_filter(
    where: str,
    language: str | None,
    min_score: float | None,
    max_score: float | None,
    min_age_s: float | None,
    max_age_s: float | None,
) -> repo.QueueFilter:
    """The request's queue filter without its label; a bound the filter refuses (a minimum above its
    maximum) is a 422 naming the field (`where`: query or body), before any error of the label."""
    try:
        return repo.QueueFilter(
            language=language,
            min_score=min_score,
            max_score=max_score,
            min_age_s=min_age_s,
            max_age_s=max_age_s,
        )
    except repo.BadFilter as exc:
        raise field_error([where, exc.field], exc.problem) from exc


def _label(value: str | None, where: str = "query") -> tuple[str, str] | None:
    if value is None:
        return None
    key, sep, wanted = value.partition(":")
    if not sep or not key:
        raise field_error([where, "label"], "must be key:value (e.g. region:eu)")
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
    min_age_s: MinAge = None,
    max_age_s: MaxAge = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ReviewQueue:
    filters = _queue_filter("query", language, min_score, max_score, min_age_s, max_age_s)
    filters = replace(filters, label=_label(label))
    with transaction(request.app.state.sessionmaker) as session:
        queue = repo.review_queue(session, tenant, state=state, filters=filters, limit=limit)
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
    follow_up_reviews(request.app.state.dispatcher, [result])
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


# --- leases -------------------------------------------------------------------------------------------------


class LeaseOut(BaseModel):
    """A review lease: no other reviewer may lease or decide the job until `until`."""

    job_id: uuid.UUID
    holder: str = Field(description="The shown prefix of the reviewer's API key.")
    until: datetime
    seconds: float = Field(description="Seconds the lease still runs.")
    item: ReviewedJob | None = Field(default=None, description="The leased job (for `/v1/reviews/next`).")


LEASE_RESPONSES: dict[int | str, dict[str, str]] = {
    404: {"description": "No such job for this tenant."},
    409: {
        "description": "Another reviewer holds the job's lease (the message says who, until when), or "
        "the job awaits no verdict."
    },
}


def _reviewer(request: Request) -> str:
    return getattr(request.state, "key_prefix", "") or "unknown"


def _lease_out(lease: repo.Lease, item: ReviewedJob | None = None) -> LeaseOut:
    left = max(0.0, (lease.until - datetime.now(UTC)).total_seconds())
    return LeaseOut(job_id=lease.job.id, holder=lease.holder, until=lease.until, seconds=left, item=item)


def _conflict(exc: repo.ReviewRefused, field: str) -> HTTPException:
    if exc.conflict:
        return HTTPException(status_code=409, detail=str(exc))
    return field_error(["body", field], str(exc))


@router.post(
    "/reviews/next",
    response_model=LeaseOut,
    responses={**LEASE_RESPONSES, 204: {"description": "No job awaits a verdict (with these filters)."}},
    summary="Lease the next job of the queue (pending first, oldest first) that no other reviewer holds.",
)
def lease_next(
    tenant: ReviewTenant,
    request: Request,
    language: Annotated[str | None, Query(pattern=r"^[a-z]{2,3}$", description="ISO 639-1 code.")] = None,
    min_score: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    max_score: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    label: Annotated[
        str | None, Query(max_length=330, pattern=r"^[A-Za-z0-9_.:-]+:.*$", description="key:value")
    ] = None,
    min_age_s: MinAge = None,
    max_age_s: MaxAge = None,
) -> LeaseOut | Response:
    filters = _queue_filter("query", language, min_score, max_score, min_age_s, max_age_s)
    filters = replace(filters, label=_label(label))
    seconds = request.app.state.settings.review_lease_s
    with transaction(request.app.state.sessionmaker) as session:
        lease = repo.lease_next(
            session, tenant, reviewer=_reviewer(request), seconds=seconds, filters=filters
        )
        if lease is None:
            return Response(status_code=204)
        session.flush()
        session.refresh(lease.job, ["decision", "artifacts"])
        history = repo.verdicts_of(session, [lease.job.id])[lease.job.id]
        now = datetime.now(UTC)
        item = ReviewedJob(
            job=job_out(lease.job),
            waiting_s=_age_s(lease.job.created_at, now) or 0.0,
            verdicts=[verdict_out(r) for r in history],
        )
        return _lease_out(lease, item)


@router.post(
    "/reviews/{job_id}/lease",
    response_model=LeaseOut,
    responses=LEASE_RESPONSES,
    summary="Open a job for review: lease it to this reviewer (renews the reviewer's own lease).",
)
def take_lease(job_id: uuid.UUID, tenant: ReviewTenant, request: Request) -> LeaseOut:
    seconds = request.app.state.settings.review_lease_s
    with transaction(request.app.state.sessionmaker) as session:
        try:
            lease = repo.take_lease(session, job_id, tenant, reviewer=_reviewer(request), seconds=seconds)
        except repo.ReviewRefused as exc:
            raise _conflict(exc, "seconds") from exc
        if lease is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return _lease_out(lease)


@router.delete(
    "/reviews/{job_id}/lease",
    status_code=204,
    responses=LEASE_RESPONSES,
    summary="Give a job's lease back before it ends (e.g. the reviewer skipped it).",
)
def release_lease(job_id: uuid.UUID, tenant: ReviewTenant, request: Request) -> Response:
    with transaction(request.app.state.sessionmaker) as session:
        try:
            repo.release_lease(session, job_id, tenant, reviewer=_reviewer(request))
        except repo.UnknownJob as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except repo.ReviewRefused as exc:
            raise _conflict(exc, "job_id") from exc
    return Response(status_code=204)


# --- bulk verdicts ------------------------------------------------------------------------------------------


class BulkReviewRequest(Strict):
    """Approve or reject every open job the filters select (the filters of `GET /v1/reviews`)."""

    verdict: Literal["approve", "reject"]
    confirm: int = Field(
        ge=1,
        le=repo.BULK_MAX,
        description="How many jobs the client saw selected (`total` of `GET /v1/reviews` with these "
        "filters); refused with 409 if the selection now holds another number.",
    )
    note: Annotated[Text, Field(max_length=4000)] | None = Field(default=None, description="Kept with each.")
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}$")] | None = None
    min_score: float | None = None
    max_score: float | None = None
    label: Annotated[str, Field(max_length=330, pattern=r"^[A-Za-z0-9_.:-]+:.*$")] | None = Field(
        default=None, description="key:value"
    )
    min_age_s: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Waiting at least this long (seconds)."
    )
    max_age_s: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Waiting at most this long (seconds)."
    )


class BulkItem(BaseModel):
    job_id: uuid.UUID
    status: str
    verdict: VerdictOut


class BulkResult(BaseModel):
    count: int
    items: list[BulkItem]


@router.post(
    "/reviews/bulk",
    response_model=BulkResult,
    responses={409: {"description": "The selection changed (send the new count), or a job is leased."}},
    summary="Approve or reject a filtered selection of the queue, one verdict (and chain row) per job.",
)
async def bulk_review(body: BulkReviewRequest, tenant: ReviewTenant, request: Request) -> BulkResult:
    filters = _queue_filter(
        "body", body.language, body.min_score, body.max_score, body.min_age_s, body.max_age_s
    )
    filters = replace(filters, label=_label(body.label, "body"))
    results, out = await run_in_threadpool(_bulk, request, tenant, body, filters)
    follow_up_reviews(request.app.state.dispatcher, results)
    return out


def _bulk(
    request: Request, tenant: str, body: BulkReviewRequest, filters: repo.QueueFilter
) -> tuple[list[repo.Verdict], BulkResult]:
    with transaction(request.app.state.sessionmaker) as session:
        try:
            results = repo.bulk_verdict(
                session,
                tenant,
                verdict=body.verdict,
                reviewer=_reviewer(request),
                confirm=body.confirm,
                note=body.note,
                filters=filters,
            )
        except repo.ReviewRefused as exc:
            raise _conflict(exc, "confirm") from exc
        items = [
            BulkItem(job_id=r.job.id, status=r.job.status, verdict=verdict_out(r.review)) for r in results
        ]
        return results, BulkResult(count=len(items), items=items)
