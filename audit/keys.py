"""API keys: high-entropy secrets shown once, stored as their sha256, one tenant and role each."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import ApiKey

ROLES = ("submit", "read", "review")  # review: reads everything of its tenant and records verdicts
KEY_PREFIX = "emg_"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def hash_key(secret: str) -> str:
    """The stored form of a key: hex sha256 of the secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_tenant(tenant: str) -> str:
    """Return the tenant name, or raise ValueError naming the problem."""
    if not _TENANT.match(tenant or ""):
        raise ValueError(
            f"tenant {tenant!r} must be 1-64 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return tenant


def create_key(session: Session, tenant: str, role: str = "submit") -> tuple[str, ApiKey]:
    """Make a key for `tenant`; returns (secret, row). The secret is not stored anywhere."""
    check_tenant(tenant)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant=tenant, role=role, key_prefix=secret[:12], key_hash=hash_key(secret))
    session.add(row)
    session.flush()
    return secret, row


def find_key(session: Session, secret: str) -> ApiKey | None:
    """The live (not revoked) key with this secret, or None."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def revoke_key(session: Session, key_prefix: str) -> int:
    """Revoke every live key whose shown prefix is `key_prefix`; returns how many."""
    rows = session.scalars(
        select(ApiKey).where(ApiKey.key_prefix == key_prefix, ApiKey.revoked_at.is_(None))
    ).all()
    for row in rows:
        row.revoked_at = datetime.now(UTC)
    return len(rows)


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """Every key (live and revoked), oldest first, optionally of one tenant."""
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))
