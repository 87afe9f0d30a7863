"""SQLAlchemy 2 models of the audit log: jobs, hash-chained decisions and review verdicts, artifacts, keys,
webhooks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# An autoincrementing 64-bit id that SQLite also autoincrements (it only does so for INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")

JOB_STATUSES = (
    "queued",
    "scoring",
    "rendering",
    "completed",
    "held",
    "rejected",
    "halted",
    "failed",
    "cancelled",
)
# `held` and `rejected` are terminal for the workers; a reviewer's verdict may still move them (audit.reviews)
TERMINAL_STATUSES = frozenset({"completed", "held", "rejected", "halted", "failed", "cancelled"})
# waiting for or in a stage: what a worker still has to do (and what counts against a tenant's queue)
ACTIVE_STATUSES = ("queued", "scoring", "rendering")
# jobs.review: where a job stands in human review (null: never sent to review)
REVIEW_STATES = ("pending", "escalated", "approved", "rejected")
VERDICTS = ("approve", "reject", "escalate")
# what a job asks for (the gate's actions: `policies.ACTIONS`; a policy's modes: `policies.policy.MODES`)
JOB_MODES = ("fast", "full", "score_only")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both databases. PostgreSQL keeps the zone; SQLite stores naive text,
    so values are converted to UTC on the way in (a naive one is taken as UTC) and read back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if not isinstance(value, datetime):  # None (or a literal the driver converts itself)
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    """One generation request and its state machine (the state lives here, not in the broker)."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created_at", "tenant", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # Prompt text is nulled by retention redaction; its hash, length and language stay.
    prompt: Mapped[str | None] = mapped_column(Text)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    prompt_chars: Mapped[int] = mapped_column(Integer)
    prompt_words: Mapped[int] = mapped_column(Integer)
    negative_prompt: Mapped[str | None] = mapped_column(Text, default="")
    language: Mapped[str | None] = mapped_column(String(16), index=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mode: Mapped[str] = mapped_column(String(16), default="fast")
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # the worker process holding the claim (`host:pid`); a claim whose owner's heartbeat is gone is taken over
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    redacted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # human review (policy on_flag: hold / on_halt: review): pending, escalated, approved, rejected
    review: Mapped[str | None] = mapped_column(String(16), index=True)
    # a reviewer's lease on the job (audit.reviews.take_lease): whose key prefix, and until when
    review_lease_by: Mapped[str | None] = mapped_column(String(16))
    review_lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)

    decision: Mapped[Decision | None] = relationship(back_populates="job", uselist=False)
    artifacts: Mapped[list[Artifact]] = relationship(back_populates="job", order_by="Artifact.path_index")


class Decision(Base):
    """An append-only, hash-chained gate decision: `row_hash = sha256(prev_hash ‖ canonical record)`.

    The record covers the prompt's hash, not its text, so retention redaction keeps the chain valid.
    """

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # the format of the canonical record this row was hashed in (`audit.chain.CHAIN_VERSIONS`)
    chain_version: Mapped[int] = mapped_column(Integer, server_default="1")
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    # what the decision was about, copied from the job (labels: from chain version 2; null before)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(16), index=True)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # the score and how it was measured
    score: Mapped[float] = mapped_column(Float)
    eu: Mapped[float] = mapped_column(Float)
    num_experts: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    scoring: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expert_deviation: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # the policy and what it decided
    policy_name: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[str] = mapped_column(String(64))
    policy_hash: Mapped[str] = mapped_column(String(64))
    policy_mode: Mapped[str] = mapped_column(String(16))
    flag_at: Mapped[float] = mapped_column(Float)
    halt_at: Mapped[float] = mapped_column(Float)
    rule: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(8), index=True)
    shadow_action: Mapped[str | None] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text, default="")
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the chain
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64), unique=True)

    job: Mapped[Job] = relationship(back_populates="decision")


class Review(Base):
    """An append-only, hash-chained reviewer verdict on a job's decision (its own chain, `audit.reviews`).

    The record covers the note's sha256, not its text, so redacting notes keeps the chain valid.
    """

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    decision_id: Mapped[int] = mapped_column(BigId, ForeignKey("decisions.id"))
    decision_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16))
    # the job's review state before and after this verdict (an override names what it overturned)
    previous: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    override: Mapped[bool] = mapped_column(Boolean, default=False)
    reviewer: Mapped[str] = mapped_column(String(16))  # the reviewer key's shown prefix
    note: Mapped[str | None] = mapped_column(Text)  # may be redacted (set to null); its hash stays
    note_sha256: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64), unique=True)


class Artifact(Base):
    """One image of a job (path 0 for Fast EMoE; 0..M-1 for full EMoE), stored by URI with its sha256.

    Append-only and hash-chained (`audit.chain.append_artifacts`); only the quality score, computed later,
    may be set afterwards.
    """

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "path_index", name="uq_artifacts_job_id_path_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    path_index: Mapped[int] = mapped_column(Integer)
    storage_uri: Mapped[str] = mapped_column(String(2048))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    quality: Mapped[float | None] = mapped_column(Float)
    quality_metric: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64), unique=True)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class ApiKey(Base):
    """A tenant's API key, stored as the sha256 of a high-entropy secret (the secret is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WebhookDelivery(Base):
    """One attempt to deliver a signed webhook for a job event."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookSecret(Base):
    """A tenant's webhook secret generation (the secret itself is derived from the operator's key and
    (tenant, generation), never stored); no row: generation 0. The previous generation still signs until
    `previous_until`."""

    __tablename__ = "webhook_secrets"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    previous_until: Mapped[datetime | None] = mapped_column(UtcDateTime)


class SecretFingerprint(Base):
    """The fingerprint of a secret every process of the deployment must share (`name`: "webhook", the
    operator's webhook secret), never the secret: who recorded it, when, and where its secret came from."""

    __tablename__ = "secret_fingerprints"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    recorded_by: Mapped[str] = mapped_column(String(255))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ReplayRun(Base):
    """A stored replay of a policy over past decisions (what the dashboard shows as 'latest replay')."""

    __tablename__ = "replay_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    policy_name: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[str] = mapped_column(String(64))
    policy_hash: Mapped[str] = mapped_column(String(64))
    since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
