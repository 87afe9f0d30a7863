"""Real mode as the README has a user run it: PostgreSQL, Redis, `emoe-gate migrate`, `serve`, `worker`, the
default ensemble and default settings; then a whole worker killed mid-batch and Redis restarted mid-run."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import PROMPTS, Stack, decision_and_image_counts

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.e2e]


def _assert_once_each(stack: Stack, jobs: list[dict]) -> None:
    """Every job ended well, with exactly one decision and, in fast mode, one image if it was rendered."""
    for job in jobs:
        assert job["status"] in ("completed", "held", "halted"), job  # the bundled policy holds flags
        decisions, images = decision_and_image_counts(stack.db, job["id"])
        assert decisions == 1, job
        assert images == (0 if job["status"] == "halted" else 1), job


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_twelve_jobs_reach_terminal_states(stack: Stack) -> None:
    ids = stack.submit(PROMPTS)
    jobs = stack.wait_terminal(ids, timeout=300)
    _assert_once_each(stack, jobs)
    # the reference policy lets English through (a flagged job is held for review)
    assert {"completed", "halted"} <= {j["status"] for j in jobs} <= {"completed", "held", "halted"}
    # the cause of the old hang: the main process must not have loaded torch (its OpenMP pool) before forking
    worker = stack.workers[0]
    assert "libtorch" not in _maps(worker.pid)
    children = psutil.Process(worker.pid).children()
    pool = [p for p in children if "hooks" not in p.cmdline()]
    hooks = [p for p in children if "hooks" in p.cmdline()]
    assert pool and all("libtorch" in _maps(p.pid) for p in pool)  # the pool loaded it after the fork
    assert len(hooks) == 1 and "libtorch" not in _maps(hooks[0].pid)  # webhooks: a consumer of their own


def _claimed(stack: Stack, ids: list[str]) -> int:
    from sqlalchemy import func, select

    from audit.db import session_scope
    from audit.models import Job

    with session_scope(stack.db) as session:
        return session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.id.in_([uuid.UUID(i) for i in ids]), Job.claimed_by.is_not(None))
        )


def test_a_whole_worker_killed_mid_batch_is_recovered_in_seconds(stack: Stack) -> None:
    ids = stack.submit(PROMPTS)
    deadline = time.monotonic() + 120
    while _claimed(stack, ids) == 0:  # a pool process holds claims (a gate batch or a render)
        assert time.monotonic() < deadline, "no job was ever claimed"
        time.sleep(0.02)
    stack.kill_worker(stack.workers[0])
    killed = time.monotonic()
    assert _claimed(stack, ids) > 0  # the dead worker's claims are still there
    stack.start_worker()
    up = time.monotonic()
    jobs = stack.wait_terminal(ids, timeout=180)  # the lease is 600 s: finishing at all means a takeover
    done = time.monotonic()
    _assert_once_each(stack, jobs)
    print(
        f"\nwhole-worker SIGKILL: new worker ready {up - killed:.1f} s after the kill; "
        f"every job terminal {done - up:.1f} s after that"
    )
    assert done - up < 120  # far under the 600 s lease that was the only recovery before


def test_a_redis_restart_mid_run_loses_no_job(stack: Stack) -> None:
    ids = stack.submit(PROMPTS)
    time.sleep(1.0)  # some jobs are claimed, most are still messages in Redis
    stack.redis.restart()  # no persistence: every queued message and every heartbeat key is gone
    jobs = stack.wait_terminal(ids, timeout=300)
    _assert_once_each(stack, jobs)


def test_no_child_outlives_a_worker_killed_alone(stack: Stack) -> None:
    """SIGKILL of the worker's main process only (the OOM killer's way, not a container kill): its webhook
    consumer and its pool go too, so a restarted worker does not leave one more consumer behind."""
    import os
    import signal

    worker = stack.workers[0]
    children = psutil.Process(worker.pid).children()
    assert any("hooks" in p.cmdline() for p in children)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(30)
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
