"""Per-tenant webhook secret generations and their rotation with an overlap window.

Only numbers and times are stored (`webhook_secrets`): a tenant's secret of generation g is derived from the
operator's key and (tenant, g) by `workers.webhooks.tenant_secret`, so the database holds nothing secret. A
tenant without a row is at generation 0, the secret it had before rotation existed."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from audit.keys import check_tenant
from audit.models import SecretFingerprint, WebhookSecret

MAX_OVERLAP = timedelta(days=30)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Generations:
    """Where a tenant's secret stands: its current generation, and until when the previous one signs."""

    current: int
    previous_until: datetime | None = None

    def signing(self, now: datetime | None = None) -> list[int]:
        """The generations that sign now: the current one and, during the overlap, the previous one."""
        live = [self.current]
        if self.current > 0 and self.previous_until is not None and (now or _now()) < self.previous_until:
            live.append(self.current - 1)
        return live


def _now() -> datetime:
    return datetime.now(UTC)


def parse_overlap(text: str) -> timedelta:
    """A duration such as `24h`, `90m`, `2d`, `300s` or `0` (at most 30 days); else ValueError."""
    match = _DURATION.match(text or "")
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 24h, 90m, 2d or 0")
    overlap = timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
    if overlap > MAX_OVERLAP:
        raise ValueError(f"{text!r} is longer than {MAX_OVERLAP.days} days")
    return overlap


def generations(session: Session, tenant: str) -> Generations:
    """The tenant's generations (generation 0 when it was never rotated)."""
    row = session.get(WebhookSecret, tenant)
    return Generations(0) if row is None else Generations(row.generation, row.previous_until)


def rotate(session: Session, tenant: str, overlap: timedelta, now: datetime | None = None) -> Generations:
    """Start the tenant's next generation; the one it replaces signs for `overlap` more (a generation older
    than that stops signing at once). Safe against a concurrent rotation of the same tenant."""
    check_tenant(tenant)
    if overlap < timedelta(0) or overlap > MAX_OVERLAP:
        raise ValueError(f"overlap must be between 0 and {MAX_OVERLAP.days} days")
    when = now or _now()
    until = when + overlap if overlap else None
    while True:
        row = session.get(WebhookSecret, tenant, populate_existing=True)
        if row is None:
            try:
                with session.begin_nested():
                    session.add(
                        WebhookSecret(tenant=tenant, generation=1, created_at=when, previous_until=until)
                    )
            except IntegrityError:
                continue  # another rotation made the row first: rotate from there
            return Generations(1, until)
        old = row.generation
        done = session.execute(
            update(WebhookSecret)
            .where(WebhookSecret.tenant == tenant, WebhookSecret.generation == old)
            .values(generation=old + 1, created_at=when, previous_until=until)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            return Generations(old + 1, until)


# --- the operator's secret: one fingerprint per deployment -------------------------------------------------

OPERATOR_SECRET = "webhook"
FROM_SETTING = "EMOE_WEBHOOK_SECRET"
FROM_HOME = "EMOE_HOME/webhook_secret"
_ORIGINS = {FROM_SETTING: "from EMOE_WEBHOOK_SECRET", FROM_HOME: "generated in EMOE_HOME/webhook_secret"}


def _origin(source: str) -> str:
    return _ORIGINS.get(source, f"from {source}")


def recorded_operator_secret(session: Session) -> SecretFingerprint | None:
    """The deployment's recorded operator secret fingerprint, if any process recorded one yet."""
    return session.get(SecretFingerprint, OPERATOR_SECRET, populate_existing=True)


def _record(session: Session, fingerprint: str, source: str, host: str, when: datetime) -> bool:
    """Insert the first record; False when another process inserted one first (read it again)."""
    try:
        with session.begin_nested():
            session.add(
                SecretFingerprint(
                    name=OPERATOR_SECRET,
                    fingerprint=fingerprint,
                    source=source[:64],
                    recorded_by=host[:255],
                    recorded_at=when,
                )
            )
    except IntegrityError:
        return False
    return True


def _replace(session: Session, old: str, fingerprint: str, source: str, host: str, when: datetime) -> bool:
    """Move the record from fingerprint `old` to `fingerprint`; False when it no longer held `old`."""
    done = session.execute(
        update(SecretFingerprint)
        .where(SecretFingerprint.name == OPERATOR_SECRET, SecretFingerprint.fingerprint == old)
        .values(fingerprint=fingerprint, source=source[:64], recorded_by=host[:255], recorded_at=when)
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1  # type: ignore[attr-defined]


def check_operator_secret(
    session: Session,
    *,
    fingerprint: str,
    previous_fingerprint: str | None,
    source: str,
    host: str,
    now: datetime | None = None,
) -> str | None:
    """None when this process's operator secret (its `fingerprint`) is the deployment's: the first process
    records it, and one that rotates (the recorded one is `previous_fingerprint`) records the new one. Else
    one line saying what is wrong and what to do. Safe when processes start at once; the caller commits."""
    when = now or _now()
    while True:
        row = recorded_operator_secret(session)
        if row is None:
            if _record(session, fingerprint, source, host, when):
                return None
            continue  # another process recorded first: compare with its record
        if hmac.compare_digest(row.fingerprint, fingerprint):
            return None
        if previous_fingerprint and hmac.compare_digest(row.fingerprint, previous_fingerprint):
            if _replace(session, row.fingerprint, fingerprint, source, host, when):
                return None
            continue  # another process moved it first: compare again
        return (
            f"webhook secret: this process's secret ({_origin(source)}) is not the one this deployment signs "
            f"with (recorded {row.recorded_at.strftime('%Y-%m-%d %H:%M UTC')} by {row.recorded_by}, "
            f"{_origin(row.source)}): set the same EMOE_WEBHOOK_SECRET on every machine; to rotate it, also "
            "set EMOE_WEBHOOK_SECRET_PREVIOUS to the old one; to replace a lost secret on purpose, run "
            "`emoe-gate webhooks adopt-secret`"
        )


def adopt_operator_secret(
    session: Session, *, fingerprint: str, source: str, host: str, now: datetime | None = None
) -> SecretFingerprint | None:
    """Record `fingerprint` as the deployment's operator secret, whatever was recorded; returns a detached
    copy of the record it replaced (None: there was none). The caller commits."""
    when = now or _now()
    while True:
        row = recorded_operator_secret(session)
        if row is None:
            if _record(session, fingerprint, source, host, when):
                return None
            continue
        old = SecretFingerprint(
            name=row.name,
            fingerprint=row.fingerprint,
            source=row.source,
            recorded_by=row.recorded_by,
            recorded_at=row.recorded_at,
        )
        if _replace(session, row.fingerprint, fingerprint, source, host, when):
            return old
