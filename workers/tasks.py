"""Celery tasks: thin wrappers that pass ids to `workers.stages` and enqueue what comes next.

The model is loaded once per worker process, when the process starts (`worker_process_init`); the process
then keeps a ready key alive in Redis (what `/readyz` counts) and takes turns sweeping
for jobs whose message was lost.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from settings import Settings, get_settings
from workers import stages, webhooks
from workers.dispatch import GATE_TASK, HOOK_TASK, RENDER_TASK
from workers.heartbeat import Heartbeat
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
_heartbeat: Heartbeat | None = None


def _settings(task: Task) -> Settings:
    return getattr(task.app.conf, "emoe_settings", None) or get_settings()


def _follow_up(task: Task, outcome: stages.Outcome) -> None:
    for job_id in outcome.render:
        task.app.send_task(RENDER_TASK, args=[str(job_id)], queue="render")
    for job_id, event in outcome.hooks:
        task.app.send_task(HOOK_TASK, args=[str(job_id), event, 1], queue="hooks")


def _run(task: Task, function: Any, job_id: str) -> str:
    settings = _settings(task)
    try:
        outcome = function(uuid.UUID(job_id), settings, get_runtime(settings))
    except stages.GateError as exc:
        outcome = exc.outcome
    _follow_up(task, outcome)
    if outcome.retry_in_s is not None:
        raise task.retry(countdown=outcome.retry_in_s, max_retries=None)
    return outcome.note or "done"


@shared_task(name=GATE_TASK, bind=True)
def gate(self: Task, job_id: str) -> str:
    """Score a job (and others waiting, as one batch), decide, record; then render or stop."""
    return _run(self, stages.run_gate, job_id)


@shared_task(name=RENDER_TASK, bind=True)
def render(self: Task, job_id: str) -> str:
    """Finish an accepted job into its image(s)."""
    return _run(self, stages.run_render, job_id)


@shared_task(name=HOOK_TASK, bind=True)
def hook(self: Task, job_id: str, event: str, attempt: int = 1) -> str:
    """Deliver one signed webhook; on failure enqueue the next attempt after a backoff."""
    retry_in = webhooks.deliver(uuid.UUID(job_id), event, attempt, _settings(self))
    if retry_in is not None:
        self.app.send_task(HOOK_TASK, args=[job_id, event, attempt + 1], queue="hooks", countdown=retry_in)
    return "delivered" if retry_in is None else "retrying"


def _sweep(settings: Settings, app: Any) -> None:
    """Re-enqueue jobs whose message was lost (Redis restarted without persistence) when queues are idle."""
    from workers.heartbeat import redis_client

    client = redis_client(settings)
    idle = {queue: client.llen(queue) == 0 for queue in ("gate", "render")}
    for job_id, queue in stages.find_stalled(settings):
        if idle[queue]:
            app.send_task(GATE_TASK if queue == "gate" else RENDER_TASK, args=[str(job_id)], queue=queue)
            log.warning("re-enqueued stalled job %s on %s", job_id, queue)


@worker_init.connect
def _preload_before_fork(**_: Any) -> None:
    # On CPU the main process loads the model once and the pool processes inherit it (a replaced process is
    # ready at once). CUDA cannot cross a fork: there each pool process loads its own.
    from celery import current_app as app

    settings = getattr(app.conf, "emoe_settings", None) or get_settings()
    if getattr(app.conf, "emoe_preload", True) and settings.device == "cpu":
        get_runtime(settings)


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    global _heartbeat
    from celery import current_app as app

    settings = getattr(app.conf, "emoe_settings", None) or get_settings()
    preload = getattr(app.conf, "emoe_preload", True)
    if preload:
        get_runtime(settings)
    _heartbeat = Heartbeat(settings, sweep=lambda: _sweep(settings, app), model_loaded=preload)
    _heartbeat.start()


@worker_process_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
