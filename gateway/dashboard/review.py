"""The review queue for review keys: the open jobs, one leased job with its score and images, verdicts one
at a time or in bulk over the filtered queue, the lease handed back to the queue (release), and an override
of a decided job (with a note, as the API's `override: true`)."""

from __future__ import annotations

import logging
import math
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from audit import jobs as job_repo
from audit import reviews as review_repo
from audit.db import transaction
from gateway.dashboard.forms import read_form
from gateway.dashboard.rendering import PAGE_SIZE, deviation_bars, page
from gateway.dashboard.sessions import Viewer, ViewerDep, check_post, to_login
from gateway.deps import SessionDep
from gateway.schemas import ReviewRequest
from workers.dispatch import follow_up_reviews

log = logging.getLogger(__name__)

router = APIRouter()


@dataclass(frozen=True)
class FilterForm:
    """The review page's filter fields as its forms carry them, and the queue filter they select."""

    language: str = ""
    label: str = ""
    filters: review_repo.QueueFilter = field(default_factory=review_repo.QueueFilter)

    @property
    def min_score(self) -> float | None:
        return self.filters.min_score

    @property
    def max_score(self) -> float | None:
        return self.filters.max_score

    @classmethod
    def parse(cls, values: dict[str, str]) -> FilterForm:
        """From query or form fields; ValueError names the bad field (the queue filter checks the bounds)."""
        language = (values.get("language") or "").strip()
        if language and not (2 <= len(language) <= 3 and language.isascii() and language.isalpha()):
            raise ValueError(f"language: {language!r} is not an ISO 639 code")
        label = (values.get("label") or "").strip()
        if label and (":" not in label or not label.partition(":")[0] or len(label) > 330):
            raise ValueError(f"label: {label!r} must be key:value (e.g. region:eu)")
        bounds = []
        for name in ("min_score", "max_score"):
            raw = (values.get(name) or "").strip()
            try:
                value = float(raw) if raw else None
            except ValueError:
                raise ValueError(f"{name}: {raw!r} is not a number") from None
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}: {raw!r} is not a finite number")
            bounds.append(value)
        key, _, wanted = label.partition(":")
        filters = review_repo.QueueFilter(
            language=language.lower() or None,
            min_score=bounds[0],
            max_score=bounds[1],
            label=(key, wanted) if label else None,
        )
        return cls(language.lower(), label, filters)

    def query(self, **extra: str) -> str:
        values = {
            "language": self.language,
            "label": self.label,
            "min_score": "" if self.min_score is None else f"{self.min_score:g}",
            "max_score": "" if self.max_score is None else f"{self.max_score:g}",
            **extra,
        }
        return urllib.parse.urlencode({k: v for k, v in values.items() if v})


def _age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "–"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def _scale(score: float, flag_at: float, halt_at: float) -> dict[str, float]:
    """Positions (0-100) of the score and the two thresholds on one axis, for the score bar."""
    top = max(score, halt_at, flag_at, 1e-9) * 1.15
    return {k: round(100 * v / top, 2) for k, v in (("score", score), ("flag", flag_at), ("halt", halt_at))}


def _require_reviewer(request: Request, viewer: Viewer | None) -> Viewer | Response:
    if viewer is None:
        return to_login(request)
    if viewer.role != "review":
        return page(request, "review.html", viewer, status_code=403, forbidden=True)
    return viewer


async def _reviewer_post(
    request: Request, viewer: Viewer | None
) -> tuple[Viewer, dict[str, str], FilterForm] | Response:
    """A review form's post, checked (reviewer role, CSRF token), with the queue filters it carries."""
    checked = _require_reviewer(request, viewer)
    if isinstance(checked, Response):
        return checked
    form = await read_form(request)
    check_post(request, checked, form)
    try:
        return checked, form, FilterForm.parse(form)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc


@router.get("/review", response_class=HTMLResponse)
def review_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    job: uuid.UUID | None = None,
    done: str = "",
    skip: uuid.UUID | None = None,
) -> Response:
    """The open queue (age and count) and one job leased to this reviewer, with its score against the
    thresholds, the experts' deviations and its images shown large; `skip`: a job just handed back, not
    leased to this reviewer again at once. A decided job (`job` approved or rejected) is shown to override."""
    checked = _require_reviewer(request, viewer)
    if isinstance(checked, Response):
        return checked
    viewer = checked
    try:
        flt = FilterForm.parse(dict(request.query_params))
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    settings = request.app.state.settings
    now = datetime.now(UTC)
    queue = review_repo.review_queue(
        session, viewer.tenant, state="open", limit=PAGE_SIZE, filters=flt.filters
    )
    lease = problem = decided = None
    if job is not None:
        found = job_repo.get_job(session, job, viewer.tenant)
        decided = found if found is not None and found.review in review_repo.DECIDED else None
    try:
        if job is not None and decided is None:  # a decided job is shown to override, without a lease
            lease = review_repo.take_lease(
                session, job, viewer.tenant, reviewer=viewer.key_prefix, seconds=settings.review_lease_s
            )
            if lease is None:
                raise HTTPException(status_code=404, detail=f"no job {job}")
        elif job is None:
            lease = review_repo.lease_next(
                session,
                viewer.tenant,
                reviewer=viewer.key_prefix,
                seconds=settings.review_lease_s,
                skip=skip,
                filters=flt.filters,
            )
    except review_repo.ReviewRefused as exc:
        problem = str(exc)
    current = decided or (lease.job if lease is not None else None)
    following = None
    if current is not None:
        ids = [j.id for j in queue.jobs]
        after = ids[ids.index(current.id) + 1 :] if current.id in ids else ids
        following = next((i for i in after if i not in (current.id, skip)), None)
    decision = current.decision if current is not None else None
    return page(
        request,
        "review.html",
        viewer,
        queue=queue,
        rows=[(j, _age(j.created_at, now)) for j in queue.jobs],
        oldest=_age(queue.oldest, now),
        current=current,
        overriding=decided is not None,
        overridable=decided is not None and decided.status in review_repo.REVIEWABLE_STATUSES,
        recent=review_repo.review_queue(
            session, viewer.tenant, state="decided", limit=10, filters=flt.filters
        ).jobs,
        decision=decision,
        lease_until=lease.until if lease is not None else None,
        scale=_scale(decision.score, decision.flag_at, decision.halt_at) if decision is not None else None,
        deviations=deviation_bars(decision.expert_deviation if decision is not None else None),
        verdicts=review_repo.verdicts_of(session, [current.id])[current.id] if current is not None else [],
        following=following,
        flt=flt,
        filter_query=flt.query(),
        problem=problem,
        skip=skip,
        done=done if done in ("approved", "rejected", "escalated", "bulk", "released") else "",
        bulk_n=len(review_repo.bulk_selection(session, viewer.tenant, filters=flt.filters)),
        bulk_max=review_repo.BULK_MAX,
    )


def _checked_note(form: dict[str, str]) -> str | None:
    """The form's note under the API's rules (NFC, no control characters, at most 4000 characters)."""
    note = form.get("note", "").strip() or None
    try:
        return ReviewRequest(verdict="escalate", note=note).note
    except ValidationError as exc:
        raise HTTPException(status_code=422, detail=f"note: {exc.errors()[0]['msg']}") from None


def _review_error(exc: review_repo.ReviewRefused) -> HTTPException:
    return HTTPException(status_code=409 if exc.conflict else 422, detail=str(exc))


@router.post("/review/bulk")
async def review_bulk(request: Request, viewer: ViewerDep) -> Response:
    """Approve or reject every open job the filters select; `confirm` must be the count the page showed."""
    posted = await _reviewer_post(request, viewer)
    if isinstance(posted, Response):
        return posted
    checked, form, flt = posted
    raw = form.get("confirm", "")
    if not raw.isdigit():
        raise HTTPException(status_code=422, detail=f"confirm: {raw!r} is not the number of selected jobs")
    confirm = int(raw)
    note = _checked_note(form)

    def record() -> list[review_repo.Verdict]:
        with transaction(request.app.state.sessionmaker) as session:
            try:
                results = review_repo.bulk_verdict(
                    session,
                    checked.tenant,
                    verdict=form.get("verdict", ""),
                    reviewer=checked.key_prefix,
                    confirm=confirm,
                    note=note,
                    filters=flt.filters,
                )
            except review_repo.ReviewRefused as exc:
                raise _review_error(exc) from exc
            return results

    results = await run_in_threadpool(record)
    follow_up_reviews(request.app.state.dispatcher, results)
    return RedirectResponse(f"/dashboard/review?{flt.query(done='bulk')}", status_code=303)


@router.post("/review/{job_id}/release")
async def review_release(job_id: uuid.UUID, request: Request, viewer: ViewerDep) -> Response:
    """Hand this reviewer's lease on a job back to the queue (no verdict); back to the queue."""
    posted = await _reviewer_post(request, viewer)
    if isinstance(posted, Response):
        return posted
    checked, _, flt = posted

    def release() -> None:
        with transaction(request.app.state.sessionmaker) as session:
            try:
                released = review_repo.release_lease(
                    session, job_id, checked.tenant, reviewer=checked.key_prefix
                )
            except review_repo.UnknownJob as exc:
                raise HTTPException(status_code=404, detail=str(exc)) from exc
            except review_repo.LeaseHeld as exc:
                raise HTTPException(status_code=409, detail=f"only its holder can release it: {exc}") from exc
            if not released:
                raise HTTPException(
                    status_code=409,
                    detail=f"job {job_id} is not leased to you (the lease ended)",
                )

    await run_in_threadpool(release)
    return RedirectResponse(
        f"/dashboard/review?{flt.query(done='released', skip=str(job_id))}", status_code=303
    )


@router.post("/review/{job_id}")
async def review_verdict(job_id: uuid.UUID, request: Request, viewer: ViewerDep) -> Response:
    """A verdict (approve, reject, escalate) with an optional note on one job, or (`override`) a changed
    verdict on a decided job with a note saying why; back to the queue."""
    posted = await _reviewer_post(request, viewer)
    if isinstance(posted, Response):
        return posted
    checked, form, flt = posted
    note = _checked_note(form)

    def record() -> review_repo.Verdict:
        with transaction(request.app.state.sessionmaker) as session:
            try:
                result = review_repo.record_verdict(
                    session,
                    job_id,
                    checked.tenant,
                    verdict=form.get("verdict", ""),
                    reviewer=checked.key_prefix,
                    note=note,
                    override=form.get("override") == "1",
                )
            except review_repo.ReviewRefused as exc:
                raise _review_error(exc) from exc
            if result is None:
                raise HTTPException(status_code=404, detail=f"no job {job_id}")
            return result

    result = await run_in_threadpool(record)
    follow_up_reviews(request.app.state.dispatcher, [result])
    return RedirectResponse(f"/dashboard/review?{flt.query(done=result.review.outcome)}", status_code=303)
