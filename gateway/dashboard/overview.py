"""The overview page: decisions over time by action in a chosen time range, jobs awaiting review, the audit
chain's state, the policy in force, the tenant's share of the latest replay."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from audit import report_queries
from audit.chain import GENESIS_HASH, Position, extend_verified
from gateway.dashboard.rendering import page
from gateway.dashboard.sessions import ViewerDep, to_login
from gateway.deps import SessionDep

log = logging.getLogger(__name__)

router = APIRouter()

PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30), "all": None}
CHAIN_ROWS_PER_VIEW = 20_000  # a page view hashes at most this many new decisions; the next one goes on


@dataclass
class _ChainMark:
    """How far this process has verified the decisions chain: the position and the last decision id."""

    at: Position
    last_id: int


_chain_marks: weakref.WeakKeyDictionary[Any, _ChainMark] = weakref.WeakKeyDictionary()
_chain_breaks: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_chain_lock = threading.Lock()


def chain_state(session: Session, app: Any) -> dict[str, Any]:
    """The decisions chain verified incrementally: each view hashes only the rows added since the last one
    (at most CHAIN_ROWS_PER_VIEW), after checking that the last verified row still has its hash."""
    with _chain_lock:  # one walk at a time: two views would hash the same new rows
        mark = _chain_marks.get(app) or _ChainMark(Position(0, GENESIS_HASH), 0)
        report, last_id = extend_verified(session, mark.at, mark.last_id, limit=CHAIN_ROWS_PER_VIEW)
        if report.ok:
            _chain_marks[app] = _ChainMark(Position(report.rows, report.head_hash), last_id)
        if not report.ok and _chain_breaks.get(app) != str(report):  # once per break, not at every view
            _chain_breaks[app] = str(report)
            log.error("dashboard: %s", report)
    behind = report.ok and report.rows - mark.at.rows == CHAIN_ROWS_PER_VIEW
    return {"report": report, "last_id": last_id, "behind": behind, "checked_at": datetime.now(UTC)}


def _policy_in_force(request: Request) -> dict[str, Any]:
    """The policy file the workers load (settings, else the bundled one), or the error reading it."""
    from policies import PolicyError, bundled_policy_path, load_policy

    settings = request.app.state.settings
    path = settings.policy_path or bundled_policy_path(settings.dtype)
    try:
        policy = load_policy(path)
    except (PolicyError, OSError) as exc:  # the error names server paths: the log gets it, a tenant does not
        log.error("dashboard: the policy in force cannot be read: %s", exc)
        return {"error": "the policy file the workers load cannot be read (the gateway's log says why)"}
    return {"policy": policy, "id": policy.id}


def tenant_replay(session: Session, tenant: str) -> dict[str, Any] | None:
    """The latest stored replay with only `tenant`'s totals (`summary` None: the run kept no per-tenant
    totals, from before they were stored)."""
    run = report_queries.latest_replay(session)
    if run is None:
        return None
    tenants = (run.summary or {}).get("tenants")
    summary = None
    if isinstance(tenants, dict):
        summary = tenants.get(tenant) or {"total": 0, "replayed": 0, "changed": 0, "before": {}, "after": {}}
    return {
        "policy_name": run.policy_name,
        "policy_version": run.policy_version,
        "policy_hash": run.policy_hash,
        "created_at": run.created_at,
        "since": run.since,
        "summary": summary,
    }


@router.get("", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, viewer: ViewerDep, period: str = "all") -> Response:
    """Counts and the chart over `period` (24h, 7d, 30d, all); review, chain and policy state as of now."""
    if viewer is None:
        return to_login(request)
    if period not in PERIODS:
        raise HTTPException(
            status_code=422, detail=f"period: must be one of {', '.join(PERIODS)}, got {period!r}"
        )
    span = PERIODS[period]
    since = datetime.now(UTC) - span if span is not None else None
    tenant = viewer.tenant
    over_time = report_queries.decisions_over_time(session, tenant=tenant, since=since)
    peak = max((r["continue"] + r["flag"] + r["halt"] for r in over_time["rows"]), default=0)
    return page(
        request,
        "overview.html",
        viewer,
        counts=report_queries.action_counts(session, tenant=tenant, since=since),
        over_time=over_time,
        peak=peak,
        periods=list(PERIODS),
        period=period,
        since=since,
        awaiting=report_queries.awaiting_review(session, tenant=tenant),
        chain=chain_state(session, request.app),
        policies=report_queries.policy_counts(session, tenant=tenant, since=since),
        in_force=_policy_in_force(request),
        replay=tenant_replay(session, tenant),
        actions=report_queries.ACTIONS,
    )
