"""`emoe_gate.Client` and `AsyncClient` against a real `emoe-gate serve` (embedded, reference ensemble)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from emoe_gate import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from tests.client.conftest import ACCEPTED, FLAGGED, HALTED, Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def client(server: Server):
    with Client(server.url, api_key=server.key) as c:
        yield c


def test_submit_wait_get_and_images(client: Client) -> None:
    job = client.submit(ACCEPTED, wait=60, labels={"region": "eu"})
    assert job.status == "completed" and job.terminal
    assert job.decision is not None and job.decision.action == "continue"
    assert job.score is not None and job.score.num_experts == 4
    assert job.labels == {"region": "eu"}
    again = client.get(job.id)
    assert again.id == job.id and again.status == "completed"
    assert isinstance(client.get(job.id, expand=["scoring"]).score.scoring["split"], list)
    images = client.images(again)
    assert len(images) == len(again.artifacts) == 1
    assert images[0].startswith(PNG_MAGIC) and images[0] == client.image(job, 0)


def test_idempotency_key_returns_the_first_job(client: Client) -> None:
    key = f"order-{uuid.uuid4()}"
    first = client.submit(ACCEPTED, idempotency_key=key, mode="score_only")
    second = client.submit(ACCEPTED, idempotency_key=key, mode="score_only")
    assert second.id == first.id
    with pytest.raises(ConflictError) as caught:
        client.submit("a big blue square in the middle", idempotency_key=key, mode="score_only")
    assert caught.value.status_code == 409 and "Idempotency-Key" in caught.value.message


def test_errors_carry_the_field_and_message_the_server_sent(client: Client, server: Server) -> None:
    with pytest.raises(ValidationError) as caught:
        client.submit(ACCEPTED, steps=0)
    assert caught.value.field == "steps" and caught.value.status_code == 422
    assert caught.value.message == caught.value.errors[0]["msg"] and "1" in caught.value.message
    with pytest.raises(ValidationError) as caught:
        client.submit(ACCEPTED, labels={"bad key!": "x"})
    assert caught.value.field is not None and caught.value.field.startswith("labels")
    with pytest.raises(NotFoundError) as missing:
        client.get(uuid.uuid4())
    assert "no job" in missing.value.message
    with Client(server.url, api_key="not-a-key") as stranger, pytest.raises(AuthenticationError):
        stranger.get(uuid.uuid4())


def test_halted_job_has_no_image(client: Client) -> None:
    job = client.submit(HALTED, wait=60)
    assert job.status == "halted" and job.decision is not None and job.decision.action == "halt"
    assert job.artifacts == []
    with pytest.raises(NotFoundError):
        client.image(job, 0)


def test_list_iterates_every_page(client: Client) -> None:
    for _ in range(3):
        client.submit(ACCEPTED, mode="score_only")
    everything = client.list_page(limit=500)
    assert everything.next_cursor is None and len(everything.jobs) >= 3
    paged = list(client.list(page_size=1))
    assert [j.id for j in paged] == [j.id for j in everything.jobs]


def test_cancel(client: Client) -> None:
    done = client.submit(ACCEPTED, wait=60, mode="score_only")
    with pytest.raises(ConflictError) as caught:
        client.cancel(done)
    assert caught.value.job is not None and caught.value.job.status == done.status
    # the embedded worker takes jobs in order: the last of a burst has not finished when it is cancelled
    burst = [client.submit(ACCEPTED, seed=i) for i in range(4)]
    cancelled = client.cancel(burst[-1])
    assert cancelled.status == "cancelled"
    assert client.get(burst[-1]).status == "cancelled"


def test_score(client: Client) -> None:
    reply = client.score([ACCEPTED, HALTED])
    assert reply.complete
    assert [r.decision.action for r in reply.results if r.decision] == ["continue", "halt"]


def test_review_a_held_job(client: Client, server: Server) -> None:
    job = client.submit(FLAGGED, wait=60)
    assert job.status == "held" and job.flagged and job.review == "pending"
    with pytest.raises(PermissionDeniedError) as caught:
        client.image(job, 0)
    assert "review" in caught.value.message
    with Client(server.url, api_key=server.review_key) as reviewer:
        queue = reviewer.reviews()
        assert job.id in [item.job.id for item in queue.items]
        result = reviewer.review(job, "approve", note="fine")
        assert result.verdict.outcome == "approved" and result.job.status == "completed"
    assert client.image(job, 0).startswith(PNG_MAGIC)


def test_async_client(server: Server) -> None:
    async def run() -> None:
        async with AsyncClient(server.url, api_key=server.key) as client:
            job = await client.submit(ACCEPTED, wait=60)
            assert job.status == "completed"
            assert (await client.get(job.id)).id == job.id
            assert (await client.image(job, 0)).startswith(PNG_MAGIC)
            ids = [j.id async for j in client.list(page_size=2)]
            assert job.id in ids and len(ids) == len(set(ids))
            scored = await client.score([HALTED])
            assert scored.results[0].decision is not None
            assert scored.results[0].decision.action == "halt"
            with pytest.raises(ValidationError) as caught:
                await client.submit("")
            assert caught.value.field == "prompt"

    asyncio.run(run())


def test_review_leases_and_bulk_verdicts(client: Client, server: Server) -> None:
    batch = f"batch:{uuid.uuid4().hex[:8]}"
    held = [client.submit(FLAGGED, wait=60, seed=i, labels={"batch": batch[6:]}) for i in range(2)]
    assert [j.status for j in held] == ["held", "held"]
    with Client(server.url, api_key=server.review_key) as reviewer:
        lease = reviewer.next_review(label=batch)
        assert lease is not None and lease.item is not None and lease.job_id in {j.id for j in held}
        assert lease.seconds > 0
        reviewer.release_lease(lease.job_id)
        assert reviewer.lease(lease.job_id).job_id == lease.job_id
        reviewer.release_lease(lease.job_id)
        with pytest.raises(ConflictError):  # the selection holds 2 jobs, not 3
            reviewer.bulk_review("reject", confirm=3, label=batch)
        queue = reviewer.reviews(label=batch)
        result = reviewer.bulk_review("reject", confirm=queue.total, note="not for us", label=batch)
        assert result.count == 2 and {i.job_id for i in result.items} == {j.id for j in held}
        assert reviewer.next_review(label=batch) is None
    assert {client.get(j).status for j in held} == {"rejected"}


# every public method with arguments that reach its request: the sync and async clients must send the same
SAME_CALLS = [
    ("submit", (ACCEPTED,), dict(idempotency_key="k", wait=5, seed=3, mode="fast", labels={"a": "b"})),
    ("get", (uuid.UUID(int=1),), dict(wait=2.5, expand=["scoring"])),
    ("list_page", (), dict(status="held", since=datetime(2026, 1, 1, tzinfo=UTC), until="2026-02", limit=3)),
    ("list", (), dict(action="flag", language="fi", page_size=7)),
    ("cancel", (str(uuid.UUID(int=2)),), {}),
    ("image", (uuid.UUID(int=3), 1), {}),
    ("score", ([ACCEPTED, HALTED],), dict(labels={"a": "b"})),
    ("reviews", (), dict(state="pending", min_score=0.1, label="x", max_age_s=30, limit=5)),
    ("review", (uuid.UUID(int=4), "approve"), dict(note="fine", override=True)),
    ("next_review", (), dict(language="fi", max_score=0.9, min_age_s=1)),
    ("lease", (uuid.UUID(int=5),), {}),
    ("release_lease", (uuid.UUID(int=6),), {}),
    ("bulk_review", ("reject",), dict(confirm=2, note="no", label="x", min_score=0.5, max_age_s=9)),
]


def test_async_client_sends_the_requests_the_sync_client_sends() -> None:
    def recorder(seen: list[tuple]) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            headers = request.headers.multi_items()
            seen.append(
                (request.method, request.url, headers, request.content, request.extensions["timeout"])
            )
            return httpx.Response(404, json={"detail": "no such thing"})

        return httpx.MockTransport(handle)

    sync_seen: list[tuple] = []
    with Client("http://gate.test", api_key="k", timeout=7, transport=recorder(sync_seen)) as client:
        for name, args, kwargs in SAME_CALLS:
            with pytest.raises(NotFoundError):
                result = getattr(client, name)(*args, **kwargs)
                if name == "list":  # a generator: its first page is asked for on the first next()
                    next(result)

    async def run() -> list[tuple]:
        seen: list[tuple] = []
        client = AsyncClient("http://gate.test", api_key="k", timeout=7, transport=recorder(seen))
        async with client:
            for name, args, kwargs in SAME_CALLS:
                with pytest.raises(NotFoundError):
                    if name == "list":
                        await anext(client.list(**kwargs))
                    else:
                        await getattr(client, name)(*args, **kwargs)
        return seen

    assert len(sync_seen) == len(SAME_CALLS)
    assert asyncio.run(run()) == sync_seen
