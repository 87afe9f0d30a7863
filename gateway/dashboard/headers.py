"""Security headers on every answer: `nosniff` everywhere; a CSP and frame/referrer rules on HTML."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

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


class SecuredApp(FastAPI):
    """FastAPI with `SecurityHeaders` as its outermost layer: outside Starlette's ServerErrorMiddleware too,
    which answers unhandled exceptions outside every middleware added with `add_middleware`."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())
