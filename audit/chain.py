"""The hash chains over `decisions` and `artifacts`: `row_hash = sha256(prev_hash ‖ canonical record)`, one
writer at a time per chain.

A decision's canonical record is sorted-key, compact JSON of every decision column except `id`, `prev_hash`
and `row_hash` (`chain_version` as `v`): floats as Python's shortest round-trip repr, the job id as a
hyphenated UUID, `created_at` as ISO-8601 UTC with microseconds, JSON columns as stored. Each row names the
format it was hashed in (`chain_version`; 1: before labels were covered, 2: with the job's labels), and
versions never go down along the chain. Verify also checks that each decision's job still has the prompt
hash, language and labels the decision recorded. An artifact's record covers its job, path index, storage
URI, the image's sha256, size and dimensions (not its quality score, which is computed later).

Both SQLite and PostgreSQL give these values back bit for bit, so a chain written on one verifies the same way
on the other. It covers the prompt's sha256, not its text, so redacting prompts (`audit.retention`) leaves the
chain valid; the negative prompt in the scoring record is likewise stored as its sha256 only.

A chain that lives in one database can be recomputed by whoever can write it: `audit.checkpoint` anchors the
heads outside it (`verify_chain(at=...)` proves the log still extends a checkpoint).

Appends are serialised so that concurrent writers never fork the chain: on PostgreSQL with a
transaction-scoped advisory lock (held until the caller commits, so commit soon after appending); on
SQLite by the engine of `audit.db`, which begins every transaction with `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from audit.models import Artifact, Decision, Job, utcnow
from policies import ACTIONS

GENESIS_HASH = "0" * 64
ARTIFACT_CHAIN_VERSION = 1
# pg_advisory_xact_lock keys of the decisions chain (ASCII "emoechai") and the artifacts chain ("emoeartf").
CHAIN_LOCK_KEY = int.from_bytes(b"emoechai", "big") & 0x7FFF_FFFF_FFFF_FFFF
ARTIFACT_LOCK_KEY = int.from_bytes(b"emoeartf", "big") & 0x7FFF_FFFF_FFFF_FFFF

FLOAT_FIELDS = ("score", "eu", "flag_at", "halt_at")
TEXT_FIELDS = (
    "tenant",
    "prompt_sha256",
    "language",
    "fingerprint",
    "policy_name",
    "policy_version",
    "policy_hash",
    "policy_mode",
    "rule",
    "action",
    "shadow_action",
    "reason",
)
JSON_FIELDS = ("scoring", "expert_deviation", "timings")
# what each chain version adds to the record: 1, the first format; 2, the job's labels. New rows: the newest.
VERSION_FIELDS: dict[int, tuple[str, ...]] = {1: (), 2: ("labels",)}
CHAIN_VERSIONS = tuple(VERSION_FIELDS)
CHAIN_VERSION = CHAIN_VERSIONS[-1]
ARTIFACT_INT_FIELDS = ("path_index", "size_bytes", "width", "height")
ARTIFACT_TEXT_FIELDS = ("storage_uri", "sha256")


class ChainError(ValueError):
    """A decision that cannot be appended (missing or non-finite fields)."""


@dataclass(frozen=True)
class ChainReport:
    """The outcome of `verify_chain` / `verify_artifacts`: ok, how many rows were checked, the head, and the
    first bad row if any."""

    ok: bool
    rows: int
    head_hash: str
    first_bad_id: int | None = None
    first_bad_job_id: str | None = None
    problem: str | None = None
    chain: str = "decisions"

    def __str__(self) -> str:
        title, noun = {"decisions": ("audit chain", "decision"), "artifacts": ("artifact chain", "artifact")}[
            self.chain
        ]
        if self.ok:
            return f"{title} intact: {self.rows} {noun}s, head {self.head_hash}"
        if self.first_bad_id is None:
            return f"{title} BROKEN: {self.problem} ({self.rows} rows verified, head {self.head_hash})"
        return (
            f"{title} BROKEN at {noun} id {self.first_bad_id} (job {self.first_bad_job_id}): "
            f"{self.problem} ({self.rows} rows verified before it)"
        )


# --- the canonical record -----------------------------------------------------------------------------------


def _plain_json(value: Any, where: str) -> Any:
    """JSON that round-trips exactly through both databases (numpy scalars to Python, tuples to lists)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # the common cases first, cheaply
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ChainError(f"{where}: non-finite number {value!r} cannot be stored in the audit log")
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool):  # subclasses (numpy.bool_ is not one; enums and numpy.float64 are)
        return bool(value)
    if isinstance(value, str | int):
        return str.__str__(value) if isinstance(value, str) else int(value)
    if isinstance(value, float):
        return _plain_json(float(value), where)
    if callable(getattr(value, "item", None)):  # numpy / torch scalar
        return _plain_json(value.item(), where)
    raise ChainError(f"{where}: {type(value).__name__} is not JSON")


def _iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds (the models' `UtcDateTime` reads every stored time back aware)."""
    if moment.tzinfo is None:
        raise ChainError(f"created_at: {moment!r} has no time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_record(row: Decision | Mapping[str, Any]) -> str:
    """The exact text the row's hash covers, in the row's `chain_version` (`row`: a `Decision` or a mapping
    of its column values)."""
    get = row.__getattribute__ if isinstance(row, Decision) else row.__getitem__
    version = get("chain_version")
    if version not in VERSION_FIELDS:
        raise ChainError(f"chain_version: {version!r} is not one of {', '.join(map(str, CHAIN_VERSIONS))}")
    record: dict[str, Any] = {
        "v": version,
        "job_id": str(uuid.UUID(str(get("job_id")))),
        "created_at": _iso_utc(get("created_at")),
        "num_experts": int(get("num_experts")),
    }
    for name in FLOAT_FIELDS:
        record[name] = float(get(name))
    for name in TEXT_FIELDS + JSON_FIELDS + VERSION_FIELDS[version]:
        record[name] = get(name)
    return _dumps(record)


def row_hash(prev_hash: str, row: Decision | Mapping[str, Any]) -> str:
    """sha256(prev_hash ‖ canonical record), hex."""
    return hashlib.sha256((prev_hash + canonical_record(row)).encode("utf-8")).hexdigest()


# --- appending ----------------------------------------------------------------------------------------------


def _field(obj: Any, name: str, default: Any = ...) -> Any:
    value = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    if value is ...:
        raise ChainError(f"{name}: missing on {type(obj).__name__}")
    return value


def _finite(value: Any, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ChainError(f"{name}: non-finite value {value!r} cannot be stored in the audit log")
    return number


def decision_values(
    job: Any, score: Any, decision: Any, timings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The column values of a decision row, chain fields aside.

    `job`: a `Job` (or anything with its id, tenant, prompt_sha256, language and labels); `score`: an
    `emoe.Score` or anything with its fields; `decision`: a `policies.Decision`.
    """
    action = _field(decision, "action")
    if action not in ACTIONS:
        raise ChainError(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    if job.id is None:
        raise ChainError("job: has no id yet (flush the session first)")
    return {
        "chain_version": CHAIN_VERSION,
        "job_id": job.id,
        "tenant": job.tenant,
        "prompt_sha256": job.prompt_sha256,
        "language": job.language,
        "labels": _plain_json(dict(job.labels or {}), "labels"),
        "score": _finite(_field(score, "score"), "score"),
        "eu": _finite(_field(score, "eu"), "eu"),
        "num_experts": int(_field(score, "num_experts")),
        "fingerprint": str(_field(score, "fingerprint")),
        "scoring": _without_text(_plain_json(_field(score, "scoring", {}) or {}, "scoring")),
        "expert_deviation": _plain_json(
            list(_field(score, "expert_deviation", []) or []), "expert_deviation"
        ),
        "policy_name": str(_field(decision, "policy_name")),
        "policy_version": str(_field(decision, "policy_version")),
        "policy_hash": str(_field(decision, "policy_hash")),
        "policy_mode": str(_field(decision, "mode")),
        "flag_at": _finite(_field(decision, "flag_at"), "flag_at"),
        "halt_at": _finite(_field(decision, "halt_at"), "halt_at"),
        "rule": str(_field(decision, "rule")),
        "action": action,
        "shadow_action": _field(decision, "shadow_action", None),
        "reason": str(_field(decision, "reason", "") or ""),
        "timings": _plain_json(dict(timings or {}), "timings"),
    }


def _without_text(scoring: dict[str, Any]) -> dict[str, Any]:
    """The scoring record minus user text: the negative prompt is kept as its sha256, so retention can redact
    the text from `jobs` while the append-only log never held it."""
    negative = scoring.pop("negative_prompt", None)
    if negative is not None:
        scoring["negative_prompt_sha256"] = hashlib.sha256(str(negative).encode("utf-8")).hexdigest()
    return scoring


def lock_chain(session: Session) -> None:
    """Serialise appenders until the session's transaction ends (PostgreSQL: advisory lock; SQLite: already
    holds its write lock from `BEGIN IMMEDIATE`)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})


def chain_head(session: Session) -> str:
    """The row_hash of the newest decision (the genesis hash for an empty log)."""
    head = session.execute(
        select(Decision.row_hash).order_by(Decision.id.desc()).limit(1)
    ).scalar_one_or_none()
    return head or GENESIS_HASH


def _link(session: Session, rows: Sequence[Any]) -> None:
    """Lock the chain, read its head and chain `rows` (Decision objects or value dicts) after it, in order."""
    # 1. take the chain's lock, then read its head (a fresh snapshot: the previous holder has committed)
    lock_chain(session)
    session.flush()
    prev = chain_head(session)
    # 2. link: timestamps are taken under the lock, so they rise along the chain
    for row in rows:
        created_at, prev_hash = utcnow(), prev
        if isinstance(row, Mapping):
            row["created_at"], row["prev_hash"] = created_at, prev_hash
            row["row_hash"] = prev = row_hash(prev_hash, row)
        else:
            row.created_at, row.prev_hash = created_at, prev_hash
            row.row_hash = prev = row_hash(prev_hash, row)


def append_decision(
    session: Session, job: Job, score: Any, decision: Any, timings: Mapping[str, Any] | None = None
) -> Decision:
    """Append one decision for `job` to the chain and return the row (the caller commits, soon: PostgreSQL
    holds the chain's lock until then)."""
    if job.id is None:
        session.flush()
    row = Decision(**decision_values(job, score, decision, timings))
    _link(session, [row])
    session.add(row)
    session.flush()
    return row


def append_decisions(session: Session, values: Sequence[dict[str, Any]]) -> str:
    """Append many decisions (dicts from `decision_values`) under one lock with one executemany; return the
    new chain head. The fast path for batching writers: no ORM objects, ids are not fetched."""
    if not values:
        return chain_head(session)
    rows = [dict(v) for v in values]
    _link(session, rows)
    if session.get_bind().dialect.name == "postgresql":
        _copy_rows(session, rows)
    else:
        session.execute(insert(Decision), rows)
    return rows[-1]["row_hash"]


_COPY_COLUMNS = [c.name for c in Decision.__table__.columns if c.name != "id"]
_JSON_COLUMNS = frozenset((*JSON_FIELDS, "labels"))


def _copy_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: stream the rows with COPY on the session's own connection (same transaction, same lock).

    JSON columns are sent as the same `json.dumps` text SQLAlchemy would write (PostgreSQL's `json` keeps it
    verbatim), so reading them back gives the values that were hashed.
    """
    cursor = session.connection().connection.driver_connection.cursor()
    columns = ", ".join(_COPY_COLUMNS)
    with cursor.copy(f"COPY decisions ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([json.dumps(row[c]) if c in _JSON_COLUMNS else row[c] for c in _COPY_COLUMNS])


# --- the artifacts' chain -----------------------------------------------------------------------------------


def artifact_record(row: Artifact | Mapping[str, Any]) -> str:
    """The exact text an artifact row's hash covers (`row`: an `Artifact` or a mapping of its columns)."""
    get = row.__getattribute__ if isinstance(row, Artifact) else row.__getitem__
    record: dict[str, Any] = {
        "v": ARTIFACT_CHAIN_VERSION,
        "job_id": str(uuid.UUID(str(get("job_id")))),
        "created_at": _iso_utc(get("created_at")),
    }
    for name in ARTIFACT_INT_FIELDS:
        record[name] = int(get(name))
    for name in ARTIFACT_TEXT_FIELDS:
        record[name] = get(name)
    return _dumps(record)


def artifact_hash(prev_hash: str, row: Artifact | Mapping[str, Any]) -> str:
    """sha256(prev_hash ‖ artifact record), hex."""
    return hashlib.sha256((prev_hash + artifact_record(row)).encode("utf-8")).hexdigest()


def artifacts_head(session: Session) -> str:
    """The row_hash of the newest artifact (the genesis hash when there is none)."""
    head = session.scalar(select(Artifact.row_hash).order_by(Artifact.id.desc()).limit(1))
    return head or GENESIS_HASH


def append_artifacts(session: Session, rows: Sequence[Artifact]) -> list[Artifact]:
    """Chain new `Artifact` rows (in order) after the artifacts' head and add them to the session (the caller
    commits, soon: PostgreSQL holds the chain's lock until then)."""
    rows = list(rows)
    if not rows:
        return rows
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ARTIFACT_LOCK_KEY})
    session.flush()
    prev = artifacts_head(session)
    for row in rows:
        row.created_at, row.prev_hash = utcnow(), prev
        row.row_hash = prev = artifact_hash(prev, row)
    session.add_all(rows)
    session.flush()
    return rows


# --- verifying ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """A chain's length and head at some moment (what a checkpoint records)."""

    rows: int
    head: str


def _walk(
    rows: Any,
    chain: str,
    link: Any,
    check: Any,
    *,
    at: Position | None,
    expect_head: str | None = None,
    start: Position | None = None,
) -> ChainReport:
    """Recompute every link of `rows` (mappings in id order); stop at the first bad row. `link(prev, row)`
    is the row's hash, `check(row, state)` a further problem with it (or None). `at`: the row at that count
    must have that hash (the log still extends a checkpoint); `expect_head`: some row has that hash; `start`:
    `rows` continue a chain already verified that far."""
    prev, count, state = (start.head, start.rows, {}) if start is not None else (GENESIS_HASH, 0, {})
    seen_head = expect_head is None
    for row in rows:
        bad = None
        if row["prev_hash"] != prev:
            bad = (
                "prev_hash does not match the previous row's row_hash (a row before it was deleted, inserted "
                "or rewritten)"
                if count
                else "the first row's prev_hash is not the genesis hash (earlier rows were deleted)"
            )
        else:
            try:
                if row["row_hash"] != link(prev, row):
                    bad = "row_hash does not match the row's content (altered)"
                else:
                    bad = check(row, state)
            except (TypeError, ValueError) as exc:
                bad = f"row cannot be read canonically: {exc}"
        if bad:
            return ChainReport(False, count, prev, row["id"], str(row["job_id"]), bad, chain)
        prev = row["row_hash"]
        count += 1
        if at is not None and count == at.rows and prev != at.head:
            problem = (
                f"row {count} has hash {prev}, the checkpoint recorded {at.head} (the log was rewritten up "
                "to there)"
            )
            return ChainReport(False, count, prev, row["id"], str(row["job_id"]), problem, chain)
        seen_head = seen_head or prev.startswith(expect_head)
    if at is not None and count < at.rows:
        problem = (
            f"the checkpoint recorded {at.rows} rows, the log has {count} (rows at the end were deleted)"
        )
        return ChainReport(False, count, prev, None, None, problem, chain)
    if not seen_head:
        problem = f"no row has the expected head hash {expect_head} (rows at the end were deleted)"
        return ChainReport(False, count, prev, None, None, problem, chain)
    return ChainReport(True, count, prev, chain=chain)


def _sha256_text(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _decision_problem(row: Mapping[str, Any], state: dict[str, Any]) -> str | None:
    """What else is wrong with a decision whose link holds: its format went back, or its job no longer says
    what the decision recorded."""
    version = row["chain_version"]
    if version < state.get("version", 0):
        return f"chain_version {version} after a row of version {state['version']} (formats never go back)"
    state["version"] = version
    if row["job_prompt_sha256"] is None:
        return "its job is missing"
    if row["job_prompt_sha256"] != row["prompt_sha256"]:
        return "the job's prompt_sha256 differs from the decision's (altered)"
    if row["job_language"] != row["language"]:
        return "the job's language differs from the decision's (altered)"
    if version >= 2 and (row["job_labels"] or {}) != row["labels"]:
        return "the job's labels differ from the decision's (altered)"
    if row["job_prompt"] is not None and _sha256_text(row["job_prompt"]) != row["prompt_sha256"]:
        return "the job's prompt does not match its recorded sha256 (altered)"
    return None


def verify_chain(
    session: Session,
    *,
    expect_head: str | None = None,
    at: Position | None = None,
    batch_size: int = 2000,
) -> ChainReport:
    """Walk the decisions in id order and recompute every link; stop at the first bad row.

    Each decision's job must still hold the prompt hash, language (and, from chain version 2, labels) the
    decision recorded. A chain cut off at its end still links up; `expect_head` (a row_hash recorded earlier,
    or a prefix of one of at least 8 hex digits) or `at` (a checkpoint's position) catches that.
    """
    if expect_head is not None and len(expect_head) < 8:
        raise ValueError(f"expect_head: give at least 8 hex digits of a row_hash, got {expect_head!r}")
    # Plain column values straight from the database (no ORM identity map that could hold in-memory copies),
    # streamed in batches so a long log does not sit in memory.
    query = _decisions_query()
    result = session.execute(query, execution_options={"yield_per": batch_size, "stream_results": True})
    return _walk(result.mappings(), "decisions", row_hash, _decision_problem, at=at, expect_head=expect_head)


def _decisions_query() -> Any:
    return (
        select(
            *Decision.__table__.columns,
            Job.prompt_sha256.label("job_prompt_sha256"),
            Job.language.label("job_language"),
            Job.labels.label("job_labels"),
            Job.prompt.label("job_prompt"),
        )
        .outerjoin(Job, Job.id == Decision.job_id)
        .order_by(Decision.id)
    )


def extend_verified(
    session: Session, verified: Position, last_id: int, *, limit: int
) -> tuple[ChainReport, int]:
    """Continue a walk of the decisions that reached `verified` at decision id `last_id` (0: from the start)
    over at most `limit` further rows: the report and the last id walked. Cheap per call: it re-checks only
    that the row at `last_id` still has the recorded hash, not the rows before it (`verify_chain` does)."""
    if last_id:
        hash_now = session.scalar(select(Decision.row_hash).where(Decision.id == last_id))
        if hash_now != verified.head:
            problem = "row_hash changed after it was verified (the log was rewritten)"
            if hash_now is None:
                problem = "the row was deleted after it was verified"
            return ChainReport(False, verified.rows - 1, verified.head, last_id, None, problem), last_id
    walked = [last_id]

    def rows() -> Any:
        query = _decisions_query().where(Decision.id > last_id).limit(limit)
        for row in session.execute(query).mappings():
            yield row
            walked[0] = row["id"]

    report = _walk(rows(), "decisions", row_hash, _decision_problem, at=None, start=verified)
    return report, walked[0] if report.ok else last_id


def verify_artifacts(session: Session, *, at: Position | None = None, batch_size: int = 2000) -> ChainReport:
    """Walk the artifacts in id order and recompute every link (an edited storage URI or image hash, a
    deleted or inserted image row); stop at the first bad row."""
    query = select(*Artifact.__table__.columns).order_by(Artifact.id)
    result = session.execute(query, execution_options={"yield_per": batch_size, "stream_results": True})
    return _walk(result.mappings(), "artifacts", artifact_hash, lambda row, state: None, at=at)
