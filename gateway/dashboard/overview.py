"""The overview page: decisions over time by action, the policy in force, the tenant's share of the latest
replay."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from audit import report_queries
from gateway.dashboard.rendering import page
from gateway.dashboard.sessions import ViewerDep, to_login
from gateway.deps import SessionDep

router = APIRouter()


def _policy_in_force(request: Request) -> dict[str, Any]:
    """The policy file the workers load (settings, else the bundled one), or the error reading it."""
    from policies import PolicyError, bundled_policy_path, load_policy

    settings = request.app.state.settings
    path = settings.policy_path or bundled_policy_path(settings.dtype)
    try:
        policy = load_policy(path)
    except (PolicyError, OSError) as exc:
        return {"path": str(path), "error": str(exc)}
    return {"path": str(path), "policy": policy, "id": policy.id}


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
def overview(request: Request, session: SessionDep, viewer: ViewerDep) -> Response:
    if viewer is None:
        return to_login(request)
    tenant = viewer.tenant
    over_time = report_queries.decisions_over_time(session, tenant=tenant)
    peak = max((r["continue"] + r["flag"] + r["halt"] for r in over_time["rows"]), default=0)
    return page(
        request,
        "overview.html",
        viewer,
        counts=report_queries.action_counts(session, tenant=tenant),
        over_time=over_time,
        peak=peak,
        policies=report_queries.policy_counts(session, tenant=tenant),
        in_force=_policy_in_force(request),
        replay=tenant_replay(session, tenant),
        actions=report_queries.ACTIONS,
    )
