"""`/dashboard`: server-rendered audit pages for keys with the read role, scoped to the key's tenant.

Pages: overview (decisions over time by action in a time range, jobs awaiting review, the audit chain's state,
the policy in force, the tenant's share of the latest replay), fairness (per-group table with intervals and
disparity), a job browser (filters by action, status, language, policy version, day range and prompt text; CSV
export), a job page (score, rule, row hash, deviations, images) and, for review keys, the review queue
(`/dashboard/review`).

A browser signs in once with its API key (`login`): the cookie then holds a signed session (`sessions`),
never the key. Every form posts a CSRF token bound to the session; sign-in checks the form's Origin and slows
down repeated failures. Scripts may send the key as a header instead, like the API (no cookie, so no CSRF
token is needed). Every HTML answer carries a Content-Security-Policy (`headers`) that allows only the
dashboard's own static files (`/dashboard/static/…`): no inline script or style.
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway.dashboard import fairness, jobs, login, overview, rendering, review
from gateway.dashboard.headers import DASHBOARD_CSP, DOCS_CSP, SecurityHeaders

__all__ = ["DASHBOARD_CSP", "DOCS_CSP", "SecurityHeaders", "router"]

router = APIRouter(include_in_schema=False)
for _part in (rendering, login, overview, fairness, jobs, review):
    router.include_router(_part.router, prefix="/dashboard")  # a part cannot have an empty prefix and path
