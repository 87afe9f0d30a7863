"""API keys: `require_role("read")` / `require_role("submit")` are dependencies returning the tenant.

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Only its sha256 is
stored. A `submit` key can also read; a `read` key can only read; a `review` key can read (held images
too) and record review verdicts. Verified keys are cached for a few seconds per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from audit.keys import find_key, hash_key

AUTH_RESPONSES: dict[int | str, dict] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The API key's role does not allow this."},
}
ROLE_GRANTS = {"read": {"read", "submit", "review"}, "submit": {"submit"}, "review": {"review"}}
CACHE_TTL_S = 10.0

_bearer = HTTPBearer(auto_error=False, description="An API key made with `emoe-gate keys create`.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same API key, as a header.")


class KeyCache:
    """sha256(key) -> (tenant, role), for CACHE_TTL_S seconds: most requests skip the key lookup."""

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._rows: dict[str, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> tuple[str, str] | None:
        with self._lock:
            hit = self._rows.get(digest)
        if hit is None or hit[2] < time.monotonic():
            return None
        return hit[0], hit[1]

    def put(self, digest: str, tenant: str, role: str) -> None:
        with self._lock:
            if len(self._rows) > 10_000:
                self._rows.clear()
            self._rows[digest] = (tenant, role, time.monotonic() + self.ttl_s)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def _secret_digest(bearer: HTTPAuthorizationCredentials | None, header_key: str | None) -> tuple[str, str]:
    secret = bearer.credentials if bearer is not None else header_key
    if not secret:
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
    if len(secret) > 256 or "\x00" in secret:
        raise _unauthorized("API key is not valid")
    return secret, hash_key(secret)


def _lookup(request: Request, secret: str, digest: str) -> tuple[str, str]:
    """The key's (tenant, role) from the database, then cached; 401 if there is no such live key."""
    session = request.app.state.sessionmaker()
    try:
        row = find_key(session, secret)
        session.commit()
    finally:
        session.close()
    if row is None:
        raise _unauthorized("API key is not valid")
    hit = (row.tenant, row.role)
    request.app.state.key_cache.put(digest, *hit)
    return hit


def _check_role(request: Request, hit: tuple[str, str], role: str) -> str:
    tenant, key_role = hit
    if key_role not in ROLE_GRANTS[role]:
        raise HTTPException(status_code=403, detail=f"this API key has role {key_role!r}; {role!r} is needed")
    request.state.tenant = tenant
    request.state.role = key_role
    return tenant


def _known_role(role: str) -> str:
    if role not in ROLE_GRANTS:
        raise ValueError(f"role must be one of {sorted(ROLE_GRANTS)}, not {role!r}")
    return role


def require_role(role: str) -> Callable[..., str]:
    """A dependency that authenticates the request and returns its tenant (403: the role is too weak).

    A plain function, so that other code (the dashboard) can call it directly."""
    _known_role(role)

    def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
        header_key: Annotated[str | None, Security(_header)] = None,
    ) -> str:
        secret, digest = _secret_digest(bearer, header_key)
        request.state.key_prefix = secret[:12]  # the shown prefix (audit.keys.create_key)
        hit = request.app.state.key_cache.get(digest)
        return _check_role(request, hit or _lookup(request, secret, digest), role)

    dependency.__name__ = f"require_{role}"
    return dependency


def require_role_async(role: str) -> Callable[..., Awaitable[str]]:
    """`require_role` as an async dependency: a cached key costs no thread hop; a cache miss reads the
    database in a worker thread."""
    _known_role(role)

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
        header_key: Annotated[str | None, Security(_header)] = None,
    ) -> str:
        secret, digest = _secret_digest(bearer, header_key)
        request.state.key_prefix = secret[:12]  # the shown prefix (audit.keys.create_key)
        hit = request.app.state.key_cache.get(digest)
        if hit is None:
            hit = await run_in_threadpool(_lookup, request, secret, digest)
        return _check_role(request, hit, role)

    dependency.__name__ = f"require_{role}"
    return dependency


ReadTenant = Annotated[str, Depends(require_role_async("read"))]
SubmitTenant = Annotated[str, Depends(require_role_async("submit"))]
ReviewTenant = Annotated[str, Depends(require_role_async("review"))]
