"""The Celery task names and queues: shared by the app, its tasks and the gateway's dispatcher."""

from __future__ import annotations

GATE_TASK = "emoe.gate"
RENDER_TASK = "emoe.render"
HOOK_TASK = "emoe.hook"
QUEUES = ("gate", "render", "hooks")
