"""The fairness page: a per-group table with intervals and disparity, cached a minute per tenant."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from audit import fairness, report_queries
from gateway.dashboard.rendering import page
from gateway.dashboard.sessions import ViewerDep, to_login
from gateway.deps import SessionDep

STATS_TTL_S = 60.0

router = APIRouter()

_stats_cache: dict[tuple, tuple[float, Any]] = {}
_stats_lock = threading.Lock()


def _fairness_table(session: Any, tenant: str, group_by: str, since: Any, reference: str) -> Any:
    """Per-group statistics, cached for a minute and recomputed as soon as a new decision arrives."""
    newest = report_queries.latest_decision_id(session, tenant=tenant)
    key = (tenant, group_by, since, reference, newest)
    now = time.monotonic()
    with _stats_lock:
        hit = _stats_cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
    loaded = report_queries.load_records(session, group_by=group_by, since=since, tenant=tenant)
    table = fairness.group_stats(loaded.records, reference=reference)
    with _stats_lock:
        if len(_stats_cache) > 64:
            _stats_cache.clear()
        _stats_cache[key] = (now + STATS_TTL_S, (loaded, table))
    return loaded, table


@router.get("/fairness", response_class=HTMLResponse)
def fairness_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    group_by: str = "language",
    since: str = "",
    reference: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    if viewer is None:
        return to_login(request)
    try:
        report_queries.check_group_by(group_by)
        since_dt = report_queries.parse_since(since)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    wanted = reference or fairness.DEFAULT_REFERENCE
    loaded, table = _fairness_table(session, viewer.tenant, group_by, since_dt, wanted)
    sizes = {g.group: g.n for g in table.groups}
    chosen, reference_note = fairness.choose_reference(sizes, reference)  # e.g. `en` is no value of a label
    if chosen != wanted:
        loaded, table = _fairness_table(session, viewer.tenant, group_by, since_dt, chosen)
    return page(
        request,
        "fairness.html",
        viewer,
        table=table.to_dict(),
        n=len(loaded.records),
        n_shadow=loaded.n_shadow,
        group_by=group_by,
        since=since,
        groups=sorted(sizes.items()),
        reference_note=reference_note,
        bootstrap_max_n=table.intervals.bootstrap_max_n,
    )
