"""Fair shares: a cost ceiling per request, submissions per second per key (429, Retry-After and the
draft's RateLimit fields), unfinished jobs per tenant; the other tenant is still served while one is
throttled. And the compact job view (`?expand=scoring` for the whole scoring configuration)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest

from audit import jobs as repo
from audit.chain import append_decision
from audit.db import session_scope
from gateway.admission import QUEUE_DEPTH_CACHE_S, JobWatcher
from gateway.rate_limit import RateLimiter
from policies import DecisionContext, decide
from tests.audit.factories import FakeScore, make_policy
from tests.gateway.helpers import METRICS_AUTH, new_key

pytestmark = pytest.mark.postgres

OK = {"prompt": "a red circle on a white background"}


def test_a_request_over_the_cost_ceiling_gets_422_naming_the_limit(make_client, module_pg_url) -> None:
    # 64x64 x 25 steps = 102400 pixel-steps a fast image; full mode counts cost_full_images (4) images
    client = make_client(max_request_cost=64 * 64 * 25 * 2)
    tenant, auth = new_key(module_pg_url)
    sized = {**OK, "height": 64, "width": 64}
    assert client.post("/v1/jobs", json=sized, headers=auth).status_code == 202
    full = client.post("/v1/jobs", json={**sized, "mode": "full"}, headers=auth)
    assert full.status_code == 422, full.text
    (error,) = full.json()["detail"]
    assert error["loc"] == ["body", "steps"] and error["type"] == "cost_too_high"
    assert "64x64 x 25 steps x 4 images = 409600" in error["msg"] and "at most 204800" in error["msg"]
    many_steps = client.post("/v1/jobs", json={**sized, "steps": 200}, headers=auth)
    assert many_steps.status_code == 422 and "at most 204800" in many_steps.json()["detail"][0]["msg"]
    # a request that names no size is counted at cost_default_side (the gateway holds no model here)
    unsized = client.post("/v1/jobs", json=OK, headers=auth)
    assert unsized.status_code == 422
    assert "512x512 x 25 steps x 1 images" in unsized.json()["detail"][0]["msg"]
    assert client.post("/v1/jobs", json={**OK, "mode": "score_only"}, headers=auth).status_code == 202
    with session_scope(module_pg_url) as session:
        assert len(repo.list_jobs(session, tenant, limit=50).jobs) == 2


def test_a_throttled_key_gets_429_with_ratelimit_fields_while_others_are_served(make_client, module_pg_url):
    client = make_client(submit_rate_per_s=0.5, submit_burst=3)
    tenant, a = new_key(module_pg_url)
    _, a_second_key = new_key(module_pg_url, tenant=tenant)
    _, b = new_key(module_pg_url)
    answers = [client.post("/v1/jobs", json=OK, headers=a) for _ in range(4)]
    assert [r.status_code for r in answers] == [202, 202, 202, 429]
    assert answers[0].headers["RateLimit-Policy"] == '"submit";q=3;w=6'
    assert re.fullmatch(r'"submit";r=2;t=[0-9]+', answers[0].headers["RateLimit"])
    refused = answers[3]
    assert int(refused.headers["Retry-After"]) in (1, 2)  # a token every 2 s
    assert re.fullmatch(r'"submit";r=0;t=[0-9]+', refused.headers["RateLimit"])
    assert "0.5 requests a second (burst 3)" in refused.json()["detail"]
    # the other tenant, and another key of the same tenant, are served meanwhile
    assert client.post("/v1/jobs", json=OK, headers=b).status_code == 202
    assert client.post("/v1/jobs", json=OK, headers=a_second_key).status_code == 202
    assert client.post("/v1/score", json={"prompts": ["a"]}, headers=a).status_code == 429  # the same bucket
    assert client.get("/v1/jobs", headers=a).status_code == 200  # reading is not a submission
    metrics = client.get("/metrics", headers=METRICS_AUTH).text
    assert 'emoe_requests_rejected_total{reason="rate_limited"} 2.0' in metrics


def test_a_tenant_with_too_many_unfinished_jobs_gets_429_while_another_is_served(make_client, module_pg_url):
    client = make_client(tenant_max_queued=3, max_wait_s=0)
    tenant, a = new_key(module_pg_url)
    _, b = new_key(module_pg_url)
    assert [client.post("/v1/jobs", json=OK, headers=a).status_code for _ in range(3)] == [202] * 3
    refused = client.post("/v1/jobs", json=OK, headers=a)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert f"tenant {tenant} has 3 unfinished jobs (limit 3" in refused.json()["detail"]
    assert client.post("/v1/score", json={"prompts": ["a", "b"]}, headers=b).status_code == 202
    assert client.post("/v1/score", json={"prompts": ["a", "b"]}, headers=b).status_code == 429  # 2 + 2 > 3
    assert client.post("/v1/jobs", json=OK, headers=b).status_code == 202  # 3: b's share is full now
    # a finished job frees its place (counted again from the database after QUEUE_DEPTH_CACHE_S)
    first = client.get("/v1/jobs?limit=1", headers=a).json()["jobs"][0]
    assert client.post(first["links"]["cancel"], headers=a).status_code == 200
    time.sleep(QUEUE_DEPTH_CACHE_S + 0.05)
    assert client.post("/v1/jobs", json=OK, headers=a).status_code == 202


def test_the_rate_limiter_refills_at_its_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=2)
    assert limiter.take("k", now=0.0)[:2] == (True, 1.0)
    assert limiter.take("k", now=0.0)[:2] == (True, 0.0)
    allowed, left, next_in = limiter.take("k", now=0.0)
    assert (allowed, left, next_in) == (False, 0.0, 0.5)
    assert limiter.take("k", now=0.5)[:2] == (True, 0.0)  # one token back after 1/rate seconds
    assert limiter.take("other", now=0.5)[:2] == (True, 1.0)  # each key has its own bucket
    assert limiter.headers(0.0) == {"RateLimit-Policy": '"submit";q=2;w=1', "RateLimit": '"submit";r=0;t=1'}


def test_a_job_shows_its_scoring_in_brief_and_in_full_when_expanded(make_client, module_pg_url) -> None:
    client = make_client()
    tenant, auth = new_key(module_pg_url)
    layers = [f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn1" for i in range(42)]
    scoring = {"seed": 0, "steps": 25, "guidance": 7.5, "scheduler": "ddpm", "split": layers, "experts": None}
    with session_scope(module_pg_url) as session:
        job, _ = repo.create_job(
            session,
            tenant=tenant,
            prompt="a red circle",
            negative_prompt="",
            mode="score_only",
            params={},
            labels={},
            language="en",
            callback_url=None,
        )
        score = FakeScore(0.5, scoring=scoring)
        policy = make_policy()
        decision = decide(score, DecisionContext(language="en"), policy)
        repo.record_decision(job, decision.action)
        append_decision(session, job, score, decision)
        job_id = job.id
    brief = client.get(f"/v1/jobs/{job_id}", headers=auth).json()["score"]
    assert brief["fingerprint"] == score.fingerprint
    assert brief["scoring"] == {
        **{k: v for k, v in scoring.items() if k != "split"},
        "split_count": 42,  # the 42 layer names only in full
    }
    full = client.get(f"/v1/jobs/{job_id}?expand=scoring", headers=auth).json()["score"]
    assert full["scoring"] == scoring
    assert client.get(f"/v1/jobs/{job_id}?expand=everything", headers=auth).status_code == 422
    assert client.get(f"/v1/jobs/{uuid.uuid4()}?expand=scoring", headers=auth).status_code == 404


class _FakeWatcher(JobWatcher):
    """The watcher with job statuses from a set instead of the database."""

    def __init__(self) -> None:
        super().__init__(sessionmaker=None)  # type: ignore[arg-type]
        self.finished: set[uuid.UUID] = set()

    def _unfinished(self, ids: frozenset[uuid.UUID]) -> set[uuid.UUID]:
        self.polls += 1
        return set(ids) - self.finished


def test_the_watcher_wakes_waits_with_one_poll_per_tick_and_serves_back_to_back_waits() -> None:
    async def scenario() -> None:
        watcher = _FakeWatcher()
        jobs = [uuid.uuid4() for _ in range(20)]
        waits = [asyncio.create_task(watcher.wait([job], 10)) for job in jobs]
        await asyncio.sleep(0.3)
        polls = watcher.polls
        assert polls < 15  # one query per tick for all twenty waits, not one per wait
        watcher.finished.update(jobs[:10])
        done = await asyncio.gather(*waits[:10])
        assert done == [True] * 10 and not any(w.done() for w in waits[10:])
        watcher.finished.update(jobs[10:])
        assert await asyncio.gather(*waits[10:]) == [True] * 10
        # a wait that starts as the last one ends is served by a new poller, not left to its deadline
        first, later = uuid.uuid4(), uuid.uuid4()
        watcher.finished.update((first, later))
        assert await watcher.wait([first], 5) is True
        started = time.monotonic()
        assert await watcher.wait([later], 5) is True
        assert time.monotonic() - started < 1
        assert await watcher.wait([uuid.uuid4()], 0.3) is False  # never finishes: the deadline ends it

    asyncio.run(scenario())
