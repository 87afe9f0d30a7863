"""`POST /v1/images/generations`: OpenAI's image API in front of the gate, for clients that already speak it.

Each request is an ordinary fast-mode job (queued, gated, rendered, audited; `user` becomes the label `user`)
that the request waits for (at most `max_wait_s`; a job not finished by then answers 202 with no `data` and
the job to poll in `emoe_gate`). A halted prompt answers 400 with OpenAI's error shape and
code `content_policy_violation`, carrying the score and the policy; a flagged one follows the policy's
`on_flag`: `release` returns the image (flagged in `emoe_gate`), `hold` answers 403 with code
`held_for_review` and no image. Errors on this path are in OpenAI's shape (`{"error": {"message", "type",
"param", "code"}}`), so OpenAI's SDKs raise their usual exceptions.

Sizes: `auto` (or none) is the ensemble's own size (the reference ensemble renders 32x32); any other `WxH`
is rendered at that size when the server would render it for `POST /v1/jobs` (multiples of 8, 64 to
`max_image_side`, within `max_request_cost`), else refused naming `size`. Images are never rescaled. `n` is 1
(one prompt, one gated job).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from audit import jobs as repo
from audit.models import Job
from gateway import admission
from gateway.auth import SubmitTenant
from gateway.deps import in_session
from gateway.errors import OpenAIErrorBody, openai_error
from gateway.schemas import JobRequest, LabelValue, Prompt
from gateway.urls import public_base
from policies import effective_action

router = APIRouter(prefix="/v1", tags=["images"])

SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": what}
    for status, what in {
        400: "Invalid request, or `content_policy_violation`: the gate halted the prompt (score, policy).",
        401: "Missing or invalid API key.",
        403: "`held_for_review`: the policy flagged the prompt and holds its image for human review.",
        429: "Too many requests or the queue is full; see Retry-After.",
        500: "The job failed.",
        503: "Database or queue unavailable; see Retry-After.",
    }.items()
}


class ImageRequest(BaseModel):
    """OpenAI's `POST /v1/images/generations` body; unknown fields and values this server cannot honour are
    refused naming the parameter."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    prompt: Prompt = Field(description="The prompt; it is gated like any job's.")
    model: str | None = Field(default=None, description="Ignored but for its type: this server's ensemble.")
    n: int | None = Field(default=None, description="How many images: 1 (the default).")
    size: str | None = Field(
        default=None,
        description="`auto` (the ensemble's own size; 32x32 for the reference ensemble) or `WxH`.",
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        default=None, description="`url` (the default; the URL needs the same API key) or `b64_json`."
    )
    quality: Literal["auto", "standard"] | None = None
    style: None = None
    output_format: Literal["png"] | None = None
    background: Literal["auto", "opaque"] | None = None
    moderation: Literal["auto", "low"] | None = None
    user: LabelValue | None = Field(default=None, description="The end user; kept as the job's label `user`.")


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class GateInfo(BaseModel):
    """This server's own part of the answer: the job and what the gate decided."""

    job_id: uuid.UUID
    status: str
    score: float | None
    action: str | None = Field(description="What the policy decided (in shadow mode: what it would have).")
    flagged: bool
    review: str | None = Field(description="Where the job stands in human review, if it was sent there.")
    policy: str | None
    links: dict[str, str]


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    emoe_gate: GateInfo


def _size(request: Request, value: str | None) -> tuple[int | None, int | None]:
    """(height, width) to render, None for the ensemble's own; 400 naming `size` otherwise."""
    if value in (None, "auto"):
        return None, None
    match = SIZE.match(value)
    if match is None:
        raise _bad(f"size must be 'auto' or WIDTHxHEIGHT (e.g. 512x512), got {value!r}", "size")
    width, height = int(match.group(1)), int(match.group(2))
    runtime = getattr(request.app.state.dispatcher, "runtime", None)
    ensemble = getattr(runtime, "ensemble", None)
    if ensemble is not None and (height, width) == (ensemble.default_height, ensemble.default_width):
        return None, None
    return height, width


class _Refused(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def _bad(message: str, param: str | None, code: str | None = None) -> _Refused:
    return _Refused(openai_error(400, message, param=param, code=code))


def _job_request(request: Request, body: ImageRequest) -> JobRequest:
    if body.n not in (None, 1):
        raise _bad(f"n must be 1 on this server (one prompt, one gated job), got {body.n}", "n")
    height, width = _size(request, body.size)
    labels = {"user": body.user} if body.user else {}
    try:
        job = JobRequest(prompt=body.prompt, height=height, width=width, labels=labels)
    except ValueError as exc:  # a size the job API does not take (not a multiple of 8, under 64, ...)
        raise _bad(f"size {body.size} cannot be rendered here: {_first_message(exc)}", "size") from None
    try:
        admission.check_job_request(request.app.state, job)
    except HTTPException as exc:
        detail = exc.detail[0] if isinstance(exc.detail, list) and exc.detail else {}
        loc = [str(p) for p in detail.get("loc", [])]
        param = "prompt" if "prompt" in loc else "size"
        raise _bad(f"{param}: {detail.get('msg', exc.detail)}", param) from None
    return job


def _first_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    return str(errors()[0]["msg"]) if callable(errors) else str(exc)


def _read_image(request: Request, job: Job) -> bytes:
    """Image 0 from inside the artifacts folder, only while its sha256 is the recorded one."""
    artifact = next((a for a in job.artifacts if a.path_index == 0), None)
    folder = Path(request.app.state.settings.resolved_artifacts_dir).resolve()
    if artifact is None:
        raise _Refused(openai_error(500, f"job {job.id} completed without an image", type_="server_error"))
    path = Path(artifact.storage_uri.removeprefix("file://")).resolve()
    data = path.read_bytes() if path.is_relative_to(folder) and path.exists() else b""
    if hashlib.sha256(data).hexdigest() != artifact.sha256:
        message = f"image 0 of job {job.id} is not stored as recorded: not served"
        raise _Refused(openai_error(500, message, type_="server_error"))
    return data


def _gate_info(request: Request, job: Job) -> dict[str, Any]:
    d = job.decision
    base = f"{public_base(request)}/v1/jobs/{job.id}"
    return {
        "job_id": str(job.id),
        "status": job.status,
        "score": d.score if d is not None else None,
        "action": effective_action(d) if d is not None else None,
        "flagged": d is not None and d.action == "flag",
        "review": job.review,
        "policy": f"{d.policy_name}@{d.policy_version}#{d.policy_hash[:12]}" if d is not None else None,
        "links": {"job": base, "image": f"{base}/images/0"},
    }


def _outcome(request: Request, job: Job, response_format: str) -> JSONResponse | dict[str, Any]:
    info = _gate_info(request, job)
    d = job.decision
    if job.status == "halted" and d is not None:
        message = (
            f"The uncertainty gate halted this prompt: {d.reason} (policy {info['policy']}). "
            "The experts disagree too much about it to render it."
        )
        return openai_error(
            400, message, param="prompt", code="content_policy_violation", extra={**info, "reason": d.reason}
        )
    if job.status == "held":
        message = (
            f"The uncertainty gate flagged this prompt ({d.reason if d else 'flagged'}, policy "
            f"{info['policy']}): its image is held for human review and not returned. Poll "
            f"{info['links']['job']} for the reviewer's verdict."
        )
        return openai_error(403, message, param="prompt", code="held_for_review", extra=info)
    if job.status != "completed":
        what = job.error or job.status
        return openai_error(500, f"job {job.id} ended {job.status}: {what}", type_="server_error", extra=info)
    if response_format == "b64_json":
        item = {"b64_json": base64.b64encode(_read_image(request, job)).decode(), "revised_prompt": None}
    else:
        _read_image(request, job)
        item = {"url": info["links"]["image"], "revised_prompt": None}
    return {"created": int(time.time()), "data": [item], "emoe_gate": info}


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    responses={
        **ERRORS,
        202: {
            "model": ImagesResponse,
            "description": "Not finished within `max_wait_s`: `data` is empty; poll `emoe_gate.links.job`.",
        },
    },
    summary="OpenAI-compatible image generation, gated (a halted prompt is a 400 content_policy_violation).",
)
async def create_image(
    body: ImageRequest,
    request: Request,
    response: Response,
    tenant: SubmitTenant,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"),
    ] = None,
) -> Any:
    state = request.app.state
    try:
        job_request = _job_request(request, body)
    except _Refused as refused:
        return refused.response
    seconds = state.settings.max_wait_s
    await admission.rate_limit(request, response)
    async with admission.wait_slot(request, seconds):
        await state.admission.admit_jobs(tenant, 1, state.metrics)
        new = repo.NewJob(
            tenant=tenant,
            prompt=job_request.prompt,
            negative_prompt="",
            mode="fast",
            params=job_request.params(),
            labels=dict(job_request.labels),
            language=None,
            callback_url=None,
            idempotency_key=idempotency_key,
        )
        try:
            job, created = await state.admission.group_commit.submit(new)
        except repo.IdempotencyConflict as exc:
            return openai_error(409, str(exc), param=None, code="idempotency_conflict")
        if created:
            state.metrics.submitted.labels("fast").inc()
        job_id = job.id
        finished = await admission.wait_for(request, [job_id], seconds)
    job = await in_session(request, lambda session: _detached(session, job_id, tenant))
    if not finished:  # as /v1/score does: 202, and the job to poll (its image is not here yet)
        content = {"created": int(time.time()), "data": [], "emoe_gate": _gate_info(request, job)}
        return JSONResponse(status_code=202, content=content)
    try:
        return _outcome(request, job, body.response_format or "url")
    except _Refused as refused:
        return refused.response


def _detached(session: Any, job_id: uuid.UUID, tenant: str) -> Job:
    job = repo.get_job(session, job_id, tenant)
    assert job is not None
    _ = job.decision, list(job.artifacts)  # loaded before the session closes
    session.expunge(job)
    return job
