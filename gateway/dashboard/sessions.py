"""Who is looking: a read key sent as a header, or a browser's signed session cookie, with its CSRF token.

The cookie holds a signed session (`auth.SessionSigner`: key id and prefix, tenant, role, expiry), never the
key. It ends at its Max-Age, at sign-out, and as soon as its key is revoked.
"""

from __future__ import annotations

import threading
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.responses import RedirectResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth import (
    DashboardSession,
    EphemeralStore,
    SessionSigner,
    require_role,
    session_key_live,
)
from gateway.dashboard.forms import same_origin
from gateway.deps import SessionDep

COOKIE = "emoe_dashboard_session"
_read = require_role("read")
_bearer = HTTPBearer(auto_error=False)
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


# --- per-app state: the session signer and the shared store ---


@dataclass(frozen=True)
class AuthState:
    """One app's session signer and its store of sign-outs and failed sign-ins."""

    signer: SessionSigner
    store: EphemeralStore


_auth_of: weakref.WeakKeyDictionary[Any, AuthState] = weakref.WeakKeyDictionary()
_auth_lock = threading.Lock()


def auth_state(request: Request) -> AuthState:
    """The request's app's signer and store, made on first use from its settings."""
    app = request.app
    with _auth_lock:
        found = _auth_of.get(app)
        if found is None:
            settings = app.state.settings
            found = AuthState(SessionSigner.for_settings(settings), EphemeralStore.for_settings(settings))
            _auth_of[app] = found
    return found


# --- the viewer ---


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
    auth = auth_state(request)
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


def to_login(request: Request) -> RedirectResponse:
    """To the sign-in form, coming back to this page after it (saying so when a session has ended)."""
    target = urllib.parse.quote(
        str(request.url.path) + ("?" + request.url.query if request.url.query else "")
    )
    expired = "&error=expired" if request.cookies.get(COOKIE) else ""
    return RedirectResponse(f"/dashboard/login?next={target}{expired}", status_code=303)


def check_post(request: Request, viewer: Viewer, form: dict[str, str]) -> None:
    """A signed-in browser's POST must come from this site and carry its session's CSRF token."""
    if viewer.session is None:
        return  # a key in a header: no ambient credential a cross-site form could use
    if not same_origin(request) or not auth_state(request).signer.csrf_ok(viewer.session, form.get("csrf")):
        raise HTTPException(
            status_code=403, detail="the form's CSRF token is missing or wrong: reload the page"
        )
