"""How the gateway hands work to workers: Celery queues (real mode) or the in-process worker (embedded mode).

Always called after the job's row is committed (Celery's rule: enqueue after the commit), with ids only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from settings import Settings
from workers.queues import GATE_TASK, HOOK_TASK, QUEUES, RENDER_TASK

if TYPE_CHECKING:
    from audit.reviews import Verdict

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def gate(self, job_ids: Iterable[uuid.UUID]) -> None: ...
    def render(self, job_id: uuid.UUID) -> None: ...
    def hook(self, job_id: uuid.UUID, event: str) -> None: ...
    def broker_ok(self) -> bool: ...
    def ready_workers(self) -> int: ...
    def queue_lengths(self) -> dict[str, int]: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class CeleryDispatcher:
    """Sends task messages to Redis; readiness comes from the workers' heartbeat keys."""

    def __init__(self, settings: Settings) -> None:
        from workers.celery_app import make_celery

        self.settings = settings
        self.celery = make_celery(settings)

    def gate(self, job_ids: Iterable[uuid.UUID]) -> None:
        with self.gate_publisher() as publish:
            publish(list(job_ids))

    @contextmanager
    def gate_publisher(self) -> Iterator[Callable[[list[uuid.UUID]], None]]:
        """A `gate` bound to one pooled producer whose broker connection is checked now (before the caller
        commits its rows), so that a broker that is down is found before any row exists."""
        with self.celery.producer_or_acquire() as producer:
            client = getattr(producer.channel, "client", None)  # kombu's Redis transport: a redis.Redis
            if client is not None:
                client.ping()

            def publish(job_ids: list[uuid.UUID]) -> None:
                # kombu's publish batch: the messages go out in one Redis pipeline when the block ends
                with producer.batch():
                    for job_id in job_ids:
                        self.celery.send_task(GATE_TASK, args=[str(job_id)], queue="gate", producer=producer)

            yield publish

    def render(self, job_id: uuid.UUID) -> None:
        self.celery.send_task(RENDER_TASK, args=[str(job_id)], queue="render")

    def hook(self, job_id: uuid.UUID, event: str) -> None:
        self.celery.send_task(HOOK_TASK, args=[str(job_id), event, 1], queue="hooks")

    def _redis(self):
        from workers.heartbeat import redis_client

        return redis_client(self.settings)

    def broker_ok(self) -> bool:
        try:
            return bool(self._redis().ping())
        except Exception:
            return False

    def ready_workers(self) -> int:
        from workers.heartbeat import count_ready

        return count_ready(self._redis())

    def queue_lengths(self) -> dict[str, int]:
        client = self._redis()
        return {queue: int(client.llen(queue)) for queue in QUEUES}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def make_dispatcher(settings: Settings) -> Dispatcher:
    """Embedded (in-process worker) without a broker URL, Celery with one."""
    if settings.embedded:
        from workers.embedded import InProcessWorker

        return InProcessWorker(settings)
    return CeleryDispatcher(settings)


def follow_up_reviews(dispatcher: Dispatcher, verdicts: Iterable[Verdict]) -> None:
    """After the verdicts' commit: render each approved halted job, then send each job's review webhook."""
    for result in verdicts:
        try:
            if result.render:
                dispatcher.render(result.job.id)
            if result.job.callback_url:
                dispatcher.hook(result.job.id, f"review.{result.review.outcome}")
        except Exception:  # the recovery sweep re-enqueues a render whose message was lost
            log.exception(
                "could not enqueue the follow-up of review %d of job %s", result.review.id, result.job.id
            )
