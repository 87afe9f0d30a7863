"""Group commit for submissions: the submissions that arrive while one batch is being written share the next
INSERT, COMMIT and broker connection, and each request waits for its own batch.

The guarantees of a single submission hold for each job of a batch: its row is committed before its task
message is published and before its request is answered; if the broker refuses, the batch's new rows are
deleted again and each of their requests gets BrokerUnavailable (no orphan row, no lost job).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import anyio.to_thread
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from audit import jobs as repo
from audit.db import transaction
from audit.models import Job
from gateway.errors import BrokerUnavailable

MAX_BATCH = 256


@dataclass
class Batch:
    """What one write did: how many submissions it took (tests and metrics read this)."""

    size: int
    created: int


class GroupCommit:
    """Coalesces concurrent `submit` calls (one event loop) into one transaction and one publish per batch."""

    def __init__(
        self,
        sessionmaker: Callable[[], Session],
        publish: Callable[[list[uuid.UUID]], None],
        max_batch: int = MAX_BATCH,
        publisher: Callable[[], AbstractContextManager[Callable[[list[uuid.UUID]], None]]] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.publish = publish
        # `publisher()` opens (and checks) a broker connection before the batch's commit, so that a broker
        # that is down fails the batch before any row exists; without one, `publish` is used as is
        self.publisher = publisher or (lambda: nullcontext(publish))
        self.max_batch = max_batch
        self.batches: list[Batch] = []  # the last few, newest last
        self._pending: list[tuple[repo.NewJob, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def submit(self, new: repo.NewJob) -> tuple[Job, bool]:
        """Create (or, for a used Idempotency-Key, find) the job; returns once committed and published."""
        (future,) = self._enqueue([new])
        # a request cancelled while it waits leaves the batch alone: its job is still written (and published)
        return await future

    async def submit_many(self, news: list[repo.NewJob]) -> list[tuple[Job, bool]]:
        """`submit` for the jobs of one request (one batch unless they pass `max_batch`); raises the first
        failure."""
        results = await asyncio.gather(*self._enqueue(news), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    def _enqueue(self, news: list[repo.NewJob]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in news]
        self._pending.extend(zip(news, futures, strict=True))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._drain())
        return futures

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                results = await anyio.to_thread.run_sync(self._write, [new for new, _ in batch])
            except BaseException as exc:  # every waiter of the batch gets the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _write(self, requests: list[repo.NewJob]) -> list[tuple[Job, bool] | Exception]:
        """Runs in a worker thread: insert + commit the batch, then publish its new jobs."""
        try:
            publisher = self.publisher()
            publish = publisher.__enter__()
        except Exception as exc:
            return [BrokerUnavailable(str(exc)) for _ in requests]
        try:
            return self._write_with(requests, publish)
        finally:
            publisher.__exit__(None, None, None)

    def _write_with(
        self, requests: list[repo.NewJob], publish: Callable[[list[uuid.UUID]], None]
    ) -> list[tuple[Job, bool] | Exception]:
        try:
            results: list[tuple[Job, bool] | Exception] = list(self._insert(requests))
        except (OperationalError, PoolTimeout):
            raise  # the database is down: every request of the batch gets its 503
        except DBAPIError as exc:
            if len(requests) == 1 or exc.connection_invalidated:
                raise
            # one bad row must not fail its neighbours: write each alone
            return [self._write_alone(new, publish) for new in requests]
        self._publish(results, publish)
        return results

    def _write_alone(
        self, new: repo.NewJob, publish: Callable[[list[uuid.UUID]], None]
    ) -> tuple[Job, bool] | Exception:
        try:
            result = self._insert([new])[0]
        except DBAPIError as exc:
            return exc
        results: list = [result]
        self._publish(results, publish)
        return results[0]

    def _insert(self, requests: list[repo.NewJob]) -> list[tuple[Job, bool] | repo.IdempotencyConflict]:
        with transaction(self.sessionmaker) as session:
            results = repo.create_jobs(session, requests)
        created = sum(1 for r in results if isinstance(r, tuple) and r[1])
        self.batches = [*self.batches[-99:], Batch(len(requests), created)]
        return results

    def _publish(self, results: list, publish: Callable[[list[uuid.UUID]], None]) -> None:
        """Publish the new jobs (after their commit); if the broker refuses, undo them."""
        new_ids = [r[0].id for r in results if isinstance(r, tuple) and r[1]]
        if not new_ids:
            return
        try:
            publish(new_ids)
        except Exception as exc:
            self._undo(new_ids)
            for i, result in enumerate(results):
                if isinstance(result, tuple) and result[1]:
                    results[i] = BrokerUnavailable(str(exc))

    def _undo(self, job_ids: list[uuid.UUID]) -> None:
        session = self.sessionmaker()
        try:
            repo.withdraw(session, job_ids)
        finally:
            session.close()
