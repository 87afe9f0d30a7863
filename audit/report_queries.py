"""The SQL side of reports and the dashboard: load decision records, aggregate counts, browse jobs.

Statistics live in `audit.fairness` (pure); this module only reads the audit tables. Shadow-mode decisions
count with what the policy *would* have done (`shadow_action`): what a fairness audit of a policy needs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session

from audit.fairness import Records
from audit.models import JOB_STATUSES, Artifact, Decision, Job, ReplayRun
from policies import ACTIONS

GROUP_BY_LANGUAGE = "language"
_LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def parse_since(value: str | date | datetime | None) -> datetime | None:
    """`--since`: an ISO date (midnight UTC) or datetime (naive means UTC); a clear error otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValueError(
            f"since: {value!r} is not an ISO date (2026-01-31) or datetime (2026-01-31T12:00)"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_group_by(group_by: str) -> str:
    """`language`, or the name of a client label (letters, digits, `_-.`)."""
    if not group_by or not set(group_by) <= _LABEL_CHARS or len(group_by) > 64:
        raise ValueError(
            f"group_by: {group_by!r} must be 'language' or a label name (letters, digits, '_', '-', '.')"
        )
    return group_by


def effective_action_sql() -> Any:
    """`policies.effective_action` in SQL: the shadow action of a shadow-mode decision, else its action."""
    return case(
        (and_(Decision.policy_mode == "shadow", Decision.shadow_action.is_not(None)), Decision.shadow_action),
        else_=Decision.action,
    )


@dataclass(frozen=True)
class LoadedRecords:
    """Records plus what the report must say about them."""

    records: Records
    n_shadow: int
    quality_metrics: list[str]
    group_by: str
    since: datetime | None
    notes: list[str] = field(default_factory=list)


def _scoped(stmt: Any, tenant: str | None, since: datetime | None) -> Any:
    """Restrict a statement over `decisions` to one tenant and a start time (None: no restriction)."""
    if tenant is not None:
        stmt = stmt.where(Decision.tenant == tenant)
    if since is not None:
        stmt = stmt.where(Decision.created_at >= since)
    return stmt


def load_records(
    session: Session,
    *,
    group_by: str = GROUP_BY_LANGUAGE,
    since: datetime | None = None,
    with_prompts: bool = False,
    tenant: str | None = None,
) -> LoadedRecords:
    """Every decision (since `since`, of `tenant`) as columns, grouped by language or a label's value."""
    check_group_by(group_by)
    quality = (
        select(
            Artifact.job_id.label("job_id"),
            func.avg(Artifact.quality).label("quality"),
        )
        .where(Artifact.quality.is_not(None))
        .group_by(Artifact.job_id)
        .subquery()
    )
    group_col = Decision.language if group_by == GROUP_BY_LANGUAGE else Job.labels[group_by].as_string()
    cols = [
        Decision.score,
        effective_action_sql().label("action"),
        group_col.label("grp"),
        Job.prompt_chars,
        Job.prompt_words,
        quality.c.quality,
        (Decision.policy_mode == "shadow").label("shadow"),
        Job.prompt if with_prompts else literal(None).label("prompt"),
    ]
    stmt = (
        select(*cols)
        .join(Job, Job.id == Decision.job_id)
        .outerjoin(quality, quality.c.job_id == Decision.job_id)
    )  # no ORDER BY: the statistics do not depend on the records' order
    stmt = _scoped(stmt, tenant, since)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        # hash the join and the per-job quality in memory rather than spilling 100,000 rows to disk
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        # the driver's plain tuples: skips building 100,000 SQLAlchemy rows (no column here needs conversion)
        compiled = stmt.compile(dialect=conn.dialect)
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute(str(compiled), compiled.params)
        rows = cursor.fetchall()
        cursor.close()
    else:
        rows = conn.execute(stmt).all()
    if rows:
        score, action, grp, chars, words, qual, shadow, prompt = (list(c) for c in zip(*rows, strict=True))
    else:
        score, action, grp, chars, words, qual, shadow, prompt = ([] for _ in range(8))
    metric_stmt = _scoped(
        select(Artifact.quality_metric)
        .join(Decision, Decision.job_id == Artifact.job_id)
        .where(Artifact.quality.is_not(None))
        .distinct(),
        tenant,
        since,
    )
    metrics = sorted(m for m in session.execute(metric_stmt).scalars() if m)
    records = Records.from_columns(
        score=np.asarray(score, dtype=np.float64),
        action=np.asarray(action, dtype=object),
        group=np.asarray(grp, dtype=object),
        chars=np.asarray(chars, dtype=np.int64),
        words=np.asarray(words, dtype=np.int64),
        quality=np.asarray([np.nan if q is None else q for q in qual], dtype=np.float64),
        prompt=np.asarray(prompt, dtype=object),
        quality_metric=", ".join(metrics) or None,
    )
    notes = []
    if len(metrics) > 1:
        notes.append(f"quality scores come from several metrics ({', '.join(metrics)}): compare with care")
    return LoadedRecords(records, int(sum(bool(s) for s in shadow)), metrics, group_by, since, notes)


def _bucket_expr(session: Session, bucket: str) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        fmt = {"month": "YYYY-MM", "day": "YYYY-MM-DD", "hour": 'YYYY-MM-DD"T"HH24:00'}[bucket]
        return func.to_char(func.timezone("UTC", Decision.created_at), fmt)
    fmt = {"month": "%Y-%m", "day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00"}[bucket]
    return func.strftime(fmt, Decision.created_at)


def decisions_over_time(
    session: Session, *, since: datetime | None = None, tenant: str | None = None
) -> dict[str, Any]:
    """Counts per time bucket and action, in SQL: by hour under 3 days, by day under 180, else by month."""
    span = _scoped(select(func.min(Decision.created_at), func.max(Decision.created_at)), tenant, since)
    first, last = session.execute(span).one()
    if first is None:
        return {"bucket": "day", "rows": []}
    days = (last - first).total_seconds() / 86400
    bucket = "hour" if days < 3 else "day" if days < 180 else "month"
    key = _bucket_expr(session, bucket).label("t")
    action = effective_action_sql().label("action")
    stmt = _scoped(select(key, action, func.count()).group_by(key, action).order_by(key), tenant, since)
    table: dict[str, dict[str, int]] = {}
    for t, act, n in session.execute(stmt):
        table.setdefault(t, dict.fromkeys(ACTIONS, 0))[act] = int(n)
    return {"bucket": bucket, "rows": [{"t": t, **counts} for t, counts in sorted(table.items())]}


def policy_counts(
    session: Session, *, since: datetime | None = None, tenant: str | None = None
) -> list[dict[str, Any]]:
    """Decisions per policy name, version and mode, newest first."""
    stmt = (
        select(
            Decision.policy_name,
            Decision.policy_version,
            Decision.policy_hash,
            Decision.policy_mode,
            func.count(),
            func.max(Decision.created_at),
        )
        .group_by(Decision.policy_name, Decision.policy_version, Decision.policy_hash, Decision.policy_mode)
        .order_by(func.max(Decision.created_at).desc())
    )
    stmt = _scoped(stmt, tenant, since)
    return [
        {
            "policy_name": a,
            "policy_version": b,
            "policy_hash": c,
            "policy_mode": d,
            "decisions": int(n),
            "last_decision_at": t.isoformat() if t else None,
        }
        for a, b, c, d, n, t in session.execute(stmt)
    ]


# --- the dashboard's job browser ---


def action_counts(
    session: Session, *, tenant: str | None = None, since: datetime | None = None
) -> dict[str, int]:
    """Decisions per (effective) action."""
    action = effective_action_sql().label("action")
    stmt = _scoped(select(action, func.count()).group_by(action), tenant, since)
    counts = dict.fromkeys(ACTIONS, 0)
    counts.update({a: int(n) for a, n in session.execute(stmt)})
    return counts


def latest_decision_id(session: Session, *, tenant: str | None = None) -> int:
    """The newest decision id (0 when there are none): a cheap key for caching statistics."""
    return int(session.execute(_scoped(select(func.max(Decision.id)), tenant, None)).scalar() or 0)


def awaiting_review(session: Session, *, tenant: str) -> dict[str, int]:
    """The tenant's jobs waiting for a verdict (review pending or escalated), by status (held, halted)."""
    stmt = (
        select(Job.status, func.count())
        .where(Job.tenant == tenant, Job.review.in_(("pending", "escalated")))
        .where(Job.status.in_(("held", "halted")))
        .group_by(Job.status)
    )
    counts = {"held": 0, "halted": 0}
    counts.update({status: int(n) for status, n in session.execute(stmt)})
    return counts


def _day(name: str, value: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its `%`, `_` and `\\` taken literally (escape `\\`)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class DecisionFilter:
    """Filters of the dashboard's decision browser; empty strings mean no filter. `date_from` and
    `date_to` are UTC days (both included); `prompt` is a case-insensitive substring."""

    action: str = ""
    language: str = ""
    policy_version: str = ""
    status: str = ""
    date_from: str = ""
    date_to: str = ""
    prompt: str = ""

    def __post_init__(self) -> None:
        if self.action and self.action not in ACTIONS:
            raise ValueError(f"action: must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if self.status and self.status not in JOB_STATUSES:
            raise ValueError(f"status: must be one of {', '.join(JOB_STATUSES)}, got {self.status!r}")
        for name in ("language", "policy_version"):
            if len(getattr(self, name)) > 64:
                raise ValueError(f"{name}: at most 64 characters")
        if len(self.prompt) > 200:
            raise ValueError("prompt: search for at most 200 characters")
        start, end = self.day_range()
        if start is not None and end is not None and end < start:
            raise ValueError(f"date_to: {self.date_to} is before date_from {self.date_from}")

    def day_range(self) -> tuple[date | None, date | None]:
        """The two days as dates (ValueError naming the field that is not a date)."""
        return _day("date_from", self.date_from), _day("date_to", self.date_to)

    def query(self) -> dict[str, str]:
        """The filter's non-empty fields, for links that keep it."""
        return {k: v for k, v in vars(self).items() if v}


def _filtered(stmt: Any, flt: DecisionFilter) -> Any:
    if flt.action:
        stmt = stmt.where(effective_action_sql() == flt.action)
    if flt.language:
        stmt = stmt.where(Decision.language == flt.language)
    if flt.policy_version:
        stmt = stmt.where(Decision.policy_version == flt.policy_version)
    if flt.status:
        stmt = stmt.where(Job.status == flt.status)
    start, end = flt.day_range()
    if start is not None:
        stmt = stmt.where(Decision.created_at >= datetime.combine(start, time.min, tzinfo=UTC))
    if end is not None:
        after = datetime.combine(end, time.min, tzinfo=UTC) + timedelta(days=1)
        stmt = stmt.where(Decision.created_at < after)
    if flt.prompt:
        stmt = stmt.where(Job.prompt.ilike(like_pattern(flt.prompt), escape="\\"))
    return stmt


def list_decisions(
    session: Session,
    flt: DecisionFilter,
    *,
    tenant: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Newest decisions first, with their job: keyset pagination on the decision id (fast on large tables)."""
    stmt = (
        select(Decision, Job.prompt, Job.status, Job.labels)
        .join(Job, Job.id == Decision.job_id)
        .order_by(Decision.id.desc())
        .limit(limit)
    )
    stmt = _filtered(_scoped(stmt, tenant, None), flt)
    if before_id is not None:
        stmt = stmt.where(Decision.id < before_id)
    return [
        {
            "decision_id": d.id,
            "job_id": str(d.job_id),
            "created_at": d.created_at,
            "language": d.language,
            "score": d.score,
            "action": d.action,
            "shadow_action": d.shadow_action,
            "rule": d.rule,
            "policy": f"{d.policy_name} {d.policy_version}",
            "prompt": prompt,
            "status": status,
            "labels": labels or {},
        }
        for d, prompt, status, labels in session.execute(stmt)
    ]


def job_detail(session: Session, job_id: str, *, tenant: str | None = None) -> dict[str, Any] | None:
    """One job with its decision and artifacts, or None (also when it belongs to another tenant)."""
    try:
        key = uuid.UUID(job_id)
    except ValueError as exc:
        raise ValueError(f"job_id: {job_id!r} is not a UUID") from exc
    job = session.get(Job, key)
    if job is None or (tenant is not None and job.tenant != tenant):
        return None
    return {"job": job, "decision": job.decision, "artifacts": list(job.artifacts)}


def filter_choices(session: Session, *, tenant: str | None = None) -> dict[str, list[str]]:
    """Distinct languages and policy versions, for the browser's filter menus."""
    langs = session.execute(
        _scoped(select(Decision.language).where(Decision.language.is_not(None)).distinct(), tenant, None)
    ).scalars()
    versions = session.execute(_scoped(select(Decision.policy_version).distinct(), tenant, None)).scalars()
    return {"languages": sorted(langs), "policy_versions": sorted(versions)}


def latest_replay(session: Session) -> ReplayRun | None:
    """The newest stored policy replay (replays are not per tenant)."""
    return session.execute(select(ReplayRun).order_by(ReplayRun.id.desc()).limit(1)).scalar_one_or_none()


# --- quality scores (written by `emoe-gate eval quality`) ---


def artifacts_to_score(
    session: Session,
    *,
    overwrite: bool = False,
    since: datetime | None = None,
    after_id: int = 0,
    limit: int = 64,
) -> list[dict[str, Any]]:
    """Artifacts without a quality score (all with `overwrite`), oldest first, with their job's texts."""
    stmt = (
        select(Artifact.id, Artifact.storage_uri, Job.prompt, Job.labels)
        .join(Job, Job.id == Artifact.job_id)
        .where(Artifact.id > after_id)
        .order_by(Artifact.id)
        .limit(limit)
    )
    if not overwrite:
        stmt = stmt.where(Artifact.quality.is_(None))
    if since is not None:
        stmt = stmt.where(Artifact.created_at >= since)
    return [
        {"id": i, "storage_uri": uri, "prompt": prompt, "labels": labels or {}}
        for i, uri, prompt, labels in session.execute(stmt)
    ]


def set_quality(session: Session, scores: dict[int, float], metric: str) -> None:
    """Store quality scores by artifact id (artifacts are not part of the hash chain)."""
    for artifact_id, value in scores.items():
        row = session.get(Artifact, artifact_id)
        if row is not None:
            row.quality, row.quality_metric = float(value), metric
