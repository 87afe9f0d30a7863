"""Pure decision logic: policy files, decide(), calibration and replay. No torch, no SQL, no HTTP."""

from policies.decision import (
    ACTIONS,
    Decision,
    DecisionContext,
    FingerprintMismatch,
    ScoreLike,
    decide,
    effective_action,
)
from policies.policy import (
    Policy,
    PolicyError,
    Thresholds,
    bundled_policy_path,
    dump_policy,
    load_policy,
    parse_policy,
)

__all__ = [
    "ACTIONS",
    "Decision",
    "DecisionContext",
    "FingerprintMismatch",
    "Policy",
    "PolicyError",
    "ScoreLike",
    "Thresholds",
    "bundled_policy_path",
    "decide",
    "dump_policy",
    "effective_action",
    "load_policy",
    "parse_policy",
]
