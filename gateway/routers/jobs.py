"""`/v1/jobs`: submit (idempotent, bounded queue, optional wait), read, list, cancel, and the images."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from audit import jobs as repo
from audit.db import transaction
from audit.models import TERMINAL_STATUSES, Job
from gateway.auth import AUTH_RESPONSES, ReadTenant, SubmitTenant
from gateway.deps import SessionDep
from gateway.errors import BrokerUnavailable, field_error
from gateway.group_commit import GroupCommit
from gateway.schemas import (
    Action,
    ArtifactOut,
    DecisionOut,
    JobOut,
    JobPage,
    JobRequest,
    ScoreOut,
    Status,
)
from workers import url_guard

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["jobs"], responses=AUTH_RESPONSES)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retries with the same key return the first job instead of making another.",
    ),
]
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=600,
        allow_inf_nan=False,
        description="Seconds to wait for the job to finish (0: return now).",
    ),
]
NOT_FOUND = {404: {"description": "No such job for this tenant."}}
QUEUE_DEPTH_CACHE_S = 0.25


# --- views --------------------------------------------------------------------------------------------------


def _threshold(action: str, shadow_action: str | None, flag_at: float, halt_at: float) -> float | None:
    fired = shadow_action or action
    return {"halt": halt_at, "flag": flag_at}.get(fired)


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were stored in UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def job_out(job: Job) -> JobOut:
    """The public view of a job row."""
    base = f"/v1/jobs/{job.id}"
    d = job.decision
    score = decision = None
    if d is not None:
        score = ScoreOut(
            score=d.score,
            eu=d.eu,
            num_experts=d.num_experts,
            fingerprint=d.fingerprint,
            scoring=d.scoring or {},
            expert_deviation=list(d.expert_deviation or []),
        )
        decision = DecisionOut(
            action=d.action,
            shadow_action=d.shadow_action,
            rule=d.rule,
            threshold=_threshold(d.action, d.shadow_action, d.flag_at, d.halt_at),
            flag_at=d.flag_at,
            halt_at=d.halt_at,
            reason=d.reason,
            policy_name=d.policy_name,
            policy_version=d.policy_version,
            policy_hash=d.policy_hash,
            policy_mode=d.policy_mode,
            decided_at=_utc(d.created_at),
            row_hash=d.row_hash,
        )
    artifacts = [
        ArtifactOut(
            index=a.path_index,
            url=f"{base}/images/{a.path_index}",
            sha256=a.sha256,
            width=a.width,
            height=a.height,
            size_bytes=a.size_bytes,
        )
        for a in job.artifacts
    ]
    links = {"self": base, "cancel": f"{base}/cancel"}
    params = {k: v for k, v in (job.params or {}).items() if k != "request_sha256"}
    params["negative_prompt"] = job.negative_prompt or ""
    return JobOut(
        id=job.id,
        status=job.status,
        mode=job.mode,
        language=job.language,
        labels=job.labels or {},
        params=params,
        attempts=job.attempts,
        error=job.error,
        created_at=_utc(job.created_at),
        finished_at=_utc(job.finished_at),
        score=score,
        decision=decision,
        flagged=d is not None and d.action == "flag",
        review=job.review,
        artifacts=artifacts,
        links=links,
    )


# --- submission ---------------------------------------------------------------------------------------------


def check_request_limits(
    request: Request,
    prompts: list[tuple[list[str | int], str]],
    height: int | None = None,
    width: int | None = None,
) -> None:
    """Checks that need the server's settings (or, in embedded mode, the loaded ensemble)."""
    settings = request.app.state.settings
    for loc, prompt in prompts:
        if len(prompt) > settings.max_prompt_chars:
            raise field_error(
                loc,
                f"is {len(prompt)} characters; this server takes at most {settings.max_prompt_chars}",
                "string_too_long",
            )
    for name, value in (("height", height), ("width", width)):
        if value is not None and value > settings.max_image_side:
            raise field_error(
                ["body", name],
                f"is {value}; this server makes at most {settings.max_image_side}",
                "less_than_equal",
            )
    size_problem = getattr(request.app.state.dispatcher, "size_problem", None)
    if size_problem is not None and (height is not None or width is not None):
        problem = size_problem(height, width)
        if problem:
            raise field_error(["body", "height" if height is not None else "width"], problem)


def check_callback_url(request: Request, url: str | None) -> None:
    """422 for a callback URL whose host is refused without DNS: a literal non-public address in any spelling,
    or localhost, unless `webhook_allow` allows it. Names are resolved and checked again at delivery only:
    a lookup here would block the event loop for as long as DNS takes and prove nothing (DNS can change)."""
    if url is None:
        return
    allow = url_guard.parse_allow(request.app.state.settings.webhook_allow)
    problem = url_guard.submission_problem(url, allow)
    if problem is not None:
        raise field_error(["body", "callback_url"], problem)


def check_backpressure(request: Request, session, extra: int = 1) -> None:
    """429 + Retry-After when the queue is deeper than `queue_max_depth` (the count is cached briefly)."""
    state = request.app.state
    cached = getattr(state, "queue_depth_cache", None)
    now = time.monotonic()
    if cached is None or now - cached[1] > QUEUE_DEPTH_CACHE_S:
        cached = (repo.queue_depth(session), now)
        state.queue_depth_cache = cached
    _admit(state, cached, extra)


def _admit(state, cached: tuple[int, float], extra: int) -> None:
    """429 if `extra` more jobs would overfill the queue; otherwise count them in the cached depth."""
    depth = cached[0]
    if depth + extra > state.settings.queue_max_depth:
        state.metrics.rejected.labels("queue_full").inc()
        raise HTTPException(
            status_code=429,
            detail=f"the queue holds {depth} jobs (limit {state.settings.queue_max_depth}); retry later",
            headers={"Retry-After": "2"},
        )
    state.queue_depth_cache = (depth + extra, cached[1])


def dispatch_or_undo(request: Request, session, job_ids: list[uuid.UUID]) -> None:
    """Enqueue committed jobs; if the broker refuses, delete them again so no orphan row stays."""
    try:
        request.app.state.dispatcher.gate(job_ids)
    except Exception as exc:
        for job_id in job_ids:
            job = session.get(Job, job_id)
            if job is not None and job.status == "queued":
                session.delete(job)
        session.commit()
        raise BrokerUnavailable(str(exc)) from exc


def wait_for(request: Request, session, job_ids: list[uuid.UUID], seconds: float) -> list[Job]:
    """Poll until every job is terminal or `seconds` pass; returns the jobs as last read."""
    deadline = time.monotonic() + min(seconds, request.app.state.settings.max_wait_s)
    delay = 0.02
    while True:
        session.expire_all()
        jobs = repo.get_jobs(session, job_ids)
        session.commit()
        if all(j.status in TERMINAL_STATUSES for j in jobs) or time.monotonic() >= deadline:
            return jobs
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.25)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    summary="Submit a prompt: it is gated, and rendered unless the policy halts it.",
    responses={
        200: {
            "description": "The job finished within `wait`, or this Idempotency-Key was used before.",
            "model": JobOut,
        },
        409: {"description": "The Idempotency-Key was used with a different request."},
        429: {"description": "The queue is full; see Retry-After."},
        503: {"description": "Database or queue unavailable; see Retry-After."},
    },
)
async def submit_job(
    body: JobRequest,
    request: Request,
    response: Response,
    tenant: SubmitTenant,
    wait: Wait = 0,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    # async: the cheap checks run on the event loop; the database and broker work is grouped with concurrent
    # submissions (one INSERT, one COMMIT, one broker connection per batch) in a worker thread
    started = time.perf_counter()
    check_request_limits(
        request,
        [(["body", "prompt"], body.prompt), (["body", "negative_prompt"], body.negative_prompt)],
        body.height,
        body.width,
    )
    check_callback_url(request, body.callback_url)
    await check_backpressure_async(request)
    new = repo.NewJob(
        tenant=tenant,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        mode=body.mode,
        params=body.params(),
        labels=dict(body.labels),
        language=None,  # detected by the gate stage, off the request path (known once the job is scored)
        callback_url=body.callback_url,
        idempotency_key=idempotency_key,
    )
    try:
        job, created = await group_commit(request).submit(new)
    except repo.IdempotencyConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    job_id = job.id
    metrics = request.app.state.metrics
    if created:
        metrics.submitted.labels(body.mode).inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    if wait > 0:
        job = await run_in_threadpool(_wait_alone, request, job_id, wait)
    elif created:
        metrics.request_latency.observe(time.perf_counter() - started)
    if job.status in TERMINAL_STATUSES or not created:
        response.status_code = 200
    return job_out(job)


def group_commit(request: Request) -> GroupCommit:
    """The app's submission batcher, made on first use."""
    state = request.app.state
    batcher = getattr(state, "group_commit", None)
    if batcher is None:
        publisher = getattr(state.dispatcher, "gate_publisher", None)
        batcher = state.group_commit = GroupCommit(
            state.sessionmaker, state.dispatcher.gate, publisher=publisher
        )
    return batcher


async def check_backpressure_async(request: Request, extra: int = 1) -> None:
    """`check_backpressure` without blocking the event loop: a stale count is re-read in a thread by one
    request at a time (single flight); requests arriving meanwhile use the previous count."""
    state = request.app.state
    cached = getattr(state, "queue_depth_cache", None)
    stale = cached is None or time.monotonic() - cached[1] > QUEUE_DEPTH_CACHE_S
    if stale and (cached is None or not getattr(state, "queue_depth_refreshing", False)):
        state.queue_depth_refreshing = True
        try:
            cached = (await run_in_threadpool(_queue_depth, request), time.monotonic())
        finally:
            state.queue_depth_refreshing = False
        state.queue_depth_cache = cached
    _admit(state, cached, extra)


def _queue_depth(request: Request) -> int:
    with _own_session(request) as session:
        return repo.queue_depth(session)


def _wait_alone(request: Request, job_id: uuid.UUID, seconds: float) -> Job:
    with _own_session(request) as session:
        return wait_for(request, session, [job_id], seconds)[0]


def _own_session(request: Request) -> AbstractContextManager[Session]:
    return transaction(request.app.state.sessionmaker)


# --- reading ------------------------------------------------------------------------------------------------


def _load(session, job_id: uuid.UUID, tenant: str) -> Job:
    job = repo.get_job(session, job_id, tenant)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return job


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses=NOT_FOUND,
    summary="A job: status, score, decision, images.",
)
def get_job(
    job_id: uuid.UUID, tenant: ReadTenant, session: SessionDep, request: Request, wait: Wait = 0
) -> JobOut:
    job = _load(session, job_id, tenant)
    if wait > 0 and job.status not in TERMINAL_STATUSES:
        job = wait_for(request, session, [job_id], wait)[0]
    return job_out(job)


@router.get(
    "/jobs/{job_id}/images/{index}",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"content": {"image/png": {}}, "description": "The PNG image."},
        403: {"description": "The job is held for review or was rejected; only a review key sees it."},
        409: {"description": "The stored file no longer matches the sha256 recorded for it; not served."},
    },
    summary="Image `index` of a job (0 for fast mode; 0..M-1 for full mode).",
)
def get_image(
    job_id: uuid.UUID,
    index: Annotated[int, PathParam(ge=0, le=1024)],
    tenant: ReadTenant,
    session: SessionDep,
    request: Request,
) -> Response:
    """Served only from inside the artifacts folder, and only while the file's sha256 is the one recorded;
    a held or rejected job's images only to review keys."""
    job = _load(session, job_id, tenant)
    if job.status in ("held", "rejected") and getattr(request.state, "role", None) != "review":
        why = "awaits human review" if job.status == "held" else "was rejected in human review"
        raise HTTPException(status_code=403, detail=f"image {index} of job {job_id} {why}: not served")
    artifact = next((a for a in job.artifacts if a.path_index == index), None)
    if artifact is None:
        raise HTTPException(
            status_code=404, detail=f"job {job_id} has no image {index} (status {job.status})"
        )
    folder = Path(request.app.state.settings.resolved_artifacts_dir).resolve()
    path = Path(artifact.storage_uri.removeprefix("file://")).resolve()
    if not path.is_relative_to(folder):
        log.error("image %d of job %s points outside the artifacts folder: %s", index, job_id, path)
        raise HTTPException(status_code=404, detail=f"image {index} of job {job_id} is no longer stored")
    try:
        data = path.read_bytes()
    except OSError:
        raise HTTPException(
            status_code=404, detail=f"image {index} of job {job_id} is no longer stored"
        ) from None
    if hashlib.sha256(data).hexdigest() != artifact.sha256:
        log.error("image %d of job %s does not match its recorded sha256: not served", index, job_id)
        raise HTTPException(
            status_code=409,
            detail=f"image {index} of job {job_id} does not match the sha256 recorded for it: not served",
        )
    return Response(data, media_type="image/png", headers={"X-Content-SHA256": artifact.sha256})


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={**NOT_FOUND, 409: {"description": "The job had already finished."}},
    summary="Cancel a job that has not finished.",
)
def cancel_job(job_id: uuid.UUID, tenant: SubmitTenant, session: SessionDep) -> JobOut | JSONResponse:
    job = repo.cancel_job(session, job_id, tenant)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    if job.status != "cancelled":
        return JSONResponse(
            status_code=409,
            content={
                "detail": f"job {job_id} already {job.status}",
                "job": job_out(job).model_dump(mode="json"),
            },
        )
    return job_out(job)


@router.get("/jobs", response_model=JobPage, summary="This tenant's jobs, newest first.")
def list_jobs(
    tenant: ReadTenant,
    session: SessionDep,
    status: Status | None = None,
    action: Action | None = None,
    language: Annotated[str | None, Query(pattern=r"^[a-z]{2,3}$", description="ISO 639-1 code.")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> JobPage:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise field_error(["query", name], "must include a timezone (e.g. 2026-01-01T00:00:00Z)")
    try:
        since = since.astimezone(UTC) if since is not None else None
        until = until.astimezone(UTC) if until is not None else None
    except OverflowError as exc:
        raise field_error(["query", "since" if until is None else "until"], "is out of range") from exc
    try:
        page = repo.list_jobs(
            session,
            tenant,
            status=status,
            action=action,
            language=language,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    except ValueError as exc:
        raise field_error(["query", "cursor"], str(exc)) from exc
    return JobPage(jobs=[job_out(j) for j in page.jobs], next_cursor=page.next_cursor)
