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


class GatewayProcess:
    """A real `emoe-gate serve` in real mode with no worker (jobs stay queued): the process users run, with
    the environment a user has plus the `EMOE_*` settings given."""

    def __init__(self, folder: Path, database_url: str, broker_url: str, **emoe: str) -> None:
        import os

        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EMOE_", "PYTEST_"))}
        env.update(HOME=str(folder), EMOE_DATABASE_URL=database_url, EMOE_BROKER_URL=broker_url)
        env.update({f"EMOE_{k.upper()}": v for k, v in emoe.items()})
        self.env = env
        self.proc: Any = None

    def __enter__(self) -> GatewayProcess:
        import subprocess
        import sys
        import time

        import httpx

        binary = Path(sys.executable).parent / "emoe-gate"
        self.log = open(self.folder / "gateway.log", "a")  # closed in __exit__
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--port", str(self.port)],
            env=self.env,
            cwd=self.folder,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the gateway never answered\n{self.log_tail()}"
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def log_tail(self, lines: int = 40) -> str:
        path = self.folder / "gateway.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""
