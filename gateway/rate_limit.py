"""Submissions per second per API key: token buckets, in this process (`RateLimiter`, embedded mode) or in
Redis, shared by every gateway process (`SharedRateLimiter`, real mode: one atomic script per take).

A bucket holds at most `burst` tokens and gains `rate` a second; a submission takes one. The answers carry
the `RateLimit`/`RateLimit-Policy` fields of draft-ietf-httpapi-ratelimit-headers-09.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from settings import Settings

log = logging.getLogger(__name__)
RATE_POLICY = "submit"  # the quota policy's name in the RateLimit fields
KEY_PREFIX = "emoe:rate:submit:"
WARN_EVERY_S = 60.0
RETRY_REDIS_AFTER_S = 1.0  # after a failed take, the local bucket answers this long before Redis is asked

# KEYS[1]: the bucket; ARGV: rate, burst, TTL in ms. Redis's clock (TIME) is the one clock every gateway
# process and machine shares. Numbers go back as strings: Redis truncates a Lua number reply to an integer,
# and "%.17g" keeps a double exact where Lua's tostring keeps 14 digits.
TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1]) or burst
local at = tonumber(saved[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {allowed, string.format('%.17g', tokens)}
"""


@dataclass
class Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets per API key (in this process): `rate` tokens a second, at most `burst` stored."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, Bucket] = {}

    def take(self, key: str, now: float | None = None) -> tuple[bool, float, float]:
        """(allowed, tokens left, seconds until one more token) after trying to take one token for `key`."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        return allowed, bucket.tokens, self.next_in(bucket.tokens)

    async def take_one(self, key: str) -> tuple[bool, float, float]:
        """`take` for a request (the shared limiter's asks Redis)."""
        return self.take(key)

    async def close(self) -> None:
        """Nothing to release in process."""

    def next_in(self, tokens: float) -> float:
        """Seconds until a bucket holding `tokens` has one."""
        return max(0.0, 1.0 - tokens) / self.rate

    def headers(self, remaining: float) -> dict[str, str]:
        """The draft's fields (draft-ietf-httpapi-ratelimit-headers-09, sections 3 and 4): the policy as a
        quota of `burst` per window of burst/rate seconds; the tokens left and the seconds until the bucket is
        full again."""
        window = max(1, math.ceil(self.burst / self.rate))
        full_in = max(0, math.ceil((self.burst - remaining) / self.rate))
        return {
            "RateLimit-Policy": f'"{RATE_POLICY}";q={self.burst};w={window}',
            "RateLimit": f'"{RATE_POLICY}";r={int(remaining)};t={full_in}',
        }


class SharedRateLimiter(RateLimiter):
    """The same buckets in Redis, shared by every gateway process: one atomic script per take, each bucket
    under a sha256 of the key's name with a TTL of the time it takes to fill up (a bucket gone is a full one).

    If Redis cannot answer, the request is let through by this process's own bucket instead (`take`: the
    limit as one process counts it), with a warning at most once a minute; Redis is asked again a second
    later."""

    def __init__(
        self, rate: float, burst: int, url: str, prefix: str = KEY_PREFIX, timeout_s: float = 0.5
    ) -> None:
        super().__init__(rate, burst)
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.ttl_ms = math.ceil(burst / rate * 1000) + 1000
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._script: Any = None
        self._skip_until = -math.inf
        self._warned_at = -math.inf

    def redis_key(self, key: str) -> str:
        """The bucket's name in Redis: no part of the API key's name is stored as it is."""
        return self.prefix + hashlib.sha256(key.encode()).hexdigest()[:32]

    def _take_script(self) -> Any:
        # an asyncio client's connections belong to the loop that made them
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            import redis.asyncio

            timeout = self.timeout_s
            self._client = redis.asyncio.Redis.from_url(
                self.url, socket_connect_timeout=timeout, socket_timeout=timeout
            )
            self._loop, self._script = loop, self._client.register_script(TAKE_LUA)
        return self._script

    async def take_one(self, key: str) -> tuple[bool, float, float]:
        """(allowed, tokens left, seconds until one more token) from the bucket in Redis."""
        if time.monotonic() < self._skip_until:
            return self.take(key)
        import redis

        try:
            allowed, tokens = await self._take_script()(
                keys=[self.redis_key(key)], args=[repr(self.rate), self.burst, self.ttl_ms]
            )
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)
            return self.take(key)
        left = float(tokens)
        return bool(allowed), left, self.next_in(left)

    def _unreachable(self, exc: Exception) -> None:
        now = time.monotonic()
        self._skip_until = now + RETRY_REDIS_AFTER_S
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "rate limits: Redis is unreachable (%s); each gateway process counts submissions alone "
                "until it answers (this warning repeats at most once a minute)",
                exc,
            )

    async def close(self) -> None:
        """Close this loop's connections."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = self._script = self._loop = None


def make_rate_limiter(settings: Settings) -> RateLimiter:
    """Shared through the broker's Redis in real mode; in this process in embedded mode."""
    if settings.embedded:
        return RateLimiter(settings.submit_rate_per_s, settings.submit_burst)
    assert settings.broker_url is not None
    return SharedRateLimiter(settings.submit_rate_per_s, settings.submit_burst, settings.broker_url)
