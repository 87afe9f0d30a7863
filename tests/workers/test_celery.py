"""Real mode: a real Celery worker process (the tiny ensemble), real PostgreSQL, and this module's own
redis-server (so restarting it disturbs nobody else's tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from audit.db import session_scope
from audit.models import TERMINAL_STATUSES, Artifact, Decision, Job
from tests.conftest import create_pg_database, drop_pg_database
from tests.gateway.helpers import METRICS_AUTH, make_settings, new_key
from tests.services import RedisServer
from tests.workers.conftest import PROMPTS

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real(tiny_policy_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PostgreSQL + own Redis + `emoe-gate worker` subprocess + the gateway app (TestClient) against them."""
    from audit.db import upgrade
    from gateway.app import create_app

    tmp = tmp_path_factory.mktemp("real")
    redis_server = RedisServer(tmp)
    redis_server.start()
    db = create_pg_database("emoe_test_workers")
    upgrade(db)
    settings = make_settings(
        db,
        tmp,
        broker_url=redis_server.url,
        job_timeout_s=120,
        recover_after_s=3,
        gate_batch_wait_ms=50,
        policy_path=tiny_policy_file,
        webhook_allow="127.0.0.1/32",  # the test's receiver is local: allowed as a developer would
    )
    env = {
        **os.environ,
        "EMOE_DATABASE_URL": db,
        "EMOE_BROKER_URL": redis_server.url,
        "EMOE_ENSEMBLE": "tiny",
        "EMOE_POLICY_PATH": str(tiny_policy_file),
        "EMOE_ARTIFACTS_DIR": str(settings.resolved_artifacts_dir),
        "EMOE_JOB_TIMEOUT_S": "120",
        "EMOE_RECOVER_AFTER_S": "3",
        "EMOE_GATE_BATCH_WAIT_MS": "50",
        "EMOE_WEBHOOK_SECRET": "test-webhook-secret",
        "EMOE_WEBHOOK_ALLOW": "127.0.0.1/32",
        "EMOE_WEBHOOK_BACKOFF_S": "0.2",
    }
    log = open(tmp / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "worker",
            "--queues",
            "gate,render,hooks",
            "--concurrency",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.__enter__()
    try:
        deadline = time.monotonic() + 240
        while client.get("/readyz").status_code != 200:
            assert worker.poll() is None, (tmp / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "worker never became ready"
            time.sleep(0.5)
        _, auth = new_key(db)
        yield {
            "client": client,
            "auth": auth,
            "db": db,
            "worker": worker,
            "redis": redis_server,
            "log": tmp / "worker.log",
        }
    finally:
        client.__exit__(None, None, None)
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        redis_server.kill()
        drop_pg_database(db)


def wait_terminal(real: dict[str, Any], ids: list[str], timeout: float = 180) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [real["client"].get(f"/v1/jobs/{i}", headers=real["auth"]).json() for i in ids]
        if all(j["status"] in TERMINAL_STATUSES for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            tail = real["log"].read_text()[-3000:]
            raise AssertionError(f"not terminal: {[j['status'] for j in jobs]}\n{tail}")
        time.sleep(0.25)


def rows(db: str, job_id: str) -> tuple[int, int]:
    with session_scope(db) as session:
        jid = uuid.UUID(job_id)
        return (
            session.scalar(select(func.count()).select_from(Decision).where(Decision.job_id == jid)),
            session.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id == jid)),
        )


def test_twenty_jobs_reach_terminal_states(real) -> None:
    client, auth = real["client"], real["auth"]
    ids = [
        client.post("/v1/jobs", json={"prompt": p, "steps": 2}, headers=auth).json()["id"] for p in PROMPTS
    ]
    jobs = wait_terminal(real, ids)
    statuses = {j["status"] for j in jobs}
    assert statuses <= {"completed", "halted"} and statuses == {"completed", "halted"}, statuses
    for job in jobs:
        assert job["decision"] is not None
        expected = (1, 0) if job["status"] == "halted" else (1, 1)
        assert rows(real["db"], job["id"]) == expected, job
    with session_scope(real["db"]) as session:
        sizes = [d.timings["gate_batch_size"] for d in session.scalars(select(Decision))]
    assert max(sizes) > 1  # waiting prompts from separate requests were scored as one batch
    # the workers' shared gate-latency histogram, read by the gateway
    metrics = client.get("/metrics", headers=METRICS_AUTH).text
    assert "emoe_gate_latency_seconds_count" in metrics and 'emoe_decisions{action="halt"' in metrics


def test_accepted_jobs_rendered_together_each_get_the_image_they_get_alone(real, tiny_runtime) -> None:
    """The worker renders up to EMOE_RENDER_BATCH_SIZE (8) accepted jobs in one denoising loop: each job is
    rendered once, in a batch of several (its log says which jobs each batch held), and its image is the bytes
    it gets rendered alone."""
    import hashlib
    import io
    import re
    from concurrent.futures import ThreadPoolExecutor

    from emoe import generate

    client, auth = real["client"], real["auth"]
    accepted = sorted(PROMPTS, key=tiny_runtime.expected.get)[:6]  # below the test policy's flag_at
    bodies = [
        {"prompt": p, "steps": 3, "seed": 40 + i, "negative_prompt": ["", "blurry"][i % 2]}
        for i, p in enumerate(accepted)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:  # submitted together, as concurrent users do
        ids = list(
            pool.map(lambda body: client.post("/v1/jobs", json=body, headers=auth).json()["id"], bodies)
        )
    jobs = wait_terminal(real, ids)
    assert [j["status"] for j in jobs] == ["completed"] * len(ids)
    logged = re.findall(r"render batch of \d+ job\(s\) in [\d.]+ s: ([0-9a-f -]+)", real["log"].read_text())
    batches = [line.split() for line in logged]
    ours = [[i for i in batch if i in ids] for batch in batches if set(batch) & set(ids)]
    assert sorted(i for batch in ours for i in batch) == sorted(ids)  # each job in one batch
    assert max(len(batch) for batch in ours) > 1, ours
    # the operator sees the batches on /metrics too: the workers' shared histogram of jobs per render batch
    metrics = client.get("/metrics", headers=METRICS_AUTH).text
    observed = re.search(r"^emoe_render_batch_jobs_count ([\d.]+)$", metrics, re.M)
    jobs_rendered = re.search(r"^emoe_render_batch_jobs_sum ([\d.]+)$", metrics, re.M)
    assert observed and jobs_rendered, metrics
    assert float(jobs_rendered[1]) > float(observed[1])  # more jobs than batches: some batch held several
    assert "emoe_render_batch_seconds_count" in metrics
    for job, body in zip(jobs, bodies, strict=True):
        assert rows(real["db"], job["id"]) == (1, 1)
        params = {k: body.get(k) for k in ("seed", "steps")}
        config = tiny_runtime.render_config(params, body["negative_prompt"])
        buffer = io.BytesIO()
        generate(body["prompt"], config, tiny_runtime.ensemble).images[0].save(buffer, format="PNG")
        assert job["artifacts"][0]["sha256"] == hashlib.sha256(buffer.getvalue()).hexdigest(), body


def test_webhooks_go_through_the_hooks_queue_signed_and_retried(real, tiny_runtime) -> None:
    import json

    from standardwebhooks import Webhook

    from audit.models import WebhookDelivery
    from tests.workers.receiver import Receiver
    from workers.webhooks import SIGNATURE_HEADER, tenant_secret, verify_signature

    high = max(PROMPTS, key=tiny_runtime.expected.get)  # halted by the test policy
    with Receiver(statuses=[500]) as receiver:
        body = {"prompt": high, "callback_url": receiver.url}
        job = real["client"].post("/v1/jobs", json=body, headers=real["auth"]).json()
        deadline = time.monotonic() + 60
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert [json.loads(b)["event"] for _, b in receiver.requests] == ["halted", "halted"]
    with session_scope(real["db"]) as session:
        tenant = session.get(Job, uuid.UUID(job["id"])).tenant
    secret = tenant_secret("test-webhook-secret", tenant)
    assert all(verify_signature(secret, b, h[SIGNATURE_HEADER]) for h, b in receiver.requests)
    verifier = Webhook(secret)
    assert all(verifier.verify(b, h)["event"] == "halted" for h, b in receiver.requests)
    with session_scope(real["db"]) as session:
        deliveries = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == uuid.UUID(job["id"]))
            .order_by(WebhookDelivery.attempt)
        ).all()
        assert [(d.attempt, d.status_code, d.delivered) for d in deliveries] == [
            (1, 500, False),
            (2, 200, True),
        ]


def _pool_children(worker: subprocess.Popen) -> list[psutil.Process]:
    """The worker's pool processes (not its webhook consumer, a child process of its own)."""
    children = psutil.Process(worker.pid).children(recursive=False)
    return [p for p in children if "hooks" not in p.cmdline()]


def _lock_while_rendering(conn: Any, job_id: uuid.UUID, deadline: float) -> Any | None:
    """Poll the job under its row lock; return the open transaction (lock held) once a pool process has
    claimed it in `rendering`, or None if it finished before the test could see it so."""
    query = select(Job.status, Job.started_at).where(Job.id == job_id)
    while True:
        lock = conn.begin()
        status, started = conn.execute(query).one()  # unlocked: a claim skips locked rows
        if status == "rendering" and started is not None:
            status, started = conn.execute(query.with_for_update()).one()
            if status == "rendering" and started is not None:
                return lock
        lock.rollback()
        if status in TERMINAL_STATUSES:
            return None
        assert time.monotonic() < deadline, f"the job never reached rendering ({status})"
        time.sleep(0.02)


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once(real, tiny_runtime) -> None:
    """Deterministic, with nothing added to the product: the test holds the job's row lock (SELECT ... FOR
    UPDATE, as any other database client may) from a moment it sees the job claimed by a pool process in
    `rendering`. A render records its images only under that lock (`audit.jobs.holds`), so while the test
    holds it the job provably cannot finish, however fast the render is; the pool is SIGKILLed then and the
    lock released. A job that completes before the test once sees it rendering is not killed: the test
    submits another (at most 3)."""
    from sqlalchemy import create_engine

    client, auth, db = real["client"], real["auth"], real["db"]
    low = min(PROMPTS, key=tiny_runtime.expected.get)  # the policy lets it through to rendering
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            for _ in range(3):
                submitted = client.post("/v1/jobs", json={"prompt": low, "steps": 50}, headers=auth)
                assert submitted.status_code == 202, submitted.text
                job_id = uuid.UUID(submitted.json()["id"])
                lock = _lock_while_rendering(conn, job_id, time.monotonic() + 120)
                if lock is not None:
                    break
            else:
                pytest.fail("3 jobs finished before the test saw them rendering")
            victims = _pool_children(real["worker"])
            assert victims
            for proc in victims:
                proc.send_signal(signal.SIGKILL)
            psutil.wait_procs(victims, timeout=10)
            status = conn.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
            assert status == "rendering"  # killed mid-job: it had not finished, and could not have
            lock.rollback()
    finally:
        engine.dispose()
    job = wait_terminal(real, [str(job_id)], timeout=240)[0]
    assert job["status"] == "completed" and rows(db, str(job_id)) == (1, 1)
    # claimed again once the killed process's heartbeat key expired (the 120 s lease had not run out)
    assert job["attempts"] == 2
    replacements = _pool_children(real["worker"])
    assert replacements and {p.pid for p in replacements}.isdisjoint({p.pid for p in victims})


def test_redis_down_gives_503_and_a_restart_loses_no_job(real) -> None:
    client, auth, db, redis_server = real["client"], real["auth"], real["db"], real["redis"]
    ids = [
        client.post("/v1/jobs", json={"prompt": p, "steps": 2}, headers=auth).json()["id"]
        for p in PROMPTS[:6]
    ]
    redis_server.kill()  # every queued message is gone with it
    with session_scope(db) as session:
        before = session.scalar(select(func.count()).select_from(Job))
    refused = client.post("/v1/jobs", json={"prompt": "a red circle"}, headers=auth)
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    with session_scope(db) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == before  # no orphan row
    redis_server.start()
    jobs = wait_terminal(real, ids)
    for job in jobs:
        assert job["status"] in ("completed", "halted")
        assert rows(db, job["id"]) == ((1, 1) if job["status"] == "completed" else (1, 0))


def test_a_slow_webhook_receiver_does_not_delay_another_tenants_gate(real) -> None:
    from tests.workers.receiver import Receiver

    client, db = real["client"], real["db"]
    _, slow_tenant = new_key(db)
    _, other_tenant = new_key(db)
    with Receiver(delay_s=8) as slow:  # every delivery to it takes 8 s
        for prompt in PROMPTS[:2]:
            body = {"prompt": prompt, "mode": "score_only", "callback_url": slow.url}
            assert client.post("/v1/jobs", json=body, headers=slow_tenant).status_code == 202
        deadline = time.monotonic() + 60
        while not slow.requests:  # a delivery is in flight
            assert time.monotonic() < deadline, "no webhook was delivered"
            time.sleep(0.05)
        body = {"prompt": PROMPTS[2], "mode": "score_only"}
        job_id = client.post("/v1/jobs", json=body, headers=other_tenant).json()["id"]
        deadline = time.monotonic() + 60
        status = ""
        while status not in TERMINAL_STATUSES:
            status = client.get(f"/v1/jobs/{job_id}", headers=other_tenant).json()["status"]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the other tenant's gate finished while the slow receiver still held every delivery
        assert slow.answered == 0
