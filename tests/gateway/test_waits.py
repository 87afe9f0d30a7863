"""One tenant cannot stall a real `emoe-gate serve` (real PostgreSQL and Redis, no worker: jobs stay
queued): a flood of waits holds no thread and no database connection, a key's waits have a ceiling, bodies
are capped before they are read and clients that trickle their headers are cut off."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.helpers import GatewayProcess, new_key
from tests.services import RedisServer

pytestmark = pytest.mark.postgres

FLOOD = 40
MAX_WAITS = 30  # more than the database pool (5 + 10) and most of the thread pool (40) could hold before


@pytest.fixture(scope="module")
def gateway(module_pg_url: str, tmp_path_factory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("gateway")
    redis = RedisServer(folder)
    redis.start()
    try:
        with GatewayProcess(
            folder, module_pg_url, redis.url, max_waits_per_key=str(MAX_WAITS), header_timeout_s="1"
        ) as process:
            yield process
    finally:
        redis.kill()


def test_a_flood_of_waits_leaves_the_service_and_other_tenants_served(gateway, module_pg_url) -> None:
    tenant_a, a_submit = new_key(module_pg_url)
    _, a_read = new_key(module_pg_url, tenant=tenant_a, role="read")
    _, b = new_key(module_pg_url)
    job_a = httpx.post(f"{gateway.url}/v1/jobs", json={"prompt": "a red circle"}, headers=a_submit).json()
    job_b = httpx.post(f"{gateway.url}/v1/jobs", json={"prompt": "a blue square"}, headers=b).json()

    async def scenario() -> tuple[list[httpx.Response], dict[str, httpx.Response], int]:
        limits = httpx.Limits(max_connections=FLOOD + 10)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client:
            flood = [
                asyncio.create_task(client.get(f"/v1/jobs/{job_a['id']}?wait=8", headers=a_read))
                for _ in range(FLOOD)
            ]
            await asyncio.sleep(1.5)  # the waits are in flight (the job stays queued: no worker runs)
            in_flight = sum(not t.done() for t in flood)
            # a generous bound: each of these answers in milliseconds; before, they hung until the pools freed
            others = {}
            async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as other:
                others["healthz"] = await other.get("/healthz")
                others["b_get"] = await other.get(f"/v1/jobs/{job_b['id']}", headers=b)
                others["b_list"] = await other.get("/v1/jobs", headers=b)
                others["b_submit"] = await other.post("/v1/jobs", json={"prompt": "a green star"}, headers=b)
                others["a_submit"] = await other.post("/v1/jobs", json={"prompt": "a star"}, headers=a_submit)
            return await asyncio.gather(*flood), others, in_flight

    flood, others, in_flight = asyncio.run(scenario())
    assert others["healthz"].json() == {"status": "ok"}
    assert others["b_get"].status_code == 200 and others["b_get"].json()["id"] == job_b["id"]
    assert others["b_list"].status_code == 200
    assert others["b_submit"].status_code == 202
    assert others["a_submit"].status_code == 202  # only waits are capped, not the tenant's other requests
    assert in_flight == MAX_WAITS  # the others were refused at once
    codes = sorted(r.status_code for r in flood)
    assert codes == [200] * MAX_WAITS + [429] * (FLOOD - MAX_WAITS)
    refused = next(r for r in flood if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1 and "max_waits_per_key" in refused.json()["detail"]
    assert all(r.json()["status"] == "queued" for r in flood if r.status_code == 200)


def test_a_wait_ends_when_the_job_finishes(gateway, module_pg_url) -> None:
    import uuid

    from audit.db import session_scope
    from audit.models import Job

    _, auth = new_key(module_pg_url)
    job = httpx.post(f"{gateway.url}/v1/jobs", json={"prompt": "a red circle"}, headers=auth).json()

    async def wait_and_cancel() -> httpx.Response:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            waiting = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}?wait=30", headers=auth))
            await asyncio.sleep(0.5)
            with session_scope(module_pg_url) as session:  # as a worker would: the job ends
                session.get(Job, uuid.UUID(job["id"])).status = "halted"
            started = time.monotonic()
            response = await waiting
            assert time.monotonic() - started < 10  # woken by the watcher, not by the 30 s deadline
            return response

    response = asyncio.run(wait_and_cancel())
    assert response.status_code == 200 and response.json()["status"] == "halted"


def _post_unread(url: str, path: str, headers: bytes, chunks: int, chunk: bytes) -> tuple[bytes, int]:
    """Send a chunked POST until the server answers (or closes); returns (its answer, bytes of body sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n".encode() + headers)
        sock.sendall(b"\r\n")
        try:
            for _ in range(chunks):
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk_in := sock.recv(65536):
                answer += chunk_in
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, sent


def test_bodies_over_the_cap_get_413_before_they_are_read(gateway, module_pg_url) -> None:
    _, auth = new_key(module_pg_url)
    big = b"x" * (2 * 1024 * 1024)
    # announced by Content-Length: refused unread, on the unauthenticated sign-in form as on the API
    login = httpx.post(
        f"{gateway.url}/dashboard/login",
        content=big,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert login.status_code == 413 and "1048576 bytes" in login.json()["detail"]
    json_type = {**auth, "Content-Type": "application/json"}
    api = httpx.post(f"{gateway.url}/v1/jobs", content=big, headers=json_type)
    assert api.status_code == 413
    # chunked, with no length: cut off once the bytes pass the cap, not read to the end (100 MB offered)
    form = b"Content-Type: application/x-www-form-urlencoded\r\n"
    answer, sent = _post_unread(gateway.url, "/dashboard/login", form, 1600, b"a" * 65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 20 * 1024 * 1024
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def test_clients_that_trickle_their_headers_are_cut_off(gateway) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    slow = [socket.create_connection((host, int(port)), timeout=10) for _ in range(50)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        closed: set[int] = set()
        deadline = time.monotonic() + 8  # EMOE_HEADER_TIMEOUT_S is 1 here
        while len(closed) < len(slow) and time.monotonic() < deadline:
            for i, sock in enumerate(slow):
                if i in closed:
                    continue
                try:
                    sock.sendall(b"a")  # a byte at a time, never the end of the headers
                    if select.select([sock], [], [], 0)[0]:
                        answer = sock.recv(4096)
                        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
                        closed.add(i)
                except (BrokenPipeError, ConnectionResetError):
                    closed.add(i)
            time.sleep(0.2)
        assert len(closed) == len(slow)
        assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
    finally:
        for sock in slow:
            sock.close()
