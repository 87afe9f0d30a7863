"""Rate limits shared by every gateway process through Redis (real mode): one budget per API key whatever
process answers, refilled over Redis's clock, and a Redis that is down lets submissions through."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.rate_limit import RateLimiter, SharedRateLimiter, make_rate_limiter
from tests.gateway.helpers import GatewayProcess, free_port, make_settings, new_key
from tests.services import RedisServer

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own in the shared Redis; its keys are deleted after the test."""
    prefix = f"emoe:test:rate:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


def test_two_limiters_like_two_processes_share_one_budget(prefix: str) -> None:
    async def scenario() -> list[tuple[bool, float]]:
        one = SharedRateLimiter(rate=0.001, burst=3, url=REDIS_URL, prefix=prefix)
        two = SharedRateLimiter(rate=0.001, burst=3, url=REDIS_URL, prefix=prefix)
        takes = [await limiter.take_one("key-a") for limiter in (one, two, one, two, one)]
        takes.append(await two.take_one("key-b"))  # another key has its own bucket
        await one.close()
        await two.close()
        return [(allowed, round(left, 3)) for allowed, left, _ in takes]

    shared, other_key = [(True, 2.0), (True, 1.0), (True, 0.0), (False, 0.0), (False, 0.0)], [(True, 2.0)]
    assert asyncio.run(scenario()) == shared + other_key
    client = redis.Redis.from_url(REDIS_URL)
    keys = [k.decode() for k in client.scan_iter(match=prefix + "*")]
    assert len(keys) == 2 and not any("key-" in k for k in keys)  # hashed, not the key's name
    assert all(0 < client.pttl(k) <= 3 / 0.001 * 1000 + 1000 for k in keys)  # gone once it would be full
    client.close()


def test_a_shared_bucket_refills_at_its_rate(prefix: str) -> None:
    async def scenario() -> None:
        limiter = SharedRateLimiter(rate=10.0, burst=2, url=REDIS_URL, prefix=prefix)
        assert [(await limiter.take_one("k"))[0] for _ in range(3)] == [True, True, False]
        allowed, left, next_in = await limiter.take_one("k")
        assert not allowed and left < 1 and 0 < next_in <= 0.1
        await asyncio.sleep(0.15)  # one token every 0.1 s
        assert (await limiter.take_one("k"))[0] is True
        assert (await limiter.take_one("k"))[0] is False
        await asyncio.sleep(0.5)  # never more than the burst
        assert [(await limiter.take_one("k"))[0] for _ in range(3)] == [True, True, False]
        assert limiter.headers(0.0) == {
            "RateLimit-Policy": '"submit";q=2;w=1',
            "RateLimit": '"submit";r=0;t=1',
        }
        await limiter.close()

    asyncio.run(scenario())


def test_a_redis_that_is_down_lets_submissions_through_with_one_warning(caplog) -> None:
    async def scenario() -> list[bool]:
        limiter = SharedRateLimiter(rate=0.001, burst=2, url=f"redis://127.0.0.1:{free_port()}/0")
        allowed = [(await limiter.take_one("k"))[0]]
        limiter._skip_until = 0.0  # ask Redis again at once, not a second later
        allowed.append((await limiter.take_one("k"))[0])
        allowed.append((await limiter.take_one("k"))[0])  # this process's own bucket still counts
        await limiter.close()
        return allowed

    with caplog.at_level(logging.WARNING, logger="gateway.rate_limit"):
        assert asyncio.run(scenario()) == [True, True, False]
    warnings = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
    assert len(warnings) == 1  # at most once a minute


def test_embedded_mode_counts_in_process_and_real_mode_in_redis(tmp_path: Path) -> None:
    embedded = make_rate_limiter(make_settings("sqlite://", tmp_path))
    real = make_rate_limiter(make_settings("sqlite://", tmp_path, broker_url=REDIS_URL))
    assert type(embedded) is RateLimiter and isinstance(real, SharedRateLimiter)


@pytest.mark.postgres
def test_serve_with_two_processes_gives_a_key_one_budget(module_pg_url: str, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    gateway = GatewayProcess(
        tmp_path, module_pg_url, redis_server.url, submit_rate_per_s="0.01", submit_burst="3"
    )
    binary = Path(sys.executable).parent / "emoe-gate"
    with open(tmp_path / "gateway.log", "a") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--port", str(gateway.port), "--workers", "2"],
            env=gateway.env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _await_healthy(proc, gateway)
        _, auth = new_key(module_pg_url)
        # a connection of its own each (httpx.post), so both processes take some of them
        answers = [
            httpx.post(f"{gateway.url}/v1/jobs", json={"prompt": "a red circle"}, headers=auth, timeout=30)
            for _ in range(12)
        ]
        assert [r.status_code for r in answers].count(202) == 3, [r.status_code for r in answers]
        accepted = [r.headers["RateLimit"].split(";")[1] for r in answers if r.status_code == 202]
        assert accepted == ["r=2", "r=1", "r=0"]
        assert all(r.status_code == 429 and "Retry-After" in r.headers for r in answers[3:])
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        redis_server.kill()


def _await_healthy(proc: subprocess.Popen, gateway: GatewayProcess) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, gateway.log_tail()
        try:
            if httpx.get(gateway.url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, gateway.log_tail()
        time.sleep(0.2)
