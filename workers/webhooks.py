"""Signed webhooks: `X-Emoe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

Receivers verify with `verify_signature`; every attempt is recorded in `webhook_deliveries`; failures are
retried with exponential backoff up to `webhook_max_attempts`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from pathlib import Path

from audit import jobs as repo
from audit.db import session_scope
from audit.models import WebhookDelivery
from settings import Settings

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Emoe-Signature"
EVENTS = ("halted", "flagged", "completed", "failed")


def webhook_secret(settings: Settings) -> str:
    """The configured secret, else one generated once and kept in `home/webhook_secret`."""
    if settings.webhook_secret:
        return settings.webhook_secret
    path = Path(settings.home) / "webhook_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for `body`."""
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance_s: float = 300) -> bool:
    """True when `header` is a valid signature of `body` made within `tolerance_s`."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        stamp = int(parts["t"])
        expected = sign(secret, body, stamp).split("v1=")[1]
    except (KeyError, ValueError):
        return False
    return abs(time.time() - stamp) <= tolerance_s and hmac.compare_digest(expected, parts.get("v1", ""))


def payload(job_id: uuid.UUID, event: str, settings: Settings) -> tuple[str | None, bytes]:
    """(callback URL, JSON body) for a job event; the body is what GET /v1/jobs/{id} would show, in brief."""
    with session_scope(settings.resolved_database_url) as session:
        job = repo.get_job(session, job_id)
        if job is None:
            return None, b""
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
                        "url": f"/v1/jobs/{job.id}/images/{a.path_index}",
                        "sha256": a.sha256,
                    }
                    for a in job.artifacts
                ],
            },
        }
        return job.callback_url, json.dumps(body, sort_keys=True).encode()


def deliver(job_id: uuid.UUID, event: str, attempt: int, settings: Settings) -> float | None:
    """POST one signed webhook and record the attempt; returns the delay before a retry, or None when done."""
    import httpx

    url, body = payload(job_id, event, settings)
    if url is None:
        return None
    status_code: int | None = None
    error: str | None = None
    try:
        response = httpx.post(
            url,
            content=body,
            timeout=settings.webhook_timeout_s,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(webhook_secret(settings), body),
                "X-Emoe-Event": event,
                "X-Emoe-Delivery": f"{job_id}:{event}",
                "X-Emoe-Attempt": str(attempt),
            },
        )
        status_code = response.status_code
        delivered = 200 <= status_code < 300
        if not delivered:
            error = f"receiver answered {status_code}"
    except httpx.HTTPError as exc:
        delivered = False
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
    return settings.webhook_backoff_s * 2 ** (attempt - 1)
