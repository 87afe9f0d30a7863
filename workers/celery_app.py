"""The Celery app: Redis broker from settings, queues gate/render/hooks, late acks, prefetch 1,
redelivery on a lost worker, and a visibility timeout above the longest job.
Run it with `emoe-gate worker` or `celery -A workers.celery_app worker`."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from settings import Settings, get_settings
from workers.queues import GATE_TASK, HOOK_TASK, QUEUES, RENDER_TASK


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from `settings` (tasks are registered by importing `workers.tasks`)."""
    if not settings.broker_url:
        raise ValueError("broker_url: Celery needs EMOE_BROKER_URL (without it the gateway runs embedded)")
    app = Celery("emoe_gate", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="gate",
        task_routes={
            GATE_TASK: {"queue": "gate"},
            RENDER_TASK: {"queue": "render"},
            HOOK_TASK: {"queue": "hooks"},
        },
        # at-least-once delivery: the job's state machine in SQL makes a redelivery harmless
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # a message not acked within this is redelivered: longer than the longest job
        broker_transport_options={"visibility_timeout": settings.job_timeout_s * 2 + 60},
        # past the soft limit the stage raises, releases its claim and is retried (attempts counted); the hard
        # limit replaces a process stuck where it cannot raise, and its claim is taken over once its
        # heartbeat is gone
        task_soft_time_limit=settings.job_timeout_s,
        task_time_limit=settings.job_timeout_s + 30,
        # loading the model in each pool process takes longer than Celery's 4 s default
        worker_proc_alive_timeout=600,
        worker_hijack_root_logger=False,
        # a redelivery after a lost connection is harmless (SQL state machine): let running tasks finish
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # the gateway must fail fast (503) rather than hang when Redis is down
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        broker_connection_timeout=2,
    )
    app.conf.emoe_settings = settings
    return app


app = make_celery(get_settings()) if get_settings().broker_url else Celery("emoe_gate")
