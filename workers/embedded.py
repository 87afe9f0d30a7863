"""Embedded mode: no broker. A thread in the gateway process runs the same stage functions as the Celery tasks
(`workers.stages`), and a second thread delivers webhooks. Jobs left unfinished by a previous process
are picked up again at start (their state is in SQL); a stage that fails on something other than the job
(the database locked or gone) is retried with backoff, and while the worker is idle a sweep every
`SWEEP_S` re-enqueues jobs that nothing is working on."""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from audit import jobs as repo
from audit.db import session_scope
from settings import Settings
from workers import stages, webhooks
from workers.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)
_STOP = ("stop",)
SWEEP_S = 10.0
MAX_BACKOFF_S = 30.0


class InProcessWorker:
    """A `Dispatcher` that runs the work itself. Readiness: the model is loaded."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.work: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.hooks: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.timers: set[threading.Timer] = set()
        self.loaded = threading.Event()
        self.load_error: BaseException | None = None
        self.idle = threading.Condition()
        self.pending = 0
        self.running = False
        self.failures: dict[tuple[Any, ...], int] = {}
        self.stopping = threading.Event()

    # --- Dispatcher -----------------------------------------------------------------------------------------

    def gate(self, job_ids: Iterable[uuid.UUID]) -> None:
        for job_id in job_ids:
            self._put(self.work, ("gate", job_id))

    def render(self, job_id: uuid.UUID) -> None:
        self._put(self.work, ("render", job_id))

    def hook(self, job_id: uuid.UUID, event: str, attempt: int = 1) -> None:
        self._put(self.hooks, ("hook", job_id, event, attempt))

    def broker_ok(self) -> bool:
        return all(t.is_alive() for t in self.threads[:2]) and bool(self.threads)

    def ready_workers(self) -> int:
        return 1 if self.loaded.is_set() and self.load_error is None else 0

    def queue_lengths(self) -> dict[str, int]:
        return {"gate+render": self.work.qsize(), "hooks": self.hooks.qsize()}

    def size_problem(self, height: int | None, width: int | None) -> str | None:
        return self.runtime.size_problem(height, width) if self.runtime is not None else None

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.threads:
            return
        with self.idle:
            self.pending += 1  # the start-up itself (load the model, resume unfinished jobs)
        self.stopping.clear()
        self.threads = [
            threading.Thread(target=self._work_loop, name="emoe-embedded-worker", daemon=True),
            threading.Thread(target=self._hook_loop, name="emoe-embedded-hooks", daemon=True),
            threading.Thread(target=self._sweep_loop, name="emoe-embedded-sweep", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        for timer in list(self.timers):
            timer.cancel()
        self.work.put(_STOP)
        self.hooks.put(_STOP)
        for thread in self.threads:
            thread.join(timeout)
        self.threads = []

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (the demo and tests use this)."""
        with self.idle:
            return self.idle.wait_for(lambda: self.pending == 0, timeout)

    # --- internals ------------------------------------------------------------------------------------------

    def _put(self, target: queue.Queue, item: tuple[Any, ...], delay: float = 0.0) -> None:
        with self.idle:
            self.pending += 1
        if delay <= 0:
            target.put(item)
            return
        timer = threading.Timer(delay, self._fire, (target, item))
        timer.daemon = True
        self.timers.add(timer)
        timer.start()

    def _fire(self, target: queue.Queue, item: tuple[Any, ...]) -> None:
        self.timers.discard(threading.current_thread())  # type: ignore[arg-type]
        target.put(item)

    def _done(self) -> None:
        with self.idle:
            self.pending -= 1
            self.idle.notify_all()

    def _resume_unfinished(self) -> None:
        # A previous process may have died mid-job; in embedded mode nobody else holds a claim.
        with session_scope(self.settings.resolved_database_url) as session:
            found = repo.requeue_unfinished(session)
        for job_id, queue_name in found:
            self._put(self.work, (queue_name, job_id))

    def _work_loop(self) -> None:
        try:
            if self.runtime is None:
                self.runtime = get_runtime(self.settings)
            self._resume_unfinished()
        except BaseException as exc:
            log.exception("embedded worker could not start")
            self.load_error = exc
            return
        finally:
            self.loaded.set()
            self._done()
        while True:
            item = self.work.get()
            if item == _STOP:
                return
            self.running = True
            try:
                self._run(item)
                self.failures.pop(item, None)
            except Exception as exc:  # not the job's fault (a locked or lost database): retry with backoff
                failures = self.failures[item] = self.failures.get(item, 0) + 1
                delay = min(MAX_BACKOFF_S, 2.0 ** (failures - 1))
                log.warning("embedded worker: %s of job %s failed (%s); retry in %.0f s", *item, exc, delay)
                self._put(self.work, item, delay=delay)
            finally:
                self.running = False
                self._done()

    def _sweep_loop(self) -> None:
        """While nothing runs or waits, re-enqueue jobs left queued or claimed (a stage died mid-write)."""
        while not self.stopping.wait(SWEEP_S):
            if self.running or not self.work.empty() or not self.loaded.is_set() or self.load_error:
                continue
            try:
                # nothing is running, so no claim is held by a live stage: every claim counts as lost
                found = stages.find_stalled(self.settings, live_workers=set())
            except Exception as exc:
                log.warning("embedded sweep: %s", exc)
                continue
            for job in found:
                log.warning("embedded worker: re-enqueued stalled job %s", job.job_id)
                self._put(self.work, ("gate" if job.queue == "gate" else "render", job.job_id))

    def _run(self, item: tuple[Any, ...]) -> None:
        kind, job_id = item
        function = stages.run_gate if kind == "gate" else stages.run_render
        try:
            outcome = function(job_id, self.settings, self.runtime)
        except stages.StageError as exc:  # the claims were released: retry as the outcome says
            outcome = exc.outcome
        for render_id in outcome.render:
            self.render(render_id)
        for hook_job, event in outcome.hooks:
            self.hook(hook_job, event)
        if outcome.retry_in_s is not None:
            self._put(self.work, item, delay=outcome.retry_in_s)

    def _hook_loop(self) -> None:
        while True:
            item = self.hooks.get()
            if item == _STOP:
                return
            _, job_id, event, attempt = item
            try:
                retry_in = webhooks.deliver(job_id, event, attempt, self.settings)
                if retry_in is not None:
                    again = webhooks.next_attempt(attempt, retry_in)  # a busy host is not an attempt
                    self._put(self.hooks, ("hook", job_id, event, again), delay=retry_in)
            except Exception:
                log.exception("webhook %s for job %s failed", event, job_id)
            finally:
                self._done()
