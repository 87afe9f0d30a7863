"""Checkpoints: the audit chains' lengths and heads, signed with a key the database does not hold.

A hash chain that lives in one database can be recomputed by whoever can write that database (drop the
triggers, edit a row, re-hash everything after it). A checkpoint, kept outside it, pins each chain's row
count and head hash at a moment: `verify` then proves that the log still extends it (the row at that count
still has that hash, and every link after it holds). The signature is HMAC-SHA256 under the operator's audit
key (`EMOE_AUDIT_KEY` or `EMOE_AUDIT_KEY_FILE`), so a forged or edited checkpoint file is refused as well.
Like AWS CloudTrail's digest files: keep them where the database's writers cannot reach.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.chain import GENESIS_HASH, ChainReport, Position, verify_artifacts, verify_chain
from audit.models import Review
from audit.reviews import ReviewChainReport, verify_reviews

FORMAT = "emoe-gate-checkpoint/1"
ALGORITHM = "HMAC-SHA256"
CHAINS = ("decisions", "artifacts", "reviews")
MIN_KEY_BYTES = 16


class CheckpointError(ValueError):
    """A checkpoint that cannot be made or read (no key, unreadable file, bad signature); one line."""


# --- the key ------------------------------------------------------------------------------------------------


def load_key(audit_key: str | None, audit_key_file: Path | None) -> bytes:
    """The audit key from the setting, else from the key file (surrounding whitespace stripped)."""
    if audit_key is not None:
        return audit_key.strip().encode("utf-8")
    if audit_key_file is None:
        raise CheckpointError(
            "no audit key: set EMOE_AUDIT_KEY or EMOE_AUDIT_KEY_FILE (`emoe-gate audit new-key` makes one)"
        )
    try:
        key = Path(audit_key_file).read_bytes().strip()
    except OSError as exc:
        raise CheckpointError(f"EMOE_AUDIT_KEY_FILE: cannot read {audit_key_file}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise CheckpointError(
            f"EMOE_AUDIT_KEY_FILE: {audit_key_file} holds {len(key)} bytes, fewer than {MIN_KEY_BYTES}"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name of the key (so a checkpoint made with another key is named as such)."""
    return hashlib.sha256(b"emoe-gate audit key id\x00" + key).hexdigest()[:16]


def _signature(body: dict[str, Any], key: bytes) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


# --- making and reading -------------------------------------------------------------------------------------


def positions(session: Session) -> tuple[dict[str, Position], list[ChainReport | ReviewChainReport]]:
    """Each chain's position now, and the reports of walking them (a checkpoint of a broken chain is
    worthless: check that every report is ok before signing)."""
    reports = verify_all(session)
    return {
        name: Position(report.rows, report.head_hash) for name, report in zip(CHAINS, reports, strict=True)
    }, reports


def make_checkpoint(at: dict[str, Position], key: bytes, *, now: datetime | None = None) -> dict[str, Any]:
    """The signed checkpoint (a JSON-ready dict) of the chains at `at`."""
    body: dict[str, Any] = {
        "format": FORMAT,
        "created_at": (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
        "algorithm": ALGORITHM,
        "key_id": key_id(key),
        "chains": {name: {"rows": at[name].rows, "head": at[name].head} for name in CHAINS},
    }
    return {**body, "signature": _signature(body, key)}


def write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write the checkpoint to `path` (atomically: a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(checkpoint, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def read_checkpoint(path: Path, key: bytes) -> tuple[dict[str, Position], str]:
    """The chains' positions a checkpoint file records, and when it was made; raises `CheckpointError` for a
    missing or malformed file, another key, or a signature that does not match."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read it: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a checkpoint (not JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a checkpoint (format is not {FORMAT})")
    if data.get("algorithm") != ALGORITHM:
        raise CheckpointError(f"checkpoint {path}: algorithm {data.get('algorithm')!r} is not {ALGORITHM}")
    chains = data.get("chains")
    if not isinstance(chains, dict) or set(chains) != set(CHAINS):
        raise CheckpointError(f"checkpoint {path}: chains must be exactly {', '.join(CHAINS)}")
    at: dict[str, Position] = {}
    for name in CHAINS:
        entry = chains[name]
        rows = entry.get("rows") if isinstance(entry, dict) else None
        head = entry.get("head") if isinstance(entry, dict) else None
        if type(rows) is not int or rows < 0 or not _is_hash(head) or (rows == 0) != (head == GENESIS_HASH):
            raise CheckpointError(f"checkpoint {path}: chains.{name} needs rows (an integer >= 0) and head")
        at[name] = Position(rows, head)
    if data.get("key_id") != key_id(key):
        raise CheckpointError(
            f"checkpoint {path}: signed with another key (key id {data.get('key_id')!r}, this audit key's is "
            f"{key_id(key)}): check EMOE_AUDIT_KEY / EMOE_AUDIT_KEY_FILE"
        )
    body = {k: v for k, v in data.items() if k != "signature"}
    signature = data.get("signature")
    if not isinstance(signature, str) or not hmac.compare_digest(signature, _signature(body, key)):
        raise CheckpointError(f"checkpoint {path}: the signature does not match (the file was edited)")
    return at, str(data.get("created_at"))


# --- verifying ----------------------------------------------------------------------------------------------


def _reviews_extend(session: Session, at: Position) -> ReviewChainReport:
    """Walk the review verdicts; then the row at the checkpoint's count must have its head hash."""
    report = verify_reviews(session)
    if not report.ok or at.rows == 0:
        return report
    if report.rows < at.rows:
        problem = f"the checkpoint recorded {at.rows} verdicts, the log has {report.rows} (rows were deleted)"
        return ReviewChainReport(False, report.rows, report.head_hash, None, problem)
    row = session.execute(
        select(Review.id, Review.row_hash).order_by(Review.id).offset(at.rows - 1).limit(1)
    ).one()
    if row.row_hash != at.head:
        problem = (
            f"verdict {at.rows} has hash {row.row_hash}, the checkpoint recorded {at.head} (the log was "
            "rewritten up to there)"
        )
        return ReviewChainReport(False, at.rows - 1, report.head_hash, row.id, problem)
    return report


def verify_all(
    session: Session, at: dict[str, Position] | None = None, *, expect_head: str | None = None
) -> list[ChainReport | ReviewChainReport]:
    """Walk every chain (decisions, artifacts, reviews); with `at` (a checkpoint's positions) also check that
    each still extends it; `expect_head`: see `verify_chain`."""
    if at is None:
        return [
            verify_chain(session, expect_head=expect_head),
            verify_artifacts(session),
            verify_reviews(session),
        ]
    return [
        verify_chain(session, at=at["decisions"], expect_head=expect_head),
        verify_artifacts(session, at=at["artifacts"]),
        _reviews_extend(session, at["reviews"]),
    ]
