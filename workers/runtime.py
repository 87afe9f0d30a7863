"""What a worker process loads once: the ensemble, the policy in force and its scoring configuration."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The loaded model and policy. The gate always scores with `gate_config` (the configuration the
    policy was calibrated for); a job's own seed, steps, guidance and size are used for rendering only."""

    ensemble: Any
    policy: Any
    gate_config: Any

    def render_config(self, params: dict[str, Any], negative_prompt: str) -> Any:
        changes = {k: params[k] for k in ("seed", "steps", "guidance") if params.get(k) is not None}
        for side in ("height", "width"):
            if params.get(side) is not None:
                changes[side] = params[side]
        return self.gate_config.replace(negative_prompt=negative_prompt or "", **changes)

    def size_problem(self, height: int | None, width: int | None) -> str | None:
        return self.ensemble.size_problem(
            height or self.ensemble.default_height, width or self.ensemble.default_width
        )


def load_runtime(settings: Settings) -> Runtime:
    """Load the ensemble and policy named by the settings (torch is imported here, not at module import)."""
    from emoe import default_score_config, load_ensemble, scoring_fingerprint
    from policies import bundled_policy_path, load_policy

    ensemble = load_ensemble(settings.ensemble, device=settings.device, dtype=settings.dtype)
    policy_path = settings.policy_path or bundled_policy_path()
    policy = load_policy(policy_path)
    config = default_score_config(ensemble)
    # Refuse to start rather than fail every job: a policy decides only scores of the configuration it was
    # calibrated for.
    fingerprint = scoring_fingerprint(config, ensemble)
    if fingerprint != policy.fingerprint:
        raise RuntimeError(
            f"policy {policy.name} v{policy.version} ({policy_path}) was calibrated for scoring fingerprint "
            f"{policy.fingerprint[:12]}, but ensemble {settings.ensemble!r} scores with {fingerprint[:12]}: "
            "calibrate a policy for this ensemble (`emoe-gate calibrate --ensemble ... --out policy.yaml`) "
            "and set EMOE_POLICY_PATH, or use the ensemble the policy names"
        )
    from audit.language import warm_up

    warm_up()  # the gate stage detects each job's language (the gateway does not)
    log.info(
        "worker runtime: ensemble %s (%d experts), policy %s v%s",
        ensemble.name,
        ensemble.num_experts,
        policy.name,
        policy.version,
    )
    return Runtime(ensemble=ensemble, policy=policy, gate_config=config)


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime(settings: Settings) -> Runtime:
    """The process's runtime, loaded on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = load_runtime(settings)
        return _runtime


def loaded_runtime() -> Runtime | None:
    return _runtime
