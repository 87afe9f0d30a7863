"""Worker liveness in Redis: each worker process with its model loaded keeps `emoe:ready:<host>:<pid>` alive;
one of them at a time also runs the recovery sweep that re-enqueues jobs whose broker message was lost."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from settings import Settings

log = logging.getLogger(__name__)
READY_PREFIX = "emoe:ready:"
SWEEP_LOCK = "emoe:sweep-lock"
HEARTBEAT_S = 5.0
TTL_S = 20


@lru_cache(maxsize=8)
def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10)


def redis_client(settings: Settings) -> Any:
    if not settings.broker_url:
        raise RuntimeError("no broker URL: embedded mode has no Redis")
    return _client(settings.broker_url)


def count_ready(client: Any) -> int:
    return sum(1 for _ in client.scan_iter(match=READY_PREFIX + "*", count=100))


class Heartbeat(threading.Thread):
    """Keeps this process's ready key alive and, every few beats, sweeps for lost jobs."""

    def __init__(
        self, settings: Settings, sweep: Callable[[], None] | None, *, model_loaded: bool = True
    ) -> None:
        super().__init__(name="emoe-heartbeat", daemon=True)
        self.settings = settings
        self.sweep = sweep
        self.key = f"{READY_PREFIX}{socket.gethostname()}:{os.getpid()}"
        self.stopped = threading.Event()
        self.model_loaded = model_loaded  # only a process with the model counts as ready (/readyz)

    def run(self) -> None:
        beats = 0
        while not self.stopped.is_set():
            try:
                client = redis_client(self.settings)
                if self.model_loaded:
                    client.set(self.key, "1", ex=TTL_S)
                if (
                    self.sweep is not None
                    and beats % 2 == 0
                    and client.set(SWEEP_LOCK, self.key, nx=True, ex=8)
                ):
                    self.sweep()
            except Exception as exc:  # Redis restarting: keep beating
                log.warning("heartbeat: %s", exc)
            beats += 1
            self.stopped.wait(HEARTBEAT_S)

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(Exception):
            redis_client(self.settings).delete(self.key)
