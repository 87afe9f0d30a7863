"""The end-to-end stack as a user runs it: the README's commands as subprocesses, the default (reference)
ensemble, default settings, and the environment a user has (no thread counts, no test ensemble).

What a test may set is what the README tells a user to set: `EMOE_DATABASE_URL` and `EMOE_BROKER_URL` for real
mode. `HOME` is a fresh folder, as a new user's would be. The Redis server is the stack's own, so that a test
can restart it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import create_pg_database, drop_pg_database
from tests.gateway.helpers import free_port
from tests.services import RedisServer

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "emoe-gate"
TERMINAL = {"completed", "held", "rejected", "halted", "failed", "cancelled"}
PROMPTS = [
    "a small red circle on the left",
    "a big blue square in the middle",
    "un pequeño círculo rojo a la izquierda",
    "ein großes blaues Quadrat in der Mitte",
    "a green triangle on the right",
    "un petit cercle rouge à gauche",
    "a big yellow circle at the top",
    "pieni punainen ympyrä vasemmalla",
    "a small blue triangle at the bottom",
    "un grande quadrato blu al centro",
    "a red square on the right",
    "een kleine rode cirkel links",
]


def user_environment(home: Path, **emoe: str) -> dict[str, str]:
    """This machine's environment less every setting a user would not have made (EMOE_*, thread counts),
    plus a fresh HOME and the EMOE_* variables given."""
    dropped = ("EMOE_", "OMP_", "MKL_", "OPENBLAS_NUM", "PYTEST_", "COV_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["HOME"] = str(home)
    env.update({f"EMOE_{k.upper()}": v for k, v in emoe.items()})
    return env


class Stack:
    """PostgreSQL database, own Redis, `emoe-gate serve` and `emoe-gate worker` processes."""

    def __init__(self, folder: Path, environment: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.environment = environment or {}  # more of the user's environment (a deployment's settings)
        self.home = folder / "home"
        self.home.mkdir()
        self.redis = RedisServer(folder)
        self.db = ""
        self.port = free_port()
        self.gateway: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.key = ""

    @property
    def env(self) -> dict[str, str]:
        env = user_environment(self.home, database_url=self.db, broker_url=self.redis.url)
        return {**env, **self.environment}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(BIN), *args], env=self.env, cwd=self.folder, capture_output=True, text=True, timeout=300
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    def start(self, *worker_queues: str) -> None:
        """The README's real-mode steps: migrate, a key, serve, then a worker per `worker_queues` entry."""
        self.redis.start()
        self.db = create_pg_database("emoe_e2e")
        self.run("migrate")  # the README's real-mode steps, in order
        self.key = self.run("keys", "create", "--tenant", "e2e").stdout.strip().splitlines()[-1]
        self.gateway = self._spawn("gateway", "serve", "--port", str(self.port))
        self.wait_http("/healthz", self.gateway)
        for queues in worker_queues or ("gate,render,hooks",):
            self.start_worker(queues)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "a")  # noqa: SIM115 (the process owns it)
        # a session of its own: killing the process group takes a worker's main process and its pool together
        return subprocess.Popen(
            [str(BIN), *args],
            env=self.env,
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self, queues: str = "gate,render,hooks") -> subprocess.Popen:
        """`emoe-gate worker --queues gate,render,hooks` (the README's command); returns once it is ready."""
        worker = self._spawn("worker", "worker", "--queues", queues)
        self.workers.append(worker)
        self.wait_ready(worker)
        return worker

    def wait_http(self, path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, self.log_tail("gateway")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{path} never answered 200\n{self.log_tail('gateway')}"
            time.sleep(0.2)

    def wait_ready(self, worker: subprocess.Popen, timeout: float = 240) -> None:
        """Until one of this worker's pool processes keeps its ready key (its model is loaded)."""
        import socket

        import psutil
        import redis

        client = redis.Redis.from_url(self.redis.url)
        deadline = time.monotonic() + timeout
        while True:
            assert worker.poll() is None, self.log_tail("worker")
            pool = psutil.Process(worker.pid).children(recursive=True)
            if any(client.exists(f"emoe:ready:{socket.gethostname()}:{p.pid}") for p in pool):
                return
            assert time.monotonic() < deadline, f"worker never ready\n{self.log_tail('worker')}"
            time.sleep(0.3)

    def kill_worker(self, worker: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group (main process and pool), as a container kill does."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def submit(self, prompts: list[str], **fields: Any) -> list[str]:
        ids = []
        for prompt in prompts:
            reply = httpx.post(self.url + "/v1/jobs", json={"prompt": prompt, **fields}, headers=self.auth)
            assert reply.status_code == 202, reply.text
            ids.append(reply.json()["id"])
        return ids

    def jobs(self, ids: list[str]) -> list[dict[str, Any]]:
        replies = [httpx.get(f"{self.url}/v1/jobs/{i}", headers=self.auth, timeout=10) for i in ids]
        for reply in replies:
            assert reply.status_code == 200, f"{reply.status_code} {reply.text}\n{self.log_tail('gateway')}"
        return [reply.json() for reply in replies]

    def wait_terminal(self, ids: list[str], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(ids)
            if all(j["status"] in TERMINAL for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                statuses = [j["status"] for j in jobs]
                tail = self.log_tail("worker")
                raise AssertionError(f"not terminal after {timeout:.0f} s: {statuses}\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in [*self.workers, self.gateway]:
            if proc is not None and proc.poll() is None:
                with_group = proc in self.workers
                try:
                    os.killpg(proc.pid, signal.SIGTERM) if with_group else proc.terminate()
                    proc.wait(30)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.redis.kill()
        if self.db:
            drop_pg_database(self.db)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A fresh real-mode stack per test (its own database, Redis, gateway and worker)."""
    stack = Stack(tmp_path)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def decision_and_image_counts(db: str, job_id: str) -> tuple[int, int]:
    """(decisions, images) the audit log holds for the job."""
    import uuid

    from sqlalchemy import func, select

    from audit.db import session_scope
    from audit.models import Artifact, Decision

    with session_scope(db) as session:
        jid = uuid.UUID(job_id)
        return (
            session.scalar(select(func.count()).select_from(Decision).where(Decision.job_id == jid)) or 0,
            session.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id == jid)) or 0,
        )
