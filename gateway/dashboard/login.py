"""Signing in and out: the key is checked once, the cookie then holds a signed session.

Sign-in checks the form's Origin and slows down repeated failures, counted per client address and per key
prefix (hashed); sign-out makes the session unusable even with a copy of the cookie.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import urllib.parse
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from audit.db import transaction
from audit.keys import find_key
from gateway.dashboard.forms import read_form, same_origin
from gateway.dashboard.rendering import templates
from gateway.dashboard.sessions import COOKIE, auth_state

log = logging.getLogger(__name__)

LOGIN_BASE_DELAY_S = 0.25  # after login_max_failures, each further failure doubles the wait, up to:
LOGIN_MAX_DELAY_S = 8.0
LOGIN_REFUSE_FACTOR = 2  # from this many times login_max_failures on: 429 until the window ends
LOGIN_ERRORS = {
    "invalid": "That key is not valid.",
    "throttled": "Too many failed sign-ins: wait a while, then try again.",
    "origin": "The sign-in form was not posted from this site.",
    "expired": "Your session has ended: sign in again.",
}

router = APIRouter()


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
    form = await read_form(request)
    key = form.get("key", "").strip()
    target = _safe_next(form.get("next"))
    auth = auth_state(request)
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
    auth = auth_state(request)
    signed = auth.signer.read(request.cookies.get(COOKIE))
    if signed is not None:
        form = await read_form(request)
        if not same_origin(request) or not auth.signer.csrf_ok(signed, form.get("csrf")):
            raise HTTPException(status_code=403, detail="the form's CSRF token is missing or wrong")
        await run_in_threadpool(auth.store.sign_out, signed.sid, float(signed.expires))
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response
