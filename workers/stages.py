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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit import jobs as repo
from audit.db import session_scope
from audit.language import detect_language
from audit.models import Artifact, Job
from settings import Settings
from workers import stage_metrics
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


class StageError(RuntimeError):
    """A stage failed on something other than its job; the claims were released and `outcome.retry_in_s`
    says when to retry."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class GateError(StageError):
    """Scoring failed; the batch's claims were released."""


class RenderError(StageError):
    """Rendering failed; the job's claim was released."""


@dataclass
class GateJob:
    """A job claimed for scoring and what the gate needs of it."""

    claim: repo.Claim
    prompt: str
    language: str | None
    labels: dict[str, str]


def run_gate(job_id: uuid.UUID, settings: Settings, runtime: Runtime) -> Outcome:
    """Score this job and any others waiting (one batch across requests), decide, record, move each on."""
    outcome = Outcome()
    batch = claim_for_gate(job_id, settings, outcome)
    if not batch:
        return outcome
    scores, gate_s = score_batch(batch, settings, runtime, outcome)
    record_decisions(batch, scores, gate_s, settings, runtime, outcome)
    return outcome


def claim_for_gate(job_id: uuid.UUID, settings: Settings, outcome: Outcome) -> list[GateJob]:
    """1. Claim this job, wait `gate_batch_wait_ms` for concurrent submissions, then fill the batch with other
    queued jobs; detect the language of those stored without one (the gateway keeps detection off the
    submission path; it is written with the decision)."""
    with session_scope(settings.resolved_database_url) as session:
        first = _claim(session, job_id, "scoring", settings, outcome)
    if first is None:
        return []  # e.g. a neighbour's batch took it: no wait for a batch this message will not score
    if settings.gate_batch_size > 1 and settings.gate_batch_wait_ms:
        time.sleep(settings.gate_batch_wait_ms / 1000)
    with session_scope(settings.resolved_database_url) as session:
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
        jobs = {j.id: j for j in repo.get_jobs(session, [c.job_id for c in claims])}
        batch = [
            GateJob(
                c, jobs[c.job_id].prompt or "", jobs[c.job_id].language, dict(jobs[c.job_id].labels or {})
            )
            for c in claims
            if c.job_id in jobs
        ]
    for job in batch:
        if job.language is None:
            job.language = detect_language(job.prompt)
    return batch


def score_batch(
    batch: list[GateJob], settings: Settings, runtime: Runtime, outcome: Outcome
) -> tuple[list[Any], float]:
    """2. Score the batch (per-request routing makes a batch score exactly like each prompt alone); the
    scores and the seconds it took. On failure every claim is released and GateError raised."""
    from emoe import score as emoe_score

    started = time.perf_counter()
    try:
        scores = emoe_score([job.prompt for job in batch], runtime.gate_config, runtime.ensemble)
    except Exception as exc:
        log.exception("gate scoring failed for %d job(s)", len(batch))
        with session_scope(settings.resolved_database_url) as session:
            for job in batch:
                repo.release(session, job.claim, f"scoring failed: {type(exc).__name__}: {exc}")
        outcome.retry_in_s = 1.0
        outcome.note = "error"
        raise GateError(str(exc), outcome) from exc
    gate_s = time.perf_counter() - started
    stage_metrics.GATE_LATENCY.observe(settings, gate_s)
    return scores, gate_s


def record_decisions(
    batch: list[GateJob],
    scores: list[Any],
    gate_s: float,
    settings: Settings,
    runtime: Runtime,
    outcome: Outcome,
) -> None:
    """3. Decide and record each job: the decision row and the status change commit together."""
    from audit.chain import append_decision
    from policies import DecisionContext, decide

    url = settings.resolved_database_url
    policy = runtime.policy
    for item, score in zip(batch, scores, strict=True):
        c = item.claim
        try:
            decision = decide(score, DecisionContext(language=item.language, labels=item.labels), policy)
        except ValueError as exc:  # e.g. FingerprintMismatch: the policy is for another scoring configuration
            with session_scope(url) as session:
                if repo.fail(session, c, f"policy refused the score: {exc}"):
                    _dead(session, c.job_id, outcome)
            continue
        with session_scope(url) as session:
            job = repo.holds(session, c)
            if job is None:
                continue  # cancelled or taken over meanwhile: write nothing
            # before append_decision, which copies the language into the decision row
            status = repo.record_decision(
                job, decision.action, on_flag=policy.on_flag, on_halt=policy.on_halt, language=item.language
            )
            timings = {
                **dict(getattr(score, "timings_ms", {}) or {}),
                "gate_batch_ms": gate_s * 1000,
                "gate_batch_size": len(batch),
                "attempt": c.attempt,
            }
            append_decision(session, job, score, decision, timings)
            if status == "rendering":
                outcome.render.append(job.id)
            if decision.action == "halt":
                _hook(job, "halted", outcome)
            elif decision.action == "flag":
                _hook(job, "flagged", outcome)
            if status == "completed":
                _hook(job, "completed", outcome)


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
    """`should_stop` for each job of a render: True once its claim no longer holds (the job was cancelled or
    taken over). The database is asked about all the batch's claims in one query, at most every `every_s`."""

    def __init__(self, url: str, claims: list[repo.Claim], every_s: float = 0.5) -> None:
        self.url, self.claims, self.every_s = url, claims, every_s
        self.checked = time.monotonic()
        self.held = {c.job_id for c in claims}

    def stop_check(self, claim: repo.Claim) -> Callable[[], bool]:
        """The StopCheck of one job of the batch."""

        def stopped() -> bool:
            self._refresh()
            return claim.job_id not in self.held

        return stopped

    def _refresh(self) -> None:
        if time.monotonic() - self.checked >= self.every_s:
            self.checked = time.monotonic()
            with session_scope(self.url) as session:
                self.held = repo.still_held(session, [c for c in self.claims if c.job_id in self.held])


@dataclass
class RenderJob:
    """A job claimed for rendering: its prompt, mode and render configuration (or why it has none)."""

    claim: repo.Claim
    prompt: str
    mode: str
    config: Any  # emoe.ScoreConfig, or the ValueError that the job's settings gave


def run_render(job_id: uuid.UUID, settings: Settings, runtime: Runtime) -> Outcome:
    """Finish this accepted job into its image(s) (1 in fast mode, one per expert path in full mode), with up
    to `render_batch_size - 1` other accepted jobs that can share its denoising loop. A render whose job is
    cancelled stops at the next denoising step and leaves no files; its neighbours go on."""
    outcome = Outcome()
    batch = claim_for_render(job_id, settings, runtime, outcome)
    if not batch:
        return outcome
    results = render_batch(batch, settings, runtime)
    failure: BaseException | None = None
    for index, (job, result) in enumerate(zip(batch, results, strict=True)):
        note = record_render(job, result, settings, outcome)
        if index == 0:
            outcome.note = note
            failure = result if note == "error" else None
    if failure is not None:  # this task's own job: retried by this task (the others by their own messages)
        outcome.retry_in_s = 1.0
        raise RenderError(str(failure), outcome) from failure
    return outcome


def _render_config(runtime: Runtime, job: Job) -> Any:
    try:
        return runtime.render_config(dict(job.params or {}), job.negative_prompt or "")
    except ValueError as exc:
        return exc


def claim_for_render(
    job_id: uuid.UUID, settings: Settings, runtime: Runtime, outcome: Outcome
) -> list[RenderJob]:
    """1. Claim this job, then other jobs waiting to be rendered that can share its batch (same mode, and
    render configurations that differ in seed and negative prompt only: the same steps, guidance and size,
    the params that `Runtime.render_config` takes besides the seed; the scheduler is the worker's). A job
    without classifier-free guidance renders alone (`emoe.generation.batches_exactly`)."""
    from emoe.generation import batches_exactly

    gate, ensemble = runtime.gate_config, runtime.ensemble
    defaults = {
        "steps": gate.steps,
        "guidance": gate.guidance,
        "height": gate.height or ensemble.default_height,
        "width": gate.width or ensemble.default_width,
    }
    with session_scope(settings.resolved_database_url) as session:
        first = _claim(session, job_id, "rendering", settings, outcome)
        if first is None:
            return []
        claims = [first]
        config = _render_config(runtime, repo.get_job(session, job_id))
        if not isinstance(config, ValueError) and batches_exactly(config):
            claims += repo.claim_render_batch(
                session,
                first,
                limit=settings.render_batch_size - 1,
                defaults=defaults,
                max_attempts=settings.max_attempts,
                owner=worker_identity(),
            )
        jobs = {j.id: j for j in repo.get_jobs(session, [c.job_id for c in claims])}
        return [
            RenderJob(
                c, jobs[c.job_id].prompt or "", jobs[c.job_id].mode, _render_config(runtime, jobs[c.job_id])
            )
            for c in claims
            if c.job_id in jobs
        ]


def render_batch(batch: list[RenderJob], settings: Settings, runtime: Runtime) -> list[Any]:
    """2. Generate the batch in one denoising loop; one result per job: a Generation, the ValueError its
    request gave, GenerationCancelled, or another exception. The decision was taken by the gate, so nothing
    here halts. If a batch as a whole fails, each of its jobs is tried alone: one job cannot fail the rest."""
    from emoe import GenerationCancelled, generate, generate_batch

    url = settings.resolved_database_url
    results: list[Any] = [job.config if isinstance(job.config, ValueError) else None for job in batch]
    todo = [i for i, result in enumerate(results) if result is None]
    by_mode: dict[str, list[int]] = {}
    for i in todo:
        by_mode.setdefault(batch[i].mode, []).append(i)
    for mode, members in by_mode.items():
        watch = _ClaimWatch(url, [batch[i].claim for i in members])
        started = time.perf_counter()
        try:
            done = generate_batch(
                [(batch[i].prompt, batch[i].config) for i in members],
                runtime.ensemble,
                mode=mode,  # type: ignore[arg-type]
                should_stop=[watch.stop_check(batch[i].claim) for i in members],
                gate=mode != "fast",  # the gate stage decided: Fast EMoE's image is the ordinary path alone
            )
            seconds = time.perf_counter() - started
            log.info(
                "render batch of %d job(s) in %.2f s: %s",
                len(members),
                seconds,
                " ".join(str(batch[i].claim.job_id) for i in members),
            )
            stage_metrics.RENDER_BATCH_JOBS.observe(settings, len(members))
            stage_metrics.RENDER_BATCH_SECONDS.observe(settings, seconds)
        except Exception as exc:
            if len(members) == 1:
                if not isinstance(exc, ValueError):
                    log.exception("render failed for job %s", batch[members[0]].claim.job_id)
                done = [exc]
            else:
                log.exception("render batch of %d job(s) failed; rendering each alone", len(members))
                done = [_alone(batch[i], url, runtime, generate, GenerationCancelled) for i in members]
        for i, result in zip(members, done, strict=True):
            results[i] = result
    return results


def _alone(job: RenderJob, url: str, runtime: Runtime, generate: Any, cancelled: type) -> Any:
    try:
        return generate(
            job.prompt,
            job.config,
            runtime.ensemble,
            mode=job.mode,
            should_stop=_ClaimWatch(url, [job.claim]).stop_check(job.claim),
            gate=job.mode != "fast",
        )
    except (ValueError, cancelled) as exc:
        return exc
    except Exception as exc:
        log.exception("render failed for job %s", job.claim.job_id)
        return exc


def record_render(job: RenderJob, result: Any, settings: Settings, outcome: Outcome) -> str:
    """3. Record one job's result: write its images (idempotent paths: a redelivery overwrites the same
    bytes) and their rows, then complete it; or fail it (its request cannot be rendered), or release it (an
    error not its own). Returns the note: done, stopped, failed or error."""
    from emoe import Generation, GenerationCancelled

    url = settings.resolved_database_url
    c = job.claim
    if isinstance(result, GenerationCancelled):
        log.info("render of job %s stopped: the job was cancelled or taken over", c.job_id)
        return "stopped"
    if isinstance(result, ValueError):  # the request itself cannot be rendered (a bad size or setting)
        with session_scope(url) as session:
            if repo.fail(session, c, f"cannot render: {result}"):
                _dead(session, c.job_id, outcome)
        return "failed"
    if not isinstance(result, Generation):
        with session_scope(url) as session:
            repo.release(session, c, f"rendering failed: {type(result).__name__}: {result}")
        return "error"
    folder = Path(settings.resolved_artifacts_dir) / str(c.job_id)
    written = []
    for index, image in enumerate(result.images):
        path = folder / f"{index}.png"
        digest, size = _write_png(image, path)
        written.append((index, path, digest, size, image.width, image.height))
    with session_scope(url) as session:
        held = repo.holds(session, c)
        if held is None:
            # cancelled meanwhile: leave no files; taken over: the new holder writes the same paths itself
            current = repo.get_job(session, c.job_id)
            if current is None or current.status == "cancelled":
                for _, path, *_ in written:
                    path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            return "stopped"
        from audit.chain import append_artifacts  # the artifacts' hash chain

        append_artifacts(
            session,
            [
                Artifact(
                    job_id=held.id,
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
        _hook(held, repo.complete(held), outcome)  # completed, or held for review
    return "done"


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
