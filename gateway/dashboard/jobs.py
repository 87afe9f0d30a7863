"""The job browser, one job's page and its images (under the API's rules for held and rejected jobs)."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import urllib.parse
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from audit import report_queries
from audit.models import JOB_STATUSES
from gateway.dashboard.rendering import PAGE_SIZE, deviation_bars, page, when
from gateway.dashboard.sessions import ViewerDep, to_login
from gateway.deps import SessionDep

log = logging.getLogger(__name__)

router = APIRouter()


CSV_MAX_ROWS = 50_000
CSV_BATCH = 1000
CSV_COLUMNS = (
    "time_utc",
    "job_id",
    "status",
    "language",
    "labels",
    "score",
    "action",
    "shadow_action",
    "rule",
    "policy",
    "prompt",
)


def decision_filter(
    action: str = "",
    language: str = "",
    policy_version: str = "",
    status: str = "",
    date_from: str = "",
    date_to: str = "",
    prompt: str = "",
) -> report_queries.DecisionFilter:
    """The job browser's filters from the query string (422 naming the bad field)."""
    try:
        return report_queries.DecisionFilter(
            action=action,
            language=language,
            policy_version=policy_version,
            status=status,
            date_from=date_from.strip(),
            date_to=date_to.strip(),
            prompt=prompt.strip(),
        )
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc


FilterDep = Annotated[report_queries.DecisionFilter, Depends(decision_filter)]


def labels_text(labels: dict[str, object]) -> str:
    """Labels as `key=value`, comma-separated, in key order."""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    flt: FilterDep,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """The tenant's decisions, newest first, filtered; 50 a page."""
    if viewer is None:
        return to_login(request)
    tenant = viewer.tenant
    rows = report_queries.list_decisions(session, flt, tenant=tenant, limit=PAGE_SIZE, before_id=before)
    older = None
    if len(rows) == PAGE_SIZE:
        params = {**flt.query(), "before": str(rows[-1]["decision_id"])}
        older = "/dashboard/jobs?" + urllib.parse.urlencode(params)
    return page(
        request,
        "jobs.html",
        viewer,
        rows=rows,
        flt=flt,
        csv_url="/dashboard/jobs.csv?" + urllib.parse.urlencode(flt.query()),
        choices=report_queries.filter_choices(session, tenant=tenant),
        actions=report_queries.ACTIONS,
        statuses=JOB_STATUSES,
        older=older,
    )


def csv_cell(value: object) -> object:
    """A text cell a spreadsheet will not run as a formula (a leading = + - @ tab or CR gets a `'`)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@router.get("/jobs.csv")
def jobs_csv(request: Request, session: SessionDep, viewer: ViewerDep, flt: FilterDep) -> Response:
    """The filtered list as CSV (newest first, at most CSV_MAX_ROWS rows), with the same filters."""
    if viewer is None:
        raise HTTPException(status_code=401, detail="sign in at /dashboard/login")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    before, written = None, 0
    while written < CSV_MAX_ROWS:
        batch = min(CSV_BATCH, CSV_MAX_ROWS - written)
        rows = report_queries.list_decisions(
            session, flt, tenant=viewer.tenant, limit=batch, before_id=before
        )
        for r in rows:
            cells = (
                when(r["created_at"]),
                r["job_id"],
                r["status"],
                r["language"] or "",
                labels_text(r["labels"]),
                repr(float(r["score"])),
                r["action"],
                r["shadow_action"] or "",
                r["rule"],
                r["policy"],
                r["prompt"] if r["prompt"] is not None else "(redacted)",
            )
            writer.writerow([csv_cell(c) for c in cells])
        written += len(rows)
        if len(rows) < batch:
            break
        before = rows[-1]["decision_id"]
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="jobs.csv"',
            "Cache-Control": "private, no-store",
        },
    )


def images_visible(status: str, role: str) -> bool:
    """A held or rejected job's images are shown to review keys only (as by the API)."""
    return status not in ("held", "rejected") or role == "review"


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: uuid.UUID, session: SessionDep, viewer: ViewerDep) -> Response:
    if viewer is None:
        return to_login(request)
    detail = report_queries.job_detail(session, str(job_id), tenant=viewer.tenant)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    visible = images_visible(detail["job"].status, viewer.role)
    decision = detail["decision"]
    bars = deviation_bars(decision.expert_deviation if decision is not None else None)
    return page(request, "job.html", viewer, images_visible=visible, deviations=bars, **detail)


@router.get("/jobs/{job_id}/images/{index}")
def job_image(
    request: Request, job_id: uuid.UUID, index: int, session: SessionDep, viewer: ViewerDep
) -> Response:
    """An image of the job page (the API's image endpoint wants a header; an <img> sends the cookie), under
    the API's rules: held or rejected images only to review keys, only files inside the artifacts folder
    whose sha256 is the recorded one."""
    if viewer is None:
        raise HTTPException(status_code=401, detail="sign in at /dashboard/login")
    detail = report_queries.job_detail(session, str(job_id), tenant=viewer.tenant)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    job = detail["job"]
    if not images_visible(job.status, viewer.role):
        why = "awaits human review" if job.status == "held" else "was rejected in human review"
        raise HTTPException(status_code=403, detail=f"image {index} of job {job_id} {why}: not served")
    artifact = next((a for a in detail["artifacts"] if a.path_index == index), None)
    if artifact is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} has no image {index}")
    folder = Path(request.app.state.settings.resolved_artifacts_dir).resolve()
    path = Path(artifact.storage_uri.removeprefix("file://")).resolve()
    gone = HTTPException(status_code=404, detail=f"image {index} of job {job_id} is no longer stored")
    if not path.is_relative_to(folder):
        log.error("image %d of job %s points outside the artifacts folder: %s", index, job_id, path)
        raise gone
    try:
        data = path.read_bytes()
    except OSError:
        raise gone from None
    if hashlib.sha256(data).hexdigest() != artifact.sha256:
        log.error("image %d of job %s does not match its recorded sha256: not served", index, job_id)
        raise HTTPException(
            status_code=409,
            detail=f"image {index} of job {job_id} does not match the sha256 recorded for it: not served",
        )
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, no-store"})
