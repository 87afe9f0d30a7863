"""The job browser, one job's page and its images (under the API's rules for held and rejected jobs)."""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from audit import report_queries
from gateway.dashboard.rendering import PAGE_SIZE, page
from gateway.dashboard.sessions import ViewerDep, to_login
from gateway.deps import SessionDep

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    action: str = "",
    language: str = "",
    policy_version: str = "",
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    if viewer is None:
        return to_login(request)
    tenant = viewer.tenant
    try:
        flt = report_queries.DecisionFilter(action=action, language=language, policy_version=policy_version)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    rows = report_queries.list_decisions(session, flt, tenant=tenant, limit=PAGE_SIZE, before_id=before)
    older = None
    if len(rows) == PAGE_SIZE:
        params = {"action": action, "language": language, "policy_version": policy_version}
        params["before"] = str(rows[-1]["decision_id"])
        older = "/dashboard/jobs?" + urllib.parse.urlencode({k: v for k, v in params.items() if v})
    return page(
        request,
        "jobs.html",
        viewer,
        rows=rows,
        flt=flt,
        choices=report_queries.filter_choices(session, tenant=tenant),
        actions=report_queries.ACTIONS,
        older=older,
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
    return page(request, "job.html", viewer, images_visible=visible, **detail)


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
