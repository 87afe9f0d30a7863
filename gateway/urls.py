"""Absolute URLs in responses: from `EMOE_PUBLIC_URL` when it is set (a proxy in front), else from the
request's own scheme, host and root path. `PublicBase` (middleware) notes the base of each request, so that
views (`gateway.schemas`) can make their links absolute without being handed the request."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from fastapi import Request
from starlette.requests import HTTPConnection

_base: ContextVar[str] = ContextVar("emoe_public_base", default="")


def public_base(request: Request) -> str:
    """The service's base URL, without a trailing slash (`https://gate.example.com`)."""
    configured = request.app.state.settings.public_url
    return configured or str(request.base_url).rstrip("/")


def absolute(path: str) -> str:
    """`path` (`/v1/jobs/...`) under the current request's public base (as it is outside a request)."""
    return _base.get() + path


class PublicBase:
    """ASGI middleware: the public base URL of each HTTP request, for `absolute`."""

    def __init__(self, app: Any, public_url: str | None) -> None:
        self.app = app
        self.public_url = public_url.rstrip("/") if public_url else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        base = self.public_url or str(HTTPConnection(scope).base_url).rstrip("/")
        token = _base.set(base)
        try:
            await self.app(scope, receive, send)
        finally:
            _base.reset(token)
