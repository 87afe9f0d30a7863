"""Helpers shared by the gateway and worker tests: databases per module, keys, settings, a tiny policy."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

from settings import Settings

# what an operator's Prometheus sends: without it /metrics answers loopback clients only (a TestClient is not)
METRICS_TOKEN = "test-metrics-token-not-secret"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(database_url: str, tmp: Path, **changes: Any) -> Settings:
    """Settings for a test: its own database and artifacts folder, embedded unless a broker is given."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "broker_url": None,
        "artifacts_dir": tmp / "artifacts",
        "ensemble": "tiny",
        "webhook_secret": "test-webhook-secret",
        "metrics_token": METRICS_TOKEN,
        "gate_batch_wait_ms": 0,
    }
    values.update(changes)
    return Settings(**values)


def new_key(database_url: str, tenant: str | None = None, role: str = "submit") -> tuple[str, dict[str, str]]:
    """(tenant, auth headers) for a fresh key."""
    from audit.db import session_scope
    from audit.keys import create_key

    tenant = tenant or f"t{uuid.uuid4().hex[:8]}"
    with session_scope(database_url) as session:
        secret, _ = create_key(session, tenant, role)
    return tenant, {"Authorization": f"Bearer {secret}"}
