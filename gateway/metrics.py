"""`/metrics` for Prometheus: queue depth, gate latency, decisions by action and language, jobs by status.

Counts come from SQL at scrape time (so they agree across processes); gate latency comes from the workers'
shared histogram (`workers.latency`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from audit.jobs import status_counts
from audit.models import Decision


class _SqlCollector:
    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        session = self.app.state.sessionmaker()
        try:
            counts = status_counts(session)
            decisions = session.execute(
                select(Decision.action, Decision.language, func.count()).group_by(
                    Decision.action, Decision.language
                )
            ).all()
            session.commit()
        except Exception:
            session.rollback()
            return
        finally:
            session.close()
        depth = GaugeMetricFamily("emoe_queue_depth", "Jobs waiting for a gate worker.")
        depth.add_metric([], counts.get("queued", 0))
        yield depth
        jobs = GaugeMetricFamily("emoe_jobs", "Jobs by status.", labels=["status"])
        for status, count in sorted(counts.items()):
            jobs.add_metric([status], count)
        yield jobs
        family = GaugeMetricFamily(
            "emoe_decisions",
            "Gate decisions in the audit log, by action and language.",
            labels=["action", "language"],
        )
        for action, language, count in decisions:
            family.add_metric([action, language or "unknown"], count)
        yield family
        latency = self.app.state.dispatcher_latency()
        if latency is not None:
            hist = HistogramMetricFamily(
                "emoe_gate_latency_seconds", "Gate scoring time per batch, by worker."
            )
            hist.add_metric([], buckets=latency["buckets"], sum_value=latency["sum"])
            yield hist


class GatewayMetrics:
    """Per-app registry (tests build several apps in one process)."""

    def __init__(self, app: Any) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "emoe_jobs_submitted", "Accepted submissions.", ["mode"], registry=self.registry
        )
        self.rejected = Counter(
            "emoe_requests_rejected", "Refused submissions, by reason.", ["reason"], registry=self.registry
        )
        self.request_latency = Histogram(
            "emoe_submit_latency_seconds",
            "Time to accept a submission at the gateway.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.registry.register(_SqlCollector(app))
