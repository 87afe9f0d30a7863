"""Human review through the real stages (embedded worker, tiny ensemble): a policy with `on_flag: hold` and
`on_halt: review` holds flagged jobs after rendering, and an approved halted job is rendered."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.gateway.helpers import make_settings, new_key
from tests.workers.conftest import PROMPTS
from tests.workers.receiver import Receiver


@pytest.fixture
def held_app(tiny_runtime, tmp_path):
    """(client, url, submit auth, review auth): an embedded app whose policy holds flags and reviews halts."""
    from gateway.app import create_app
    from workers.embedded import InProcessWorker
    from workers.runtime import Runtime

    policy = dataclasses.replace(tiny_runtime.policy, on_flag="hold", on_halt="review")
    runtime = Runtime(ensemble=tiny_runtime.ensemble, policy=policy, gate_config=tiny_runtime.gate_config)
    url = f"sqlite:///{tmp_path / 'emoe.db'}"
    settings = make_settings(url, tmp_path, webhook_allow="127.0.0.1/32", webhook_backoff_s=0.05)
    client = TestClient(create_app(settings, dispatcher=InProcessWorker(settings, runtime=runtime)))
    client.__enter__()
    tenant, auth = new_key(url)
    _, review = new_key(url, tenant, "review")
    yield client, url, auth, review
    client.__exit__(None, None, None)


def _wait(client: TestClient, job_id: str, auth: dict[str, str], status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job = client.get(f"/v1/jobs/{job_id}?wait=5", headers=auth).json()
        if job["status"] == status or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_flagged_jobs_are_held_and_approved_halts_are_rendered(held_app) -> None:
    client, _url, auth, review = held_app
    with Receiver() as receiver:
        ids = [
            client.post(
                "/v1/jobs", json={"prompt": p, "steps": 2, "callback_url": receiver.url}, headers=auth
            ).json()["id"]
            for p in PROMPTS[:10]
        ]
        jobs = [client.get(f"/v1/jobs/{i}?wait=60", headers=auth).json() for i in ids]
        by_action: dict[str, list[dict[str, Any]]] = {}
        for job in jobs:
            by_action.setdefault(job["decision"]["action"], []).append(job)
        assert set(by_action) == {"continue", "flag", "halt"}
        assert {(j["status"], j["review"]) for j in by_action["continue"]} == {("completed", None)}
        assert {(j["status"], j["review"]) for j in by_action["flag"]} == {("held", "pending")}
        assert {(j["status"], j["review"]) for j in by_action["halt"]} == {("halted", "pending")}
        flagged, halted = by_action["flag"][0], by_action["halt"][0]
        assert client.get(flagged["artifacts"][0]["url"], headers=auth).status_code == 403
        assert client.get(flagged["artifacts"][0]["url"], headers=review).status_code == 200

        queue = client.get("/v1/reviews", headers=review).json()
        assert queue["total"] == len(by_action["flag"]) + len(by_action["halt"])

        approved = client.post(
            f"/v1/jobs/{flagged['id']}/review", json={"verdict": "approve"}, headers=review
        )
        assert approved.json()["job"]["status"] == "completed"
        assert client.get(flagged["artifacts"][0]["url"], headers=auth).status_code == 200

        overturned = client.post(
            f"/v1/jobs/{halted['id']}/review",
            json={"verdict": "approve", "note": "benign"},
            headers=review,
        )
        assert overturned.json()["job"]["status"] == "rendering"
        rendered = _wait(client, halted["id"], auth, "completed")
        assert rendered["status"] == "completed" and len(rendered["artifacts"]) == 1
        assert client.get(rendered["artifacts"][0]["url"], headers=auth).status_code == 200

        deadline = time.monotonic() + 20
        wanted = {(flagged["id"], "held"), (flagged["id"], "review.approved"), (halted["id"], "completed")}
        while time.monotonic() < deadline:
            events = {(json.loads(body)["job"]["id"], h["X-Emoe-Event"]) for h, body in receiver.requests}
            if wanted <= events:
                break
            time.sleep(0.1)
        assert wanted <= events, events


@pytest.mark.slow
def test_the_demo_reviews_held_jobs_by_the_reference_rule_and_says_so(tmp_path, monkeypatch) -> None:
    """`emoe-gate demo` on the reference ensemble: every held job gets a simulated verdict, approve exactly
    when the reference world's rule reads its image as its scene; the report shows the review sections."""
    import numpy as np
    from PIL import Image
    from sqlalchemy import select
    from typer.testing import CliRunner

    from audit.db import session_scope
    from audit.models import Job, Review
    from cli.main import app
    from cli.service import load_demo_prompts
    from reference.rule_reader import read
    from reference.world import all_scenes

    monkeypatch.setenv("EMOE_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo-out"
    result = CliRunner().invoke(app, ["demo", "--limit", "16", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "simulated review (not a person" in " ".join(result.output.split())
    scenes = {s.key: s for s in all_scenes()}
    scene_of = {row["prompt"]: row["scene"] for row in load_demo_prompts(16)}
    with session_scope(f"sqlite:///{out / 'emoe-demo.db'}") as session:
        flagged = [j for j in session.scalars(select(Job)) if j.decision.action == "flag"]
        assert flagged, "the first 16 prompts flag some (the bundled policy holds them)"
        verdicts = {r.job_id: r for r in session.scalars(select(Review))}
        assert set(verdicts) == {j.id for j in flagged}
        for job in flagged:
            with Image.open(job.artifacts[0].storage_uri.removeprefix("file://")) as image:
                right = (
                    read(np.asarray(image.convert("RGB"))).accuracy(scenes[scene_of[job.prompt]])["all"] == 1
                )
            assert verdicts[job.id].verdict == ("approve" if right else "reject")
            assert verdicts[job.id].reviewer == "simulated" and verdicts[job.id].note.startswith("simulated")
            assert job.status == ("completed" if right else "rejected")
    report = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="review-sections"' in report and "These verdicts are simulated" in report
    calibrated = out / "calibrated-policy.yaml"
    rejects = sum(r.verdict == "reject" for r in verdicts.values())
    if calibrated.exists():
        from policies import load_policy

        assert load_policy(calibrated).calibration["n_rejected"] == rejects
    else:
        assert "no calibrated policy from these verdicts" in " ".join(result.output.split())


def test_leases_on_the_embedded_sqlite_database(held_app) -> None:
    """The lease rules hold on SQLite too (naive datetimes in the file, BEGIN IMMEDIATE)."""
    import uuid
    from datetime import timedelta

    from audit.db import session_scope
    from audit.models import Job, utcnow
    from audit.reviews import take_lease

    client, url, auth, a = held_app
    ids = [
        client.post("/v1/jobs", json={"prompt": p, "steps": 2}, headers=auth).json()["id"]
        for p in PROMPTS[:10]
    ]
    jobs = [client.get(f"/v1/jobs/{i}?wait=60", headers=auth).json() for i in ids]
    waiting = [j["id"] for j in sorted(jobs, key=lambda j: j["created_at"]) if j["review"] == "pending"]
    assert len(waiting) >= 2
    with session_scope(url) as session:
        tenant = session.get(Job, uuid.UUID(waiting[0])).tenant
    _, b = new_key(url, tenant, "review")

    first = client.post("/v1/reviews/next", headers=a).json()
    assert first["job_id"] == waiting[0]
    refused = client.post(f"/v1/jobs/{waiting[0]}/review", json={"verdict": "reject"}, headers=b)
    assert refused.status_code == 409 and first["holder"] in refused.json()["detail"]
    assert client.post("/v1/reviews/next", headers=b).json()["job_id"] == waiting[1]
    # an expired lease is free: B's lease on the second job, moved into the past, lets A take it
    with session_scope(url) as session:
        take_lease(
            session, uuid.UUID(waiting[1]), tenant, reviewer=b["Authorization"][7:19], seconds=1,
            now=utcnow() - timedelta(seconds=10),
        )  # fmt: skip
    assert client.post(f"/v1/reviews/{waiting[1]}/lease", headers=a).status_code == 200
    done = client.post(f"/v1/jobs/{waiting[0]}/review", json={"verdict": "approve"}, headers=a)
    assert done.status_code == 200, done.text
