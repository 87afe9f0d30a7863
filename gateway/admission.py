"""Admission: what a request must pass before the gateway takes work, and how it waits for that work.

One implementation, all on the event loop (no thread is held while a request waits, no session is held
across a wait):

- request limits that need the server's settings (prompt length, image side, the model's sizes) and the
  cost ceiling `max_request_cost` (height x width x steps x images; full mode counts one image per expert);
- submissions per second per API key (`submit_rate_per_s`, burst `submit_burst`: a token bucket,
  `gateway.rate_limit`: in Redis, shared by every gateway process, in real mode; in this process embedded),
  answered 429 with `Retry-After` and the `RateLimit`/`RateLimit-Policy` fields of
  draft-ietf-httpapi-ratelimit-headers-09;
- unfinished jobs per tenant (`tenant_max_queued`) and the global queue (`queue_max_depth`), both counted from
  the database at most every QUEUE_DEPTH_CACHE_S (single flight) and advanced by what this process admits;
- concurrent waits per API key (`max_waits_per_key`; beyond it 429 with Retry-After, before any job is made);
- waiting (`?wait=`, `/v1/score`): one watcher per process polls the status of every waited-for job in one
  short query per tick and wakes the requests whose jobs have finished;
- group commit (`gateway.group_commit`): concurrent submissions share one INSERT, COMMIT and publish.

The routes use the dependencies at the bottom (`JobAdmission`, `ScoreAdmission`, `WaitSlot`, `rate_limit`).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
from fastapi import Depends, HTTPException, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit import jobs as repo
from audit.db import transaction
from audit.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Job
from gateway.auth import SubmitTenant
from gateway.errors import field_error
from gateway.group_commit import GroupCommit
from gateway.rate_limit import make_rate_limiter
from gateway.schemas import JobRequest, ScoreRequest
from settings import Settings
from workers import url_guard

if TYPE_CHECKING:
    from gateway.deps import GatewayState

QUEUE_DEPTH_CACHE_S = 0.25
UNFINISHED = ACTIVE_STATUSES  # what counts against a tenant's `tenant_max_queued`


# --- the wait parameter -------------------------------------------------------------------------------------

Wait = Annotated[
    float,
    Query(
        ge=0,
        le=600,
        allow_inf_nan=False,
        description="Seconds to wait for the job to finish (0: return now; at most `max_wait_s`).",
    ),
]


def wait_seconds(request: Request, wait: float) -> float:
    """How long a request asked to wait for may actually wait: the one place a wait is parsed and capped.
    Without `?wait=`, `Prefer: wait=N` (RFC 7240) asks the same."""
    if not wait:
        from gateway.prefer import prefer_wait

        wait = prefer_wait(request.headers.get("prefer")) or 0
    return max(0.0, min(float(wait), _state(request).settings.max_wait_s))


# --- counts cached briefly ----------------------------------------------------------------------------------


class CachedCount:
    """A count read from the database at most every `ttl_s` (one reader at a time; requests arriving meanwhile
    use the previous count); what this process admits is added to it until the next read."""

    def __init__(self, read: Callable[[], int], ttl_s: float = QUEUE_DEPTH_CACHE_S) -> None:
        self.read = read
        self.ttl_s = ttl_s
        self.count: int | None = None
        self.read_at = -math.inf
        self.refreshing = False

    async def value(self) -> int:
        stale = time.monotonic() - self.read_at > self.ttl_s
        if stale and (self.count is None or not self.refreshing):
            self.refreshing = True
            try:
                count = await anyio.to_thread.run_sync(self.read)
            finally:
                self.refreshing = False
            self.count, self.read_at = count, time.monotonic()
        assert self.count is not None
        return self.count

    def add(self, n: int) -> None:
        self.count = (self.count or 0) + n


# --- waits --------------------------------------------------------------------------------------------------


class WaitSlots:
    """At most `limit` concurrent waits per API key."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}

    def acquire(self, key: str) -> None:
        """Take a slot, or 429 when the key already waits `limit` times."""
        if self.held.get(key, 0) >= self.limit:
            raise HTTPException(
                status_code=429,
                detail=f"this API key already waits on {self.limit} requests (max_waits_per_key); "
                "retry later or poll without wait",
                headers={"Retry-After": "1"},
            )
        self.held[key] = self.held.get(key, 0) + 1

    def release(self, key: str) -> None:
        left = self.held.get(key, 0) - 1
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)


@dataclass(eq=False)  # each waiter is its own (hashed by identity)
class _Waiter:
    ids: frozenset[uuid.UUID]
    done: asyncio.Future
    delay: float = 0.02
    next_at: float = field(default_factory=time.monotonic)


class JobWatcher:
    """Wakes waiting requests when their jobs finish: one task polls the statuses of all waited-for jobs in
    one short query per tick (each waiter's own interval grows from 20 ms to 250 ms), in a worker thread."""

    MAX_DELAY_S = 0.25

    def __init__(self, sessionmaker: Callable[[], Session]) -> None:
        self.sessionmaker = sessionmaker
        self._waiters: set[_Waiter] = set()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.polls = 0  # queries made (tests and benchmarks read it)

    async def wait(self, job_ids: Iterable[uuid.UUID], seconds: float) -> bool:
        """True once every job is finished (or gone), False after `seconds`."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(frozenset(job_ids), loop.create_future(), next_at=time.monotonic() + 0.02)
        if not waiter.ids or seconds <= 0:
            return False
        self._waiters.add(waiter)
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._task = loop, loop.create_task(self._run())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.done), timeout=seconds)
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)
            if not self._waiters and self._task is not None:
                # forget it at once: a waiter arriving before the cancellation lands starts a new one
                self._task.cancel()
                self._task = None

    async def _run(self) -> None:
        while self._waiters:
            due = min(w.next_at for w in self._waiters)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            waiters = list(self._waiters)
            if not waiters:
                return
            ids = frozenset().union(*(w.ids for w in waiters))
            try:
                unfinished = await anyio.to_thread.run_sync(self._unfinished, ids)
            except Exception as exc:  # the database is down: each waiting request answers its 503
                for w in waiters:
                    if not w.done.done():
                        w.done.set_exception(exc)
                continue
            now = time.monotonic()
            for w in waiters:
                if w.done.done():
                    continue
                if not (w.ids & unfinished):
                    w.done.set_result(True)
                elif w.next_at <= now:
                    w.delay = min(w.delay * 1.5, self.MAX_DELAY_S)
                    w.next_at = now + w.delay

    def _unfinished(self, ids: frozenset[uuid.UUID]) -> set[uuid.UUID]:
        self.polls += 1
        with transaction(self.sessionmaker) as session:
            rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(list(ids)))).all()
        return {job_id for job_id, status in rows if status not in TERMINAL_STATUSES}


# --- the process's admission state --------------------------------------------------------------------------


class Admission:
    """The counters, buckets, wait slots, watcher and batcher of one gateway process."""

    def __init__(self, settings: Settings, sessionmaker: Callable[[], Session], dispatcher: Any) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.dispatcher = dispatcher
        self.queue = CachedCount(self._read_queue_depth)
        self.tenants: dict[str, CachedCount] = {}
        self.rates = make_rate_limiter(settings)
        self.waits = WaitSlots(settings.max_waits_per_key)
        self.watcher = JobWatcher(sessionmaker)
        self.group_commit = GroupCommit(
            sessionmaker, dispatcher.gate, publisher=getattr(dispatcher, "gate_publisher", None)
        )

    def _read_queue_depth(self) -> int:
        with transaction(self.sessionmaker) as session:
            return repo.queue_depth(session)

    def _tenant_count(self, tenant: str) -> CachedCount:
        count = self.tenants.get(tenant)
        if count is None:
            if len(self.tenants) > 10_000:
                self.tenants.clear()

            def read() -> int:
                with transaction(self.sessionmaker) as session:
                    query = select(func.count()).select_from(Job)
                    return session.scalar(query.where(Job.tenant == tenant, Job.status.in_(UNFINISHED))) or 0

            count = self.tenants[tenant] = CachedCount(read)
        return count

    async def admit_jobs(self, tenant: str, n: int, metrics: Any) -> None:
        """429 + Retry-After if `n` more jobs would overfill the tenant's share or the queue; else count."""
        settings = self.settings
        mine = self._tenant_count(tenant)
        held = await mine.value()
        if held + n > settings.tenant_max_queued:
            metrics.rejected.labels("tenant_full").inc()
            raise HTTPException(
                status_code=429,
                detail=f"tenant {tenant} has {held} unfinished jobs (limit {settings.tenant_max_queued}, "
                "tenant_max_queued); retry later",
                headers={"Retry-After": "2"},
            )
        depth = await self.queue.value()
        if depth + n > settings.queue_max_depth:
            metrics.rejected.labels("queue_full").inc()
            raise HTTPException(
                status_code=429,
                detail=f"the queue holds {depth} jobs (limit {settings.queue_max_depth}); retry later",
                headers={"Retry-After": "2"},
            )
        mine.add(n)
        self.queue.add(n)

    def request_shape(self) -> tuple[int, int, int]:
        """(default height, default width, images of a full-mode job): from the model when this process holds
        it (embedded mode, once loaded), else from `cost_default_side` and `cost_full_images`."""
        runtime = getattr(self.dispatcher, "runtime", None)
        ensemble = getattr(runtime, "ensemble", None)
        if ensemble is not None:
            return ensemble.default_height, ensemble.default_width, ensemble.num_experts
        side = self.settings.cost_default_side
        return side, side, self.settings.cost_full_images


def _state(request: Request) -> GatewayState:
    return request.app.state


def _key(request: Request) -> str:
    """The API key's shown prefix (set by authentication): what rate limits and wait slots count by."""
    return getattr(request.state, "key_prefix", None) or "anonymous"


# --- checks -------------------------------------------------------------------------------------------------


def check_prompts(settings: Settings, prompts: list[tuple[list[str | int], str]]) -> None:
    for loc, prompt in prompts:
        if len(prompt) > settings.max_prompt_chars:
            raise field_error(
                loc,
                f"is {len(prompt)} characters; this server takes at most {settings.max_prompt_chars}",
                "string_too_long",
            )


def check_job_request(state: GatewayState, body: JobRequest) -> None:
    """422 naming the field for what the server's settings (or, embedded, the loaded model) refuse."""
    settings = state.settings
    check_prompts(
        settings, [(["body", "prompt"], body.prompt), (["body", "negative_prompt"], body.negative_prompt)]
    )
    for name, value in (("height", body.height), ("width", body.width)):
        if value is not None and value > settings.max_image_side:
            raise field_error(
                ["body", name],
                f"is {value}; this server makes at most {settings.max_image_side}",
                "less_than_equal",
            )
    size_problem = getattr(state.dispatcher, "size_problem", None)
    if size_problem is not None and (body.height is not None or body.width is not None):
        problem = size_problem(body.height, body.width)
        if problem:
            raise field_error(["body", "height" if body.height is not None else "width"], problem)
    check_cost(state, body)
    if body.callback_url is not None:
        # refused without DNS: a literal non-public address in any spelling, or localhost, unless allowed;
        # names are resolved and checked again at delivery (a lookup here would block the loop, prove nothing)
        allow = url_guard.parse_allow(settings.webhook_allow)
        problem = url_guard.submission_problem(body.callback_url, allow)
        if problem is not None:
            raise field_error(["body", "callback_url"], problem)


def request_cost(state: GatewayState, body: JobRequest) -> tuple[int, str]:
    """(cost, how it was counted): height x width x steps x images; score_only renders nothing (0)."""
    default_h, default_w, full_images = state.admission.request_shape()
    if body.mode == "score_only":
        return 0, "score_only renders nothing"
    height, width = body.height or default_h, body.width or default_w
    images = full_images if body.mode == "full" else 1
    return height * width * body.steps * images, f"{height}x{width} x {body.steps} steps x {images} images"


def check_cost(state: GatewayState, body: JobRequest) -> None:
    limit = state.settings.max_request_cost
    cost, how = request_cost(state, body)
    if cost > limit:
        raise field_error(
            ["body", "steps"],
            f"this request costs {how} = {cost} pixel-steps; this server takes at most {limit} per request "
            "(max_request_cost): ask for fewer steps, a smaller size or mode fast",
            "cost_too_high",
        )


async def rate_limit(request: Request, response: Response) -> None:
    """One submission for this API key: 429 with Retry-After when its bucket is empty; the RateLimit fields
    on every answer."""
    state = _state(request)
    allowed, remaining, next_in = await state.admission.rates.take_one(_key(request))
    headers = state.admission.rates.headers(remaining)
    if not allowed:
        state.metrics.rejected.labels("rate_limited").inc()
        raise HTTPException(
            status_code=429,
            detail=f"this API key may submit {state.settings.submit_rate_per_s:g} requests a second "
            f"(burst {state.settings.submit_burst}); retry after the Retry-After seconds",
            headers={**headers, "Retry-After": str(max(1, math.ceil(next_in)))},
        )
    response.headers.update(headers)


@asynccontextmanager
async def wait_slot(request: Request, seconds: float) -> AsyncIterator[None]:
    """Hold one of the key's wait slots for the block (nothing when there is nothing to wait for)."""
    if seconds <= 0:
        yield
        return
    slots = _state(request).admission.waits
    key = _key(request)
    slots.acquire(key)
    try:
        yield
    finally:
        slots.release(key)


async def wait_for(request: Request, job_ids: list[uuid.UUID], seconds: float) -> bool:
    """Wait (holding no thread and no session) until every job is finished or `seconds` pass."""
    return await _state(request).admission.watcher.wait(job_ids, seconds)


# --- dependencies -------------------------------------------------------------------------------------------


@dataclass
class Admitted:
    """What a submission route gets once admitted: the caller, the body and how long it may wait."""

    tenant: str
    wait_s: float
    body: Any


async def admit_job(
    body: JobRequest, request: Request, response: Response, tenant: SubmitTenant, wait: Wait = 0
) -> AsyncIterator[Admitted]:
    state = _state(request)
    check_job_request(state, body)
    await rate_limit(request, response)
    seconds = wait_seconds(request, wait)
    async with wait_slot(request, seconds):
        await state.admission.admit_jobs(tenant, 1, state.metrics)
        yield Admitted(tenant, seconds, body)


async def admit_score(
    body: ScoreRequest, request: Request, response: Response, tenant: SubmitTenant
) -> AsyncIterator[Admitted]:
    state = _state(request)
    settings = state.settings
    if len(body.prompts) > settings.score_max_prompts:
        raise field_error(
            ["body", "prompts"],
            f"has {len(body.prompts)} prompts; this server scores at most {settings.score_max_prompts}",
            "too_long",
        )
    check_prompts(settings, [(["body", "prompts", i], p) for i, p in enumerate(body.prompts)])
    await rate_limit(request, response)
    seconds = settings.max_wait_s
    async with wait_slot(request, seconds):
        await state.admission.admit_jobs(tenant, len(body.prompts), state.metrics)
        yield Admitted(tenant, seconds, body)


JobAdmission = Annotated[Admitted, Depends(admit_job)]
ScoreAdmission = Annotated[Admitted, Depends(admit_score)]
