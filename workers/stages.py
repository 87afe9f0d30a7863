"""The task bodies, shared by Celery tasks and the embedded in-process worker: gate, render, hook.

Each takes ids, re-reads rows, works, and returns what to enqueue next (the caller enqueues after the commit).
A stage first *claims* its job in SQL (see `audit.jobs`); every write re-checks the claim, so a redelivered
task never writes a second decision or image.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit import jobs as repo
from audit.db import session_scope
from audit.language import detect_language
from audit.models import Artifact, Job
from settings import Settings
from workers import latency
from workers.heartbeat import owner_alive, worker_identity
from workers.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a stage asks for next: renders, webhooks, and a retry of itself after `retry_in_s`."""

    render: list[uuid.UUID] = field(default_factory=list)
    hooks: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    retry_in_s: float | None = None
    note: str = ""


def _claim(session: Any, job_id: uuid.UUID, stage: str, settings: Settings, outcome: Outcome) -> Any:
    """Claim the job for `stage`, or record in `outcome` why not (busy: retry later; dead: dead-lettered)."""
    claim = repo.claim(
        session,
        job_id,
        stage,
        lease_s=_lease_s(settings),
        max_attempts=settings.max_attempts,
        owner=worker_identity(),
        owner_alive=owner_alive(settings),
    )
    if not isinstance(claim, repo.ClaimRefused):
        return claim
    if claim.reason == "busy":
        outcome.retry_in_s = claim.retry_in_s
    elif claim.reason == "dead":
        _dead(session, job_id, outcome)
    outcome.note = claim.reason
    return None


def _lease_s(settings: Settings) -> float:
    return float(settings.job_timeout_s)


def _hook(job: Job, event: str, outcome: Outcome) -> None:
    if job.callback_url:
        outcome.hooks.append((job.id, event))


def _dead(session: Any, job_id: uuid.UUID, outcome: Outcome) -> None:
    job = repo.get_job(session, job_id)
    if job is not None:
        _hook(job, "failed", outcome)


# --- gate ---------------------------------------------------------------------------------------------------


def run_gate(job_id: uuid.UUID, settings: Settings, runtime: Runtime) -> Outcome:
    """Score this job and any others waiting (one batch across requests), decide, record, move each on."""
    from emoe import score as emoe_score
    from policies import DecisionContext, decide

    url = settings.resolved_database_url
    outcome = Outcome()
    # 1. let a few concurrent submissions arrive, so that they share the batch
    if settings.gate_batch_size > 1 and settings.gate_batch_wait_ms:
        time.sleep(settings.gate_batch_wait_ms / 1000)
    # 2. claim this job, then fill the batch with other queued jobs
    with session_scope(url) as session:
        first = _claim(session, job_id, "scoring", settings, outcome)
        if first is None:
            return outcome
        claims = [
            first,
            *repo.claim_waiting(
                session,
                limit=settings.gate_batch_size - 1,
                max_attempts=settings.max_attempts,
                exclude=[job_id],
                owner=worker_identity(),
            ),
        ]
        jobs = {
            j.id: (j.prompt or "", j.language, dict(j.labels or {}))
            for j in repo.get_jobs(session, [c.job_id for c in claims])
        }
    # the gateway stores a job without its language (detection is kept off the submission path): detect it
    # here, once per job; it is written with the decision, so a scored job always has it
    detected = {
        job_id: detect_language(prompt) for job_id, (prompt, language, _) in jobs.items() if language is None
    }
    jobs = {job_id: (p, detected.get(job_id, lang), labels) for job_id, (p, lang, labels) in jobs.items()}
    # 3. score the batch (per-request routing makes a batch score exactly like each prompt alone)
    started = time.perf_counter()
    try:
        scores = emoe_score([jobs[c.job_id][0] for c in claims], runtime.gate_config, runtime.ensemble)
    except Exception as exc:
        log.exception("gate scoring failed for %d job(s)", len(claims))
        with session_scope(url) as session:
            for c in claims:
                repo.release(session, c, f"scoring failed: {type(exc).__name__}: {exc}")
        outcome.retry_in_s = 1.0
        outcome.note = "error"
        raise GateError(str(exc), outcome) from exc
    gate_s = time.perf_counter() - started
    latency.observe(settings, gate_s)
    # 4. decide and record each job: the decision row and the status change commit together
    for c, score in zip(claims, scores, strict=True):
        _prompt, language, labels = jobs[c.job_id]
        try:
            decision = decide(score, DecisionContext(language=language, labels=labels), runtime.policy)
        except ValueError as exc:  # e.g. FingerprintMismatch: the policy is for another scoring configuration
            with session_scope(url) as session:
                if repo.move(session, c, "failed", error=f"policy refused the score: {exc}"):
                    _dead(session, c.job_id, outcome)
            continue
        with session_scope(url) as session:
            job = repo.holds(session, c)
            if job is None:
                continue  # cancelled or taken over meanwhile: write nothing
            if job.language is None:
                job.language = language  # before append_decision, which copies it into the decision row
            policy = runtime.policy
            repo.record_decision(job, decision.action, on_flag=policy.on_flag, on_halt=policy.on_halt)
            timings = {
                **dict(getattr(score, "timings_ms", {}) or {}),
                "gate_batch_ms": gate_s * 1000,
                "gate_batch_size": len(claims),
                "attempt": c.attempt,
            }
            from audit.chain import append_decision

            append_decision(session, job, score, decision, timings)
            if job.status == "rendering":
                outcome.render.append(job.id)
            if decision.action == "halt":
                _hook(job, "halted", outcome)
            elif decision.action == "flag":
                _hook(job, "flagged", outcome)
            if job.status == "completed":
                _hook(job, "completed", outcome)
    return outcome


class GateError(RuntimeError):
    """Scoring failed; the claims were released and `outcome.retry_in_s` says when to retry."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


# --- render -------------------------------------------------------------------------------------------------


def _write_png(image: Any, path: Path) -> tuple[str, int]:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: a reader never sees half an image
    return hashlib.sha256(data).hexdigest(), len(data)


class _ClaimWatch:
    """`should_stop` for a render: True once the claim no longer holds (the job was cancelled or taken over),
    asked of the database at most every `every_s`."""

    def __init__(self, url: str, claim: repo.Claim, every_s: float = 0.5) -> None:
        self.url, self.claim, self.every_s = url, claim, every_s
        self.checked = time.monotonic()

    def __call__(self) -> bool:
        if time.monotonic() - self.checked < self.every_s:
            return False
        self.checked = time.monotonic()
        with session_scope(self.url) as session:
            return not repo.still_holds(session, self.claim)


def run_render(job_id: uuid.UUID, settings: Settings, runtime: Runtime) -> Outcome:
    """Finish an accepted job into its image(s) (1 in fast mode, one per expert path in full mode). A render
    whose job is cancelled stops at the next denoising step and leaves no files."""
    from emoe import GenerationCancelled, generate

    url = settings.resolved_database_url
    outcome = Outcome()
    # 1. claim
    with session_scope(url) as session:
        c = _claim(session, job_id, "rendering", settings, outcome)
        if c is None:
            return outcome
        job = repo.get_job(session, job_id)
        prompt, mode = job.prompt or "", job.mode
        params, negative = dict(job.params or {}), job.negative_prompt or ""
    # 2. generate; the decision was taken by the gate, so nothing here halts
    try:
        config = runtime.render_config(params, negative)
        watch = _ClaimWatch(url, c)
        generation = generate(prompt, config, runtime.ensemble, mode=mode, decide=None, should_stop=watch)
    except GenerationCancelled:
        log.info("render of job %s stopped: the job was cancelled or taken over", job_id)
        outcome.note = "stopped"
        return outcome
    except ValueError as exc:  # the request itself cannot be rendered (a bad size or setting): no retry helps
        with session_scope(url) as session:
            if repo.move(session, c, "failed", error=f"cannot render: {exc}"):
                _dead(session, job_id, outcome)
        outcome.note = "failed"
        return outcome
    except Exception as exc:
        log.exception("render failed for job %s", job_id)
        with session_scope(url) as session:
            repo.release(session, c, f"rendering failed: {type(exc).__name__}: {exc}")
        outcome.retry_in_s = 1.0
        outcome.note = "error"
        raise GateError(str(exc), outcome) from exc
    # 3. write the images (idempotent paths: a redelivery overwrites the same bytes), then record them
    folder = Path(settings.resolved_artifacts_dir) / str(job_id)
    written = []
    for index, image in enumerate(generation.images):
        path = folder / f"{index}.png"
        digest, size = _write_png(image, path)
        written.append((index, path, digest, size, image.width, image.height))
    with session_scope(url) as session:
        job = repo.holds(session, c)
        if job is None:
            # cancelled meanwhile: leave no files; taken over: the new holder writes the same paths itself
            current = repo.get_job(session, job_id)
            if current is None or current.status == "cancelled":
                for _, path, *_ in written:
                    path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            outcome.note = "stopped"
            return outcome
        from audit.chain import append_artifacts

        append_artifacts(
            session,
            [
                Artifact(
                    job_id=job.id,
                    path_index=index,
                    storage_uri=f"file://{path}",
                    sha256=digest,
                    size_bytes=size,
                    width=width,
                    height=height,
                )
                for index, path, digest, size, width, height in written
            ],
        )
        _hook(job, repo.complete(job), outcome)  # completed, or held for review
    return outcome


# --- recovery -----------------------------------------------------------------------------------------------


def find_stalled(settings: Settings, live_workers: set[str] | None = None) -> list[repo.Stalled]:
    """Jobs whose broker message may be lost (queued/rendering too long, a claim past its lease) or whose
    claim's owner is not among `live_workers` (when the caller knows who is alive)."""
    with session_scope(settings.resolved_database_url) as session:
        found = repo.stalled(
            session,
            older_than_s=settings.recover_after_s,
            lease_s=_lease_s(settings),
            live_owners=live_workers,
        )
        repo.touch(session, [s.job_id for s in found])
    return found
