"""`/v1/jobs`: submit (idempotent, bounded queue, optional wait), read, list, cancel, and the images."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from audit import jobs as repo
from audit.models import TERMINAL_STATUSES, Job
from gateway.admission import JobAdmission, Wait, wait_for, wait_seconds, wait_slot
from gateway.auth import AUTH_RESPONSES, ReadTenant, SubmitTenant
from gateway.deps import SessionDep, get_state, in_session
from gateway.errors import field_error
from gateway.schemas import Action, JobOut, JobPage, JobRequest, Status
from gateway.urls import absolute

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
NOT_FOUND = {404: {"description": "No such job for this tenant."}}


Expand = Annotated[
    list[Literal["scoring"]],
    Query(description="Parts shown in full: `scoring` (the whole scoring configuration, not its summary)."),
]


# --- submission ---------------------------------------------------------------------------------------------


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
        429: {"description": "Rate limited, the tenant's or the global queue is full, or too many waits."},
        503: {"description": "Database or queue unavailable; see Retry-After."},
    },
)
async def submit_job(
    admitted: JobAdmission, request: Request, response: Response, idempotency_key: IdempotencyKey = None
) -> JobOut:
    # async: the checks run on the event loop; the database and broker work is grouped with concurrent
    # submissions (one INSERT, one COMMIT, one broker connection per batch) in a worker thread
    started = time.perf_counter()
    state = get_state(request)
    body: JobRequest = admitted.body
    new = repo.NewJob(
        tenant=admitted.tenant,
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
        job, created = await state.admission.group_commit.submit(new)
    except repo.IdempotencyConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    if created:
        state.metrics.submitted.labels(body.mode).inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = absolute(f"/v1/jobs/{job.id}")
    if admitted.wait_s > 0 and job.status not in TERMINAL_STATUSES:
        await wait_for(request, [job.id], admitted.wait_s)
        view = await in_session(request, lambda session: _view(session, job.id, admitted.tenant))
    else:
        view = JobOut.of(job)
        if created:
            state.metrics.request_latency.observe(time.perf_counter() - started)
    if view.status in TERMINAL_STATUSES or not created:
        response.status_code = 200
    return view


# --- reading ------------------------------------------------------------------------------------------------


def _load(session: Session, job_id: uuid.UUID, tenant: str) -> Job:
    job = repo.get_job(session, job_id, tenant)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return job


def _view(session: Session, job_id: uuid.UUID, tenant: str, expand: Iterable[str] = ()) -> JobOut:
    return JobOut.of(_load(session, job_id, tenant), expand)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={
        **NOT_FOUND,
        429: {"description": "This API key already waits on `max_waits_per_key` requests."},
    },
    summary="A job: status, score and scoring summary, decision, images.",
)
async def get_job(
    job_id: uuid.UUID,
    tenant: ReadTenant,
    request: Request,
    wait: Wait = 0,
    expand: Expand = [],  # noqa: B006
) -> JobOut:
    # async: a wait holds no thread and no database connection (each read is a short session in a thread)
    view = await in_session(request, lambda session: _view(session, job_id, tenant, expand))
    seconds = wait_seconds(request, wait)
    if seconds > 0 and view.status not in TERMINAL_STATUSES:
        async with wait_slot(request, seconds):
            await wait_for(request, [job_id], seconds)
        view = await in_session(request, lambda session: _view(session, job_id, tenant, expand))
    return view


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
                "job": JobOut.of(job).model_dump(mode="json"),
            },
        )
    return JobOut.of(job)


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
    return JobPage(jobs=[JobOut.of(j) for j in page.jobs], next_cursor=page.next_cursor)
