"""What the API returns, as typed objects (fields the server adds later are kept, not refused)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Status = Literal[
    "queued", "scoring", "rendering", "completed", "held", "rejected", "halted", "failed", "cancelled"
]
Action = Literal["continue", "flag", "halt"]
Mode = Literal["fast", "full", "score_only"]
ReviewState = Literal["pending", "escalated", "approved", "rejected"]
Verdict = Literal["approve", "reject", "escalate"]
TERMINAL: frozenset[str] = frozenset({"completed", "held", "rejected", "halted", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Score(_Model):
    score: float
    eu: float
    num_experts: int
    fingerprint: str
    scoring: dict[str, Any] = {}
    expert_deviation: list[float] = []


class Decision(_Model):
    action: Action
    shadow_action: Action | None = None
    rule: str
    threshold: float | None = None
    flag_at: float
    halt_at: float
    reason: str
    policy_name: str
    policy_version: str
    policy_hash: str
    policy_mode: str
    decided_at: datetime
    row_hash: str


class Artifact(_Model):
    index: int
    url: str
    sha256: str
    width: int
    height: int
    size_bytes: int


class Job(_Model):
    id: uuid.UUID
    status: Status
    mode: Mode
    language: str | None = None
    labels: dict[str, str] = {}
    params: dict[str, Any] = {}
    attempts: int = 0
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    score: Score | None = None
    decision: Decision | None = None
    flagged: bool = False
    review: ReviewState | None = None
    artifacts: list[Artifact] = []
    links: dict[str, str] = {}

    @property
    def terminal(self) -> bool:
        """True once the job does not change by itself: completed, held, rejected, halted, ...."""
        return self.status in TERMINAL


class JobPage(_Model):
    jobs: list[Job]
    next_cursor: str | None = None


class ScoreResult(_Model):
    job_id: uuid.UUID
    prompt_index: int
    status: Status
    language: str | None = None
    score: Score | None = None
    decision: Decision | None = None


class ScoreResponse(_Model):
    results: list[ScoreResult]
    complete: bool


class VerdictRecord(_Model):
    id: int
    verdict: Verdict
    previous: ReviewState
    outcome: ReviewState
    override: bool
    reviewer: str
    note: str | None = None
    created_at: datetime
    row_hash: str


class ReviewedJob(_Model):
    job: Job
    waiting_s: float
    verdicts: list[VerdictRecord] = []


class ReviewQueue(_Model):
    total: int
    oldest_waiting_s: float | None = None
    items: list[ReviewedJob]


class ReviewResult(_Model):
    job: Job
    verdict: VerdictRecord


class Lease(_Model):
    """A job of the review queue leased to this reviewer until `until` (no one else may review it)."""

    job_id: uuid.UUID
    holder: str
    until: datetime
    seconds: float
    item: ReviewedJob | None = None


class BulkItem(_Model):
    job_id: uuid.UUID
    status: str
    verdict: VerdictRecord


class BulkResult(_Model):
    count: int
    items: list[BulkItem]
