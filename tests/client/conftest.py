"""One `emoe-gate serve` as a new user starts it: embedded mode (no Redis, no PostgreSQL), the default
(reference) ensemble, default settings, a fresh HOME, keys made with `emoe-gate keys create`."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BIN, user_environment
from tests.gateway.helpers import free_port

# decisions of the bundled policy on the reference ensemble (cli/demo_prompts.json, `emoe-gate demo`)
ACCEPTED = "a small red circle on the left"  # continue
FLAGGED = "un círculo rojo pequeño a la izquierda"  # flag: held for review (on_flag: hold)
HALTED = "pieni punainen ympyrä vasemmalla"  # halt


@dataclass
class Server:
    url: str
    key: str
    review_key: str
    read_key: str
    home: Path
    env: dict[str, str]
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _key(env: dict[str, str], cwd: Path, tenant: str, role: str) -> str:
    result = subprocess.run(
        [str(BIN), "keys", "create", "--tenant", tenant, "--role", role],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    home = folder / "home"
    home.mkdir()
    env = user_environment(home)
    key = _key(env, folder, "acme", "submit")
    review_key = _key(env, folder, "acme", "review")
    read_key = _key(env, folder, "acme", "read")
    port = free_port()
    log = folder / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port)],
            env=env,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    running = Server(url, key, review_key, read_key, home, env, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, running.log_tail()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve never ready\n{running.log_tail()}"
            time.sleep(0.3)
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
