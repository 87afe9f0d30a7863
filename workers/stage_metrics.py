"""The workers' histograms, shared by every worker process and read by the gateway's `/metrics`: the gate's
scoring time per batch, and the render stage's batches (jobs in a batch, seconds a batch).

Embedded mode keeps them in memory (one process); real mode keeps each in a Redis hash (`emoe:gate_latency`,
...), so every worker process adds to one histogram. Metrics never fail a job: a Redis error is dropped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from settings import Settings

_memory: dict[str, dict[str, float]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class SharedHistogram:
    """One Prometheus histogram whose observations every worker process adds to."""

    key: str  # the Redis hash
    metric: str  # the name /metrics gives it
    help: str
    buckets: tuple[float, ...]

    def _fields(self, value: float) -> dict[str, float]:
        fields = {f"le_{b}": 1.0 for b in self.buckets if value <= b}
        fields.update({"le_+Inf": 1.0, "count": 1.0, "sum": value})
        return fields

    def observe(self, settings: Settings, value: float) -> None:
        """Add one observation."""
        if settings.embedded:
            with _lock:
                memory = _memory.setdefault(self.key, {})
                for name, add in self._fields(value).items():
                    memory[name] = memory.get(name, 0.0) + add
            return
        try:
            from workers.heartbeat import redis_client

            pipe = redis_client(settings).pipeline()
            for name, add in self._fields(value).items():
                pipe.hincrbyfloat(self.key, name, add)
            pipe.execute()
        except Exception:  # metrics must never fail a job
            pass

    def snapshot(self, settings: Settings) -> dict[str, Any] | None:
        """Cumulative buckets [(le, count)...] and the sum, or None before the first observation."""
        if settings.embedded:
            with _lock:
                raw = dict(_memory.get(self.key, {}))
        else:
            try:
                from workers.heartbeat import redis_client

                raw = {
                    k.decode() if isinstance(k, bytes) else k: float(v)
                    for k, v in redis_client(settings).hgetall(self.key).items()
                }
            except Exception:
                return None
        if not raw.get("count"):
            return None
        buckets = [(str(b), raw.get(f"le_{b}", 0.0)) for b in self.buckets]
        return {"buckets": [*buckets, ("+Inf", raw.get("le_+Inf", 0.0))], "sum": raw.get("sum", 0.0)}


GATE_LATENCY = SharedHistogram(
    "emoe:gate_latency",
    "emoe_gate_latency_seconds",
    "Gate scoring time per batch, by worker.",
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
RENDER_BATCH_JOBS = SharedHistogram(
    "emoe:render_batch_jobs",
    "emoe_render_batch_jobs",
    "Jobs rendered together in one denoising loop, per render batch (EMOE_RENDER_BATCH_SIZE at most).",
    (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),
)
RENDER_BATCH_SECONDS = SharedHistogram(
    "emoe:render_batch_seconds",
    "emoe_render_batch_seconds",
    "Denoising and decoding time per render batch, by worker.",
    (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
HISTOGRAMS = (GATE_LATENCY, RENDER_BATCH_JOBS, RENDER_BATCH_SECONDS)


def snapshots(settings: Settings) -> dict[SharedHistogram, dict[str, Any]]:
    """Every histogram that has observations, with its snapshot."""
    found = {h: h.snapshot(settings) for h in HISTOGRAMS}
    return {h: snap for h, snap in found.items() if snap is not None}
