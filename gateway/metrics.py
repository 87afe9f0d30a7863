"""`/metrics` for Prometheus: queue depth, decisions by action and language, jobs by status, gate latency and
render batches.

Counts come from SQL at scrape time (so they agree across processes); the gate's latency and the render
batches' sizes and times come from the workers' shared histograms (`workers.stage_metrics`). The figures
are the whole deployment's, so `/metrics` is for the operator: with `EMOE_METRICS_TOKEN` set it wants
`Authorization: Bearer <token>`, otherwise it answers only clients on the loopback address. Figures per
tenant only with `EMOE_METRICS_PER_TENANT=true`.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator
from typing import Any

from fastapi import HTTPException, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from audit.jobs import status_counts
from audit.models import Decision, Job


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def require_metrics_access(request: Request) -> None:
    """401 without the configured bearer token; without a token configured, 403 to non-loopback clients."""
    token = request.app.state.settings.metrics_token
    if token:
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
            raise HTTPException(
                status_code=401,
                detail="/metrics wants `Authorization: Bearer <EMOE_METRICS_TOKEN>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return
    if not _loopback(request.client.host if request.client else None):
        raise HTTPException(
            status_code=403,
            detail="/metrics answers only loopback clients; set EMOE_METRICS_TOKEN to scrape it elsewhere",
        )


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
            per_tenant = self.app.state.settings.metrics_per_tenant
            if per_tenant:
                tenant_jobs = session.execute(
                    select(Job.tenant, Job.status, func.count()).group_by(Job.tenant, Job.status)
                ).all()
                tenant_decisions = session.execute(
                    select(Decision.tenant, Decision.action, func.count()).group_by(
                        Decision.tenant, Decision.action
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
        if per_tenant:
            by_status = GaugeMetricFamily(
                "emoe_tenant_jobs", "Jobs by tenant and status.", labels=["tenant", "status"]
            )
            for tenant, status, count in tenant_jobs:
                by_status.add_metric([tenant, status], count)
            yield by_status
            by_action = GaugeMetricFamily(
                "emoe_tenant_decisions", "Gate decisions by tenant and action.", labels=["tenant", "action"]
            )
            for tenant, action, count in tenant_decisions:
                by_action.add_metric([tenant, action], count)
            yield by_action
        for histogram, snapshot in self.app.state.stage_metrics().items():
            family = HistogramMetricFamily(histogram.metric, histogram.help)
            family.add_metric([], buckets=snapshot["buckets"], sum_value=snapshot["sum"])
            yield family


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
