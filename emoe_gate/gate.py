"""The gate in process, for Python pipelines that already run diffusers.

    from emoe_gate.gate import load_gate

    gate = load_gate()                      # the shipped reference ensemble, the bundled policy
    for result in gate(["a small red circle on the left", "pieni punainen ympyrä vasemmalla"]):
        print(result.action, result.score, result.prompt)

    halt = gate.callback(prompt)            # diffusers' callback_on_step_end
    images = pipe(prompt, callback_on_step_end=halt).images
    if halt.halted: ...                     # the pipeline stopped after its first step

A gate scores with the scoring configuration its policy was calibrated for (as the service does: the
pipeline's own seed, steps and size do not move the score) and refuses to start with a policy calibrated
for another. The audit log is optional: pass `audit=` any object with `record(results)` (`SqlAuditLog`
writes to the service's database), or nothing. torch and the EMoE core load on first use, not at import.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from policies import Decision, DecisionContext, Policy, bundled_policy_path, decide, load_policy


@dataclass(frozen=True)
class GateResult:
    """One prompt through the gate: its score (`emoe.Score`), the policy's decision and the language used."""

    prompt: str
    score: Any
    decision: Decision
    language: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def action(self) -> str:
        """halt, flag or continue (in shadow mode always continue; `decision.shadow_action` says more)."""
        return self.decision.action

    @property
    def halted(self) -> bool:
        return self.decision.action == "halt"

    @property
    def flagged(self) -> bool:
        return self.decision.action == "flag"


class AuditLog(Protocol):
    """Where a gate records its results, if anywhere."""

    def record(self, results: Sequence[GateResult]) -> None: ...


class Gate:
    """An ensemble, a policy and the scoring configuration the policy was calibrated for."""

    def __init__(
        self,
        ensemble: Any,
        policy: Policy | None = None,
        *,
        config: Any = None,
        audit: AuditLog | None = None,
        detect_language: bool = True,
    ) -> None:
        from emoe import default_score_config, scoring_fingerprint

        self.ensemble = ensemble
        self.policy = policy or load_policy(bundled_policy_path(_dtype_name(ensemble)))
        self.config = config or default_score_config(ensemble)
        self.audit = audit
        self.detect_language = detect_language
        fingerprint = scoring_fingerprint(self.config, ensemble)
        if fingerprint != self.policy.fingerprint:
            raise ValueError(
                f"policy {self.policy.id} was calibrated for scoring fingerprint "
                f"{self.policy.fingerprint[:12]}, but ensemble {ensemble.name!r} scores with "
                f"{fingerprint[:12]}: "
                "calibrate a policy for it (`emoe-gate calibrate`) and pass it as `policy`"
            )

    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        languages: Sequence[str | None] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[GateResult]:
        """Score `prompts` at the first denoising step (one batch) and decide each under the policy."""
        from emoe import score

        # NFC, the form the service scores, hashes and stores (so a prompt scores here as it does there)
        texts = [
            unicodedata.normalize("NFC", p) for p in ([prompts] if isinstance(prompts, str) else prompts)
        ]
        if languages is not None and len(languages) != len(texts):
            raise ValueError(f"languages: {len(languages)} given for {len(texts)} prompts")
        langs = list(languages) if languages is not None else [self._language(p) for p in texts]
        scores = score(texts, self.config, self.ensemble)
        tags = dict(labels or {})
        results = [
            GateResult(
                text, s, decide(s, DecisionContext(language=lang, labels=tags), self.policy), lang, tags
            )
            for text, s, lang in zip(texts, scores, langs, strict=True)
        ]
        if self.audit is not None:
            self.audit.record(results)
        return results

    def check(self, prompt: str, **kwargs: Any) -> GateResult:
        """One prompt through the gate."""
        return self(prompt, **kwargs)[0]

    def callback(self, prompt: str | Sequence[str], *, halt_on: Sequence[str] = ("halt",)) -> HaltOnGate:
        """A diffusers `callback_on_step_end` that gates `prompt` and, if the decision is in `halt_on`,
        interrupts the pipeline after its first step."""
        return HaltOnGate(self, prompt, halt_on=tuple(halt_on))

    def _language(self, prompt: str) -> str | None:
        if not self.detect_language:
            return None
        from audit.language import detect_language  # lingua only; no database

        return detect_language(prompt)


class HaltOnGate:
    """diffusers' `callback_on_step_end` protocol: `(pipeline, step, timestep, callback_kwargs) -> kwargs`.

    At the end of the first step it gates the prompt(s); if any decision is in `halt_on` it sets the
    pipeline's `_interrupt` (diffusers then skips every later step) and zeroes the latents, so the pipeline
    returns a blank image, never a rendering of the halted prompt. `results`, `halted` and `step` tell the
    caller what happened."""

    def __init__(self, gate: Gate, prompt: str | Sequence[str], *, halt_on: tuple[str, ...] = ("halt",)):
        self.gate = gate
        self.prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.halt_on = halt_on
        self.results: list[GateResult] = []
        self.halted = False
        self.step: int | None = None

    @property
    def held(self) -> bool:
        """A flagged prompt under a policy that holds flagged work for human review."""
        return any(r.flagged for r in self.results) and self.gate.policy.on_flag == "hold"

    def __call__(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict:
        if step != 0:
            return callback_kwargs
        self.results = self.gate(self.prompts)
        if any(r.action in self.halt_on for r in self.results):
            self.halted, self.step = True, step
            pipeline._interrupt = True
            latents = callback_kwargs.get("latents")
            if latents is not None:
                callback_kwargs["latents"] = latents * 0
        return callback_kwargs


def load_gate(
    ensemble: str | Path = "default",
    *,
    policy: str | Path | Policy | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    audit: AuditLog | None = None,
) -> Gate:
    """Load an ensemble (`default`: the shipped reference ensemble; a segmoe YAML or a checkpoint folder)
    and a policy (a file, a `Policy`, or the bundled one for `dtype`)."""
    from emoe import load_ensemble

    model = load_ensemble(str(ensemble), device=device, dtype=dtype)
    if policy is None:
        chosen = load_policy(bundled_policy_path(dtype))
    elif isinstance(policy, Policy):
        chosen = policy
    else:
        chosen = load_policy(policy)
    return Gate(model, chosen, audit=audit)


def _dtype_name(ensemble: Any) -> str:
    return str(getattr(ensemble.unet, "dtype", "float32")).removeprefix("torch.")


class SqlAuditLog:
    """Record each result in the service's audit log (`database_url`, e.g. the embedded
    `sqlite:///~/.emoe-gate/emoe.db` or PostgreSQL) as a `score_only` job of `tenant` with its decision
    appended to the hash chain, so reports, replay and `audit verify` see it."""

    def __init__(self, database_url: str, *, tenant: str = "in-process") -> None:
        self.database_url = database_url
        self.tenant = tenant

    def record(self, results: Sequence[GateResult]) -> None:
        from audit import jobs as repo
        from audit.chain import append_decision
        from audit.db import ensure_schema, is_sqlite, resolve_url, session_scope

        url = resolve_url(self.database_url)
        if is_sqlite(url):
            ensure_schema(url)
        with session_scope(url) as session:
            for r in results:
                job, _ = repo.create_job(
                    session,
                    tenant=self.tenant,
                    prompt=r.prompt,
                    negative_prompt="",
                    mode="score_only",
                    params={},
                    labels=dict(r.labels),
                    language=r.language,
                    callback_url=None,
                )
                repo.record_decision(job, r.decision.action)
                append_decision(session, job, r.score, r.decision, {"source": "in-process"})
