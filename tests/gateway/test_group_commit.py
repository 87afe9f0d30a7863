"""Group commit: concurrent submissions share one INSERT + COMMIT + publish, yet each keeps its own job."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from sqlalchemy import func, select

from audit import jobs as repo
from audit.db import get_sessionmaker, session_scope
from audit.models import Job
from gateway.errors import BrokerUnavailable
from gateway.group_commit import GroupCommit
from tests.gateway.helpers import new_key


def _new(tenant: str, prompt: str = "a red circle", key: str | None = None) -> repo.NewJob:
    return repo.NewJob(
        tenant=tenant,
        prompt=prompt,
        negative_prompt="",
        mode="fast",
        params={"seed": 0},
        labels={},
        language="en",
        callback_url=None,
        idempotency_key=key,
    )


def _count(url: str, tenant: str, status: str | None = None) -> int:
    query = select(func.count()).select_from(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    with session_scope(url) as session:
        return session.scalar(query) or 0


async def _submit_all(batcher: GroupCommit, requests: list[repo.NewJob]) -> list:
    return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)


def test_concurrent_submissions_share_one_commit_and_one_publish(module_pg_url) -> None:
    tenant = f"g{uuid.uuid4().hex[:8]}"
    published: list[list[uuid.UUID]] = []
    committed_when_published: list[int] = []

    def publish(ids: list[uuid.UUID]) -> None:
        # seen from another connection: the rows are committed before the messages exist
        committed_when_published.append(_count(module_pg_url, tenant))
        published.append(list(ids))

    batcher = GroupCommit(get_sessionmaker(module_pg_url), publish)
    requests = [_new(tenant, f"prompt {i}") for i in range(12)]
    requests += [_new(tenant, "keyed", key="k1"), _new(tenant, "keyed", key="k1")]  # a duplicate in the batch
    requests.append(_new(tenant, "another request", key="k1"))  # the same key, a different request
    results = asyncio.run(_submit_all(batcher, requests))

    assert [(b.size, b.created) for b in batcher.batches] == [(15, 13)]
    plain = results[:12]
    assert all(created for _, created in plain) and len({job.id for job, _ in plain}) == 12
    assert [job.prompt for job, _ in plain] == [f"prompt {i}" for i in range(12)]
    (first, first_created), (second, second_created) = results[12], results[13]
    assert first_created and not second_created and second.id == first.id
    assert isinstance(results[14], repo.IdempotencyConflict)
    assert len(published) == 1 and sorted(published[0]) == sorted([j.id for j, _ in plain] + [first.id])
    assert committed_when_published == [13] and _count(module_pg_url, tenant, "queued") == 13


def test_a_refused_publish_undoes_the_batch(module_pg_url) -> None:
    tenant = f"g{uuid.uuid4().hex[:8]}"
    sessionmaker = get_sessionmaker(module_pg_url)
    ok = GroupCommit(sessionmaker, lambda ids: None)
    ((kept, _),) = asyncio.run(_submit_all(ok, [_new(tenant, "kept", key="old")]))

    def refuse(ids: list[uuid.UUID]) -> None:
        raise ConnectionError("broker down")

    broken = GroupCommit(sessionmaker, refuse)
    results = asyncio.run(
        _submit_all(broken, [_new(tenant, "a"), _new(tenant, "b"), _new(tenant, "kept", key="old")])
    )
    assert all(isinstance(r, BrokerUnavailable) for r in results[:2])
    assert results[2][0].id == kept.id and results[2][1] is False  # a replay needs no publish
    assert _count(module_pg_url, tenant) == 1  # no orphan row


def test_one_bad_row_fails_only_its_own_request(module_pg_url) -> None:
    tenant = f"g{uuid.uuid4().hex[:8]}"
    published: list[uuid.UUID] = []
    batcher = GroupCommit(get_sessionmaker(module_pg_url), published.extend)
    # PostgreSQL refuses NUL in text: the multi-row INSERT fails, then each row is written alone
    results = asyncio.run(
        _submit_all(batcher, [_new(tenant, "good 1"), _new(tenant, "bad \x00"), _new(tenant, "good 2")])
    )
    assert results[0][1] and results[2][1]
    assert isinstance(results[1], Exception) and not isinstance(results[1], tuple)
    assert sorted(published) == sorted([results[0][0].id, results[2][0].id])
    assert _count(module_pg_url, tenant) == 2


@pytest.mark.parametrize("keyed", [False, True])
def test_concurrent_http_submissions_each_get_their_job(make_client, module_pg_url, keyed: bool) -> None:
    client = make_client()
    tenant, auth = new_key(module_pg_url)
    ids: list[str] = []
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def submit(i: int) -> None:
        headers = {**auth, "Idempotency-Key": "same"} if keyed else auth
        body = {"prompt": "a red circle"} if keyed else {"prompt": f"prompt {i}"}
        barrier.wait()
        response = client.post("/v1/jobs", json=body, headers=headers)
        codes.append(response.status_code)
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if keyed:
        assert len(set(ids)) == 1 and sorted(codes) == [200] * 7 + [202]
        assert _count(module_pg_url, tenant) == 1
    else:
        assert len(set(ids)) == 8 and codes == [202] * 8
        assert _count(module_pg_url, tenant) == 8
    assert client.app.state.admission.group_commit.batches  # the submissions went through the batcher


def test_a_broker_found_down_before_the_commit_writes_no_row(module_pg_url) -> None:
    from contextlib import contextmanager

    tenant = f"g{uuid.uuid4().hex[:8]}"

    @contextmanager
    def down():
        raise ConnectionError("broker down")
        yield  # pragma: no cover

    batcher = GroupCommit(get_sessionmaker(module_pg_url), lambda ids: None, publisher=down)
    results = asyncio.run(_submit_all(batcher, [_new(tenant, "a"), _new(tenant, "b")]))
    assert all(isinstance(r, BrokerUnavailable) for r in results)
    assert _count(module_pg_url, tenant) == 0 and batcher.batches == []


def test_a_stale_queue_depth_is_recounted_once_for_concurrent_requests(make_client, monkeypatch) -> None:
    import time

    from gateway import admission

    client = make_client(queue_max_depth=1_000_000)
    calls: list[int] = []

    def slow_count(session) -> int:
        calls.append(1)
        time.sleep(0.05)
        return 7

    monkeypatch.setattr(admission.repo, "queue_depth", slow_count)
    state = client.app.state.admission
    state.queue.count, state.queue.read_at = 0, time.monotonic() - 10  # stale
    tenant = state._tenant_count("t-stale")
    tenant.count, tenant.read_at = 0, time.monotonic() + 60  # fresh: only the queue depth is read

    async def burst() -> None:
        await asyncio.gather(*(state.admit_jobs("t-stale", 1, client.app.state.metrics) for _ in range(10)))

    asyncio.run(burst())
    assert len(calls) == 1  # single flight: the others admitted on the previous count meanwhile
    # the recount, plus the request that made it (the others counted on the old one)
    assert state.queue.count == 7 + 1
