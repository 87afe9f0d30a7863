"""Bulk-insert synthetic jobs and decisions for report, dashboard and benchmark tests (not hash-chained)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert

from audit.models import Artifact, Decision, Job

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def seed(engine: Engine, rows: Iterable[Mapping[str, Any]], *, chunk: int = 5000) -> int:
    """Insert one job + decision (+ artifact when `quality` or `image` is given) per row; returns the count.

    Row keys: score, action, language; optional prompt, labels, quality, quality_metric, created_at, minutes
    (offset from BASE_TIME), policy_name, policy_version, policy_mode, shadow_action, rule, storage_uri,
    sha256.
    """
    jobs: list[dict] = []
    decisions: list[dict] = []
    artifacts: list[dict] = []
    total = 0

    def flush() -> None:
        with engine.begin() as conn:
            if jobs:
                conn.execute(insert(Job), jobs)
                conn.execute(insert(Decision), decisions)
            if artifacts:
                conn.execute(insert(Artifact), artifacts)
        jobs.clear()
        decisions.clear()
        artifacts.clear()

    for i, row in enumerate(rows):
        job_id = uuid.uuid4()
        prompt = row.get("prompt", f"prompt number {i}")
        sha = hashlib.sha256((prompt or str(i)).encode()).hexdigest()
        created = row.get("created_at") or BASE_TIME + timedelta(minutes=row.get("minutes", i))
        action = row["action"]
        jobs.append(
            {
                "id": job_id,
                "tenant": row.get("tenant", "t"),
                "prompt": prompt,
                "prompt_sha256": sha,
                "prompt_chars": len(prompt or ""),
                "prompt_words": len((prompt or "").split()),
                "language": row.get("language"),
                "labels": row.get("labels", {}),
                "params": {},
                "mode": "fast",
                "status": "halted" if action == "halt" else "completed",
                "attempts": 1,
                "created_at": created,
                "updated_at": created,
                "negative_prompt": "",
            }
        )
        decisions.append(
            {
                "job_id": job_id,
                "created_at": created,
                "tenant": row.get("tenant", "t"),
                "prompt_sha256": sha,
                "language": row.get("language"),
                "score": float(row["score"]),
                "eu": float(row["score"]) / 100,
                "num_experts": 4,
                "fingerprint": "f" * 64,
                "scoring": {},
                "expert_deviation": [],
                "policy_name": row.get("policy_name", "default"),
                "policy_version": row.get("policy_version", "1"),
                "policy_hash": "p" * 64,
                "policy_mode": row.get("policy_mode", "enforce"),
                "flag_at": 0.5,
                "halt_at": 0.8,
                "rule": row.get("rule", "thresholds"),
                "action": action,
                "shadow_action": row.get("shadow_action"),
                "reason": "",
                "timings": {},
                "prev_hash": "0" * 64,
                "row_hash": uuid.uuid4().hex * 2,
            }
        )
        if row.get("quality") is not None or row.get("storage_uri"):
            artifacts.append(
                {
                    "job_id": job_id,
                    "path_index": 0,
                    "storage_uri": row.get("storage_uri", "file:///dev/null"),
                    "sha256": row.get("sha256", "a" * 64),
                    "size_bytes": 1,
                    "width": 8,
                    "height": 8,
                    "quality": row.get("quality"),
                    "quality_metric": row.get(
                        "quality_metric", "clip_score" if row.get("quality") is not None else None
                    ),
                    "created_at": created,
                    "prev_hash": "0" * 64,
                    "row_hash": uuid.uuid4().hex * 2,
                }
            )
        total += 1
        if len(jobs) >= chunk:
            flush()
    flush()
    return total


def save_tiny_clip(folder: Path) -> Path:
    """A tiny random CLIPModel (CLIP's 49,408-token vocabulary, 32x32 images) saved like a real checkpoint."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).eval().save_pretrained(folder)
    return folder
