"""The CLI as a user runs it (a subprocess, a fresh HOME, no EMOE_* settings): quiet by default, `--verbose`
shows the libraries' noise, `--version`, and the demo's printed next commands work as printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from tests.gateway.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLI = str(Path(sys.executable).parent / "emoe-gate")
# what must not reach a user's terminal by default: Python warnings, transformers' own messages and its
# weight-loading bar, Celery's superuser warning
NOISE = re.compile(
    r"Warning\b|warnings\.warn|\[transformers\]|Loading weights|\d+it/s\]|superuser privileges"
)


def user_env(home: Path) -> dict[str, str]:
    from cli.progress import QUIET_ENV

    dropped = ("EMOE_", "OMP_", "MKL_", "OPENBLAS_NUM", "PYTEST_", "COV_", *QUIET_ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["HOME"] = str(home)
    venv_bin = str(Path(CLI).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_version(tmp_path: Path) -> None:
    done = run([CLI, "--version"], user_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"emoe-gate {version('emoe-gate')}"


def test_demo_is_quiet_and_its_next_commands_work_as_printed(tmp_path: Path) -> None:
    env = user_env(tmp_path / "home")
    out = tmp_path / "demo-out"
    demo = run([CLI, "demo", "--limit", "8", "--steps", "4", "--out", str(out)], env)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert not [line for line in output.splitlines() if NOISE.search(line)], output
    assert "loading the ensemble 'default' and the policy" in demo.stderr  # says what it is doing

    # the printed next commands, run exactly as printed (the port aside: tests share this machine)
    lines = demo.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("next steps:"))
    report_cmd, keys_cmd, serve_cmd = lines[start + 1 : start + 4]
    db_url = f"sqlite:///{out.resolve() / 'emoe-demo.db'}"
    assert report_cmd.startswith(f"{CLI} report --db {db_url} ")
    assert keys_cmd == f"EMOE_DATABASE_URL={db_url} {CLI} keys create --tenant demo --role read"
    assert serve_cmd == f"EMOE_DATABASE_URL={db_url} {CLI} serve"

    report = run(shlex.split(report_cmd), env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "8 decisions in 7 groups" in report.stdout
    assert (out / "report-again.html").stat().st_size > 10_000

    def with_env(command: str) -> tuple[list[str], dict[str, str]]:
        assignment, *argv = shlex.split(command)
        name, value = assignment.split("=", 1)
        return argv, {**env, name: value}

    argv, keys_env = with_env(keys_cmd)
    keys = run(argv, keys_env)
    assert keys.returncode == 0, keys.stderr
    key = keys.stdout.strip().splitlines()[-1]

    argv, serve_env = with_env(serve_cmd)
    port = free_port()
    server = subprocess.Popen(
        [*argv, "--port", str(port)],
        env=serve_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not answer"
            time.sleep(0.5)
        page = httpx.get(
            f"http://127.0.0.1:{port}/dashboard/fairness",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert page.status_code == 200
        assert set(re.findall(r'<tr data-group="(\w+)"', page.text)) == {
            "de",
            "en",
            "es",
            "fi",
            "fr",
            "it",
            "nl",
        }
    finally:
        server.terminate()
        server.wait(30)
    assert not [line for line in server.stdout.read().splitlines() if NOISE.search(line)]


def test_verbose_shows_the_libraries_loading_bar(tmp_path: Path) -> None:
    """`eval quality` loads the reference CLIP: transformers' weight-loading bar only with --verbose."""
    env = user_env(tmp_path / "home")
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    assert run([CLI, "migrate", "--db", db], env).returncode == 0
    quiet = run([CLI, "eval", "quality", "--db", db], env)
    loud = run([CLI, "--verbose", "eval", "quality", "--db", db], env)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert "loading the CLIP" in quiet.stderr and "Loading weights" not in quiet.stderr
    assert "Loading weights" in loud.stderr


def _worker_output(argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Start `emoe-gate [...] worker --queues hooks`, wait until Celery says it is ready, stop it."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if " ready." in line or time.monotonic() > deadline:
                break
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
    return "".join(lines) + rest


@pytest.mark.postgres
@pytest.mark.redis
def test_worker_hides_celerys_superuser_warning_unless_verbose(tmp_path: Path, migrated_pg_url: str) -> None:
    env = {  # a real-mode worker refuses an unmigrated database (it checks the webhook secret's record there)
        **user_env(tmp_path / "home"),
        "EMOE_DATABASE_URL": migrated_pg_url,
        "EMOE_BROKER_URL": "redis://127.0.0.1:6379/13",
    }
    quiet = _worker_output([CLI, "worker", "--queues", "hooks"], env)
    assert " ready." in quiet, quiet
    assert not [line for line in quiet.splitlines() if NOISE.search(line)], quiet
    if os.geteuid() == 0:  # Celery warns only a worker that runs as root
        loud = _worker_output([CLI, "--verbose", "worker", "--queues", "hooks"], env)
        assert "superuser privileges" in loud, loud
