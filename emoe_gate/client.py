"""`Client` and `AsyncClient`: the emoe-gate HTTP API on httpx, sync and async.

Both retry only a 429 (queue full) or 503 (database or queue unavailable), after the server's `Retry-After`
plus a little jitter (or a short exponential backoff when it sent none), at most `max_retries` times; every
other error is raised at once as an `emoe_gate.errors.APIError` carrying the server's field and message.

Each request is described once, by a `_..._call` function below (what to send, and how to read the answer);
the two clients differ only in how they send it (`_send`, plain or awaited).
"""

from __future__ import annotations

import asyncio
import builtins
import email.utils
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from emoe_gate.errors import error_from_response
from emoe_gate.types import (
    BulkResult,
    Job,
    JobPage,
    Lease,
    ReviewQueue,
    ReviewResult,
    ScoreResponse,
    Status,
    Verdict,
)

RETRY_STATUSES = frozenset({429, 503})
DEFAULT_TIMEOUT_S = 30.0
MAX_RETRY_WAIT_S = 60.0
T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")
JobRef = str | uuid.UUID | Job


def retry_delay(response: httpx.Response, attempt: int, *, cap: float = MAX_RETRY_WAIT_S) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After (seconds or an HTTP date)
    and up to a quarter more (at most 1 s) of jitter; without one, 0.5 s doubling per attempt, times 0.5-1."""
    header = response.headers.get("Retry-After")
    after: float | None = None
    if header:
        try:
            after = float(header)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(header)
                after = (when - datetime.now(UTC)).total_seconds()
            except (TypeError, ValueError):
                after = None
    if after is not None:
        after = max(0.0, after)
        return min(cap, after + random.uniform(0, min(1.0, 0.25 * after) or 0.1))
    return min(cap, 0.5 * 2**attempt * random.uniform(0.5, 1.0))


def _job_id(job: JobRef) -> str:
    return str(job.id if isinstance(job, Job) else job)


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _when(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


# --- what each method sends, and how it reads the answer ----------------------------------------------------


@dataclass(frozen=True)
class _Call(Generic[R]):
    """One API request, and how its (successful) response becomes the method's return value."""

    method: str
    path: str
    parse: Callable[[httpx.Response], R]
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    wait: float | None = None  # how long the server may hold the request: added to the timeout


def _model(model: type[T]) -> Callable[[httpx.Response], T]:
    def parse(response: httpx.Response) -> T:
        return model.model_validate(response.json())

    return parse


def _content(response: httpx.Response) -> bytes:
    return response.content


def _nothing(response: httpx.Response) -> None:
    return None


def _lease_or_none(response: httpx.Response) -> Lease | None:
    return None if response.status_code == 204 else Lease.model_validate(response.json())


def _submit_call(
    prompt: str, fields: Mapping[str, Any], *, idempotency_key: str | None, wait: float | None
) -> _Call[Job]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body = {"prompt": prompt, **_drop_none(fields)}
    params = _drop_none({"wait": wait})
    return _Call("POST", "/v1/jobs", _model(Job), params=params, json=body, headers=headers, wait=wait)


def _get_call(job: JobRef, wait: float | None, expand: Sequence[str]) -> _Call[Job]:
    params = _drop_none({"wait": wait, "expand": list(expand) or None})
    return _Call("GET", f"/v1/jobs/{_job_id(job)}", _model(Job), params=params, wait=wait)


def _list_page_call(filters: Mapping[str, Any], *, limit: int | None, cursor: str | None) -> _Call[JobPage]:
    """`filters`: status, action, language, since, until (datetimes or ISO strings)."""
    params = {**filters, "since": _when(filters["since"]), "until": _when(filters["until"])}
    params.update(limit=limit, cursor=cursor)
    return _Call("GET", "/v1/jobs", _model(JobPage), params=_drop_none(params))


def _cancel_call(job: JobRef) -> _Call[Job]:
    return _Call("POST", f"/v1/jobs/{_job_id(job)}/cancel", _model(Job))


def _image_call(job: JobRef, index: int) -> _Call[bytes]:
    return _Call("GET", f"/v1/jobs/{_job_id(job)}/images/{index}", _content)


def _score_call(prompts: Sequence[str], labels: Mapping[str, str] | None) -> _Call[ScoreResponse]:
    body = _drop_none({"prompts": list(prompts), "labels": labels})
    return _Call("POST", "/v1/score", _model(ScoreResponse), json=body)


def _reviews_call(filters: Mapping[str, Any], *, state: str | None, limit: int | None) -> _Call[ReviewQueue]:
    """`filters` (here and below): language, min_score, max_score, label, min_age_s, max_age_s."""
    params = _drop_none({"state": state, **filters, "limit": limit})
    return _Call("GET", "/v1/reviews", _model(ReviewQueue), params=params)


def _review_call(job: JobRef, verdict: Verdict, note: str | None, override: bool) -> _Call[ReviewResult]:
    body = _drop_none({"verdict": verdict, "note": note, "override": override or None})
    return _Call("POST", f"/v1/jobs/{_job_id(job)}/review", _model(ReviewResult), json=body)


def _next_review_call(filters: Mapping[str, Any]) -> _Call[Lease | None]:
    return _Call("POST", "/v1/reviews/next", _lease_or_none, params=_drop_none(filters))


def _lease_call(job: JobRef) -> _Call[Lease]:
    return _Call("POST", f"/v1/reviews/{_job_id(job)}/lease", _model(Lease))


def _release_lease_call(job: JobRef) -> _Call[None]:
    return _Call("DELETE", f"/v1/reviews/{_job_id(job)}/lease", _nothing)


def _bulk_review_call(
    verdict: Verdict, filters: Mapping[str, Any], *, confirm: int, note: str | None
) -> _Call[BulkResult]:
    body = _drop_none({"verdict": verdict, "confirm": confirm, "note": note, **filters})
    return _Call("POST", "/v1/reviews/bulk", _model(BulkResult), json=body)


# --- the clients --------------------------------------------------------------------------------------------


class _Base:
    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self._headers = {"Authorization": f"Bearer {api_key}", **(headers or {})}

    def _timeout(self, wait: float | None) -> float:
        return self.timeout + (wait or 0)

    def _build_request(self, call: _Call[Any]) -> httpx.Request:
        return self._http.build_request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            headers=call.headers,
            timeout=self._timeout(call.wait),
        )

    def _should_retry(self, response: httpx.Response, attempt: int) -> bool:
        return response.status_code in RETRY_STATUSES and attempt < self.max_retries

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise error_from_response(response)
        return response


class Client(_Base):
    """The emoe-gate API, synchronous. Use as a context manager, or call `close()`.

    `Client("http://127.0.0.1:8000", api_key=KEY)`; `transport` is handed to httpx (tests, proxies)."""

    _http: httpx.Client

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, headers=headers)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, transport=transport)
        self._sleep = time.sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[R]) -> R:
        attempt = 0
        while True:
            response = self._http.send(self._build_request(call))
            if not self._should_retry(response, attempt):
                return call.parse(self._check(response))
            self._sleep(retry_delay(response, attempt))
            attempt += 1

    # --- jobs ---------------------------------------------------------------------------------------------

    def submit(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        height: int | None = None,
        width: int | None = None,
        mode: str | None = None,
        callback_url: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Job:
        """Submit a prompt; with `wait`, return once it is finished or `wait` seconds have passed. A retry
        with the same `idempotency_key` returns the first job."""
        fields: dict[str, Any] = dict(
            negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance
        )
        fields.update(height=height, width=width, mode=mode, callback_url=callback_url, labels=labels)
        return self._send(_submit_call(prompt, fields, idempotency_key=idempotency_key, wait=wait))

    def get(self, job: JobRef, *, wait: float | None = None, expand: Sequence[str] = ()) -> Job:
        """A job; with `wait`, once it is finished or `wait` seconds have passed (`expand=["scoring"]`: the
        whole scoring configuration, not its summary)."""
        return self._send(_get_call(job, wait, expand))

    def list_page(
        self,
        *,
        status: Status | None = None,
        action: str | None = None,
        language: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of this tenant's jobs, newest first; pass its `next_cursor` as `cursor` for the next."""
        filters = dict(status=status, action=action, language=language, since=since, until=until)
        return self._send(_list_page_call(filters, limit=limit, cursor=cursor))

    def list(
        self,
        *,
        status: Status | None = None,
        action: str | None = None,
        language: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, fetching page after page as the iteration goes."""
        filters = dict(status=status, action=action, language=language, since=since, until=until)
        cursor: str | None = None
        while True:
            page = self._send(_list_page_call(filters, limit=page_size, cursor=cursor))
            yield from page.jobs
            cursor = page.next_cursor
            if cursor is None:
                return

    def cancel(self, job: JobRef) -> Job:
        """Cancel a job that has not finished (`ConflictError` with `.job` if it had)."""
        return self._send(_cancel_call(job))

    def image(self, job: JobRef, index: int = 0) -> bytes:
        """The PNG bytes of image `index` of a job."""
        return self._send(_image_call(job, index))

    def images(self, job: Job) -> builtins.list[bytes]:  # `list` here is the method below
        """The PNG bytes of every image of a job, in order."""
        return [self.image(job, a.index) for a in job.artifacts]

    # --- scoring and review --------------------------------------------------------------------------------

    def score(self, prompts: Sequence[str], *, labels: Mapping[str, str] | None = None) -> ScoreResponse:
        """Scores and decisions for prompts; nothing is rendered."""
        return self._send(_score_call(prompts, labels))

    def reviews(
        self,
        *,
        state: str | None = None,
        language: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        label: str | None = None,
        min_age_s: float | None = None,
        max_age_s: float | None = None,
        limit: int | None = None,
    ) -> ReviewQueue:
        """The human-review queue (a review key): pending before escalated, oldest first."""
        filters = dict(language=language, min_score=min_score, max_score=max_score, label=label)
        filters.update(min_age_s=min_age_s, max_age_s=max_age_s)
        return self._send(_reviews_call(filters, state=state, limit=limit))

    def review(
        self, job: JobRef, verdict: Verdict, *, note: str | None = None, override: bool = False
    ) -> ReviewResult:
        """Record a verdict (approve, reject, escalate) on a job in review (a review key)."""
        return self._send(_review_call(job, verdict, note, override))

    def next_review(
        self,
        *,
        language: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        label: str | None = None,
        min_age_s: float | None = None,
        max_age_s: float | None = None,
    ) -> Lease | None:
        """Lease the next job of the review queue no other reviewer holds; None when none waits."""
        filters = dict(language=language, min_score=min_score, max_score=max_score, label=label)
        filters.update(min_age_s=min_age_s, max_age_s=max_age_s)
        return self._send(_next_review_call(filters))

    def lease(self, job: JobRef) -> Lease:
        """Open a job for review: lease it to this reviewer (renews this reviewer's own lease)."""
        return self._send(_lease_call(job))

    def release_lease(self, job: JobRef) -> None:
        """Give a job's lease back before it ends."""
        self._send(_release_lease_call(job))

    def bulk_review(
        self,
        verdict: Verdict,
        *,
        confirm: int,
        note: str | None = None,
        language: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        label: str | None = None,
        min_age_s: float | None = None,
        max_age_s: float | None = None,
    ) -> BulkResult:
        """Approve or reject every open job the filters select; `confirm` is how many the caller saw selected
        (`reviews(...).total`): the server refuses with 409 if that changed."""
        filters = dict(language=language, min_score=min_score, max_score=max_score, label=label)
        filters.update(min_age_s=min_age_s, max_age_s=max_age_s)
        return self._send(_bulk_review_call(verdict, filters, confirm=confirm, note=note))


class AsyncClient(_Base):
    """The emoe-gate API, asynchronous: the same methods as `Client`, awaited (`list` is an async iterator).

    `async with AsyncClient(url, api_key=KEY) as client: job = await client.submit(...)`."""

    _http: httpx.AsyncClient

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, headers=headers)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, transport=transport)
        self._sleep = asyncio.sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[R]) -> R:
        attempt = 0
        while True:
            response = await self._http.send(self._build_request(call))
            if not self._should_retry(response, attempt):
                return call.parse(self._check(response))
            await self._sleep(retry_delay(response, attempt))
            attempt += 1

    async def submit(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        height: int | None = None,
        width: int | None = None,
        mode: str | None = None,
        callback_url: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Job:
        """Submit a prompt (see `Client.submit`)."""
        fields: dict[str, Any] = dict(
            negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance
        )
        fields.update(height=height, width=width, mode=mode, callback_url=callback_url, labels=labels)
        return await self._send(_submit_call(prompt, fields, idempotency_key=idempotency_key, wait=wait))

    async def get(self, job: JobRef, *, wait: float | None = None, expand: Sequence[str] = ()) -> Job:
        """A job (see `Client.get`)."""
        return await self._send(_get_call(job, wait, expand))

    async def list_page(
        self,
        *,
        status: Status | None = None,
        action: str | None = None,
        language: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of this tenant's jobs, newest first."""
        filters = dict(status=status, action=action, language=language, since=since, until=until)
        return await self._send(_list_page_call(filters, limit=limit, cursor=cursor))

    async def list(
        self,
        *,
        status: Status | None = None,
        action: str | None = None,
        language: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        """Every job that matches, newest first, page after page (`async for job in client.list()`)."""
        filters = dict(status=status, action=action, language=language, since=since, until=until)
        cursor: str | None = None
        while True:
            page = await self._send(_list_page_call(filters, limit=page_size, cursor=cursor))
            for job in page.jobs:
                yield job
            cursor = page.next_cursor
            if cursor is None:
                return

    async def cancel(self, job: JobRef) -> Job:
        """Cancel a job that has not finished (`ConflictError` with `.job` if it had)."""
        return await self._send(_cancel_call(job))

    async def image(self, job: JobRef, index: int = 0) -> bytes:
        """The PNG bytes of image `index` of a job."""
        return await self._send(_image_call(job, index))

    async def images(self, job: Job) -> builtins.list[bytes]:  # `list` here is the method below
        """The PNG bytes of every image of a job, in order."""
        return [await self.image(job, a.index) for a in job.artifacts]

    async def score(
        self, prompts: Sequence[str], *, labels: Mapping[str, str] | None = None
    ) -> ScoreResponse:
        """Scores and decisions for prompts; nothing is rendered."""
        return await self._send(_score_call(prompts, labels))

    async def reviews(
        self,
        *,
        state: str | None = None,
        language: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        label: str | None = None,
        min_age_s: float | None = None,
        max_age_s: float | None = None,
        limit: int | None = None,
    ) -> ReviewQueue:
        """The human-review queue (a review key)."""
        filters = dict(language=language, min_score=min_score, max_score=max_score, label=label)
        filters.update(min_age_s=min_age_s, max_age_s=max_age_s)
        return await self._send(_reviews_call(filters, state=state, limit=limit))

    async def review(
        self, job: JobRef, verdict: Verdict, *, note: str | None = None, override: bool = False
    ) -> ReviewResult:
        """Record a verdict on a job in review (a review key)."""
        return await self._send(_review_call(job, verdict, note, override))

    async def next_review(
        self,
        *,
        language: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        label: str | None = None,
        min_age_s: float | None = None,
        max_age_s: float | None = None,
    ) -> Lease | None:
        """Lease the next job of the review queue (see `Client.next_review`)."""
        filters = dict(language=language, min_score=min_score, max_score=max_score, label=label)
        filters.update(min_age_s=min_age_s, max_age_s=max_age_s)
        return await self._send(_next_review_call(filters))

    async def lease(self, job: JobRef) -> Lease:
        """Open a job for review: lease it to this reviewer."""
        return await self._send(_lease_call(job))

    async def release_lease(self, job: JobRef) -> None:
        """Give a job's lease back before it ends."""
        await self._send(_release_lease_call(job))

    async def bulk_review(
        self,
        verdict: Verdict,
        *,
        confirm: int,
        note: str | None = None,
        language: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        label: str | None = None,
        min_age_s: float | None = None,
        max_age_s: float | None = None,
    ) -> BulkResult:
        """Approve or reject every open job the filters select (see `Client.bulk_review`)."""
        filters = dict(language=language, min_score=min_score, max_score=max_score, label=label)
        filters.update(min_age_s=min_age_s, max_age_s=max_age_s)
        return await self._send(_bulk_review_call(verdict, filters, confirm=confirm, note=note))
