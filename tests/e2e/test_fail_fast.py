"""Where a user would otherwise wait forever, the documented commands say what is wrong and exit non-zero;
and the embedded default recovers by itself from a database that was locked for a while."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BIN, TERMINAL, user_environment
from tests.gateway.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _run(home: Path, *args: str, timeout: float = 180, **emoe: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN), *args],
        env=user_environment(home, **emoe),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("policy_text", "problem"),
    [(None, "cannot be read"), ("name: x\nversion: 1\nflag_at: 2\n", "missing"), ("[1, 2", "not valid YAML")],
)
def test_serve_with_a_bad_policy_exits_naming_it(
    tmp_path: Path, policy_text: str | None, problem: str
) -> None:
    policy = tmp_path / "policy.yaml"
    if policy_text is not None:
        policy.write_text(policy_text)
    result = _run(tmp_path, "serve", "--port", str(free_port()), timeout=60, policy_path=str(policy))
    assert result.returncode == 2
    line = _one_error_line(result)
    assert str(policy) in line or "policy" in line
    assert problem in line


def test_serve_with_an_ensemble_that_cannot_load_exits(tmp_path: Path) -> None:
    result = _run(tmp_path, "serve", "--port", str(free_port()), timeout=60, ensemble=str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "ensemble: path not found" in _one_error_line(result)


def test_a_worker_with_a_policy_for_another_ensemble_exits_non_zero(
    tmp_path: Path, migrated_pg_url: str
) -> None:
    # the bundled policy is for the default ensemble: the tiny one scores with another fingerprint, which only
    # a pool process can find out (the main process never loads torch). The database is migrated: a worker
    # refuses an unmigrated one at start (it checks the webhook secret's record there)
    result = _run(
        tmp_path,
        "worker",
        "--queues",
        "gate",
        timeout=240,
        database_url=migrated_pg_url,
        broker_url="redis://127.0.0.1:6379/9",
        ensemble="tiny",
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "was calibrated for scoring fingerprint" in result.stderr


@pytest.mark.parametrize("command", [["audit", "verify"], ["replay", "--policy", "BUNDLED"]])
def test_read_commands_on_a_typo_database_say_so(tmp_path: Path, command: list[str]) -> None:
    from policies import bundled_policy_path

    missing = tmp_path / "audit-typo.db"
    args = [str(bundled_policy_path()) if a == "BUNDLED" else a for a in command]
    result = _run(tmp_path, *args, "--db", f"sqlite:///{missing}", timeout=60)
    assert result.returncode != 0
    assert f"no such database: {missing}" in _one_error_line(result)
    assert not missing.exists()


def test_demo_with_a_missing_ensemble_gives_scores_error_and_leaves_nothing(tmp_path: Path) -> None:
    nope = tmp_path / "nope"
    demo = _run(tmp_path, "demo", "--ensemble", str(nope), "--out", str(tmp_path / "out"), timeout=60)
    score = _run(tmp_path, "score", "a red circle", "--ensemble", str(nope), timeout=60)
    assert demo.returncode != 0 and score.returncode != 0
    assert _one_error_line(demo) == _one_error_line(score)
    assert not (tmp_path / "out").exists()


def test_the_embedded_worker_recovers_from_a_long_held_write_lock(tmp_path: Path) -> None:
    """`emoe-gate serve` embedded; while jobs run, another process holds SQLite's write lock for longer than
    the driver waits. Every job still ends, without a restart or another submission."""
    port = free_port()
    env = user_environment(tmp_path)
    gateway = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=open(tmp_path / "serve.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert gateway.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.3)
        key = _run(tmp_path, "keys", "create", "--tenant", "e2e", timeout=60).stdout.strip().splitlines()[-1]
        auth = {"Authorization": f"Bearer {key}"}
        prompts = ["a small red circle on the left", "a big blue square in the middle", "a green triangle"]
        ids = [httpx.post(url + "/v1/jobs", json={"prompt": p}, headers=auth).json()["id"] for p in prompts]
        database = tmp_path / ".emoe-gate" / "emoe.db"
        locked = threading.Event()

        def hold_the_write_lock() -> None:
            conn = sqlite3.connect(database, timeout=30, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(40)  # longer than the worker's SQLite busy timeout: its writes fail meanwhile
            conn.execute("ROLLBACK")
            conn.close()

        holder = threading.Thread(target=hold_the_write_lock)
        holder.start()
        assert locked.wait(30)
        holder.join()
        deadline = time.monotonic() + 180
        while True:
            jobs = [httpx.get(f"{url}/v1/jobs/{i}", headers=auth, timeout=10).json() for i in ids]
            if all(j["status"] in TERMINAL for j in jobs):
                break
            assert time.monotonic() < deadline, (
                f"{[j['status'] for j in jobs]}\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
            time.sleep(0.5)
        assert {j["status"] for j in jobs} <= {"completed", "held", "halted"}, jobs
        assert "database is locked" in (tmp_path / "serve.log").read_text()  # the lock did bite
    finally:
        gateway.terminate()
        gateway.wait(30)


@pytest.mark.parametrize("secret", ["change-me", "", "whsec_not base64!"])
def test_a_placeholder_or_broken_webhook_secret_is_refused_in_one_line(tmp_path: Path, secret: str) -> None:
    from tests.conftest import PG_ADMIN_URL

    result = _run(
        tmp_path,
        "worker",
        timeout=60,
        database_url=PG_ADMIN_URL,
        broker_url="redis://127.0.0.1:6379/9",
        webhook_secret=secret,
    )
    assert result.returncode == 2
    assert _one_error_line(result).startswith("error: EMOE_WEBHOOK_SECRET: ")
