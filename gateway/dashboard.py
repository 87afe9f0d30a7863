"""`/dashboard`: server-rendered audit pages for keys with the read role, scoped to the key's tenant.

Pages: overview (decisions over time by action, the policy in force, the tenant's share of the latest replay),
fairness (per-group table with intervals and disparity), a job browser (filters by action, language and policy
version), a job page (score, rule, image) and, for review keys, the review queue (`/dashboard/review`).

A browser signs in once with its API key: the cookie then holds a signed session (`auth.SessionSigner`: key
id and prefix, tenant, role, expiry), never the key. The session ends at its Max-Age, at sign-out, and as
soon as its key is revoked. Every form posts a CSRF token bound to the session; sign-in checks the form's
Origin and slows down repeated failures. Scripts may send the key as a header instead, like the API (no
cookie, so no CSRF token is needed). Every HTML answer carries a Content-Security-Policy that allows only the
dashboard's own static files (`/dashboard/static/…`): no inline script or style.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
import urllib.parse
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy.orm import Session

from audit import fairness, report_queries
from audit import reviews as review_repo
from audit.db import transaction
from audit.keys import find_key
from audit.report import cell, fmt, fmt_ci, fmt_pct, missing_notes, rates_svg
from gateway.auth import (
    DashboardSession,
    EphemeralStore,
    SessionSigner,
    require_role,
    session_key_live,
)
from gateway.deps import SessionDep
from gateway.schemas import ReviewRequest

log = logging.getLogger(__name__)

COOKIE = "emoe_dashboard_session"
PAGE_SIZE = 50
STATS_TTL_S = 60.0
MAX_FORM_BYTES = 16 * 1024
LOGIN_BASE_DELAY_S = 0.25  # after login_max_failures, each further failure doubles the wait, up to:
LOGIN_MAX_DELAY_S = 8.0
LOGIN_REFUSE_FACTOR = 2  # from this many times login_max_failures on: 429 until the window ends
TEMPLATES = Path(__file__).parent / "templates" / "dashboard"
STATIC_FILES = {
    "dashboard.css": "text/css; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
LOGIN_ERRORS = {
    "invalid": "That key is not valid.",
    "throttled": "Too many failed sign-ins: wait a while, then try again.",
    "origin": "The sign-in form was not posted from this site.",
    "expired": "Your session has ended: sign in again.",
}

DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# /docs and /redoc are served with their assets by the gateway (fastapi-offline): nothing from outside;
# their pages start Swagger UI and ReDoc with an inline script, and ReDoc runs a blob: worker
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
HTML_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.filters["num"] = fmt
templates.env.filters["ci"] = fmt_ci
templates.env.filters["pct"] = fmt_pct  # rates read the same here as in the HTML report
templates.env.filters["cell"] = cell
templates.env.globals["missing_notes"] = missing_notes
templates.env.globals["rates_svg"] = rates_svg
_read = require_role("read")
_bearer = HTTPBearer(auto_error=False)
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


# --- security headers (every answer of the app) ---


class SecurityHeaders:
    """ASGI middleware: `nosniff` on every answer; on HTML also a CSP, `X-Frame-Options: DENY` and a
    Referrer-Policy (the dashboard's CSP allows only its own static files)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        dashboard = scope.get("path", "").startswith("/dashboard")

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if ctype.startswith(b"text/html") or dashboard:
                    csp = DASHBOARD_CSP if dashboard else DOCS_CSP
                    if b"content-security-policy" not in names:
                        headers.append((b"content-security-policy", csp.encode()))
                    headers += [h for h in HTML_HEADERS if h[0] not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


# --- per-app state: the session signer and the shared store ---


@dataclass(frozen=True)
class _Auth:
    signer: SessionSigner
    store: EphemeralStore


_auth_of: weakref.WeakKeyDictionary[Any, _Auth] = weakref.WeakKeyDictionary()
_auth_lock = threading.Lock()


def _auth(request: Request) -> _Auth:
    app = request.app
    with _auth_lock:
        found = _auth_of.get(app)
        if found is None:
            settings = app.state.settings
            found = _Auth(SessionSigner.for_settings(settings), EphemeralStore.for_settings(settings))
            _auth_of[app] = found
    return found


# --- who is looking ---


@dataclass(frozen=True)
class Viewer:
    """The signed-in tenant and role; `session` is None for a key sent as a header (no cookie, no CSRF)."""

    tenant: str
    role: str
    key_prefix: str
    session: DashboardSession | None = None
    csrf: str = ""


def dashboard_viewer(
    request: Request,
    db: SessionDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    header_key: Annotated[str | None, Security(_header)] = None,
) -> Viewer | None:
    """The request's viewer (a read key as a header, or a live signed session); None sends it to sign-in."""
    if bearer is not None or header_key is not None:
        try:
            tenant = _read(request, bearer, header_key)
        except HTTPException as exc:
            if exc.status_code == 401:
                return None
            raise
        return Viewer(tenant, request.state.role, request.state.key_prefix)
    auth = _auth(request)
    signed = auth.signer.read(request.cookies.get(COOKIE))
    if signed is None or auth.store.signed_out(signed.sid) or not session_key_live(db, signed):
        return None
    request.state.tenant, request.state.role, request.state.key_prefix = (
        signed.tenant,
        signed.role,
        signed.key_prefix,
    )
    return Viewer(signed.tenant, signed.role, signed.key_prefix, signed, auth.signer.csrf(signed))


ViewerDep = Annotated[Viewer | None, Depends(dashboard_viewer)]


def _to_login(request: Request) -> RedirectResponse:
    target = urllib.parse.quote(
        str(request.url.path) + ("?" + request.url.query if request.url.query else "")
    )
    expired = "&error=expired" if request.cookies.get(COOKIE) else ""
    return RedirectResponse(f"/dashboard/login?next={target}{expired}", status_code=303)


def _page(
    request: Request, name: str, viewer: Viewer, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {"tenant": viewer.tenant, "viewer": viewer, "csrf": viewer.csrf, "active": name, **context},
        status_code=status_code,
    )


# --- static files (the CSP allows these and nothing else) ---


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    media = STATIC_FILES.get(name)
    if media is None:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    return Response(
        (TEMPLATES / name).read_bytes(), media_type=media, headers={"Cache-Control": "public, max-age=3600"}
    )


# --- origin and CSRF checks ---


def _origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request) -> bool:
    """Whether a form comes from this site: its Origin (else its Referer) is the configured public URL's
    origin, or has this request's Host. A request with neither header is not a browser's cross-site form."""
    sent = request.headers.get("origin") or ""
    if not sent and request.headers.get("referer"):
        sent = _origin_of(request.headers["referer"])
    if not sent:
        return True
    if sent == "null":
        return False
    public = request.app.state.settings.public_url
    if public:
        return sent.lower() == _origin_of(public)
    host = (request.headers.get("host") or "").lower()
    return bool(host) and urllib.parse.urlsplit(sent.lower()).netloc == host


async def _read_form(request: Request) -> dict[str, str]:
    """The first value of each field of a urlencoded form of at most MAX_FORM_BYTES (413 above)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise HTTPException(status_code=413, detail=f"a dashboard form is at most {MAX_FORM_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(status_code=413, detail=f"a dashboard form is at most {MAX_FORM_BYTES} bytes")
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in form.items()}


def _check_post(request: Request, viewer: Viewer, form: dict[str, str]) -> None:
    """A signed-in browser's POST must come from this site and carry its session's CSRF token."""
    if viewer.session is None:
        return  # a key in a header: no ambient credential a cross-site form could use
    if not same_origin(request) or not _auth(request).signer.csrf_ok(viewer.session, form.get("csrf")):
        raise HTTPException(
            status_code=403, detail="the form's CSRF token is missing or wrong: reload the page"
        )


# --- sign in / out ---


def _safe_next(value: str | None) -> str:
    """Only paths inside the dashboard: never an open redirect."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"


def _login_page(request: Request, target: str, error: str | None, status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"next": target, "error": LOGIN_ERRORS.get(error or ""), "tenant": None, "active": "login"},
        status_code=status_code,
    )


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None, error: str | None = None) -> HTMLResponse:
    """The sign-in form; `error` is one of the known codes (any other text is not shown)."""
    return _login_page(request, _safe_next(next), error)


def _client_name(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _throttle_names(request: Request, key: str) -> list[str]:
    """What failures are counted under: the client address and the key's shown prefix (hashed)."""
    names = ["client:" + hashlib.sha256(_client_name(request).encode()).hexdigest()[:32]]
    if key:
        names.append("prefix:" + hashlib.sha256(key[:12].encode()).hexdigest()[:32])
    return names


def login_delay(failures: int, max_failures: int) -> float | None:
    """Seconds to wait before checking a sign-in after `failures` recent ones; None: refuse it (429)."""
    if failures < max_failures:
        return 0.0
    if failures >= LOGIN_REFUSE_FACTOR * max_failures:
        return None
    return min(LOGIN_MAX_DELAY_S, LOGIN_BASE_DELAY_S * 2 ** (failures - max_failures))


def _find_live_key(request: Request, key: str) -> Any:
    with transaction(request.app.state.sessionmaker) as session:
        row = find_key(session, key)
        if row is not None:
            session.expunge(row)
        return row


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the posted key; on success set a signed session cookie and go to `next`."""
    settings = request.app.state.settings
    if not same_origin(request):
        log.warning("dashboard sign-in from another origin refused (client %s)", _client_name(request))
        return _login_page(request, "/dashboard", "origin", status_code=403)
    form = await _read_form(request)
    key = form.get("key", "").strip()
    target = _safe_next(form.get("next"))
    auth = _auth(request)
    names = _throttle_names(request, key)
    worst = max([await run_in_threadpool(auth.store.failures, n) for n in names], key=lambda f: f[0])
    delay = login_delay(worst[0], settings.login_max_failures)
    if delay is None:
        retry = max(1, math.ceil(worst[1]))
        log.warning(
            "dashboard sign-in refused: %d recent failures (client %s)", worst[0], _client_name(request)
        )
        page = _login_page(request, target, "throttled", status_code=429)
        page.headers["Retry-After"] = str(retry)
        return page
    if delay:
        await asyncio.sleep(delay)  # holds no thread while it waits
    row = None
    if key and len(key) <= 256 and "\x00" not in key:
        row = await run_in_threadpool(_find_live_key, request, key)
    if row is None or row.role not in ("read", "submit", "review"):
        counts = [await run_in_threadpool(auth.store.fail, n, settings.login_window_s) for n in names]
        log.warning(
            "dashboard sign-in failed (client %s, %d recent failures)", _client_name(request), max(counts)
        )
        query = urllib.parse.urlencode({"next": target, "error": "invalid"})
        return RedirectResponse(f"/dashboard/login?{query}", status_code=303)
    value, _ = auth.signer.issue(row, settings.dashboard_session_s)
    log.info("dashboard sign-in of key %s (tenant %s, role %s)", row.key_prefix, row.tenant, row.role)
    response = RedirectResponse(target, status_code=303)
    public = settings.public_url or ""
    response.set_cookie(
        COOKIE,
        value,
        max_age=settings.dashboard_session_s,
        httponly=True,
        samesite="strict",
        secure=public.startswith("https://") or request.url.scheme == "https",
        path="/dashboard",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (it cannot be used again, even with a copy of the cookie) and forget the cookie."""
    auth = _auth(request)
    signed = auth.signer.read(request.cookies.get(COOKIE))
    if signed is not None:
        form = await _read_form(request)
        if not same_origin(request) or not auth.signer.csrf_ok(signed, form.get("csrf")):
            raise HTTPException(status_code=403, detail="the form's CSRF token is missing or wrong")
        await run_in_threadpool(auth.store.sign_out, signed.sid, float(signed.expires))
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


def tenant_replay(session: Session, tenant: str) -> dict[str, Any] | None:
    """The latest stored replay with only `tenant`'s totals (`summary` None: the run kept no per-tenant
    totals, from before they were stored)."""
    run = report_queries.latest_replay(session)
    if run is None:
        return None
    tenants = (run.summary or {}).get("tenants")
    summary = None
    if isinstance(tenants, dict):
        summary = tenants.get(tenant) or {"total": 0, "replayed": 0, "changed": 0, "before": {}, "after": {}}
    return {
        "policy_name": run.policy_name,
        "policy_version": run.policy_version,
        "policy_hash": run.policy_hash,
        "created_at": run.created_at,
        "since": run.since,
        "summary": summary,
    }


@router.get("", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, viewer: ViewerDep) -> Response:
    if viewer is None:
        return _to_login(request)
    tenant = viewer.tenant
    over_time = report_queries.decisions_over_time(session, tenant=tenant)
    peak = max((r["continue"] + r["flag"] + r["halt"] for r in over_time["rows"]), default=0)
    return _page(
        request,
        "overview.html",
        viewer,
        counts=report_queries.action_counts(session, tenant=tenant),
        over_time=over_time,
        peak=peak,
        policies=report_queries.policy_counts(session, tenant=tenant),
        in_force=_policy_in_force(request),
        replay=tenant_replay(session, tenant),
        actions=report_queries.ACTIONS,
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
    viewer: ViewerDep,
    group_by: str = "language",
    since: str = "",
    reference: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    if viewer is None:
        return _to_login(request)
    try:
        report_queries.check_group_by(group_by)
        since_dt = report_queries.parse_since(since)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    wanted = reference or fairness.DEFAULT_REFERENCE
    loaded, table = _fairness_table(session, viewer.tenant, group_by, since_dt, wanted)
    sizes = {g.group: g.n for g in table.groups}
    chosen, reference_note = fairness.choose_reference(sizes, reference)  # e.g. `en` is no value of a label
    if chosen != wanted:
        loaded, table = _fairness_table(session, viewer.tenant, group_by, since_dt, chosen)
    return _page(
        request,
        "fairness.html",
        viewer,
        table=table.to_dict(),
        n=len(loaded.records),
        n_shadow=loaded.n_shadow,
        group_by=group_by,
        since=since,
        groups=sorted(sizes.items()),
        reference_note=reference_note,
        bootstrap_max_n=fairness.DEFAULT_BOOTSTRAP_MAX_N,
    )


# --- jobs ---


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
        return _to_login(request)
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
    return _page(
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
        return _to_login(request)
    detail = report_queries.job_detail(session, str(job_id), tenant=viewer.tenant)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    visible = images_visible(detail["job"].status, viewer.role)
    return _page(request, "job.html", viewer, images_visible=visible, **detail)


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


# --- review (review keys) ---


@dataclass(frozen=True)
class QueueFilter:
    language: str = ""
    label: str = ""
    min_score: float | None = None
    max_score: float | None = None

    @classmethod
    def parse(cls, values: dict[str, str]) -> QueueFilter:
        """From query or form fields; ValueError names the bad field."""
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
        if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
            raise ValueError(f"max_score: {bounds[1]} is below min_score {bounds[0]}")
        return cls(language.lower(), label, bounds[0], bounds[1])

    def kwargs(self) -> dict[str, Any]:
        label = tuple(self.label.split(":", 1)) if self.label else None
        return {
            "language": self.language or None,
            "min_score": self.min_score,
            "max_score": self.max_score,
            "label": label,
        }

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
        return _to_login(request)
    if viewer.role != "review":
        return _page(request, "review.html", viewer, status_code=403, forbidden=True)
    return viewer


@router.get("/review", response_class=HTMLResponse)
def review_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    job: uuid.UUID | None = None,
    done: str = "",
) -> Response:
    """The open queue (age and count) and one job leased to this reviewer, with its score against the
    thresholds, the experts' deviations and its images shown large."""
    checked = _require_reviewer(request, viewer)
    if isinstance(checked, Response):
        return checked
    viewer = checked
    try:
        flt = QueueFilter.parse(dict(request.query_params))
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    settings = request.app.state.settings
    now = datetime.now(UTC)
    queue = review_repo.review_queue(session, viewer.tenant, state="open", limit=PAGE_SIZE, **flt.kwargs())
    lease = problem = None
    try:
        if job is not None:
            lease = review_repo.take_lease(
                session, job, viewer.tenant, reviewer=viewer.key_prefix, seconds=settings.review_lease_s
            )
            if lease is None:
                raise HTTPException(status_code=404, detail=f"no job {job}")
        else:
            lease = review_repo.lease_next(
                session,
                viewer.tenant,
                reviewer=viewer.key_prefix,
                seconds=settings.review_lease_s,
                **flt.kwargs(),
            )
    except review_repo.ReviewRefused as exc:
        problem = str(exc)
    current = lease.job if lease is not None else None
    following = None
    if current is not None:
        ids = [j.id for j in queue.jobs]
        after = ids[ids.index(current.id) + 1 :] if current.id in ids else ids
        following = next((i for i in after if i != current.id), None)
    decision = current.decision if current is not None else None
    deviations = list(decision.expert_deviation or []) if decision is not None else []
    top = max(deviations, default=0.0) or 1.0
    return _page(
        request,
        "review.html",
        viewer,
        queue=queue,
        rows=[(j, _age(j.created_at, now)) for j in queue.jobs],
        oldest=_age(queue.oldest, now),
        current=current,
        decision=decision,
        lease_until=lease.until if lease is not None else None,
        scale=_scale(decision.score, decision.flag_at, decision.halt_at) if decision is not None else None,
        deviations=[(i, d, round(100 * d / top, 2)) for i, d in enumerate(deviations)],
        verdicts=review_repo.verdicts_of(session, [current.id])[current.id] if current is not None else [],
        following=following,
        flt=flt,
        filter_query=flt.query(),
        problem=problem,
        done=done if done in ("approved", "rejected", "escalated", "bulk") else "",
        bulk_n=len(review_repo.bulk_selection(session, viewer.tenant, **flt.kwargs())),
        bulk_max=review_repo.BULK_MAX,
    )


def _follow_up(request: Request, verdicts: list[review_repo.Verdict]) -> None:
    """After the commit, as the API does: render an approved halted job, then send the review webhook."""
    dispatcher = request.app.state.dispatcher
    for result in verdicts:
        try:
            if result.render:
                dispatcher.render(result.job.id)
            if result.job.callback_url:
                dispatcher.hook(result.job.id, f"review.{result.review.outcome}")
        except Exception:  # the recovery sweep re-enqueues a render whose message was lost
            log.exception("could not enqueue the follow-up of review %d", result.review.id)


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
    checked = _require_reviewer(request, viewer)
    if isinstance(checked, Response):
        return checked
    form = await _read_form(request)
    _check_post(request, checked, form)
    try:
        flt = QueueFilter.parse(form)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
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
                    **flt.kwargs(),
                )
            except review_repo.ReviewRefused as exc:
                raise _review_error(exc) from exc
            return results

    results = await run_in_threadpool(record)
    _follow_up(request, results)
    return RedirectResponse(f"/dashboard/review?{flt.query(done='bulk')}", status_code=303)


@router.post("/review/{job_id}")
async def review_verdict(job_id: uuid.UUID, request: Request, viewer: ViewerDep) -> Response:
    """A verdict (approve, reject, escalate) with an optional note on one job; back to the queue."""
    checked = _require_reviewer(request, viewer)
    if isinstance(checked, Response):
        return checked
    form = await _read_form(request)
    _check_post(request, checked, form)
    try:
        flt = QueueFilter.parse(form)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
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
                )
            except review_repo.ReviewRefused as exc:
                raise _review_error(exc) from exc
            if result is None:
                raise HTTPException(status_code=404, detail=f"no job {job_id}")
            return result

    result = await run_in_threadpool(record)
    _follow_up(request, [result])
    return RedirectResponse(f"/dashboard/review?{flt.query(done=result.review.outcome)}", status_code=303)
