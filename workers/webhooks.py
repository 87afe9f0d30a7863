"""Webhooks signed as Standard Webhooks say (https://www.standardwebhooks.com): `webhook-id` (the same on
every attempt: `<job id>:<event>`), `webhook-timestamp` (Unix seconds of the attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, where the key is the secret
`whsec_<base64 key>`; receivers verify with any Standard Webhooks library given their tenant's secret.

Each tenant has a secret of its own, so that a tenant that verifies its webhooks cannot forge another's: it is
derived from the operator's `EMOE_WEBHOOK_SECRET` and (tenant, generation) (`tenant_secret`: HMAC-SHA256
under the operator's key; generation 0 is the HMAC of the tenant's name alone, as before generations existed).
The database holds only each tenant's generation number (`audit.webhook_secrets`), never a secret. The secret
is shown with the tenant's first key (`emoe-gate keys create`) and by `emoe-gate webhooks secret --tenant T`.

Rotating one tenant: `emoe-gate webhooks rotate --tenant T --overlap 24h` starts its next generation; until
the overlap ends every webhook of that tenant carries both signatures (space-separated `v1,...`, as the
specification allows), so its receiver can move to the new secret before the old one stops signing. Rotating
the operator's secret (every tenant's at once): set the new one in `EMOE_WEBHOOK_SECRET` and the old one in
`EMOE_WEBHOOK_SECRET_PREVIOUS`; meanwhile webhooks carry the signatures under both.

Deprecated: `X-Emoe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` is still sent, so
that receivers written against it keep working while they move to a standard verifier; it will be removed.

Targets are checked by `workers.url_guard` at every attempt: the host is resolved once, refused unless every
address is public (or allowed by `webhook_allow`), and the request goes to the checked address (the URL keeps
its host for the Host header and TLS; no proxy from the environment, no redirects followed). Every attempt,
refused ones included, is recorded in `webhook_deliveries`; failures are retried with exponential backoff up
to `webhook_max_attempts` (with jitter).

Each destination host has at most `webhook_per_host` deliveries in flight in one process (the hooks
consumer's threads), and each tenant at most `webhook_per_tenant`: a delivery whose host or tenant already has
them is not attempted but put back (`HostBusy`, the same attempt again shortly), so that one slow receiver, or
one tenant's many slow receivers on different hosts, hold at most that many threads and the others' webhooks
keep going out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from audit import jobs as repo
from audit.db import session_scope
from audit.models import WebhookDelivery
from audit.webhook_secrets import generations
from settings import Settings
from workers import url_guard

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Emoe-Signature"  # deprecated: the Standard Webhooks headers below replace it
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
EVENTS = ("halted", "flagged", "completed", "failed")


def webhook_secret(settings: Settings) -> str:
    """The configured secret, else one generated once (`whsec_` + 32 random bytes) and kept in
    `home/webhook_secret`."""
    if settings.webhook_secret:
        return settings.webhook_secret
    path = Path(settings.home) / "webhook_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}")
        tmp.write_text(new_secret())
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


TENANT_CONTEXT = b"emoe-gate webhook secret of tenant v1\x00"  # generation 0
GENERATION_CONTEXT = b"emoe-gate webhook secret of tenant v2\x00"  # generations 1, 2, ...


def tenant_secret(operator_secret: str, tenant: str, generation: int = 0) -> str:
    """The tenant's own `whsec_` secret of `generation`, derived from the operator's secret (one-way: one
    tenant's or generation's secret tells nothing of another's)."""
    if generation < 0:
        raise ValueError(f"generation must be 0 or more, not {generation}")
    # the two contexts differ before the tenant's name, so no (tenant, generation) collides with another
    message = (
        TENANT_CONTEXT + tenant.encode()
        if generation == 0
        else GENERATION_CONTEXT + f"{generation}\x00{tenant}".encode()
    )
    key = hmac.new(signing_key(operator_secret), message, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def tenant_secrets(settings: Settings, tenant: str, live: Sequence[int] = (0,)) -> list[str]:
    """The secrets a tenant's webhooks are signed with: each of its `live` generations (current first) under
    the operator's secret and, while the operator rotates, under the previous one too."""
    operators = [webhook_secret(settings), settings.webhook_secret_previous]
    return [tenant_secret(s, tenant, g) for s in operators if s for g in live]


def new_secret() -> str:
    """A fresh Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: the base64 after `whsec_`, else the string's own UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("EMOE_WEBHOOK_SECRET: the part after whsec_ is not base64") from exc
        if key:
            return key
    if not secret:
        raise ValueError("EMOE_WEBHOOK_SECRET is empty")
    return secret.encode()


FINGERPRINT_CONTEXT = b"emoe-gate operator secret fingerprint v1"


def secret_fingerprint(secret: str) -> str:
    """The operator's secret's fingerprint (hex HMAC-SHA256 of a fixed context under its key), what
    `secret_fingerprints` keeps so that every process can check it signs with the deployment's secret."""
    return hmac.new(signing_key(secret), FINGERPRINT_CONTEXT, hashlib.sha256).hexdigest()


def receiver_secret(secret: str) -> str:
    """The `whsec_` form of `secret` to give receivers for their Standard Webhooks verifier."""
    return SECRET_PREFIX + base64.b64encode(signing_key(secret)).decode()


def sign_standard(
    secret: str | list[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (one `v1,` signature per secret given)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signatures = []
    for each in [secret] if isinstance(secret, str) else secret:
        mac = hmac.new(signing_key(each), f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(mac).decode())
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(stamp), STANDARD_SIGNATURE_HEADER: " ".join(signatures)}


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The deprecated `X-Emoe-Signature` value for `body` (key: the secret string's bytes, as before)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance_s: float = 300) -> bool:
    """True when `header` is a valid deprecated `X-Emoe-Signature` of `body` made within `tolerance_s`."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        stamp = int(parts["t"])
        expected = sign(secret, body, stamp).split("v1=")[1]
    except (KeyError, ValueError):
        return False
    return abs(time.time() - stamp) <= tolerance_s and hmac.compare_digest(expected, parts.get("v1", ""))


def payload(job_id: uuid.UUID, event: str, settings: Settings) -> tuple[str | None, bytes, str]:
    """(callback URL, JSON body, tenant) for a job event; the body is what GET /v1/jobs/{id} would show, in
    brief."""
    with session_scope(settings.resolved_database_url) as session:
        job = repo.get_job(session, job_id)
        if job is None:
            return None, b"", ""
        d = job.decision
        body = {
            "event": event,
            "delivery_id": f"{job.id}:{event}",
            "job": {
                "id": str(job.id),
                "status": job.status,
                "mode": job.mode,
                "language": job.language,
                "labels": job.labels or {},
                "error": job.error,
                "decision": None
                if d is None
                else {
                    "action": d.action,
                    "shadow_action": d.shadow_action,
                    "rule": d.rule,
                    "score": d.score,
                    "flag_at": d.flag_at,
                    "halt_at": d.halt_at,
                    "policy_name": d.policy_name,
                    "policy_version": d.policy_version,
                    "policy_hash": d.policy_hash,
                    "row_hash": d.row_hash,
                },
                "images": [
                    {
                        "index": a.path_index,
                        # absolute under EMOE_PUBLIC_URL (the worker knows no request to take a host from)
                        "url": f"{settings.public_url or ''}/v1/jobs/{job.id}/images/{a.path_index}",
                        "sha256": a.sha256,
                    }
                    for a in job.artifacts
                ],
            },
        }
        return job.callback_url, json.dumps(body, sort_keys=True).encode(), job.tenant


def pinned_request(url: str, allow: url_guard.Allow) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(URL naming the checked address, Host header, httpx extensions) for a POST to `url`: the host is
    resolved once and refused (`url_guard.TargetRefused`) unless allowed; TLS still checks the host's name."""
    import httpx

    parsed = httpx.URL(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    address = url_guard.resolve(host, port, allow)
    extensions = {"sni_hostname": host.rstrip(".")} if parsed.scheme == "https" else {}
    return str(parsed.copy_with(host=str(address))), {"Host": parsed.netloc.decode("ascii")}, extensions


class HostBusy(float):
    """The delay before trying a delivery again whose host had `webhook_per_host` (or whose tenant had
    `webhook_per_tenant`) deliveries in flight: not an attempt (nothing was sent or recorded), so the next try
    keeps the attempt number (`next_attempt`)."""


def next_attempt(attempt: int, retry_in: float) -> int:
    """The attempt number of the retry `deliver` asked for."""
    return attempt if isinstance(retry_in, HostBusy) else attempt + 1


_in_flight: dict[tuple[str, str], int] = {}  # ("host", name) or ("tenant", name) -> deliveries in flight here
_in_flight_lock = threading.Lock()


@contextmanager
def slots(wanted: Sequence[tuple[tuple[str, str], int]]) -> Iterator[bool]:
    """True (and one slot of each (counter, limit) in `wanted` held for the block) unless one of the counters
    has all its slots in use; all or none are taken."""
    with _in_flight_lock:
        got = all(_in_flight.get(counter, 0) < limit for counter, limit in wanted)
        if got:
            for counter, _ in wanted:
                _in_flight[counter] = _in_flight.get(counter, 0) + 1
    try:
        yield got
    finally:
        if got:
            with _in_flight_lock:
                for counter, _ in wanted:
                    left = _in_flight[counter] - 1
                    if left:
                        _in_flight[counter] = left
                    else:
                        del _in_flight[counter]


def destination_host(url: str) -> str:
    """The host a callback URL names, as slots count it (lower case, no trailing dot)."""
    try:
        return (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return ""


def deliver(job_id: uuid.UUID, event: str, attempt: int, settings: Settings) -> float | None:
    """POST one signed webhook and record the attempt; returns the delay before a retry (`HostBusy` when the
    host or the tenant had no free slot: nothing was attempted), or None when done."""
    url, body, tenant = payload(job_id, event, settings)
    if url is None:
        return None
    wanted = [
        (("tenant", tenant), settings.webhook_per_tenant),
        (("host", destination_host(url)), settings.webhook_per_host),
    ]
    with slots(wanted) as got:
        if not got:
            return HostBusy(random.uniform(0.25, 0.75))
        return _attempt(job_id, event, attempt, settings, url, body, tenant)


def _attempt(
    job_id: uuid.UUID, event: str, attempt: int, settings: Settings, url: str, body: bytes, tenant: str
) -> float | None:
    import httpx

    status_code: int | None = None
    error: str | None = None
    delivered = False
    msg_id = f"{job_id}:{event}"
    with session_scope(settings.resolved_database_url) as session:
        live = generations(session, tenant).signing()
    try:
        target, host, extensions = pinned_request(url, url_guard.parse_allow(settings.webhook_allow))
        secrets_ = tenant_secrets(settings, tenant, live)
        headers = {
            **host,
            "Content-Type": "application/json",
            **sign_standard(secrets_, msg_id, body),
            SIGNATURE_HEADER: sign(secrets_[0], body),
            "X-Emoe-Event": event,
            "X-Emoe-Delivery": msg_id,
            "X-Emoe-Attempt": str(attempt),
        }
        timeout = httpx.Timeout(settings.webhook_timeout_s, connect=settings.webhook_connect_timeout_s)
        # an explicit transport: no proxy from the environment (it would connect instead of us), no redirects
        with httpx.Client(transport=httpx.HTTPTransport(), timeout=timeout, follow_redirects=False) as client:
            response = client.post(target, content=body, headers=headers, extensions=extensions)
        status_code = response.status_code
        delivered = 200 <= status_code < 300
        if not delivered:
            error = f"receiver answered {status_code}"
    except url_guard.TargetRefused as exc:
        error = f"refused: {exc}"
        log.warning("webhook %s for job %s refused: %s", event, job_id, exc)
    except (httpx.HTTPError, httpx.InvalidURL, OSError, UnicodeError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
    with session_scope(settings.resolved_database_url) as session:
        session.add(
            WebhookDelivery(
                job_id=job_id,
                event=event,
                url=url,
                attempt=attempt,
                status_code=status_code,
                error=error,
                delivered=delivered,
            )
        )
    if delivered or attempt >= settings.webhook_max_attempts:
        if not delivered:
            log.warning("webhook %s for job %s abandoned after %d attempts", event, job_id, attempt)
        return None
    return backoff_s(attempt, settings)


def backoff_s(attempt: int, settings: Settings) -> float:
    """Delay after failed `attempt`: `webhook_backoff_s` doubled per attempt, times a random 0.5-1 (jitter, so
    retries of many deliveries that failed together do not arrive together)."""
    return settings.webhook_backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
