"""The dashboard's templates, the page every route renders through, and its static files."""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit.report import cell, fmt, fmt_ci, fmt_pct, missing_notes, rates_svg
from gateway.dashboard.sessions import Viewer

PAGE_SIZE = 50
TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "dashboard"
STATIC_FILES = {
    "dashboard.css": "text/css; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

router = APIRouter()


def when(moment: datetime | str | None) -> str:
    """A time as the dashboard shows every time: UTC, to the second (`2026-01-31 12:00:05`); naive is UTC."""
    if moment is None or moment == "":
        return "–"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.filters["num"] = fmt
templates.env.filters["ci"] = fmt_ci
templates.env.filters["pct"] = fmt_pct  # rates read the same here as in the HTML report
templates.env.filters["cell"] = cell
templates.env.filters["when"] = when
templates.env.globals["missing_notes"] = missing_notes
templates.env.globals["rates_svg"] = rates_svg


def page(request: Request, name: str, viewer: Viewer, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render template `name` for `viewer` (its tenant, role and CSRF token go to every page)."""
    return templates.TemplateResponse(
        request,
        name,
        {"tenant": viewer.tenant, "viewer": viewer, "csrf": viewer.csrf, "active": name, **context},
        status_code=status_code,
    )


def error_page(request: Request, exc: StarletteHTTPException) -> HTMLResponse | None:
    """The HTML page a browser gets for a refused dashboard request (a form posted with a stale CSRF token,
    a lease another reviewer holds...) instead of the API's JSON; None for scripts and for other paths."""
    if not request.url.path.startswith("/dashboard") or "text/html" not in request.headers.get("accept", ""):
        return None
    referer = urlsplit(request.headers.get("referer", ""))
    same_site = referer.netloc in ("", request.url.netloc) and referer.path.startswith("/dashboard")
    back = referer.path + (f"?{referer.query}" if referer.query else "") if same_site else "/dashboard"
    try:
        title = f"{exc.status_code} {HTTPStatus(exc.status_code).phrase}"
    except ValueError:
        title = str(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else "the request was refused"
    return templates.TemplateResponse(
        request,
        "error.html",
        {"tenant": None, "status": exc.status_code, "title": title, "detail": detail, "back": back},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def deviation_bars(deviations: list[float] | None) -> list[tuple[int, float, float]]:
    """(path, deviation, bar length 0-100 against the largest) for the experts' deviations chart."""
    values = list(deviations or [])
    top = max(values, default=0.0) or 1.0
    return [(i, d, round(100 * d / top, 2)) for i, d in enumerate(values)]


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """One of the dashboard's own files (the CSP allows these and nothing else)."""
    media = STATIC_FILES.get(name)
    if media is None:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    return Response(
        (TEMPLATES / name).read_bytes(), media_type=media, headers={"Cache-Control": "public, max-age=3600"}
    )
