"""`POST /v1/score`: a synchronous pre-check. Each prompt becomes a `score_only` job (so it is gated
by the same workers, batched with other requests and audited like any decision); the response
waits for them (holding no thread and no database connection meanwhile)."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from audit import jobs as repo
from audit.language import detect_language
from audit.models import TERMINAL_STATUSES
from gateway.admission import ScoreAdmission, wait_for
from gateway.auth import AUTH_RESPONSES
from gateway.deps import get_state, in_session
from gateway.schemas import JobOut, ScoreRequest, ScoreResponse, ScoreResult

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
        429: {"description": "Rate limited, the tenant's or the global queue is full, or too many waits."},
        503: {"description": "Database or queue unavailable; see Retry-After."},
    },
)
async def score_prompts(admitted: ScoreAdmission, request: Request, response: Response) -> ScoreResponse:
    body: ScoreRequest = admitted.body
    languages = await anyio.to_thread.run_sync(lambda: [detect_language(p) for p in body.prompts])
    news = [
        repo.NewJob(
            tenant=admitted.tenant,
            prompt=prompt,
            negative_prompt="",
            mode="score_only",
            params={},
            labels=dict(body.labels),
            language=language,
            callback_url=None,
        )
        for prompt, language in zip(body.prompts, languages, strict=True)
    ]
    created = await get_state(request).admission.group_commit.submit_many(news)
    ids = [job.id for job, _ in created]
    await wait_for(request, ids, admitted.wait_s)

    def views(session: Session) -> list[JobOut]:
        return [JobOut.of(job) for job in repo.get_jobs(session, ids)]

    jobs = await in_session(request, views)
    complete = all(j.status in TERMINAL_STATUSES for j in jobs)
    if not complete:
        response.status_code = 202
    results = [
        ScoreResult(
            job_id=job.id,
            prompt_index=index,
            status=job.status,
            language=job.language,
            score=job.score,
            decision=job.decision,
        )
        for index, job in enumerate(jobs)
    ]
    return ScoreResponse(results=results, complete=complete)
