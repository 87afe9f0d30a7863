"""The client's retry rules against httpx's mock transport, where the server's answers can be chosen: only
429 and 503 are retried, after Retry-After plus jitter."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from emoe_gate import APIError, AsyncClient, Client, RateLimitError, ServiceUnavailableError

# --- retries: only 429 and 503, after Retry-After ---------------------------------------------------------


def _scripted(answers: list[httpx.Response]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen) - 1, len(answers) - 1)]
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    return httpx.MockTransport(handle), seen


JOB = {
    "id": str(uuid.uuid4()),
    "status": "queued",
    "mode": "fast",
    "language": None,
    "labels": {},
    "params": {},
    "attempts": 0,
    "error": None,
    "created_at": "2026-12-01T00:00:00Z",
    "finished_at": None,
    "score": None,
    "decision": None,
    "flagged": False,
    "artifacts": [],
    "links": {},
}


def test_retries_429_and_503_after_retry_after_with_jitter() -> None:
    busy = httpx.Response(429, headers={"Retry-After": "2"}, json={"detail": "the queue is full"})
    down = httpx.Response(503, headers={"Retry-After": "5"}, json={"detail": "the database is unavailable"})
    transport, seen = _scripted([busy, down, httpx.Response(202, json=JOB)])
    slept: list[float] = []
    with Client("http://gate.test", api_key="k", transport=transport) as client:
        client._sleep = slept.append
        job = client.submit("a red circle", idempotency_key="order-1")
    assert str(job.id) == JOB["id"] and len(seen) == 3
    assert 2 <= slept[0] <= 2.5 and 5 <= slept[1] <= 6
    assert all(r.headers["Idempotency-Key"] == "order-1" for r in seen)


def test_gives_up_after_max_retries() -> None:
    transport, seen = _scripted([httpx.Response(503, json={"detail": "the job queue is unavailable; retry"})])
    with Client("http://gate.test", api_key="k", transport=transport, max_retries=2) as client:
        client._sleep = lambda s: None
        with pytest.raises(ServiceUnavailableError) as caught:
            client.get(uuid.uuid4())
    assert len(seen) == 3 and "job queue" in caught.value.message
    transport, seen = _scripted([httpx.Response(429, json={"detail": "full"})])
    client = Client("http://gate.test", api_key="k", transport=transport, max_retries=0)
    with client, pytest.raises(RateLimitError):
        client.get(uuid.uuid4())
    assert len(seen) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 500, 502, 504])
def test_no_retry_on_other_statuses(status: int) -> None:
    transport, seen = _scripted([httpx.Response(status, headers={"Retry-After": "1"}, json={"detail": "no"})])
    with Client("http://gate.test", api_key="k", transport=transport) as client:
        client._sleep = lambda s: pytest.fail("slept")
        with pytest.raises(APIError) as caught:
            client.get(uuid.uuid4())
    assert len(seen) == 1 and caught.value.status_code == status and caught.value.message == "no"


def test_no_retry_on_connection_errors() -> None:
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused")

    client = Client("http://gate.test", api_key="k", transport=httpx.MockTransport(refuse))
    with client, pytest.raises(httpx.ConnectError):
        client.get(uuid.uuid4())
    assert len(calls) == 1


def test_async_retries() -> None:
    busy = httpx.Response(429, headers={"Retry-After": "1"}, json={"detail": "full"})
    transport, seen = _scripted([busy, httpx.Response(200, json=JOB)])
    slept: list[float] = []

    async def run() -> None:
        async with AsyncClient("http://gate.test", api_key="k", transport=transport) as client:

            async def sleep(seconds: float) -> None:
                slept.append(seconds)

            client._sleep = sleep
            await client.get(JOB["id"])

    asyncio.run(run())
    assert len(seen) == 2 and 1 <= slept[0] <= 1.25
