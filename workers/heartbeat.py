"""Worker liveness in Redis: each worker process with its model loaded keeps `emoe:ready:<host>:<pid>` alive;
one of them at a time also runs the recovery sweep that re-enqueues jobs whose broker message was lost.

The same `<host>:<pid>` names the owner of every claim the process takes (`jobs.claimed_by`), so a claim whose
owner's key is gone (the whole worker was killed) is taken over within `TTL_S`, not at the lease."""

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
    return len(live_workers(client))


def worker_identity() -> str:
    """This process's name as a claim owner and in its ready key (computed per call: pool processes fork)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def live_workers(client: Any) -> set[str]:
    """The identities of the worker processes whose ready key is alive."""
    keys = client.scan_iter(match=READY_PREFIX + "*", count=100)
    return {(k.decode() if isinstance(k, bytes) else k).removeprefix(READY_PREFIX) for k in keys}


def owner_alive(settings: Settings) -> Callable[[str], bool]:
    """`alive(holder)` for claims: embedded mode has one worker, so another holder is a previous (dead)
    process; with a broker, the holder's ready key tells. If this process's own key is gone too, Redis lost
    its state (a restart) rather than the holder its life: count the holder alive until the keys are back."""
    if settings.embedded:
        return lambda holder: False
    mine = READY_PREFIX + worker_identity()

    def alive(holder: str) -> bool:
        try:
            client = redis_client(settings)
            return bool(client.exists(READY_PREFIX + holder)) or not client.exists(mine)
        except Exception:  # Redis unreachable: the lease stays the backstop
            return True

    return alive


class Heartbeat(threading.Thread):
    """Keeps this process's ready key alive and, every few beats, sweeps for lost jobs."""

    def __init__(
        self,
        settings: Settings,
        sweep: Callable[[set[str] | None], None] | None,
        *,
        model_loaded: bool = True,
    ) -> None:
        super().__init__(name="emoe-heartbeat", daemon=True)
        self.settings = settings
        self.sweep = sweep
        self.identity = worker_identity()
        self.key = READY_PREFIX + self.identity
        self.stopped = threading.Event()
        self.model_loaded = model_loaded  # only a process with the model counts as ready (/readyz)
        self._beats = 0

    def start(self) -> None:
        # the first beat before any task runs: the process's claims must name a live owner from the start
        try:
            self.beat(0)
        except Exception as exc:
            log.warning("heartbeat: %s", exc)
        self._beats = 1
        super().start()

    def beat(self, beats: int = 0) -> None:
        """One heartbeat: refresh the ready key; every other beat, try to take the sweep."""
        client = redis_client(self.settings)
        intact = True
        if self.model_loaded:
            # the key's old value comes back with the write: none means Redis lost its keys (restarted)
            intact = client.set(self.key, "1", ex=TTL_S, get=True) is not None or beats == 0
        if self.sweep is not None and beats % 2 == 0 and client.set(SWEEP_LOCK, self.key, nx=True, ex=8):
            # just after a Redis restart every worker's key is gone: don't take their claims for lost
            self.sweep(live_workers(client) if intact and self.model_loaded else None)

    def run(self) -> None:
        beats = self._beats
        while not self.stopped.is_set():
            try:
                self.beat(beats)
            except Exception as exc:  # Redis restarting: keep beating
                log.warning("heartbeat: %s", exc)
            beats += 1
            self.stopped.wait(HEARTBEAT_S)

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(Exception):
            redis_client(self.settings).delete(self.key)
