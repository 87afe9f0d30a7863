"""`POST /v1/score`: a synchronous pre-check. Each prompt becomes a `score_only` job (so it is gated
by the same workers, batched with other requests and audited like any decision); the response
waits for them."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from audit import jobs as repo
from audit.language import detect_language
from audit.models import TERMINAL_STATUSES
from gateway.auth import AUTH_RESPONSES, SubmitTenant
from gateway.deps import SessionDep
from gateway.errors import field_error
from gateway.routers.jobs import check_backpressure, check_request_limits, dispatch_or_undo, job_out, wait_for
from gateway.schemas import ScoreRequest, ScoreResponse, ScoreResult

router = APIRouter(prefix="/v1", tags=["score"], responses=AUTH_RESPONSES)


@router.post(
    "/score",
    response_model=ScoreResponse,
    summary="Scores and decisions for up to `score_max_prompts` prompts; nothing is rendered.",
    responses={
        202: {
            "description": "Some prompts were not scored within `max_wait_s`; poll their jobs.",
            "model": ScoreResponse,
        },
        429: {"description": "The queue is full; see Retry-After."},
        503: {"description": "Database or queue unavailable; see Retry-After."},
    },
)
def score_prompts(
    body: ScoreRequest, request: Request, response: Response, tenant: SubmitTenant, session: SessionDep
) -> ScoreResponse:
    settings = request.app.state.settings
    if len(body.prompts) > settings.score_max_prompts:
        raise field_error(
            ["body", "prompts"],
            f"has {len(body.prompts)} prompts; this server scores at most {settings.score_max_prompts}",
            "too_long",
        )
    check_request_limits(request, [(["body", "prompts", i], p) for i, p in enumerate(body.prompts)])
    check_backpressure(request, session, extra=len(body.prompts))
    ids = []
    for prompt in body.prompts:
        job, _ = repo.create_job(
            session,
            tenant=tenant,
            prompt=prompt,
            negative_prompt="",
            mode="score_only",
            params={},
            labels=dict(body.labels),
            language=detect_language(prompt),
            callback_url=None,
        )
        ids.append(job.id)
    session.commit()
    dispatch_or_undo(request, session, ids)
    jobs = wait_for(request, session, ids, settings.max_wait_s)
    complete = all(j.status in TERMINAL_STATUSES for j in jobs)
    if not complete:
        response.status_code = 202
    results = []
    for index, job in enumerate(jobs):
        view = job_out(job)
        results.append(
            ScoreResult(
                job_id=job.id,
                prompt_index=index,
                status=job.status,
                language=job.language,
                score=view.score,
                decision=view.decision,
            )
        )
    return ScoreResponse(results=results, complete=complete)
