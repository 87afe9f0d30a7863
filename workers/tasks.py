"""Celery tasks: thin wrappers that pass ids to `workers.stages` and enqueue what comes next.

The model is loaded once per pool process, after the fork (`worker_process_init`): the main process never
imports torch. A parent that has run one parallel torch kernel leaves GNU OpenMP's thread pool in a state a
forked child deadlocks on at its first parallel kernel (and CUDA cannot cross a fork at all), which is what
hung the default worker. Each process then keeps a ready key alive in Redis (what `/readyz` counts, and what
tells that its claims are held) and takes turns sweeping for jobs whose message or worker was lost.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_process_init, worker_process_shutdown

from settings import Settings, get_settings
from workers import stages, webhooks
from workers.heartbeat import Heartbeat
from workers.queues import GATE_TASK, HOOK_TASK, RENDER_TASK
from workers.runtime import get_runtime, set_torch_threads

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
    except stages.StageError as exc:  # the claims were released: retry as the outcome says
        outcome = exc.outcome
    except Exception as exc:  # the database went away mid-stage, a time limit: the claim is retaken on retry
        retries = task.request.retries or 0
        log.warning("%s for job %s: %s; retrying", task.name, job_id, exc)
        raise task.retry(countdown=min(30.0, 2.0**retries), max_retries=None) from exc
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
    """Finish an accepted job into its image(s), with other accepted jobs that can share its batch."""
    return _run(self, stages.run_render, job_id)


@shared_task(name=HOOK_TASK, bind=True)
def hook(self: Task, job_id: str, event: str, attempt: int = 1) -> str:
    """Deliver one signed webhook; on failure enqueue the next attempt after a backoff."""
    retry_in = webhooks.deliver(uuid.UUID(job_id), event, attempt, _settings(self))
    if retry_in is not None:
        again = webhooks.next_attempt(attempt, retry_in)  # a busy host is not an attempt
        self.app.send_task(HOOK_TASK, args=[job_id, event, again], queue="hooks", countdown=retry_in)
    return "delivered" if retry_in is None else "retrying"


def _sweep(settings: Settings, app: Any, live: set[str] | None) -> None:
    """Re-enqueue jobs whose message was lost (Redis restarted without persistence) when queues are idle, and
    at once the jobs whose claim's owner is no longer alive (`live`: the workers with a ready key)."""
    from workers.heartbeat import redis_client

    client = redis_client(settings)
    idle = {queue: client.llen(queue) == 0 for queue in ("gate", "render")}
    for job in stages.find_stalled(settings, live):
        # a lost claim at once; a waiting job only when its queue is empty (else its message is likely there)
        if job.claimed or idle[job.queue]:
            task = GATE_TASK if job.queue == "gate" else RENDER_TASK
            app.send_task(task, args=[str(job.job_id)], queue=job.queue)
            log.warning("re-enqueued stalled job %s on %s", job.job_id, job.queue)


def _stop_main_process(reason: str) -> None:
    """The model or policy cannot load: say so once and stop the whole worker rather than respawn forever
    (the main process reads the reason from `emoe_fatal_path` and exits non-zero with it)."""
    from celery import current_app as app

    log.critical("emoe-gate worker cannot start: %s", reason)
    fatal = getattr(app.conf, "emoe_fatal_path", None)
    if fatal:
        with open(fatal, "w", encoding="utf-8") as out:
            out.write(reason)
    os.kill(os.getppid(), signal.SIGTERM)
    os._exit(3)


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    global _heartbeat
    from celery import current_app as app

    settings = getattr(app.conf, "emoe_settings", None) or get_settings()
    loads_model = getattr(app.conf, "emoe_loads_model", True)
    if loads_model:
        set_torch_threads(settings, processes=getattr(app.conf, "emoe_concurrency", 1))
        try:
            get_runtime(settings)
        except Exception as exc:
            _stop_main_process(f"{type(exc).__name__}: {exc}")
    _heartbeat = Heartbeat(settings, sweep=lambda live: _sweep(settings, app, live), model_loaded=loads_model)
    _heartbeat.start()


@worker_process_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
