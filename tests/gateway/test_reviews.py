"""Human review on PostgreSQL: held jobs, the review role, the queue, verdicts, overrides and their chain."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit import jobs as repo
from audit.chain import append_artifacts, append_decision
from audit.db import session_scope
from audit.models import Artifact, Review
from audit.reviews import verify_reviews
from policies import DecisionContext, decide, parse_policy
from tests.audit.factories import FINGERPRINT, FakeScore
from tests.gateway.helpers import METRICS_AUTH, new_key

pytestmark = pytest.mark.postgres

HOLD = parse_policy(
    {
        "name": "review",
        "version": "1",
        "fingerprint": FINGERPRINT,
        "flag_at": 1.0,
        "halt_at": 2.0,
        "on_flag": "hold",
        "on_halt": "review",
    }
)
PNG = b"\x89PNG\r\n\x1a\n-not-really-but-served-as-stored"


def gated(url: str, tmp_path: Path, tenant: str, score: float, *, language: str = "en", **labels: str):
    """A job taken through the gate under HOLD (and, unless halted, 'rendered' into one stored image)."""
    with session_scope(url) as session:
        job, _ = repo.create_job(
            session,
            tenant=tenant,
            prompt=f"a prompt scored {score}",
            negative_prompt="",
            mode="fast",
            params={},
            labels=labels,
            language=language,
            callback_url=None,
        )
        decision = decide(FakeScore(score), DecisionContext(language=language), HOLD)
        repo.record_decision(job, decision.action, on_flag=HOLD.on_flag, on_halt=HOLD.on_halt)
        append_decision(session, job, FakeScore(score), decision)
        if job.status == "rendering":
            path = tmp_path / "artifacts" / str(job.id) / "0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(PNG)
            append_artifacts(
                session,
                [
                    Artifact(
                        job_id=job.id,
                        path_index=0,
                        storage_uri=f"file://{path}",
                        sha256=hashlib.sha256(PNG).hexdigest(),
                        size_bytes=len(PNG),
                        width=32,
                        height=32,
                    )
                ],
            )
            repo.complete(job)
        return job.id


@pytest.fixture
def keys(module_pg_url: str) -> dict[str, dict[str, str]]:
    tenant, submit = new_key(module_pg_url)
    _, read = new_key(module_pg_url, tenant, "read")
    _, review = new_key(module_pg_url, tenant, "review")
    _, other = new_key(module_pg_url, None, "review")
    return {"tenant": tenant, "submit": submit, "read": read, "review": review, "other": other}


def test_a_flagged_job_under_hold_is_held_and_its_image_is_403_except_for_reviewers(
    make_client, module_pg_url: str, tmp_path: Path, keys
) -> None:
    client = make_client()
    continued = gated(module_pg_url, tmp_path, keys["tenant"], 0.5)
    held = gated(module_pg_url, tmp_path, keys["tenant"], 1.5)
    assert client.get(f"/v1/jobs/{continued}", headers=keys["read"]).json()["status"] == "completed"
    job = client.get(f"/v1/jobs/{held}", headers=keys["read"]).json()
    assert (job["status"], job["flagged"], job["review"]) == ("held", True, "pending")
    for role in ("read", "submit"):
        refused = client.get(f"/v1/jobs/{held}/images/0", headers=keys[role])
        assert refused.status_code == 403 and "awaits human review" in refused.json()["detail"]
    assert client.get(f"/v1/jobs/{held}/images/0", headers=keys["review"]).content == PNG
    assert client.get(f"/v1/jobs/{continued}/images/0", headers=keys["read"]).content == PNG
    # a review key reads its tenant's jobs, but cannot submit, and sees no other tenant's
    assert client.get("/v1/jobs", headers=keys["review"]).status_code == 200
    assert client.post("/v1/jobs", json={"prompt": "x"}, headers=keys["review"]).status_code == 403
    assert client.get(f"/v1/jobs/{held}", headers=keys["other"]).status_code == 404
    # and only review keys see the queue
    assert client.get("/v1/reviews", headers=keys["read"]).status_code == 403
    metrics = client.get("/metrics", headers=METRICS_AUTH).text
    assert 'emoe_jobs{status="held"}' in metrics


def test_the_queue_lists_pending_first_oldest_first_and_filters(
    make_client, module_pg_url: str, tmp_path: Path, keys
) -> None:
    client = make_client()
    tenant = keys["tenant"]
    first = gated(module_pg_url, tmp_path, tenant, 1.2, region="eu")
    second = gated(module_pg_url, tmp_path, tenant, 1.8, language="de")
    halted = gated(module_pg_url, tmp_path, tenant, 2.5)
    gated(module_pg_url, tmp_path, tenant, 0.2)  # continued: not in review
    escalated = client.post(
        f"/v1/jobs/{first}/review", json={"verdict": "escalate", "note": "unsure"}, headers=keys["review"]
    )
    assert escalated.status_code == 200, escalated.text
    assert escalated.json()["job"]["review"] == "escalated"

    queue = client.get("/v1/reviews", headers=keys["review"]).json()
    assert [i["job"]["id"] for i in queue["items"]] == [str(second), str(halted), str(first)]
    assert queue["total"] == 3 and queue["oldest_waiting_s"] >= 0
    assert [v["verdict"] for v in queue["items"][2]["verdicts"]] == ["escalate"]

    def ids(**params) -> list[str]:
        response = client.get("/v1/reviews", params=params, headers=keys["review"])
        assert response.status_code == 200, response.text
        return [i["job"]["id"] for i in response.json()["items"]]

    assert ids(language="de") == [str(second)]
    assert ids(min_score=1.5, max_score=2.0) == [str(second)]
    assert ids(label="region:eu") == [str(first)]
    assert ids(state="decided") == []
    bad = client.get("/v1/reviews", params={"min_score": 2, "max_score": 1}, headers=keys["review"])
    assert bad.status_code == 422 and "max_score" in str(bad.json())
    # age counts from submission: the first job has waited two hours
    import sqlalchemy as sa

    engine = sa.create_engine(module_pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE jobs SET created_at = created_at - interval '2 hours' WHERE id = :id"),
            {"id": first},
        )
    engine.dispose()
    assert ids(min_age_s=3600) == [str(first)]
    assert ids(max_age_s=3600) == [str(second), str(halted)]
    bad = client.get("/v1/reviews", params={"min_age_s": 60, "max_age_s": 1}, headers=keys["review"])
    assert bad.status_code == 422 and "max_age_s" in str(bad.json())
    assert client.get("/v1/reviews", headers=keys["other"]).json()["total"] == 0


def test_approve_serves_the_images_reject_never_and_a_second_verdict_needs_an_override(
    make_client, module_pg_url: str, tmp_path: Path, keys
) -> None:
    client = make_client()
    approved = gated(module_pg_url, tmp_path, keys["tenant"], 1.5)
    rejected = gated(module_pg_url, tmp_path, keys["tenant"], 1.6)
    review = keys["review"]

    result = client.post(f"/v1/jobs/{approved}/review", json={"verdict": "approve"}, headers=review).json()
    assert (result["job"]["status"], result["job"]["review"]) == ("completed", "approved")
    assert (
        result["verdict"]["previous"] == "pending"
        and result["verdict"]["reviewer"] == review["Authorization"].removeprefix("Bearer ")[:12]
    )
    assert client.get(f"/v1/jobs/{approved}/images/0", headers=keys["read"]).content == PNG

    result = client.post(
        f"/v1/jobs/{rejected}/review", json={"verdict": "reject", "note": "shows a weapon"}, headers=review
    ).json()
    assert (result["job"]["status"], result["job"]["review"]) == ("rejected", "rejected")
    refused = client.get(f"/v1/jobs/{rejected}/images/0", headers=keys["read"])
    assert refused.status_code == 403 and "rejected" in refused.json()["detail"]

    # a decided job: 409 without an override, 422 for an override without a reason
    again = client.post(f"/v1/jobs/{rejected}/review", json={"verdict": "approve"}, headers=review)
    assert again.status_code == 409 and "override" in again.json()["detail"]
    unexplained = client.post(
        f"/v1/jobs/{rejected}/review", json={"verdict": "approve", "override": True}, headers=review
    )
    assert unexplained.status_code == 422 and "note" in str(unexplained.json())
    overridden = client.post(
        f"/v1/jobs/{rejected}/review",
        json={"verdict": "approve", "override": True, "note": "a toy, on a second look"},
        headers=review,
    )
    assert overridden.status_code == 200, overridden.text
    assert overridden.json()["verdict"]["override"] is True
    assert overridden.json()["verdict"]["previous"] == "rejected"
    assert client.get(f"/v1/jobs/{rejected}/images/0", headers=keys["read"]).content == PNG

    # bad input names the field; jobs not in review, or unknown, are refused
    bad = client.post(f"/v1/jobs/{approved}/review", json={"verdict": "maybe"}, headers=review)
    assert bad.status_code == 422 and "verdict" in str(bad.json())
    plain = gated(module_pg_url, tmp_path, keys["tenant"], 0.1)
    assert (
        client.post(f"/v1/jobs/{plain}/review", json={"verdict": "approve"}, headers=review).status_code
        == 409
    )
    missing = client.post(f"/v1/jobs/{uuid.uuid4()}/review", json={"verdict": "approve"}, headers=review)
    assert missing.status_code == 404
    other = client.post(f"/v1/jobs/{approved}/review", json={"verdict": "reject"}, headers=keys["other"])
    assert other.status_code == 404
    reader = client.post(f"/v1/jobs/{approved}/review", json={"verdict": "reject"}, headers=keys["read"])
    assert reader.status_code == 403

    with session_scope(module_pg_url) as session:
        rows = session.scalars(sa.select(Review).where(Review.job_id == rejected).order_by(Review.id)).all()
        assert [(r.verdict, r.previous, r.outcome, r.override) for r in rows] == [
            ("reject", "pending", "rejected", False),
            ("approve", "rejected", "approved", True),
        ]
        assert rows[0].note == "shows a weapon"
        assert rows[0].note_sha256 == hashlib.sha256(b"shows a weapon").hexdigest()
        assert verify_reviews(session).ok


def test_approving_a_halted_job_sends_it_to_render(make_client, module_pg_url: str, tmp_path, keys) -> None:
    client = make_client()
    rendered: list[uuid.UUID] = []
    client.app.state.dispatcher.render = rendered.append
    halted = gated(module_pg_url, tmp_path, keys["tenant"], 3.0)
    assert client.get(f"/v1/jobs/{halted}", headers=keys["read"]).json()["review"] == "pending"
    result = client.post(
        f"/v1/jobs/{halted}/review",
        json={"verdict": "approve", "note": "a harmless prompt"},
        headers=keys["review"],
    ).json()
    assert (result["job"]["status"], result["job"]["review"]) == ("rendering", "approved")
    assert rendered == [halted]
    # the render stage's completion then completes it (not held: it was approved)
    with session_scope(module_pg_url) as session:
        job = repo.get_job(session, halted)
        assert repo.complete(job) == "completed"


def test_two_reviewers_at_once_one_verdict_wins(make_client, module_pg_url: str, tmp_path, keys) -> None:
    client = make_client()
    job_id = gated(module_pg_url, tmp_path, keys["tenant"], 1.5)
    _, second_key = new_key(module_pg_url, keys["tenant"], "review")
    barrier = threading.Barrier(2)
    codes: dict[str, int] = {}

    def post(verdict: str, headers: dict[str, str]) -> None:
        barrier.wait()
        codes[verdict] = client.post(
            f"/v1/jobs/{job_id}/review", json={"verdict": verdict}, headers=headers
        ).status_code

    threads = [
        threading.Thread(target=post, args=("approve", keys["review"])),
        threading.Thread(target=post, args=("reject", second_key)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes.values()) == [200, 409], codes
    with session_scope(module_pg_url) as session:
        assert session.scalar(sa.select(sa.func.count()).where(Review.job_id == job_id)) == 1


def test_the_review_chain_detects_a_changed_note_and_refuses_edits(
    module_pg_url: str, tmp_path, keys
) -> None:
    from audit.reviews import record_verdict

    job_id = gated(module_pg_url, tmp_path, keys["tenant"], 1.5)
    with session_scope(module_pg_url) as session:
        record_verdict(session, job_id, keys["tenant"], verdict="reject", reviewer="emg_test", note="no")
    with session_scope(module_pg_url) as session:
        assert verify_reviews(session).ok
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), session_scope(module_pg_url) as session:
        session.execute(sa.update(Review).where(Review.job_id == job_id).values(verdict="approve"))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), session_scope(module_pg_url) as session:
        session.execute(sa.delete(Review).where(Review.job_id == job_id))
    with session_scope(module_pg_url) as session:  # redaction: the note may be nulled, the chain still holds
        session.execute(sa.update(Review).where(Review.job_id == job_id).values(note=None))
    with session_scope(module_pg_url) as session:
        assert verify_reviews(session).ok


def test_audit_verify_walks_the_review_chain_and_redact_nulls_old_notes(module_pg_url: str, tmp_path) -> None:
    """On a database of its own: `audit verify` fails on a changed or removed verdict; `audit redact` nulls
    old notes and the chain still verifies."""
    from datetime import timedelta

    from typer.testing import CliRunner

    from audit import db
    from audit.models import utcnow
    from audit.retention import redact_notes
    from audit.reviews import record_verdict
    from cli.main import app
    from tests.conftest import create_pg_database, drop_pg_database

    url = create_pg_database("emoe_test_reviews")
    try:
        db.upgrade(url)
        ids = [gated(url, tmp_path, "acme", 1.5) for _ in range(3)]
        with session_scope(url) as session:
            for job_id in ids:
                record_verdict(session, job_id, "acme", verdict="reject", reviewer="emg_a", note="unsafe")
        runner = CliRunner()
        result = runner.invoke(app, ["audit", "verify", "--db", url])
        assert result.exit_code == 0 and "review chain intact: 3 verdicts" in result.output, result.output

        with session_scope(url) as session:
            assert redact_notes(session, timedelta(days=1)) == 0  # recent notes stay
            assert redact_notes(session, timedelta(0), now=utcnow() + timedelta(seconds=1)) == 3
            assert verify_reviews(session).ok

        engine = db.make_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE reviews DISABLE TRIGGER reviews_no_update_delete")
            conn.exec_driver_sql(f"UPDATE reviews SET verdict = 'approve' WHERE job_id = '{ids[1]}'")
        result = runner.invoke(app, ["audit", "verify", "--db", url])
        assert result.exit_code == 1 and "review chain BROKEN" in result.output and "altered" in result.output
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DELETE FROM reviews WHERE job_id = '{ids[1]}'")
        result = runner.invoke(app, ["audit", "verify", "--db", url])
        assert result.exit_code == 1 and "deleted" in result.output
        engine.dispose()
    finally:
        drop_pg_database(url)


def test_redaction_keeps_the_prompt_of_a_job_awaiting_review(module_pg_url: str, tmp_path, keys) -> None:
    from datetime import timedelta

    from audit.models import Job, utcnow
    from audit.retention import redact_prompts
    from audit.reviews import record_verdict

    held = gated(module_pg_url, tmp_path, keys["tenant"], 1.5)
    halted = gated(module_pg_url, tmp_path, keys["tenant"], 2.5)
    later = utcnow() + timedelta(seconds=1)
    with session_scope(module_pg_url) as session:
        redact_prompts(session, timedelta(0), now=later)
        assert all(session.get(Job, i).prompt for i in (held, halted))  # a reviewer still reads them
        record_verdict(session, held, keys["tenant"], verdict="reject", reviewer="emg_t")
    with session_scope(module_pg_url) as session:
        redact_prompts(session, timedelta(0), now=later)
        assert session.get(Job, held).prompt is None and session.get(Job, halted).prompt


# --- leases -------------------------------------------------------------------------------------------------


def _prefix(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")[:12]


def test_a_lease_keeps_a_second_reviewer_out_until_the_holder_decides(
    make_client, module_pg_url: str, tmp_path: Path, keys
) -> None:
    client = make_client()
    a = keys["review"]
    _, b = new_key(module_pg_url, keys["tenant"], "review")
    job_id = gated(module_pg_url, tmp_path, keys["tenant"], 1.5)

    leased = client.post(f"/v1/reviews/{job_id}/lease", headers=a)
    assert leased.status_code == 200, leased.text
    body = leased.json()
    assert body["holder"] == _prefix(a) and 0 < body["seconds"] <= 120
    # B can neither lease it nor decide it while A's lease runs; the 409 names A and the lease's end
    for response in (
        client.post(f"/v1/reviews/{job_id}/lease", headers=b),
        client.post(f"/v1/jobs/{job_id}/review", json={"verdict": "reject"}, headers=b),
        client.delete(f"/v1/reviews/{job_id}/lease", headers=b),
    ):
        assert response.status_code == 409, response.text
        detail = response.json()["detail"]
        assert _prefix(a) in detail and body["until"][:19] in detail, detail
    # A renews and decides; the verdict releases the lease
    assert client.post(f"/v1/reviews/{job_id}/lease", headers=a).status_code == 200
    decided = client.post(f"/v1/jobs/{job_id}/review", json={"verdict": "approve"}, headers=a)
    assert decided.status_code == 200, decided.text
    with session_scope(module_pg_url) as session:
        job = repo.get_job(session, job_id)
        assert (job.review_lease_by, job.review_lease_until) == (None, None)
    # a decided job cannot be leased (it awaits no verdict)
    again = client.post(f"/v1/reviews/{job_id}/lease", headers=b)
    assert again.status_code == 409 and "not awaiting a verdict" in again.json()["detail"]
    assert client.post(f"/v1/reviews/{uuid.uuid4()}/lease", headers=b).status_code == 404
    assert client.delete(f"/v1/reviews/{uuid.uuid4()}/lease", headers=b).status_code == 404
    assert client.post(f"/v1/reviews/{job_id}/lease", headers=keys["read"]).status_code == 403


def test_an_expired_lease_can_be_taken_and_a_released_one_too(module_pg_url: str, tmp_path, keys) -> None:
    from datetime import timedelta

    from audit.models import utcnow
    from audit.reviews import LeaseHeld, lease_of, release_lease, take_lease

    tenant = keys["tenant"]
    job_id = gated(module_pg_url, tmp_path, tenant, 1.5)
    past = utcnow() - timedelta(seconds=300)
    with session_scope(module_pg_url) as session:
        lease = take_lease(session, job_id, tenant, reviewer="emg_a", seconds=60, now=past)
        assert lease.holder == "emg_a" and lease.until == past + timedelta(seconds=60)
    with session_scope(module_pg_url) as session:  # it ended four minutes ago: B takes it
        lease = take_lease(session, job_id, tenant, reviewer="emg_b", seconds=60)
        assert lease.holder == "emg_b"
    with pytest.raises(LeaseHeld) as held, session_scope(module_pg_url) as session:
        take_lease(session, job_id, tenant, reviewer="emg_a", seconds=60)
    assert held.value.holder == "emg_b" and held.value.until == lease.until
    with session_scope(module_pg_url) as session:
        assert release_lease(session, job_id, tenant, reviewer="emg_b") is True
        assert lease_of(repo.get_job(session, job_id)) is None
    with session_scope(module_pg_url) as session:
        assert take_lease(session, job_id, tenant, reviewer="emg_a", seconds=60).holder == "emg_a"


def test_two_reviewers_leasing_one_job_at_once_one_gets_it(module_pg_url: str, tmp_path, keys) -> None:
    """On PostgreSQL, two transactions at once: exactly one lease, the other sees it (FOR UPDATE)."""
    from audit.reviews import LeaseHeld, take_lease

    tenant = keys["tenant"]
    for _ in range(5):
        job_id = gated(module_pg_url, tmp_path, tenant, 1.5)
        barrier = threading.Barrier(2)
        outcome: dict[str, str] = {}

        def lease(
            reviewer: str,
            job_id: uuid.UUID = job_id,
            barrier: threading.Barrier = barrier,
            outcome: dict[str, str] = outcome,
        ) -> None:
            with session_scope(module_pg_url) as session:
                barrier.wait()
                try:
                    take_lease(session, job_id, tenant, reviewer=reviewer, seconds=60)
                    outcome[reviewer] = "leased"
                except LeaseHeld as exc:
                    outcome[reviewer] = f"held by {exc.holder}"

        threads = [threading.Thread(target=lease, args=(r,)) for r in ("emg_a", "emg_b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winner = next(r for r, o in outcome.items() if o == "leased")
        loser = "emg_b" if winner == "emg_a" else "emg_a"
        assert outcome == {winner: "leased", loser: f"held by {winner}"}, outcome
        with session_scope(module_pg_url) as session:
            assert repo.get_job(session, job_id).review_lease_by == winner


def test_next_leases_the_oldest_free_job_and_two_reviewers_get_different_ones(
    make_client, module_pg_url: str, tmp_path, keys
) -> None:
    from audit.reviews import lease_next

    tenant = f"t{uuid.uuid4().hex[:8]}"
    _, a = new_key(module_pg_url, tenant, "review")
    _, b = new_key(module_pg_url, tenant, "review")
    client = make_client()
    first = gated(module_pg_url, tmp_path, tenant, 1.2)
    second = gated(module_pg_url, tmp_path, tenant, 1.8, language="de")
    got_a = client.post("/v1/reviews/next", headers=a)
    assert got_a.status_code == 200, got_a.text
    assert got_a.json()["job_id"] == str(first) and got_a.json()["item"]["job"]["id"] == str(first)
    assert client.post("/v1/reviews/next", headers=a).json()["job_id"] == str(first)  # A's own lease again
    assert client.post("/v1/reviews/next", headers=b).json()["job_id"] == str(second)
    assert client.post("/v1/reviews/next", headers=b, params={"language": "en"}).status_code == 204
    # many reviewers at once on PostgreSQL: SKIP LOCKED hands each its own job
    ids = {gated(module_pg_url, tmp_path, tenant, 1.5) for _ in range(6)}
    got: list[uuid.UUID | None] = []
    barrier = threading.Barrier(6)

    def take(reviewer: str) -> None:
        with session_scope(module_pg_url) as session:
            barrier.wait()
            lease = lease_next(session, tenant, reviewer=reviewer, seconds=60)
            got.append(lease.job.id if lease else None)

    threads = [threading.Thread(target=take, args=(f"emg_r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, got)) == sorted(map(str, ids)), got


# --- bulk verdicts ------------------------------------------------------------------------------------------


def test_bulk_reject_of_a_filtered_selection_needs_the_count_and_chains_each_verdict(
    make_client, module_pg_url: str, tmp_path, keys
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    _, review = new_key(module_pg_url, tenant, "review")
    _, read = new_key(module_pg_url, tenant, "read")
    _, other = new_key(module_pg_url, tenant, "review")
    client = make_client()
    german = [gated(module_pg_url, tmp_path, tenant, s, language="de") for s in (1.2, 1.4, 2.5)]
    english = gated(module_pg_url, tmp_path, tenant, 1.3)
    selection = {"language": "de", "max_score": 2.0}
    listed = client.get("/v1/reviews", params=selection, headers=review).json()
    assert listed["total"] == 2

    # a count that is not the selection's is refused, and nothing is decided
    stale = client.post(
        "/v1/reviews/bulk", json={"verdict": "reject", "confirm": 3, **selection}, headers=review
    )
    assert stale.status_code == 409 and "holds 2 job(s), not the 3 confirmed" in stale.json()["detail"]
    # a job in the selection leased by another reviewer: 409 naming the holder, nothing decided
    assert client.post(f"/v1/reviews/{german[0]}/lease", headers=other).status_code == 200
    leased = client.post(
        "/v1/reviews/bulk", json={"verdict": "reject", "confirm": 2, **selection}, headers=review
    )
    assert leased.status_code == 409 and _prefix(other) in leased.json()["detail"]
    assert client.delete(f"/v1/reviews/{german[0]}/lease", headers=other).status_code == 204
    assert client.get("/v1/reviews", params=selection, headers=review).json()["total"] == 2

    done = client.post(
        "/v1/reviews/bulk",
        json={"verdict": "reject", "confirm": 2, "note": "bulk: weapons", **selection},
        headers=review,
    )
    assert done.status_code == 200, done.text
    assert done.json()["count"] == 2
    assert {i["job_id"] for i in done.json()["items"]} == {str(j) for j in german[:2]}
    assert {i["status"] for i in done.json()["items"]} == {"rejected"}
    for job_id in german[:2]:
        assert client.get(f"/v1/jobs/{job_id}/images/0", headers=read).status_code == 403
    left = client.get("/v1/reviews", headers=review).json()
    assert {i["job"]["id"] for i in left["items"]} == {str(german[2]), str(english)}
    with session_scope(module_pg_url) as session:
        rows = session.scalars(sa.select(Review).where(Review.tenant == tenant).order_by(Review.id)).all()
        assert sorted(str(r.job_id) for r in rows) == sorted(str(j) for j in german[:2])
        assert {(r.verdict, r.note, r.reviewer) for r in rows} == {
            ("reject", "bulk: weapons", _prefix(review))
        }
        assert rows[1].prev_hash == rows[0].row_hash
        assert verify_reviews(session).ok

    # bad input names the field
    for body, field in (
        ({"verdict": "escalate", "confirm": 1}, "verdict"),
        ({"verdict": "approve", "confirm": 0}, "confirm"),
        ({"verdict": "approve", "confirm": 1, "min_score": 2, "max_score": 1}, "max_score"),
        ({"verdict": "approve", "confirm": 1, "label": "nocolon"}, "label"),
        ({"verdict": "approve", "confirm": 1, "label": "::x"}, "label"),  # an empty key, as the query refuses
    ):
        bad = client.post("/v1/reviews/bulk", json=body, headers=review)
        assert bad.status_code == 422 and field in str(bad.json()), (body, bad.text)
    assert (
        client.post("/v1/reviews/bulk", json={"verdict": "approve", "confirm": 1}, headers=read).status_code
        == 403
    )


def test_a_queue_filter_checks_its_bounds_once_and_names_the_bad_field() -> None:
    """`QueueFilter` refuses a minimum above its maximum, a negative age and a bound that is not finite with
    a 422-kind refusal naming the field (what the API and the dashboard show); equal bounds are fine."""
    from audit.reviews import BadFilter, QueueFilter, ReviewRefused

    assert QueueFilter(min_score=1.0, max_score=1.0, min_age_s=0, max_age_s=0).max_score == 1.0
    for fields, field, message in (
        ({"min_score": 2.0, "max_score": 1.0}, "max_score", "max_score: 1.0 is below min_score 2.0"),
        ({"min_age_s": 10.0, "max_age_s": 5.0}, "max_age_s", "max_age_s: 5.0 is below min_age_s 10.0"),
        ({"min_age_s": -1.0}, "min_age_s", "min_age_s: -1.0 is below 0"),
        ({"min_score": float("nan")}, "min_score", "min_score: nan is not a finite number"),
        ({"max_age_s": float("inf")}, "max_age_s", "max_age_s: inf is not a finite number"),
    ):
        with pytest.raises(BadFilter) as caught:
            QueueFilter(**fields)
        assert caught.value.field == field and str(caught.value) == message, fields
        assert isinstance(caught.value, ReviewRefused) and not caught.value.conflict


def test_audit_redact_treats_notes_like_prompts(tmp_path: Path) -> None:
    """`emoe-gate audit redact --older-than N` nulls the notes of verdicts older than N days as it nulls the
    prompts of jobs older than N days (recent ones stay), and the review chain still verifies (it covers the
    note's sha256, not its text)."""
    from datetime import timedelta

    from typer.testing import CliRunner

    from audit import db
    from audit.models import Job, utcnow
    from audit.reviews import record_verdict
    from cli.main import app

    url = f"sqlite:///{tmp_path / 'redact.db'}"
    db.upgrade(url)
    old, new = gated(url, tmp_path, "acme", 1.5), gated(url, tmp_path, "acme", 1.6)
    with session_scope(url) as session:
        record_verdict(session, old, "acme", verdict="reject", reviewer="emg_a", note="shows a weapon")
        record_verdict(session, new, "acme", verdict="approve", reviewer="emg_a", note="fine")
        session.execute(sa.update(Job).where(Job.id == old).values(created_at=utcnow() - timedelta(days=10)))
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "redact", "--older-than", "1", "--db", url])
    assert result.exit_code == 0, result.output
    assert "prompts of 1 jobs" in result.output and "review notes" not in result.output  # notes are recent
    with session_scope(url) as session:
        assert session.get(Job, old).prompt is None and session.get(Job, new).prompt is not None
        assert {r.note for r in session.scalars(sa.select(Review))} == {"shows a weapon", "fine"}
    result = runner.invoke(app, ["audit", "redact", "--older-than", "0", "--db", url])
    assert result.exit_code == 0 and "redacted 2 review notes" in result.output, result.output
    assert "review chain intact: 2 verdicts" in result.output
    with session_scope(url) as session:
        assert {r.note for r in session.scalars(sa.select(Review))} == {None}
        assert {r.note_sha256 for r in session.scalars(sa.select(Review))} == {
            hashlib.sha256(b"shows a weapon").hexdigest(),
            hashlib.sha256(b"fine").hexdigest(),
        }
        assert verify_reviews(session).ok


def _age(url: str, job_id: uuid.UUID, hours: int) -> None:
    """Make a job look submitted `hours` ago (its age in the queue counts from submission)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE jobs SET created_at = created_at - make_interval(hours => :h) WHERE id = :id"),
            {"h": hours, "id": job_id},
        )
    engine.dispose()


def test_next_and_bulk_take_the_queues_waiting_time_filters(
    make_client, module_pg_url: str, tmp_path: Path
) -> None:
    """A reviewer working the "waiting more than an hour" slice leases and bulk-decides that slice only."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    _, a = new_key(module_pg_url, tenant, "review")
    _, b = new_key(module_pg_url, tenant, "review")
    client = make_client()
    old, older = gated(module_pg_url, tmp_path, tenant, 1.2), gated(module_pg_url, tmp_path, tenant, 1.3)
    fresh = gated(module_pg_url, tmp_path, tenant, 1.4)
    _age(module_pg_url, old, 2)
    _age(module_pg_url, older, 3)
    # the oldest job heads the queue; the recent slice skips it and the old one
    recent = client.post("/v1/reviews/next", params={"max_age_s": 3600}, headers=a)
    assert recent.status_code == 200 and recent.json()["job_id"] == str(fresh), recent.text
    assert recent.json()["item"]["waiting_s"] < 3600
    assert client.delete(f"/v1/reviews/{fresh}/lease", headers=a).status_code == 204
    slice_ = {"min_age_s": 3600, "max_age_s": 4 * 3600}
    got = client.post("/v1/reviews/next", params=slice_, headers=a)
    assert got.json()["job_id"] == str(older) and got.json()["item"]["waiting_s"] >= 3 * 3600
    assert client.post("/v1/reviews/next", params=slice_, headers=b).json()["job_id"] == str(old)
    assert client.post("/v1/reviews/next", params={"min_age_s": 4 * 3600}, headers=b).status_code == 204
    assert client.delete(f"/v1/reviews/{older}/lease", headers=a).status_code == 204
    assert client.delete(f"/v1/reviews/{old}/lease", headers=b).status_code == 204

    # bulk: the slice of GET /v1/reviews is what a bulk verdict with the same filters decides
    listed = client.get("/v1/reviews", params={"min_age_s": 3600}, headers=a).json()
    assert listed["total"] == 2
    everything = client.post("/v1/reviews/bulk", json={"verdict": "reject", "confirm": 2}, headers=a)
    assert everything.status_code == 409 and "holds 3 job(s)" in everything.json()["detail"]
    done = client.post(
        "/v1/reviews/bulk", json={"verdict": "reject", "confirm": 2, "min_age_s": 3600}, headers=a
    )
    assert done.status_code == 200, done.text
    assert {i["job_id"] for i in done.json()["items"]} == {str(old), str(older)}
    left = client.get("/v1/reviews", headers=a).json()
    assert [i["job"]["id"] for i in left["items"]] == [str(fresh)]

    # the same validation as the queue's: a minimum above the maximum is a 422 naming max_age_s
    bad = client.post("/v1/reviews/next", params={"min_age_s": 60, "max_age_s": 1}, headers=a)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "max_age_s"], bad.text
    for body, loc in (
        ({"min_age_s": 60, "max_age_s": 1}, ["body", "max_age_s"]),
        ({"min_age_s": -1}, ["body", "min_age_s"]),
    ):
        bad = client.post("/v1/reviews/bulk", json={"verdict": "reject", "confirm": 1, **body}, headers=a)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == loc, bad.text
    negative = client.post("/v1/reviews/next", params={"max_age_s": -5}, headers=a)
    assert negative.status_code == 422 and "max_age_s" in str(negative.json())
    with session_scope(module_pg_url) as session:
        assert repo.get_job(session, fresh).status == "held"  # nothing refused was decided


# --- the dashboard's review page: releasing a lease ------------------------------------------------------


def _signed_in(client, headers: dict[str, str]) -> None:
    key = headers["Authorization"].removeprefix("Bearer ")
    form = {"content-type": "application/x-www-form-urlencoded"}
    signed = client.post("/dashboard/login", content=f"key={key}&next=/dashboard", headers=form)
    assert signed.status_code == 200 and 'id="sign-out"' in signed.text, signed.text


def _csrf(html: str) -> str:
    import re

    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_the_review_page_releases_the_reviewers_own_lease_only_and_with_its_csrf_token(
    make_client, module_pg_url: str, tmp_path: Path
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    _, a = new_key(module_pg_url, tenant, "review")
    _, b = new_key(module_pg_url, tenant, "review")
    first, second = gated(module_pg_url, tmp_path, tenant, 1.2), gated(module_pg_url, tmp_path, tenant, 1.4)
    as_a, as_b = make_client(), make_client()
    _signed_in(as_a, a)
    _signed_in(as_b, b)

    def lease_by(job_id: uuid.UUID) -> str | None:
        with session_scope(module_pg_url) as session:
            return repo.get_job(session, job_id).review_lease_by

    page = as_a.get("/dashboard/review?language=en").text  # opening the page leases A the oldest job
    assert f'data-job="{first}">' in page and lease_by(first) == _prefix(a)
    form_html = page[page.index('id="release-form"') :]
    assert f'action="/dashboard/review/{first}/release"' in page and 'name="csrf"' in form_html
    token = _csrf(page)
    url = f"/dashboard/review/{first}/release"
    # without the session's CSRF token (or from another site) nothing is released
    for form, extra in (
        ({}, {}),
        ({"csrf": "x" * 43}, {}),
        ({"csrf": token}, {"origin": "https://evil.example"}),
    ):
        refused = as_a.post(url, data=form, headers=extra, follow_redirects=False)
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"], form
    assert lease_by(first) == _prefix(a)
    # another reviewer cannot release A's lease: the refusal says whose it is and until when
    b_token = _csrf(as_b.get("/dashboard/review").text)  # B is leased the second job
    assert lease_by(second) == _prefix(b)
    theirs = as_b.post(url, data={"csrf": b_token}, follow_redirects=False)
    assert theirs.status_code == 409, theirs.text
    detail = theirs.json()["detail"]
    assert "only its holder can release it" in detail and _prefix(a) in detail and "until" in detail
    assert lease_by(first) == _prefix(a)

    # A hands it back: no verdict, the lease ends, back to the queue (filters kept) with a notice
    released = as_a.post(url, data={"csrf": token, "language": "en"}, follow_redirects=False)
    assert released.status_code == 303, released.text
    assert released.headers["location"] == f"/dashboard/review?language=en&done=released&skip={first}"
    with session_scope(module_pg_url) as session:
        job = repo.get_job(session, first)
        assert (job.status, job.review, job.review_lease_by, job.review_lease_until) == (
            "held",
            "pending",
            None,
            None,
        )
        assert (
            session.scalar(sa.select(sa.func.count()).select_from(Review).where(Review.job_id == first)) == 0
        )
    back = as_a.get(released.headers["location"]).text
    assert "handed back to the queue" in back and f'class="queued" data-job="{first}"' in back
    # the only other job is B's: A is not handed the released one again, which stays free
    assert 'id="queue-empty"' in back and "the one handed back is free" in back and lease_by(first) is None
    # any reviewer can now take it
    taken = as_b.post("/v1/reviews/next", headers=b)  # B's own lease (the second job) comes first
    assert taken.json()["job_id"] == str(second)
    _, c = new_key(module_pg_url, tenant, "review")
    assert as_b.post("/v1/reviews/next", headers=c).json()["job_id"] == str(first)
    # a job the tenant does not have: 404, named
    gone = as_a.post(f"/dashboard/review/{(unknown := uuid.uuid4())}/release", data={"csrf": token})
    assert gone.status_code == 404 and gone.json()["detail"] == f"no job {unknown}"


def test_the_review_page_overrides_a_decided_job_with_a_note_as_the_api_does(
    make_client, module_pg_url: str, tmp_path: Path
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    _, a = new_key(module_pg_url, tenant, "review")
    _, read = new_key(module_pg_url, tenant, "read")
    job_id = gated(module_pg_url, tmp_path, tenant, 1.5)
    client = make_client()
    _signed_in(client, a)
    token = _csrf(client.get("/dashboard/review").text)
    url = f"/dashboard/review/{job_id}"
    assert (
        client.post(url, data={"verdict": "approve", "csrf": token}, follow_redirects=False).status_code
        == 303
    )
    assert client.get(f"/v1/jobs/{job_id}/images/0", headers=read).status_code == 200

    # the decided job is listed as recently decided; opened, it offers an override (no lease, no release)
    queue = client.get("/dashboard/review").text
    assert f'class="decided" data-job="{job_id}"' in queue
    page = client.get(f"/dashboard/review?job={job_id}").text
    assert 'id="override-form"' in page and 'name="override" value="1"' in page
    assert 'id="override-reject"' in page and 'id="override-approve"' not in page  # approved already
    assert 'id="verdict-form"' not in page and 'id="release-form"' not in page
    with session_scope(module_pg_url) as session:
        assert repo.get_job(session, job_id).review_lease_by is None

    # refused: without the CSRF token, without a note, without saying it is an override
    assert client.post(url, data={"verdict": "reject", "override": "1", "note": "x"}).status_code == 403
    no_note = client.post(url, data={"verdict": "reject", "override": "1", "csrf": token})
    assert no_note.status_code == 422 and "note" in no_note.json()["detail"]
    plain = client.post(url, data={"verdict": "reject", "note": "x", "csrf": token})
    assert plain.status_code == 409 and "override" in plain.json()["detail"]
    form = {"verdict": "reject", "override": "1", "note": "the image shows a logo", "csrf": token}
    done = client.post(url, data=form, follow_redirects=False)
    assert done.status_code == 303 and "done=rejected" in done.headers["location"]
    assert client.get(f"/v1/jobs/{job_id}/images/0", headers=read).status_code == 403
    with session_scope(module_pg_url) as session:
        rows = session.scalars(sa.select(Review).where(Review.job_id == job_id).order_by(Review.id)).all()
        assert [(r.verdict, r.previous, r.override, r.note) for r in rows] == [
            ("approve", "pending", False, None),
            ("reject", "approved", True, "the image shows a logo"),
        ]
        assert verify_reviews(session).ok
    again = client.get(f"/dashboard/review?job={job_id}").text
    assert 'id="override-approve"' in again and 'id="override-reject"' not in again
    # an approved halted job is rendering (no worker runs here): the API refuses an override, the page says so
    halted = gated(module_pg_url, tmp_path, tenant, 2.5)
    assert client.post("/v1/reviews/next", headers=a).json()["job_id"] == str(halted)
    assert client.post(f"/v1/jobs/{halted}/review", json={"verdict": "approve"}, headers=a).status_code == 200
    rendering = client.get(f"/dashboard/review?job={halted}").text
    assert 'id="not-overridable"' in rendering and "is rendering now" in rendering
    assert 'id="override-form"' not in rendering
