"""`decide()`: a score, the request's context and a policy in; halt, flag or continue out, and why.

A threshold fires when the score is strictly above it, which is what the split-conformal calibration
guarantees rates for (`policies.calibration`). A score measured under another scoring configuration than
the policy was calibrated for is refused, never decided.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from policies.policy import Policy

ACTIONS = ("continue", "flag", "halt")


class ScoreLike(Protocol):
    """What a policy reads of a score (read-only, so frozen scores such as `emoe.Score` qualify)."""

    @property
    def score(self) -> float: ...

    @property
    def fingerprint(self) -> str: ...


class FingerprintMismatch(ValueError):
    """The score was measured under a different scoring configuration than the policy was calibrated for."""


@dataclass(frozen=True)
class DecisionContext:
    """What besides the score a policy may look at."""

    language: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """The outcome of `decide()`. In shadow mode `action` is always "continue" and `shadow_action` says what
    the policy would have done."""

    action: str
    shadow_action: str | None
    rule: str
    threshold: float | None
    flag_at: float
    halt_at: float
    policy_name: str
    policy_version: str
    policy_hash: str
    policy_id: str
    mode: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ActionLike(Protocol):
    action: str
    shadow_action: str | None


def effective_action(decision: ActionLike) -> str:
    """What the policy decided or, in shadow mode, would have decided: what reports, replays and reviews
    count (`audit.report_queries.effective_action_sql` is the same in SQL)."""
    return decision.shadow_action or decision.action


def decide(score: ScoreLike, context: DecisionContext, policy: Policy) -> Decision:
    """Apply `policy` to `score` in `context`."""
    # 1. refuse scores from another scoring configuration, and scores that are not numbers
    if score.fingerprint != policy.fingerprint:
        raise FingerprintMismatch(
            f"fingerprint: the score was measured under scoring configuration {score.fingerprint[:16]}…, "
            f"policy {policy.id} is calibrated for {policy.fingerprint[:16]}…; recalibrate the policy "
            "(`emoe-gate calibrate`) or score with the configuration it was calibrated for"
        )
    value = float(score.score)
    if not math.isfinite(value):
        raise ValueError(f"score: must be a finite number, got {score.score!r}")

    # 2. pick the thresholds (a language override, else the defaults)
    thresholds, override = policy.thresholds_for(context.language)
    prefix = f"languages.{override}." if override else ""

    # 3. the highest threshold the score is above fires
    if value > thresholds.halt_at:
        action, rule, threshold = "halt", prefix + "halt_at", thresholds.halt_at
        reason = f"score {value:.6g} > {rule} {threshold:.6g}"
    elif value > thresholds.flag_at:
        action, rule, threshold = "flag", prefix + "flag_at", thresholds.flag_at
        reason = f"score {value:.6g} > {rule} {threshold:.6g}"
    else:
        action, rule, threshold = "continue", prefix + "below_flag_at", thresholds.flag_at
        reason = f"score {value:.6g} <= {prefix}flag_at {threshold:.6g}"

    # 4. shadow mode records the action and lets the job continue
    shadow_action = None
    if policy.mode == "shadow":
        shadow_action, action = action, "continue"
        reason = f"shadow mode, would {shadow_action}: {reason}"

    return Decision(
        action=action,
        shadow_action=shadow_action,
        rule=rule,
        threshold=threshold,
        flag_at=thresholds.flag_at,
        halt_at=thresholds.halt_at,
        policy_name=policy.name,
        policy_version=policy.version,
        policy_hash=policy.hash,
        policy_id=policy.id,
        mode=policy.mode,
        reason=reason,
    )
