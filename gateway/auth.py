"""API keys: `require_role("read")` / `require_role("submit")` are dependencies returning the tenant.

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Only its sha256 is
stored. A `submit` key can also read; a `read` key can only read; a `review` key can read (held images
too) and record review verdicts. Verified keys are cached for a few seconds per process.

The dashboard signs browsers in with signed sessions (`SessionSigner`), never by keeping the key itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from audit.keys import find_key, hash_key
from audit.models import ApiKey
from settings import Settings

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


# --- dashboard sessions -------------------------------------------------------------------------------------

SESSION_CONTEXT = b"emoe-gate dashboard session v1\x00"
CSRF_CONTEXT = b"emoe-gate dashboard csrf v1\x00"


@dataclass(frozen=True)
class DashboardSession:
    """A signed-in browser: which key (id and shown prefix), its tenant and role, until when (unix time)."""

    sid: str
    key_id: int
    key_prefix: str
    tenant: str
    role: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs dashboard sessions into cookie values (`payload.hmac`) and derives their CSRF tokens.

    The cookie carries no secret: only the key's id and prefix, the tenant, the role, the expiry and a random
    session id; a request is signed in only while the signature holds, the session has not expired or been
    signed out, and its key is still live with the same tenant and role."""

    def __init__(self, key: bytes, *previous: bytes) -> None:
        self._key = key
        self._previous = previous  # sessions signed with these still read (never issued)

    @classmethod
    def for_settings(cls, settings: Settings) -> SessionSigner:
        """The signer of a deployment: its key is derived from the operator's webhook secret under a label of
        its own (every gateway of a deployment shares it; a tenant's webhook rotation does not touch it).
        While the operator rotates (EMOE_WEBHOOK_SECRET_PREVIOUS set), sessions signed under the previous
        secret still read, so the rotation signs no one out."""
        from workers.webhooks import signing_key, webhook_secret

        operators = [webhook_secret(settings), settings.webhook_secret_previous]
        keys = [hmac.new(signing_key(s), SESSION_CONTEXT, hashlib.sha256).digest() for s in operators if s]
        return cls(*keys)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def issue(self, key: ApiKey, max_age_s: int, now: float | None = None) -> tuple[str, DashboardSession]:
        """(cookie value, session) for a live key, valid `max_age_s` seconds."""
        session = DashboardSession(
            sid=secrets.token_urlsafe(16),
            key_id=int(key.id),
            key_prefix=key.key_prefix,
            tenant=key.tenant,
            role=key.role,
            expires=int((now or time.time()) + max_age_s),
        )
        payload = json.dumps(
            {"s": session.sid, "k": session.key_id, "p": session.key_prefix, "t": session.tenant,
             "r": session.role, "e": session.expires},
            separators=(",", ":"),
        ).encode()  # fmt: skip
        return f"{_b64(payload)}.{_b64(self._mac(payload))}", session

    def read(self, value: str | None, now: float | None = None) -> DashboardSession | None:
        """The session a cookie value carries; None if it is malformed, forged or expired."""
        if not value or len(value) > 1024 or value.count(".") != 1:
            return None
        encoded, mac = value.split(".")
        try:
            payload = _unb64(encoded)
            signature = _unb64(mac)
            if not any(
                hmac.compare_digest(signature, hmac.new(key, payload, hashlib.sha256).digest())
                for key in (self._key, *self._previous)
            ):
                return None
            data = json.loads(payload)
            session = DashboardSession(
                sid=str(data["s"]), key_id=int(data["k"]), key_prefix=str(data["p"]), tenant=str(data["t"]),
                role=str(data["r"]), expires=int(data["e"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        return session if session.expires > (now or time.time()) else None

    def csrf(self, session: DashboardSession) -> str:
        """The session's CSRF token (every dashboard form posts it back)."""
        return _b64(hmac.new(self._key, CSRF_CONTEXT + session.sid.encode(), hashlib.sha256).digest())

    def csrf_ok(self, session: DashboardSession, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(str(value).encode(), self.csrf(session).encode())


def session_key_live(session: Session, signed: DashboardSession) -> bool:
    """True while the session's key is live (not revoked) with the tenant and role it was signed in with."""
    row = session.get(ApiKey, signed.key_id)
    return (
        row is not None
        and row.revoked_at is None
        and row.tenant == signed.tenant
        and row.role == signed.role
        and row.key_prefix == signed.key_prefix
    )


class EphemeralStore:
    """Short-lived shared state of the dashboard: signed-out sessions and counts of failed sign-ins.

    In Redis (the broker) when there is one, so that every gateway process sees a sign-out; otherwise in
    this process's memory (embedded mode runs one gateway process)."""

    PREFIX = "emoe:dashboard:"

    def __init__(self, redis_client: Any | None = None) -> None:
        self._redis = redis_client
        self._lock = threading.Lock()
        self._out: dict[str, float] = {}  # sid -> when the session would have expired
        self._fails: dict[str, tuple[int, float]] = {}  # name -> (count, end of the window)

    @classmethod
    def for_settings(cls, settings: Settings) -> EphemeralStore:
        if settings.embedded:
            return cls()
        from workers.heartbeat import redis_client

        return cls(redis_client(settings))

    def _prune(self, now: float) -> None:
        if len(self._out) > 10_000:
            self._out = {k: v for k, v in self._out.items() if v > now}
        if len(self._fails) > 10_000:
            self._fails = {k: v for k, v in self._fails.items() if v[1] > now}

    def _shared(self, call: Callable[[Any], Any]) -> Any:
        """`call(redis)`; a Redis that cannot answer is the broker being down (503), not a server error."""
        import redis

        from gateway.errors import BrokerUnavailable

        try:
            return call(self._redis)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"dashboard session store: {exc}") from exc

    def sign_out(self, sid: str, until: float) -> None:
        """Remember that session `sid` ended (until it would have expired anyway)."""
        ttl = max(1, int(until - time.time()) + 1)
        if self._redis is not None:
            self._shared(lambda r: r.set(f"{self.PREFIX}out:{sid}", b"1", ex=ttl))
            return
        with self._lock:
            self._prune(time.time())
            self._out[sid] = until

    def signed_out(self, sid: str) -> bool:
        if self._redis is not None:
            return bool(self._shared(lambda r: r.exists(f"{self.PREFIX}out:{sid}")))
        with self._lock:
            return sid in self._out

    def failures(self, name: str) -> tuple[int, float]:
        """(failed attempts of `name` in its current window, seconds until the window ends)."""
        if self._redis is not None:
            key = f"{self.PREFIX}fail:{name}"
            count, ttl = self._shared(lambda r: (r.get(key), r.ttl(key)))
            return (int(count or 0), float(max(ttl, 0)))
        now = time.time()
        with self._lock:
            count, end = self._fails.get(name, (0, now))
        return (count, end - now) if end > now else (0, 0.0)

    def fail(self, name: str, window_s: int) -> int:
        """Count a failed attempt of `name` (the window starts at its first failure); returns the count."""
        if self._redis is not None:
            key = f"{self.PREFIX}fail:{name}"

            def count_one(r: Any) -> int:
                count = int(r.incr(key))
                if count == 1 or r.ttl(key) < 0:
                    r.expire(key, window_s)
                return count

            return self._shared(count_one)
        now = time.time()
        with self._lock:
            self._prune(now)
            count, end = self._fails.get(name, (0, now))
            if end <= now:
                count, end = 0, now + window_s
            self._fails[name] = (count + 1, end)
            return count + 1
