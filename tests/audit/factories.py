"""Builders for audit-log tests: jobs, scores, decisions, and a chain writer for child processes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from audit import db
from audit.chain import append_decision
from audit.models import Job
from policies import DecisionContext, Policy, decide, parse_policy

FINGERPRINT = "f" * 64


@dataclass
class FakeScore:
    """The fields of `emoe.Score` the audit log stores (the real one needs a model)."""

    score: float
    eu: float = 0.01
    num_experts: int = 4
    fingerprint: str = FINGERPRINT
    scoring: dict[str, Any] = field(default_factory=lambda: {"seed": 0, "steps": 25, "guidance": 7.5})
    expert_deviation: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])


def make_policy(mode: str = "enforce") -> Policy:
    return parse_policy(
        {
            "name": "test",
            "version": "1",
            "fingerprint": FINGERPRINT,
            "mode": mode,
            "flag_at": 1.0,
            "halt_at": 2.0,
        }
    )


def make_job(
    session: sa.orm.Session,
    prompt: str = "a small red circle",
    *,
    tenant: str = "acme",
    language: str | None = "en",
    status: str = "completed",
    created_at: datetime | None = None,
) -> Job:
    job = Job(
        tenant=tenant,
        prompt=prompt,
        prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest(),
        prompt_chars=len(prompt),
        prompt_words=len(prompt.split()),
        language=language,
        status=status,
    )
    if created_at is not None:
        job.created_at = created_at
    session.add(job)
    session.flush()
    return job


def append_one(
    session: sa.orm.Session,
    score: float,
    *,
    prompt: str = "a small red circle",
    language: str | None = "en",
    **kw: Any,
):
    """Add a job and its decision (under `make_policy()`); return the decision row."""
    job = make_job(session, prompt, language=language, **kw)
    fake = FakeScore(score)
    decision = decide(fake, DecisionContext(language=language), make_policy())
    return append_decision(session, job, fake, decision, {"gate_ms": 12.5, "queue_ms": 3})


def write_decisions(url: str, writer: int, count: int) -> int:
    """Append `count` decisions, one transaction each (run in a child process by the concurrency tests)."""
    for i in range(count):
        with db.session_scope(url) as session:
            append_one(session, 0.5 * (i % 5), prompt=f"writer {writer} prompt {i}")
    db.dispose_engine(url)
    return count
