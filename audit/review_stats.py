"""What the reviewers' verdicts say about the gate, per group (language or a label's value), with intervals.

For each group (and all decisions together):

- `sent_to_review`: the share of decisions that entered review (flagged under `on_flag: hold`, halted
  under `on_halt: review`);
- `flags_reviewed`: the share of flagged jobs a reviewer has decided (approved or rejected);
- `flag_approval_rate`: of the decided flagged jobs, the share approved: how often the gate was wrong to flag;
- `rejection_rate`: of all decided jobs (flags and halts), the share rejected;
- `halt_overturn_rate`: of the decided halted jobs, the share approved (a reviewer overturned the halt);
- `median_time_to_review_s`: from the decision to the first approve or reject verdict.

Rates carry Wilson intervals and the median a bootstrap (or order-statistic) interval, from `audit.fairness`.
The verdict counted is the job's final review state (an override replaces the first verdict). The question
it answers: does the gate send one group to review more often *and* get overturned more often there?
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit import fairness
from audit.models import Decision, Job, Review
from audit.report_queries import GROUP_BY_LANGUAGE, check_group_by, effective_action_sql

DECIDED = ("approved", "rejected")
UNKNOWN = fairness.UNKNOWN_GROUP
# the reviewer name of verdicts a simulation recorded (the demo); the report says so
SIMULATED_REVIEWER = "simulated"


@dataclass(frozen=True)
class ReviewRecord:
    """One decision and what became of it in review."""

    group: str
    action: str  # the effective action: continue, flag or halt (shadow mode: what it would have done)
    review: str | None  # the job's final review state; None if it never entered review
    waited_s: float | None  # decision to first approve/reject verdict (None while undecided)


def load_review_records(
    session: Session,
    *,
    group_by: str = GROUP_BY_LANGUAGE,
    since: datetime | None = None,
    tenant: str | None = None,
) -> list[ReviewRecord]:
    """Every decision (since `since`, of `tenant`) with its job's review state and time to review."""
    check_group_by(group_by)
    first = (
        select(Review.job_id.label("job_id"), func.min(Review.created_at).label("at"))
        .where(Review.verdict.in_(("approve", "reject")))
        .group_by(Review.job_id)
        .subquery()
    )
    group_col = Decision.language if group_by == GROUP_BY_LANGUAGE else Job.labels[group_by].as_string()
    action = effective_action_sql()
    stmt = (
        select(group_col, action, Job.review, Decision.created_at, first.c.at)
        .join(Job, Job.id == Decision.job_id)
        .outerjoin(first, first.c.job_id == Decision.job_id)
    )
    if tenant is not None:
        stmt = stmt.where(Decision.tenant == tenant)
    if since is not None:
        stmt = stmt.where(Decision.created_at >= since)
    out = []
    for group, act, review, decided_at, reviewed_at in session.execute(stmt):
        waited = None
        if reviewed_at is not None and decided_at is not None and review in DECIDED:
            waited = max(0.0, (reviewed_at - decided_at).total_seconds())
        out.append(
            ReviewRecord(group=str(group) if group else UNKNOWN, action=act, review=review, waited_s=waited)
        )
    return out


def _section(
    name: str, records: Sequence[ReviewRecord], intervals: fairness.IntervalOptions
) -> dict[str, Any]:
    flagged = [r for r in records if r.action == "flag"]
    halted = [r for r in records if r.action == "halt"]
    decided = [r for r in records if r.review in DECIDED]
    flags_decided = [r for r in flagged if r.review in DECIDED]
    halts_decided = [r for r in halted if r.review in DECIDED]
    in_review = sum(r.review is not None for r in records)

    def rate(k: int, n: int) -> dict[str, Any]:
        return fairness.rate_estimate(k, n, intervals.confidence).to_dict()

    times = [r.waited_s for r in decided if r.waited_s is not None]
    return {
        "group": name,
        "n": len(records),
        "flagged": len(flagged),
        "halted": len(halted),
        "in_review": in_review,
        "open": sum(r.review in ("pending", "escalated") for r in records),
        "decided": len(decided),
        "approved": sum(r.review == "approved" for r in decided),
        "rejected": sum(r.review == "rejected" for r in decided),
        "sent_to_review": rate(in_review, len(records)),
        "flags_reviewed": rate(len(flags_decided), len(flagged)),
        "flag_approval_rate": rate(sum(r.review == "approved" for r in flags_decided), len(flags_decided)),
        "rejection_rate": rate(sum(r.review == "rejected" for r in decided), len(decided)),
        "halt_overturn_rate": rate(sum(r.review == "approved" for r in halts_decided), len(halts_decided)),
        "median_time_to_review_s": fairness.median_estimate(
            times, intervals=intervals, key=f"review-time-{name}"
        ).to_dict(),
    }


def review_sections(
    records: Iterable[ReviewRecord],
    *,
    intervals: fairness.IntervalOptions = fairness.IntervalOptions(),
    simulated: bool = False,
) -> dict[str, Any]:
    """The review sections of the report: one row per group and one for all, JSON-safe."""
    rows = list(records)
    by_group: dict[str, list[ReviewRecord]] = {}
    for r in rows:
        by_group.setdefault(r.group, []).append(r)
    groups = [_section(name, by_group[name], intervals) for name in sorted(by_group)]
    total = _section("all", rows, intervals)
    notes = []
    if total["in_review"] == 0:
        notes.append("No job entered human review (the policy releases flags, or nothing was flagged).")
    elif total["decided"] == 0:
        notes.append("Jobs wait in review, but no reviewer has decided one yet.")
    if simulated:
        notes.append("These verdicts are simulated (the demo's reference-world rule), not a person's.")
    return {"available": total["in_review"] > 0, "all": total, "groups": groups, "notes": notes}


def build_review_sections(
    session: Session,
    *,
    group_by: str = GROUP_BY_LANGUAGE,
    since: datetime | None = None,
    tenant: str | None = None,
    intervals: fairness.IntervalOptions = fairness.IntervalOptions(),
) -> dict[str, Any]:
    """`review_sections` of the decisions in the audit log (noting simulated verdicts, if any)."""
    records = load_review_records(session, group_by=group_by, since=since, tenant=tenant)
    simulated = bool(session.scalar(select(func.count()).where(Review.reviewer == SIMULATED_REVIEWER)))
    return review_sections(records, intervals=intervals, simulated=simulated)
