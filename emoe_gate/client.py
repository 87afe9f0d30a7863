"""`Client` and `AsyncClient`: the emoe-gate HTTP API on httpx, sync and async.

Both retry only a 429 (queue full) or 503 (database or queue unavailable), after the server's `Retry-After`
plus a little jitter (or a short exponential backoff when it sent none), at most `max_retries` times; every
other error is raised at once as an `emoe_gate.errors.APIError` carrying the server's field and message.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

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


def _job_body(prompt: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, **_drop_none(fields)}


def _get_params(wait: float | None, expand: Sequence[str]) -> dict[str, Any]:
    return _drop_none({"wait": wait, "expand": list(expand) or None})


def _parse(model: type[T], response: httpx.Response) -> T:
    return model.model_validate(response.json())


class _Base:
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

    def _request(self, method: str, path: str, *, wait: float | None = None, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = self._http.request(method, path, timeout=self._timeout(wait), **kwargs)
            if not self._should_retry(response, attempt):
                return self._check(response)
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
        fields = dict(negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance)
        fields.update(height=height, width=width, mode=mode, callback_url=callback_url, labels=labels)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._request(
            "POST",
            "/v1/jobs",
            wait=wait,
            json=_job_body(prompt, fields),
            params=_drop_none({"wait": wait}),
            headers=headers,
        )
        return _parse(Job, response)

    def get(self, job: JobRef, *, wait: float | None = None, expand: Sequence[str] = ()) -> Job:
        """A job; with `wait`, once it is finished or `wait` seconds have passed (`expand=["scoring"]`: the
        whole scoring configuration, not its summary)."""
        path = f"/v1/jobs/{_job_id(job)}"
        return _parse(Job, self._request("GET", path, wait=wait, params=_get_params(wait, expand)))

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
        params = dict(status=status, action=action, language=language, since=_when(since), until=_when(until))
        params.update(limit=limit, cursor=cursor)
        return _parse(JobPage, self._request("GET", "/v1/jobs", params=_drop_none(params)))

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
        cursor = None
        while True:
            page = self.list_page(
                status=status,
                action=action,
                language=language,
                since=since,
                until=until,
                limit=page_size,
                cursor=cursor,
            )
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job: JobRef) -> Job:
        """Cancel a job that has not finished (`ConflictError` with `.job` if it had)."""
        return _parse(Job, self._request("POST", f"/v1/jobs/{_job_id(job)}/cancel"))

    def image(self, job: JobRef, index: int = 0) -> bytes:
        """The PNG bytes of image `index` of a job."""
        return self._request("GET", f"/v1/jobs/{_job_id(job)}/images/{index}").content

    def images(self, job: Job) -> list[bytes]:
        """The PNG bytes of every image of a job, in order."""
        return [self.image(job, a.index) for a in job.artifacts]

    # --- scoring and review --------------------------------------------------------------------------------

    def score(self, prompts: Sequence[str], *, labels: Mapping[str, str] | None = None) -> ScoreResponse:
        """Scores and decisions for prompts; nothing is rendered."""
        body = _drop_none({"prompts": list(prompts), "labels": labels})
        return _parse(ScoreResponse, self._request("POST", "/v1/score", json=body))

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
        params = dict(state=state, language=language, min_score=min_score, max_score=max_score)
        params.update(label=label, min_age_s=min_age_s, max_age_s=max_age_s, limit=limit)
        return _parse(ReviewQueue, self._request("GET", "/v1/reviews", params=_drop_none(params)))

    def review(
        self, job: JobRef, verdict: Verdict, *, note: str | None = None, override: bool = False
    ) -> ReviewResult:
        """Record a verdict (approve, reject, escalate) on a job in review (a review key)."""
        body = _drop_none({"verdict": verdict, "note": note, "override": override or None})
        return _parse(ReviewResult, self._request("POST", f"/v1/jobs/{_job_id(job)}/review", json=body))

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
        params = dict(language=language, min_score=min_score, max_score=max_score, label=label)
        params = _drop_none({**params, "min_age_s": min_age_s, "max_age_s": max_age_s})
        response = self._request("POST", "/v1/reviews/next", params=params)
        return None if response.status_code == 204 else _parse(Lease, response)

    def lease(self, job: JobRef) -> Lease:
        """Open a job for review: lease it to this reviewer (renews this reviewer's own lease)."""
        return _parse(Lease, self._request("POST", f"/v1/reviews/{_job_id(job)}/lease"))

    def release_lease(self, job: JobRef) -> None:
        """Give a job's lease back before it ends."""
        self._request("DELETE", f"/v1/reviews/{_job_id(job)}/lease")

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
        body = _drop_none(dict(verdict=verdict, confirm=confirm, note=note, language=language, label=label))
        body.update(_drop_none(dict(min_score=min_score, max_score=max_score)))
        body.update(_drop_none(dict(min_age_s=min_age_s, max_age_s=max_age_s)))
        return _parse(BulkResult, self._request("POST", "/v1/reviews/bulk", json=body))


class AsyncClient(_Base):
    """The emoe-gate API, asynchronous: the same methods as `Client`, awaited (`list` is an async iterator).

    `async with AsyncClient(url, api_key=KEY) as client: job = await client.submit(...)`."""

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

    async def _request(
        self, method: str, path: str, *, wait: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            response = await self._http.request(method, path, timeout=self._timeout(wait), **kwargs)
            if not self._should_retry(response, attempt):
                return self._check(response)
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
        fields = dict(negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance)
        fields.update(height=height, width=width, mode=mode, callback_url=callback_url, labels=labels)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self._request(
            "POST",
            "/v1/jobs",
            wait=wait,
            json=_job_body(prompt, fields),
            params=_drop_none({"wait": wait}),
            headers=headers,
        )
        return _parse(Job, response)

    async def get(self, job: JobRef, *, wait: float | None = None, expand: Sequence[str] = ()) -> Job:
        """A job (see `Client.get`)."""
        path = f"/v1/jobs/{_job_id(job)}"
        return _parse(Job, await self._request("GET", path, wait=wait, params=_get_params(wait, expand)))

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
        params = dict(status=status, action=action, language=language, since=_when(since), until=_when(until))
        params.update(limit=limit, cursor=cursor)
        return _parse(JobPage, await self._request("GET", "/v1/jobs", params=_drop_none(params)))

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
        cursor = None
        while True:
            page = await self.list_page(
                status=status,
                action=action,
                language=language,
                since=since,
                until=until,
                limit=page_size,
                cursor=cursor,
            )
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, job: JobRef) -> Job:
        """Cancel a job that has not finished (`ConflictError` with `.job` if it had)."""
        return _parse(Job, await self._request("POST", f"/v1/jobs/{_job_id(job)}/cancel"))

    async def image(self, job: JobRef, index: int = 0) -> bytes:
        """The PNG bytes of image `index` of a job."""
        return (await self._request("GET", f"/v1/jobs/{_job_id(job)}/images/{index}")).content

    async def images(self, job: Job) -> list[bytes]:
        """The PNG bytes of every image of a job, in order."""
        return [await self.image(job, a.index) for a in job.artifacts]

    async def score(
        self, prompts: Sequence[str], *, labels: Mapping[str, str] | None = None
    ) -> ScoreResponse:
        """Scores and decisions for prompts; nothing is rendered."""
        body = _drop_none({"prompts": list(prompts), "labels": labels})
        return _parse(ScoreResponse, await self._request("POST", "/v1/score", json=body))

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
        params = dict(state=state, language=language, min_score=min_score, max_score=max_score)
        params.update(label=label, min_age_s=min_age_s, max_age_s=max_age_s, limit=limit)
        return _parse(ReviewQueue, await self._request("GET", "/v1/reviews", params=_drop_none(params)))

    async def review(
        self, job: JobRef, verdict: Verdict, *, note: str | None = None, override: bool = False
    ) -> ReviewResult:
        """Record a verdict on a job in review (a review key)."""
        body = _drop_none({"verdict": verdict, "note": note, "override": override or None})
        path = f"/v1/jobs/{_job_id(job)}/review"
        return _parse(ReviewResult, await self._request("POST", path, json=body))

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
        params = dict(language=language, min_score=min_score, max_score=max_score, label=label)
        params = _drop_none({**params, "min_age_s": min_age_s, "max_age_s": max_age_s})
        response = await self._request("POST", "/v1/reviews/next", params=params)
        return None if response.status_code == 204 else _parse(Lease, response)

    async def lease(self, job: JobRef) -> Lease:
        """Open a job for review: lease it to this reviewer."""
        return _parse(Lease, await self._request("POST", f"/v1/reviews/{_job_id(job)}/lease"))

    async def release_lease(self, job: JobRef) -> None:
        """Give a job's lease back before it ends."""
        await self._request("DELETE", f"/v1/reviews/{_job_id(job)}/lease")

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
        body = _drop_none(dict(verdict=verdict, confirm=confirm, note=note, language=language, label=label))
        body.update(_drop_none(dict(min_score=min_score, max_score=max_score)))
        body.update(_drop_none(dict(min_age_s=min_age_s, max_age_s=max_age_s)))
        return _parse(BulkResult, await self._request("POST", "/v1/reviews/bulk", json=body))
