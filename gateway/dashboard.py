"""`/dashboard`: server-rendered audit pages for keys with the read role, scoped to the key's tenant.

Pages: overview (decisions over time by action, the policy in force, the latest replay), fairness (per-group
table with intervals and disparity), a job browser (filters by action, language and policy version) and a job
page (score, rule, image). A browser signs in once with its API key (kept in an HttpOnly, SameSite=Strict
cookie); scripts may send the key as a header instead, like the API.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Security
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates

from audit import fairness, report_queries
from audit.report import fmt, fmt_ci
from gateway.auth import require_role
from gateway.deps import SessionDep

COOKIE = "emoe_dashboard_key"
PAGE_SIZE = 50
STATS_TTL_S = 60.0

router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates" / "dashboard"))
templates.env.filters["num"] = fmt
templates.env.filters["ci"] = fmt_ci
templates.env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f} %"
_read = require_role("read")
_bearer = HTTPBearer(auto_error=False)
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def dashboard_tenant(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    header_key: Annotated[str | None, Security(_header)] = None,
) -> str | None:
    """The tenant of the request's read key (header or sign-in cookie); None sends the page to sign-in."""
    cookie = request.cookies.get(COOKIE)
    if bearer is None and header_key is None and cookie:
        bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=cookie)
    try:
        return _read(request, bearer, header_key)
    except HTTPException as exc:
        if exc.status_code == 401:
            return None
        raise


Tenant = Annotated[str | None, Security(dashboard_tenant)]


def _to_login(request: Request) -> RedirectResponse:
    target = urllib.parse.quote(
        str(request.url.path) + ("?" + request.url.query if request.url.query else "")
    )
    return RedirectResponse(f"/dashboard/login?next={target}", status_code=303)


def _page(request: Request, name: str, tenant: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"tenant": tenant, "active": name, **context})


# --- sign in / out ---


def _safe_next(value: str | None) -> str:
    """Only paths inside the dashboard: never an open redirect."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None, error: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "login.html", {"next": _safe_next(next), "error": error, "tenant": None, "active": "login"}
    )


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the posted key; on success keep it in an HttpOnly cookie and go to `next`."""
    form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    target = _safe_next((form.get("next") or [None])[0])
    valid = False
    if key:
        try:
            _read(request, HTTPAuthorizationCredentials(scheme="Bearer", credentials=key), None)
            valid = True
        except HTTPException:
            valid = False
    if not valid:
        query = urllib.parse.urlencode({"next": target, "error": "That key is not valid."})
        return RedirectResponse(f"/dashboard/login?{query}", status_code=303)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, key, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/dashboard"
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


# --- overview ---


def _policy_in_force(request: Request) -> dict[str, Any]:
    """The policy file the workers load (settings, else the bundled one), or the error reading it."""
    from policies import PolicyError, bundled_policy_path, load_policy

    settings = request.app.state.settings
    path = settings.policy_path or bundled_policy_path(settings.dtype)
    try:
        policy = load_policy(path)
    except (PolicyError, OSError) as exc:
        return {"path": str(path), "error": str(exc)}
    return {"path": str(path), "policy": policy, "id": policy.id}


@router.get("", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, tenant: Tenant) -> Response:
    if tenant is None:
        return _to_login(request)
    over_time = report_queries.decisions_over_time(session, tenant=tenant)
    peak = max((r["continue"] + r["flag"] + r["halt"] for r in over_time["rows"]), default=0)
    return _page(
        request,
        "overview.html",
        tenant,
        counts=report_queries.action_counts(session, tenant=tenant),
        over_time=over_time,
        peak=peak,
        policies=report_queries.policy_counts(session, tenant=tenant),
        in_force=_policy_in_force(request),
        replay=report_queries.latest_replay(session),
    )


# --- fairness ---

_stats_cache: dict[tuple, tuple[float, Any]] = {}
_stats_lock = threading.Lock()


def _fairness_table(session: Any, tenant: str, group_by: str, since: Any, reference: str) -> Any:
    """Per-group statistics, cached for a minute and recomputed as soon as a new decision arrives."""
    newest = report_queries.latest_decision_id(session, tenant=tenant)
    key = (tenant, group_by, since, reference, newest)
    now = time.monotonic()
    with _stats_lock:
        hit = _stats_cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
    loaded = report_queries.load_records(session, group_by=group_by, since=since, tenant=tenant)
    table = fairness.group_stats(loaded.records, reference=reference)
    with _stats_lock:
        if len(_stats_cache) > 64:
            _stats_cache.clear()
        _stats_cache[key] = (now + STATS_TTL_S, (loaded, table))
    return loaded, table


@router.get("/fairness", response_class=HTMLResponse)
def fairness_page(
    request: Request,
    session: SessionDep,
    tenant: Tenant,
    group_by: str = "language",
    since: str = "",
    reference: Annotated[str, Query(max_length=64)] = "en",
) -> Response:
    if tenant is None:
        return _to_login(request)
    try:
        report_queries.check_group_by(group_by)
        since_dt = report_queries.parse_since(since)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    loaded, table = _fairness_table(session, tenant, group_by, since_dt, reference)
    return _page(
        request,
        "fairness.html",
        tenant,
        table=table.to_dict(),
        n=len(loaded.records),
        n_shadow=loaded.n_shadow,
        group_by=group_by,
        since=since,
        reference=reference,
        bootstrap_max_n=fairness.DEFAULT_BOOTSTRAP_MAX_N,
    )


# --- jobs ---


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    session: SessionDep,
    tenant: Tenant,
    action: str = "",
    language: str = "",
    policy_version: str = "",
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    if tenant is None:
        return _to_login(request)
    try:
        flt = report_queries.JobFilter(action=action, language=language, policy_version=policy_version)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    rows = report_queries.list_jobs(session, flt, tenant=tenant, limit=PAGE_SIZE, before_id=before)
    older = None
    if len(rows) == PAGE_SIZE:
        params = {"action": action, "language": language, "policy_version": policy_version}
        params["before"] = str(rows[-1]["decision_id"])
        older = "/dashboard/jobs?" + urllib.parse.urlencode({k: v for k, v in params.items() if v})
    return _page(
        request,
        "jobs.html",
        tenant,
        rows=rows,
        flt=flt,
        choices=report_queries.filter_choices(session, tenant=tenant),
        actions=report_queries.ACTIONS,
        older=older,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: uuid.UUID, session: SessionDep, tenant: Tenant) -> Response:
    if tenant is None:
        return _to_login(request)
    detail = report_queries.job_detail(session, str(job_id), tenant=tenant)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return _page(request, "job.html", tenant, **detail)


@router.get("/jobs/{job_id}/images/{index}")
def job_image(
    request: Request, job_id: uuid.UUID, index: int, session: SessionDep, tenant: Tenant
) -> Response:
    """An image of the job page (the API's image endpoint wants a header; an <img> sends the cookie)."""
    if tenant is None:
        raise HTTPException(status_code=401, detail="sign in at /dashboard/login")
    detail = report_queries.job_detail(session, str(job_id), tenant=tenant)
    artifact = next((a for a in (detail or {}).get("artifacts", []) if a.path_index == index), None)
    if artifact is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} has no image {index}")
    path = Path(artifact.storage_uri.removeprefix("file://"))
    if not path.is_file():
        raise HTTPException(status_code=404, detail=f"image {index} of job {job_id} is no longer stored")
    return FileResponse(path, media_type="image/png")
