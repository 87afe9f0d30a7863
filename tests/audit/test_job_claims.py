"""The workers' state machine: a claim names its owner; a claim whose owner is gone is taken over at once, a
live owner's claim is busy until its lease runs out, and the owner itself takes back a claim it abandoned."""

from __future__ import annotations

import uuid

import pytest

from audit import jobs as repo
from audit.db import session_scope
from audit.models import Job


def _queued(url: str, tenant: str = "t") -> uuid.UUID:
    with session_scope(url) as session:
        job, _ = repo.create_job(
            session,
            tenant=tenant,
            prompt="a red circle",
            negative_prompt="",
            mode="fast",
            params={},
            labels={},
            language="en",
            callback_url=None,
        )
        return job.id


def _claim(url: str, job_id: uuid.UUID, owner: str, alive: set[str]) -> repo.Claim | repo.ClaimRefused:
    with session_scope(url) as session:
        return repo.claim(
            session,
            job_id,
            "scoring",
            lease_s=600,
            max_attempts=3,
            owner=owner,
            owner_alive=lambda holder: holder in alive,
        )


def test_a_claim_names_its_owner_and_a_live_owner_keeps_it(migrated_sqlite_url: str) -> None:
    job_id = _queued(migrated_sqlite_url)
    first = _claim(migrated_sqlite_url, job_id, "host:1", alive={"host:1", "host:2"})
    assert isinstance(first, repo.Claim) and first.attempt == 1
    with session_scope(migrated_sqlite_url) as session:
        assert session.get(Job, job_id).claimed_by == "host:1"
    busy = _claim(migrated_sqlite_url, job_id, "host:2", alive={"host:1", "host:2"})
    assert isinstance(busy, repo.ClaimRefused) and busy.reason == "busy"


def test_a_dead_owners_claim_is_taken_over_at_once(migrated_sqlite_url: str) -> None:
    job_id = _queued(migrated_sqlite_url)
    old = _claim(migrated_sqlite_url, job_id, "host:1", alive={"host:1"})
    new = _claim(migrated_sqlite_url, job_id, "host:2", alive={"host:2"})  # host:1's heartbeat is gone
    assert isinstance(new, repo.Claim) and new.attempt == 2  # well inside the 600 s lease
    with session_scope(migrated_sqlite_url) as session:
        assert session.get(Job, job_id).claimed_by == "host:2"
        assert repo.holds(session, old) is None  # the old holder can write nothing


def test_the_owner_takes_back_a_claim_it_abandoned(migrated_sqlite_url: str) -> None:
    # a worker process runs one stage at a time: asked again for its own claim, it had given up on it
    job_id = _queued(migrated_sqlite_url)
    _claim(migrated_sqlite_url, job_id, "host:1", alive={"host:1"})
    again = _claim(migrated_sqlite_url, job_id, "host:1", alive={"host:1"})
    assert isinstance(again, repo.Claim) and again.attempt == 2


@pytest.mark.parametrize(
    ("live", "found"), [(None, False), ({"host:1"}, False), ({"host:2"}, True), (set(), True)]
)
def test_the_sweep_finds_claims_whose_owner_is_not_alive(
    migrated_sqlite_url: str, live: set[str] | None, found: bool
) -> None:
    job_id = _queued(migrated_sqlite_url)
    _claim(migrated_sqlite_url, job_id, "host:1", alive={"host:1"})
    with session_scope(migrated_sqlite_url) as session:
        stalled = repo.stalled(session, older_than_s=30, lease_s=600, live_owners=live)
    assert stalled == ([repo.Stalled(job_id, "gate", claimed=True)] if found else [])


def test_moving_a_job_on_clears_its_owner(migrated_sqlite_url: str) -> None:
    job_id = _queued(migrated_sqlite_url)
    claim = _claim(migrated_sqlite_url, job_id, "host:1", alive={"host:1"})
    with session_scope(migrated_sqlite_url) as session:
        job = repo.holds(session, claim)
        assert repo.record_decision(job, "continue") == "rendering"
        assert (job.claimed_by, job.attempts, job.started_at) == (None, 0, None)
    with session_scope(migrated_sqlite_url) as session:
        render = repo.claim(session, job_id, "rendering", lease_s=600, max_attempts=3, owner="host:2")
        assert isinstance(render, repo.Claim)
        job = repo.holds(session, render)
        repo.complete(job)
        assert (job.status, job.claimed_by) == ("completed", None) and job.finished_at is not None


DEFAULTS = {"steps": 25, "guidance": 7.5, "height": 32, "width": 32}  # a worker's render defaults


def _waiting_render(url: str, params: dict, mode: str = "fast") -> uuid.UUID:
    """A job the gate accepted: waiting to be rendered."""
    with session_scope(url) as session:
        job, _ = repo.create_job(
            session,
            tenant="t",
            prompt="a red circle",
            negative_prompt="",
            mode=mode,
            params=params,
            labels={},
            language="en",
            callback_url=None,
        )
        job_id = job.id
    with session_scope(url) as session:
        claim = repo.claim(session, job_id, "scoring", lease_s=600, max_attempts=3)
        assert repo.record_decision(repo.holds(session, claim), "continue") == "rendering"
    return job_id


@pytest.mark.parametrize("url_fixture", ["migrated_sqlite_url", "migrated_pg_url"])
def test_a_render_batch_claims_only_jobs_that_can_share_it(url_fixture: str, request) -> None:
    url = request.getfixturevalue(url_fixture)
    first = _waiting_render(url, {"steps": 25})
    same = [_waiting_render(url, {"steps": 25, "seed": s}) for s in (1, 2, 3)]
    other_steps = _waiting_render(url, {"steps": 10})
    other_mode = _waiting_render(url, {"steps": 25}, mode="full")

    with session_scope(url) as session:
        claim = repo.claim(session, first, "rendering", lease_s=600, max_attempts=3, owner="host:1")
        assert isinstance(claim, repo.Claim)
        more = repo.claim_render_batch(
            session, claim, limit=2, defaults=DEFAULTS, max_attempts=3, owner="host:1"
        )
    assert [c.job_id for c in more] == same[:2] and all(c.attempt == 1 for c in more)
    with session_scope(url) as session:
        rest = repo.claim(session, first, "rendering", lease_s=600, max_attempts=3, owner="host:1")
        again = repo.claim_render_batch(
            session, rest, limit=8, defaults=DEFAULTS, max_attempts=3, owner="host:1"
        )
        assert [c.job_id for c in again] == [same[2]]  # the claimed ones are not waiting any more
        statuses = {j.id: (j.status, j.claimed_by) for j in repo.get_jobs(session, [other_steps, other_mode])}
    assert statuses == {other_steps: ("rendering", None), other_mode: ("rendering", None)}
    with session_scope(url) as session:  # each claim is its own token: one job failing leaves the others
        assert repo.fail(session, more[0], "cannot render: height")
        assert repo.holds(session, more[1]) is not None and not repo.fail(session, more[0], "twice")


@pytest.mark.parametrize("url_fixture", ["migrated_sqlite_url", "migrated_pg_url"])
def test_a_render_batch_finds_compatible_jobs_behind_many_that_are_not(url_fixture: str, request) -> None:
    """The database filters on mode, steps, guidance and size: 70 jobs that cannot share the batch (other
    steps, guidance, size or mode) waiting ahead of the compatible ones do not keep these out. A param left
    out counts as the worker's default; seeds and negative prompts may differ."""
    url = request.getfixturevalue(url_fixture)
    first = _waiting_render(url, {"steps": 25, "guidance": 7.5, "seed": 0})
    unlike = [{"steps": 10}, {"guidance": 3.0}, {"height": 64}, {"width": 48, "steps": 25}]
    ahead = [_waiting_render(url, {**unlike[i % 4], "seed": i}) for i in range(66)]
    ahead += [_waiting_render(url, {"steps": 25}, mode="full") for _ in range(4)]
    compatible = [
        _waiting_render(url, {"steps": 25, "guidance": 7.5, "height": 32, "seed": 1}),
        _waiting_render(url, {"seed": 2}),  # every render param the default
        _waiting_render(url, {"steps": 25, "guidance": None, "height": None, "width": 32}),
    ]
    with session_scope(url) as session:
        claim = repo.claim(session, first, "rendering", lease_s=600, max_attempts=3, owner="host:1")
        more = repo.claim_render_batch(
            session, claim, limit=7, defaults=DEFAULTS, max_attempts=3, owner="host:1"
        )
    assert [c.job_id for c in more] == compatible
    with session_scope(url) as session:
        statuses = {(j.status, j.started_at, j.claimed_by) for j in repo.get_jobs(session, ahead)}
    assert statuses == {("rendering", None, None)}  # still waiting, unclaimed
    with session_scope(url) as session:  # one of those ahead leads a batch of its own kind
        lead = repo.claim(session, ahead[1], "rendering", lease_s=600, max_attempts=3, owner="host:1")
        own = repo.claim_render_batch(session, lead, limit=100, defaults=DEFAULTS, max_attempts=3)
    assert [c.job_id for c in own] == ahead[5:66:4]  # the other guidance 3.0 jobs, oldest first


def test_withdraw_deletes_only_jobs_still_queued(migrated_sqlite_url: str) -> None:
    queued, started = _queued(migrated_sqlite_url), _queued(migrated_sqlite_url)
    _claim(migrated_sqlite_url, started, "host:1", alive={"host:1"})
    with session_scope(migrated_sqlite_url) as session:
        assert repo.withdraw(session, [queued, started, uuid.uuid4()]) == 1
    with session_scope(migrated_sqlite_url) as session:
        assert session.get(Job, queued) is None and session.get(Job, started).status == "scoring"


def test_requeue_unfinished_gives_every_claim_back(migrated_sqlite_url: str) -> None:
    waiting, scoring = _queued(migrated_sqlite_url), _queued(migrated_sqlite_url)
    rendering = _waiting_render(migrated_sqlite_url, {})
    _claim(migrated_sqlite_url, scoring, "host:1", alive={"host:1"})
    with session_scope(migrated_sqlite_url) as session:
        repo.claim(session, rendering, "rendering", lease_s=600, max_attempts=3, owner="host:1")
    with session_scope(migrated_sqlite_url) as session:
        found = repo.requeue_unfinished(session)
    assert found == [(waiting, "gate"), (scoring, "gate"), (rendering, "render")]
    with session_scope(migrated_sqlite_url) as session:
        jobs = {j.id: j for j in repo.get_jobs(session, [scoring, rendering])}
        assert (jobs[scoring].status, jobs[scoring].started_at, jobs[scoring].claimed_by) == (
            "queued",
            None,
            None,
        )
        assert (jobs[rendering].status, jobs[rendering].started_at) == ("rendering", None)
        assert isinstance(
            repo.claim(session, rendering, "rendering", lease_s=600, max_attempts=3, owner="host:2"),
            repo.Claim,
        )


@pytest.mark.parametrize("url_fixture", ["migrated_sqlite_url", "migrated_pg_url"])
def test_a_tenants_backlog_does_not_keep_another_tenant_out_of_a_batch(url_fixture: str, request) -> None:
    """Fair shares (issue 12): tenant a queued 10 jobs before tenant b's one; a gate batch of 4 takes b's job
    in its first round (each tenant's oldest first), not after a's backlog, and likewise a render batch."""
    url = request.getfixturevalue(url_fixture)
    backlog = [_queued(url, "a") for _ in range(10)]
    other = _queued(url, "b")
    with session_scope(url) as session:
        claims = repo.claim_waiting(session, limit=4, max_attempts=3, owner="host:1")
    assert [c.job_id for c in claims] == [backlog[0], other, backlog[1], backlog[2]]
    with session_scope(url) as session:  # the next batch goes on with a's backlog, oldest first
        assert [c.job_id for c in repo.claim_waiting(session, limit=2, max_attempts=3)] == backlog[3:5]

    renders = [_waiting_render(url, {"steps": 25}) for _ in range(4)]  # tenant "t"
    with session_scope(url) as session:
        job, _ = repo.create_job(
            session, tenant="u", prompt="a blue square", negative_prompt="", mode="fast",
            params={"steps": 25}, labels={}, language="en", callback_url=None,
        )  # fmt: skip
        late = job.id
    with session_scope(url) as session:
        claim = repo.claim(session, late, "scoring", lease_s=600, max_attempts=3)
        assert repo.record_decision(repo.holds(session, claim), "continue") == "rendering"
    with session_scope(url) as session:
        first = repo.claim(session, renders[0], "rendering", lease_s=600, max_attempts=3)
        more = repo.claim_render_batch(session, first, limit=2, defaults=DEFAULTS, max_attempts=3)
    assert [c.job_id for c in more] == [renders[1], late]  # u's only job in the first round
