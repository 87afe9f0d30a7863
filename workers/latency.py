"""The gate-latency histogram shared by workers and read by the gateway's `/metrics`.

Embedded mode keeps it in memory (one process); real mode keeps it in Redis hash `emoe:gate_latency`, so every
worker process adds to one histogram.
"""

from __future__ import annotations

import threading
from typing import Any

from settings import Settings

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KEY = "emoe:gate_latency"
_memory: dict[str, float] = {}
_lock = threading.Lock()


def _fields(seconds: float) -> dict[str, float]:
    fields = {f"le_{b}": 1.0 for b in BUCKETS if seconds <= b}
    fields.update({"le_+Inf": 1.0, "count": 1.0, "sum": seconds})
    return fields


def observe(settings: Settings, seconds: float) -> None:
    """Add one gate batch's scoring time."""
    if settings.embedded:
        with _lock:
            for name, value in _fields(seconds).items():
                _memory[name] = _memory.get(name, 0.0) + value
        return
    try:
        from workers.heartbeat import redis_client

        pipe = redis_client(settings).pipeline()
        for name, value in _fields(seconds).items():
            pipe.hincrbyfloat(KEY, name, value)
        pipe.execute()
    except Exception:  # metrics must never fail a job
        pass


def snapshot(settings: Settings) -> dict[str, Any] | None:
    """Cumulative buckets [(le, count)...] and the sum, or None before the first observation."""
    if settings.embedded:
        with _lock:
            raw = dict(_memory)
    else:
        try:
            from workers.heartbeat import redis_client

            raw = {
                k.decode() if isinstance(k, bytes) else k: float(v)
                for k, v in redis_client(settings).hgetall(KEY).items()
            }
        except Exception:
            return None
    if not raw.get("count"):
        return None
    buckets = [(str(b), raw.get(f"le_{b}", 0.0)) for b in BUCKETS] + [("+Inf", raw.get("le_+Inf", 0.0))]
    return {"buckets": buckets, "sum": raw.get("sum", 0.0)}
