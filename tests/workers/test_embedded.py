"""Embedded mode with the tiny ensemble: the whole path (gate, policy, audit, render, webhooks) in one
process, and the state machine's guarantees (a redelivered task writes
nothing twice, stale claims, dead letters)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from standardwebhooks import Webhook

from audit import jobs as repo
from audit.db import ensure_schema, session_scope
from audit.models import Artifact, Decision, Job, WebhookDelivery, utcnow
from tests.gateway.helpers import METRICS_AUTH, make_settings, new_key
from tests.workers.conftest import PROMPTS
from tests.workers.receiver import Receiver
from workers import stages
from workers.webhooks import SIGNATURE_HEADER, tenant_secret, verify_signature


@pytest.fixture
def embedded(tiny_runtime, tmp_path):
    """(client, settings, auth) of an embedded app on SQLite whose in-process worker has the tiny model."""
    from gateway.app import create_app
    from workers.embedded import InProcessWorker

    def build(**changes: Any) -> tuple[TestClient, Any, dict[str, str]]:
        url = f"sqlite:///{tmp_path / 'emoe.db'}"
        settings = make_settings(url, tmp_path, **changes)
        app = create_app(settings, dispatcher=InProcessWorker(settings, runtime=tiny_runtime))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        built.append(client)
        _, auth = new_key(url)
        return client, settings, auth

    built: list[TestClient] = []
    yield build
    for client in built:
        client.__exit__(None, None, None)


def counts(url: str, job_id: str | uuid.UUID) -> tuple[int, int]:
    job_id = uuid.UUID(str(job_id))
    with session_scope(url) as session:
        decisions = session.scalar(
            select(func.count()).select_from(Decision).where(Decision.job_id == job_id)
        )
        images = session.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id == job_id))
    return decisions, images


def test_embedded_path_gates_renders_and_audits(embedded, tiny_runtime) -> None:
    client, settings, auth = embedded()
    url = settings.resolved_database_url
    ids = [
        client.post("/v1/jobs", json={"prompt": p, "steps": 2}, headers=auth).json()["id"]
        for p in PROMPTS[:10]
    ]
    jobs = [client.get(f"/v1/jobs/{i}?wait=60", headers=auth).json() for i in ids]
    assert all(j["status"] in ("completed", "halted") for j in jobs), [j["status"] for j in jobs]
    actions = {j["decision"]["action"] for j in jobs}
    assert actions == {"continue", "flag", "halt"}, actions  # the test policy splits these prompts three ways
    for job, prompt in zip(jobs, PROMPTS[:10], strict=True):
        decision = job["decision"]
        assert decision["policy_name"] == "test-tiny" and len(decision["policy_hash"]) == 64
        assert job["score"]["score"] == pytest.approx(tiny_runtime.expected[prompt], abs=1e-5)
        if decision["action"] == "halt":
            assert job["status"] == "halted" and job["artifacts"] == [] and counts(url, job["id"]) == (1, 0)
            assert decision["threshold"] == decision["halt_at"] < job["score"]["score"]
            assert client.get(f"/v1/jobs/{job['id']}/images/0", headers=auth).status_code == 404
        else:
            assert job["status"] == "completed" and counts(url, job["id"]) == (1, 1)
            assert job["flagged"] == (decision["action"] == "flag")
            image = client.get(job["artifacts"][0]["url"], headers=auth)
            assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
            assert hashlib.sha256(image.content).hexdigest() == job["artifacts"][0]["sha256"]
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics", headers=METRICS_AUTH).text
    assert "emoe_gate_latency_seconds_count" in metrics and 'emoe_decisions{action="halt"' in metrics
    assert "emoe_render_batch_jobs_count" in metrics and "emoe_render_batch_seconds_bucket" in metrics
    with session_scope(url) as session:
        from audit.chain import verify_chain

        assert verify_chain(session).ok


def test_the_gate_detects_the_language_and_records_it_with_the_decision(embedded) -> None:
    client, settings, auth = embedded()
    prompts = {"un círculo rojo sobre un fondo blanco": "es", "a small red circle on the left": "en"}
    ids = {}
    for prompt, language in prompts.items():
        job = client.post("/v1/jobs", json={"prompt": prompt, "steps": 2}, headers=auth).json()
        assert job["language"] is None  # detected by the gate stage, not on the request path
        ids[client.get(f"/v1/jobs/{job['id']}?wait=60", headers=auth).json()["id"]] = language
    for job_id, language in ids.items():
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        assert job["decision"] is not None and job["language"] == language
    spanish = client.get("/v1/jobs?language=es", headers=auth).json()["jobs"]
    assert [j["id"] for j in spanish] == [k for k, v in ids.items() if v == "es"]
    with session_scope(settings.resolved_database_url) as session:
        rows = session.execute(select(Decision.job_id, Decision.language)).all()
        assert {str(job_id): language for job_id, language in rows} == ids  # the audit row has it too


def test_full_mode_renders_one_image_per_expert_and_score_endpoint(embedded, tiny_runtime) -> None:
    client, settings, auth = embedded()
    low = min(PROMPTS, key=tiny_runtime.expected.get)
    job = client.post(
        "/v1/jobs?wait=60", json={"prompt": low, "mode": "full", "steps": 2}, headers=auth
    ).json()
    assert job["status"] == "completed" and [a["index"] for a in job["artifacts"]] == [0, 1, 2, 3]
    response = client.post(
        "/v1/score", json={"prompts": PROMPTS[:3], "labels": {"region": "eu"}}, headers=auth
    )
    assert response.status_code == 200 and response.json()["complete"]
    results = response.json()["results"]
    assert [r["prompt_index"] for r in results] == [0, 1, 2]
    for r, prompt in zip(results, PROMPTS[:3], strict=True):
        assert r["score"]["score"] == pytest.approx(tiny_runtime.expected[prompt], abs=1e-5)
        assert r["decision"]["action"] in ("continue", "flag", "halt") and r["status"] in (
            "completed",
            "halted",
        )
        assert counts(settings.resolved_database_url, r["job_id"]) == (1, 0)  # audited, never rendered


def _queued_job(url: str, prompt: str, **kw: Any) -> uuid.UUID:
    with session_scope(url) as session:
        job, _ = repo.create_job(
            session,
            tenant="t",
            prompt=prompt,
            negative_prompt="",
            mode=kw.get("mode", "fast"),
            params={"seed": 0, "steps": 2, "guidance": 7.5, "height": None, "width": None},
            labels={},
            language="en",
            callback_url=kw.get("callback_url"),
        )
        return job.id


def test_redelivered_tasks_write_one_decision_and_one_image(
    migrated_sqlite_url, tmp_path, tiny_runtime
) -> None:
    settings = make_settings(migrated_sqlite_url, tmp_path)
    low = min(PROMPTS, key=tiny_runtime.expected.get)
    job_id = _queued_job(migrated_sqlite_url, low)
    first = stages.run_gate(job_id, settings, tiny_runtime)
    assert first.render == [job_id]
    again = stages.run_gate(job_id, settings, tiny_runtime)  # a redelivered gate message
    assert again.note == "done" and again.render == []
    stages.run_render(job_id, settings, tiny_runtime)
    assert stages.run_render(job_id, settings, tiny_runtime).note == "done"
    assert counts(migrated_sqlite_url, job_id) == (1, 1)


def test_only_a_gate_message_that_claims_its_job_waits_for_a_batch(
    migrated_sqlite_url, tmp_path, tiny_runtime
) -> None:
    """EMOE_GATE_BATCH_WAIT_MS lets concurrent submissions join a batch; a message whose job a neighbour's
    batch scored already returns at once (one worker would otherwise sit out the wait once per such job)."""
    settings = make_settings(migrated_sqlite_url, tmp_path, gate_batch_wait_ms=1500, gate_batch_size=8)
    ids = [_queued_job(migrated_sqlite_url, p) for p in PROMPTS[:2]]
    started = time.monotonic()
    stages.run_gate(ids[0], settings, tiny_runtime)
    assert time.monotonic() - started >= 1.5
    started = time.monotonic()
    assert stages.run_gate(ids[1], settings, tiny_runtime).note == "done"  # scored in ids[0]'s batch
    assert time.monotonic() - started < 1.0
    assert [counts(migrated_sqlite_url, i)[0] for i in ids] == [1, 1]


def test_a_stale_claim_is_taken_over_and_attempts_run_out(
    migrated_sqlite_url, tmp_path, tiny_runtime
) -> None:
    settings = make_settings(migrated_sqlite_url, tmp_path, job_timeout_s=5, max_attempts=2)
    job_id = _queued_job(migrated_sqlite_url, PROMPTS[0])
    with session_scope(migrated_sqlite_url) as session:  # a worker claimed it ...
        claim = repo.claim(session, job_id, "scoring", lease_s=5, max_attempts=2)
        assert isinstance(claim, repo.Claim) and claim.attempt == 1
    busy = stages.run_gate(job_id, settings, tiny_runtime)  # ... and is still inside its lease
    assert busy.note == "busy" and busy.retry_in_s is not None
    with session_scope(migrated_sqlite_url) as session:  # ... then died: its lease runs out
        session.get(Job, job_id).started_at = utcnow() - timedelta(seconds=60)
    stages.run_gate(job_id, settings, tiny_runtime)
    with session_scope(migrated_sqlite_url) as session:
        job = session.get(Job, job_id)
        assert job.status in ("rendering", "halted") and job.decision is not None
        assert job.decision.timings["attempt"] == 2
        # the old holder wakes up: its claim no longer holds, so it cannot write
        assert repo.holds(session, claim) is None and not repo.move(session, claim, "halted")
    dead = _queued_job(migrated_sqlite_url, PROMPTS[1])
    with session_scope(migrated_sqlite_url) as session:
        job = session.get(Job, dead)
        job.status, job.attempts = "scoring", 2
        job.started_at = utcnow() - timedelta(seconds=60)
    assert stages.run_gate(dead, settings, tiny_runtime).note == "dead"
    with session_scope(migrated_sqlite_url) as session:
        job = session.get(Job, dead)
        assert job.status == "failed" and "gave up after 2 attempt" in job.error and job.decision is None


def test_a_job_cancelled_while_scoring_gets_no_decision(migrated_sqlite_url, tmp_path, tiny_runtime) -> None:
    settings = make_settings(migrated_sqlite_url, tmp_path)
    job_id = _queued_job(migrated_sqlite_url, PROMPTS[0])
    with session_scope(migrated_sqlite_url) as session:
        claim = repo.claim(session, job_id, "scoring", lease_s=60, max_attempts=3)
    with session_scope(migrated_sqlite_url) as session:
        assert repo.cancel_job(session, job_id, "t").status == "cancelled"
    with session_scope(migrated_sqlite_url) as session:
        assert repo.holds(session, claim) is None
    assert stages.run_gate(job_id, settings, tiny_runtime).note == "done"
    assert counts(migrated_sqlite_url, job_id) == (0, 0)


def test_webhooks_are_signed_retried_and_recorded(embedded, tiny_runtime) -> None:
    high = max(PROMPTS, key=tiny_runtime.expected.get)
    low = min(PROMPTS, key=tiny_runtime.expected.get)
    with Receiver(statuses=[500, 503]) as receiver:
        # a receiver on 127.0.0.1 is refused unless allowed, as a developer with a local receiver would
        client, settings, auth = embedded(webhook_backoff_s=0.05, webhook_allow="127.0.0.1/32")
        halted = client.post(
            "/v1/jobs?wait=60", json={"prompt": high, "callback_url": receiver.url}, headers=auth
        ).json()
        # the scripted 500 and 503 are for the halted job's hook: let its retries land before the next job's
        deadline = time.monotonic() + 30
        while len(receiver.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        completed = client.post(
            "/v1/jobs?wait=60", json={"prompt": low, "steps": 2, "callback_url": receiver.url}, headers=auth
        ).json()
        assert (halted["status"], completed["status"]) == ("halted", "completed")
        deadline = time.monotonic() + 30
        while len(receiver.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    events = [(json.loads(body)["job"]["id"], headers["X-Emoe-Event"]) for headers, body in receiver.requests]
    assert events.count((halted["id"], "halted")) == 3  # 500, 503, then 200
    assert events.count((completed["id"], "completed")) == 1
    with session_scope(settings.resolved_database_url) as session:
        tenant = session.get(Job, uuid.UUID(halted["id"])).tenant
    secret = tenant_secret("test-webhook-secret", tenant)  # the tenant's own, derived from the operator's
    verifier = Webhook(secret)
    for headers, body in receiver.requests:
        assert verifier.verify(body, headers)["event"] == headers["X-Emoe-Event"]  # Standard Webhooks
        assert verify_signature(secret, body, headers[SIGNATURE_HEADER])  # deprecated header
        assert not verify_signature("test-webhook-secret", body, headers[SIGNATURE_HEADER])
        assert not verify_signature(secret, body + b" ", headers[SIGNATURE_HEADER])
    with session_scope(settings.resolved_database_url) as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == uuid.UUID(halted["id"]))
            .order_by(WebhookDelivery.attempt)
        ).all()
        assert [(r.attempt, r.status_code, r.delivered) for r in rows] == [
            (1, 500, False),
            (2, 503, False),
            (3, 200, True),
        ]


def test_embedded_serve_resumes_jobs_left_by_a_dead_process(tmp_path, tiny_runtime) -> None:
    url = f"sqlite:///{tmp_path / 'emoe.db'}"
    ensure_schema(url)
    job_id = _queued_job(url, min(PROMPTS, key=tiny_runtime.expected.get))
    with session_scope(url) as session:  # the previous process died while scoring it
        repo.claim(session, job_id, "scoring", lease_s=600, max_attempts=3)
    from workers.embedded import InProcessWorker

    worker = InProcessWorker(make_settings(url, tmp_path), runtime=tiny_runtime)
    worker.start()
    try:
        assert worker.wait_idle(timeout=60)
    finally:
        worker.stop()
    assert counts(url, job_id) == (1, 1)


def test_a_job_that_cannot_be_rendered_fails_at_once_with_the_reason(
    migrated_sqlite_url, tmp_path, tiny_runtime
) -> None:
    settings = make_settings(migrated_sqlite_url, tmp_path)
    job_id = _queued_job(migrated_sqlite_url, min(PROMPTS, key=tiny_runtime.expected.get))
    stages.run_gate(job_id, settings, tiny_runtime)
    with session_scope(migrated_sqlite_url) as session:  # a size this ensemble cannot make
        job = session.get(Job, job_id)
        job.params = {**job.params, "height": 36}
    outcome = stages.run_render(job_id, settings, tiny_runtime)
    assert outcome.note == "failed" and outcome.retry_in_s is None
    with session_scope(migrated_sqlite_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and "cannot render" in job.error and "36" in job.error
    assert counts(migrated_sqlite_url, job_id) == (1, 0)


def test_a_cancelled_render_stops_at_its_next_step_and_leaves_no_files(
    migrated_sqlite_url, tmp_path, tiny_runtime, caplog
) -> None:
    import logging
    import threading

    settings = make_settings(migrated_sqlite_url, tmp_path)
    low = min(PROMPTS, key=tiny_runtime.expected.get)  # the test policy lets it through to rendering
    job_id = _queued_job(migrated_sqlite_url, low, mode="full")
    with session_scope(migrated_sqlite_url) as session:
        session.get(Job, job_id).params = {"seed": 0, "steps": 400, "guidance": 7.5}
    assert stages.run_gate(job_id, settings, tiny_runtime).render == [job_id]
    outcome: list[stages.Outcome] = []
    render = threading.Thread(
        target=lambda: outcome.append(stages.run_render(job_id, settings, tiny_runtime))
    )
    with caplog.at_level(logging.INFO, logger="workers.stages"):
        render.start()
        while True:  # until the render holds its claim
            with session_scope(migrated_sqlite_url) as session:
                if session.get(Job, job_id).started_at is not None:
                    break
            time.sleep(0.02)
        with session_scope(migrated_sqlite_url) as session:
            assert repo.cancel_job(session, job_id, "t").status == "cancelled"
        render.join(120)
    assert outcome[0].note == "stopped"
    assert "stopped: the job was cancelled" in caplog.text  # inside the denoising loop, not after it
    assert counts(migrated_sqlite_url, job_id) == (1, 0)
    assert not (settings.resolved_artifacts_dir / str(job_id)).exists()


def test_images_are_served_only_from_the_artifacts_folder_and_only_unaltered(embedded, tiny_runtime) -> None:
    from sqlalchemy import text, update

    client, settings, auth = embedded()
    low = min(PROMPTS, key=tiny_runtime.expected.get)  # rendered under the test policy
    job = client.post("/v1/jobs?wait=60", json={"prompt": low, "steps": 2}, headers=auth).json()
    job = client.get(f"/v1/jobs/{job['id']}?wait=60", headers=auth).json()
    assert job["status"] == "completed", job
    url = job["artifacts"][0]["url"]
    assert client.get(url, headers=auth).status_code == 200
    path = settings.resolved_artifacts_dir / job["id"] / "0.png"
    path.write_bytes(path.read_bytes() + b"tampered")  # the file changed after it was recorded
    refused = client.get(url, headers=auth)
    assert refused.status_code == 409 and "does not match the sha256" in refused.json()["detail"]
    with session_scope(settings.resolved_database_url) as session:  # a row edited to point elsewhere
        session.execute(text("DROP TRIGGER artifacts_no_update"))  # by whoever can write the file
        session.execute(
            update(Artifact)
            .where(Artifact.job_id == uuid.UUID(job["id"]))
            .values(storage_uri="file:///etc/passwd")
        )
    outside = client.get(url, headers=auth)
    assert outside.status_code == 404 and b"root:" not in outside.content


def test_a_render_batch_renders_each_job_as_alone_and_one_failure_fails_only_its_job(
    migrated_sqlite_url, tmp_path, tiny_runtime
) -> None:
    import io

    from emoe import generate

    settings = make_settings(migrated_sqlite_url, tmp_path, render_batch_size=4, gate_batch_size=8)
    accepted = sorted(PROMPTS, key=tiny_runtime.expected.get)[:5]  # below the test policy's flag_at
    ids = [_queued_job(migrated_sqlite_url, p) for p in accepted]
    with session_scope(migrated_sqlite_url) as session:  # each its own seed and negative prompt
        for n, job_id in enumerate(ids):
            job = session.get(Job, job_id)
            job.params = {**job.params, "seed": 100 + n}
            job.negative_prompt = ["", "blurry"][n % 2]
    assert sorted(stages.run_gate(ids[0], settings, tiny_runtime).render) == sorted(ids)  # one gate batch
    with session_scope(migrated_sqlite_url) as session:  # a job whose request turns out unrenderable
        session.get(Job, ids[2]).prompt = "   "
    outcome = stages.run_render(ids[0], settings, tiny_runtime)
    assert outcome.note == "done" and outcome.retry_in_s is None
    with session_scope(migrated_sqlite_url) as session:
        jobs = {j.id: j for j in repo.get_jobs(session, ids)}
        assert [jobs[i].status for i in ids] == ["completed", "completed", "failed", "completed", "rendering"]
        assert jobs[ids[2]].error.startswith("cannot render: prompts[0]")
        assert jobs[ids[4]].started_at is None  # the fifth did not fit: it waits for its own message
        stored = {i: jobs[i].artifacts[0].sha256 for i in (ids[0], ids[1], ids[3])}
    for job_id, digest in stored.items():
        with session_scope(migrated_sqlite_url) as session:
            job = session.get(Job, job_id)
            config = tiny_runtime.render_config(dict(job.params), job.negative_prompt)
            prompt = job.prompt
        alone = generate(prompt, config, tiny_runtime.ensemble)
        buffer = io.BytesIO()
        alone.images[0].save(buffer, format="PNG")
        assert hashlib.sha256(buffer.getvalue()).hexdigest() == digest  # byte-equal to the image alone
    assert [stages.run_render(i, settings, tiny_runtime).note for i in ids[1:4]] == [
        "done"
    ] * 3  # redelivered
    assert stages.run_render(ids[4], settings, tiny_runtime).note == "done"
    assert [counts(migrated_sqlite_url, i) for i in ids] == [(1, 1), (1, 1), (1, 0), (1, 1), (1, 1)]
