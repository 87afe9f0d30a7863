"""Real-mode processes refuse to start with an operator webhook secret that is not the deployment's: `worker`
and `serve` as subprocesses on real PostgreSQL and Redis, and `webhooks adopt-secret` that makes this
machine's secret the deployment's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from audit import db
from audit.webhook_secrets import FROM_HOME, FROM_SETTING, adopt_operator_secret, check_operator_secret
from tests.e2e.conftest import user_environment
from tests.gateway.helpers import free_port
from workers.webhooks import new_secret, secret_fingerprint

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]
BROKER = "redis://127.0.0.1:6379/15"  # a Redis that runs: only the secret check can stop the worker
CELERY_STARTED = ("celery@", "[config]", "Connected to", " ready.")


def _run(home: Path, *args: str, input: str | None = None, **emoe: str) -> subprocess.CompletedProcess:
    env = {**user_environment(home, **emoe), "EMOE_HOME": str(home / "emoe-home")}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def _record_another_secret(url: str) -> None:
    """The deployment's secret, as a process on another machine would have recorded it."""
    with db.session_scope(url) as session:
        adopt_operator_secret(
            session, fingerprint=secret_fingerprint(new_secret()), source=FROM_SETTING, host="host-a"
        )


def _home_secret(tmp_path: Path) -> str:
    return (tmp_path / "emoe-home" / "webhook_secret").read_text().strip()


def test_a_worker_with_another_secret_exits_before_consuming(tmp_path: Path, migrated_pg_url: str) -> None:
    _record_another_secret(migrated_pg_url)
    worker = _run(tmp_path, "worker", "--queues", "hooks", database_url=migrated_pg_url, broker_url=BROKER)
    assert worker.returncode == 2, worker.stdout + worker.stderr
    line = _error_line(worker)
    assert line.startswith(
        "error: webhook secret: this process's secret (generated in EMOE_HOME/webhook_secret)"
    )
    assert "by host-a, from EMOE_WEBHOOK_SECRET" in line and "emoe-gate webhooks adopt-secret" in line
    assert not any(mark in worker.stdout + worker.stderr for mark in CELERY_STARTED)  # Celery never started

    # not confirmed: nothing changes
    refused = _run(tmp_path, "webhooks", "adopt-secret", input="n\n", database_url=migrated_pg_url)
    assert refused.returncode == 1 and "every dashboard session" in refused.stdout, refused.stdout
    assert "emoe-gate webhooks secret --tenant" in refused.stdout
    assert (
        _run(
            tmp_path, "worker", "--queues", "hooks", database_url=migrated_pg_url, broker_url=BROKER
        ).returncode
        == 2
    )

    adopted = _run(tmp_path, "webhooks", "adopt-secret", "--yes", "--db", migrated_pg_url)
    assert adopted.returncode == 0, adopted.stderr
    assert "adopted this machine's webhook secret" in adopted.stdout and "host-a" in adopted.stdout
    with db.session_scope(migrated_pg_url) as session:  # what the worker's start checks now passes
        fingerprint = secret_fingerprint(_home_secret(tmp_path))
        assert (
            check_operator_secret(
                session, fingerprint=fingerprint, previous_fingerprint=None, source=FROM_HOME, host="here"
            )
            is None
        )
    again = _run(tmp_path, "webhooks", "adopt-secret", "--yes", "--db", migrated_pg_url)
    assert again.returncode == 0 and "nothing changed" in again.stdout


def test_a_worker_that_rotates_records_the_new_secret(tmp_path: Path, migrated_pg_url: str) -> None:
    old, new = new_secret(), new_secret()
    with db.session_scope(migrated_pg_url) as session:
        adopt_operator_secret(
            session, fingerprint=secret_fingerprint(old), source=FROM_SETTING, host="host-a"
        )
    # the new secret alone is refused; with the old one as the previous, the check passes and records it
    alone = _run(
        tmp_path,
        "worker",
        "--queues",
        "bogus",
        database_url=migrated_pg_url,
        broker_url=BROKER,
        webhook_secret=new,
    )
    assert alone.returncode == 2 and "--queues" in _error_line(alone)  # the queue check comes first
    refused = _run(
        tmp_path,
        "worker",
        "--queues",
        "hooks",
        database_url=migrated_pg_url,
        broker_url=BROKER,
        webhook_secret=new,
    )
    assert refused.returncode == 2 and "(from EMOE_WEBHOOK_SECRET)" in _error_line(refused)
    serve = _run(
        tmp_path,
        "serve",
        "--port",
        str(free_port()),
        database_url=migrated_pg_url,
        broker_url=BROKER,
        webhook_secret=new,
    )
    assert serve.returncode == 2 and "webhook secret: " in _error_line(serve)
    assert "serving on" not in serve.stdout  # refused before listening
    with db.session_scope(migrated_pg_url) as session:
        assert (
            check_operator_secret(
                session,
                fingerprint=secret_fingerprint(new),
                previous_fingerprint=secret_fingerprint(old),
                source=FROM_SETTING,
                host="here",
            )
            is None
        )


@pytest.mark.parametrize("command", [["worker", "--queues", "hooks"], ["serve", "--port", "0"]])
def test_an_unmigrated_database_is_one_line(tmp_path: Path, pg_url: str, command: list[str]) -> None:
    if command[0] == "serve":
        command = ["serve", "--port", str(free_port())]
    result = _run(tmp_path, *command, database_url=pg_url, broker_url=BROKER)
    assert result.returncode == 2
    assert "run `emoe-gate migrate`" in _error_line(result)
